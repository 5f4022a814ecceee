//! The system calls each kind of thread may make. Found by tracing every test (each thread's calls
//! under `strace -f`, named by the thread), then read against the code; docs/security.md says what
//! each kind does with them.
//!
//! A thread keeps the filters of the thread that started it, so a list must hold the lists of the
//! threads its kind starts: a vCPU starts device workers (when the driver activates a device), and
//! an API connection thread starts a whole VM (`PUT /actions` InstanceStart, `/snapshot/load`).

use libc::{
    SYS_accept4, SYS_bind, SYS_brk, SYS_chmod, SYS_clock_gettime, SYS_clock_nanosleep, SYS_clone,
    SYS_clone3, SYS_close, SYS_connect, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait,
    SYS_epoll_wait, SYS_eventfd2, SYS_exit, SYS_exit_group, SYS_fallocate, SYS_fcntl,
    SYS_fdatasync, SYS_flock, SYS_fstat, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_getpid,
    SYS_getrandom, SYS_gettid, SYS_ioctl, SYS_listen, SYS_lseek, SYS_madvise, SYS_mmap,
    SYS_mprotect, SYS_mremap, SYS_munmap, SYS_nanosleep, SYS_newfstatat, SYS_openat, SYS_poll,
    SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_pwrite64, SYS_pwritev, SYS_read, SYS_readv,
    SYS_recvfrom, SYS_rename, SYS_renameat2, SYS_restart_syscall, SYS_rseq, SYS_rt_sigaction,
    SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_sched_getaffinity, SYS_sched_yield, SYS_seccomp,
    SYS_sendto, SYS_set_robust_list, SYS_setsockopt, SYS_shutdown, SYS_sigaltstack, SYS_socket,
    SYS_statx, SYS_tgkill, SYS_timerfd_create, SYS_timerfd_gettime, SYS_timerfd_settime,
    SYS_unlink, SYS_write, SYS_writev,
};
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use super::ThreadKind;

/// What every thread does: start and end (glibc's thread start and exit), allocate, wait on
/// locks and sleep, take signals (a vCPU is kicked with one), write log lines, and close what it
/// drops.
const EVERY_THREAD: &[i64] = &[
    SYS_brk,
    SYS_clock_gettime,
    SYS_clock_nanosleep,
    SYS_close,
    SYS_exit,
    SYS_exit_group,
    SYS_futex,
    SYS_getpid,
    SYS_getrandom,
    SYS_gettid,
    SYS_madvise,
    SYS_mmap,
    SYS_mprotect,
    SYS_mremap,
    SYS_munmap,
    SYS_nanosleep,
    SYS_prctl,
    SYS_restart_syscall,
    SYS_rseq,
    SYS_rt_sigprocmask,
    SYS_rt_sigreturn,
    SYS_sched_getaffinity,
    SYS_sched_yield,
    SYS_set_robust_list,
    SYS_sigaltstack,
    SYS_write,
];

/// A device worker: its event loop (epoll on queue eventfds and a tap), guest buffers to and from
/// a disk image (positioned I/O, flush, discard) or a tap (read/write with vectors), a console's
/// input (poll without waiting, then read).
const DEVICE: &[i64] = &[
    SYS_epoll_create1,
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_wait,
    SYS_eventfd2,
    SYS_fallocate,
    SYS_fcntl,
    SYS_fdatasync,
    SYS_fsync,
    SYS_poll,
    SYS_ppoll,
    SYS_pread64,
    SYS_preadv,
    SYS_pwrite64,
    SYS_pwritev,
    SYS_read,
    SYS_readv,
    SYS_writev,
];

/// A vCPU: `KVM_RUN` and the vCPU ioctls (registers for the instruction assist and snapshots),
/// eventfds (interrupts, stop), and on a device's activation its ioeventfds and worker thread (which
/// installs its own filter: `seccomp`).
const VCPU: &[i64] = &[SYS_clone, SYS_clone3, SYS_ioctl, SYS_seccomp, SYS_tgkill];

/// The event loop: epoll on its eventfds and the console's input (with a retry timer while the
/// UART's receive buffer is full, and a pty console's size looked at each second), kicking vCPUs
/// out of `KVM_RUN`, and at the VM's end joining them and dropping the VM, which removes a socket
/// console's socket (`unlink`).
const EVENT_LOOP: &[i64] = &[
    SYS_epoll_ctl,
    SYS_epoll_pwait,
    SYS_epoll_wait,
    SYS_fcntl,
    SYS_ioctl,
    SYS_read,
    SYS_tgkill,
    SYS_timerfd_settime,
    SYS_unlink,
];

/// The console writer and the metrics writer: they write (a file, a pipe, a FIFO, a terminal, or
/// a socket console's client, which Rust writes to with `send`), and close their file at the VM's
/// end, which in a debug build first checks it is open (fcntl F_GETFD; found by a boot with
/// `--serial file=`).
const WRITER: &[i64] = &[SYS_writev, SYS_fsync, SYS_lseek, SYS_fcntl, SYS_sendto];

/// The relay of a console on a socket: poll, accept a client, read what it types and pass it on
/// through a pipe, tell a second client it is not wanted (`send`), duplicate the client for the
/// output (`fcntl`).
const CONSOLE_SOCKET: &[i64] = &[
    SYS_accept4,
    SYS_fcntl,
    SYS_poll,
    SYS_ppoll,
    SYS_read,
    SYS_sendto,
];

/// A vsock device's worker, beyond a device's: take host clients (accept), connect to host
/// listeners for the guest (a Unix socket made non-blocking: `socket`, `ioctl` FIONBIO, `connect`),
/// read and write them (Rust's `recv` and `send`), shut their write side, and time out host
/// clients' connects the guest does not accept (a timerfd: set, looked at, read).
const VSOCK: &[i64] = &[
    SYS_accept4,
    SYS_connect,
    SYS_ioctl,
    SYS_recvfrom,
    SYS_sendto,
    SYS_shutdown,
    SYS_socket,
    SYS_timerfd_gettime,
    SYS_timerfd_settime,
];

/// The main thread once the VM runs: it waits for the VM's end, restores the terminal (ioctl) and
/// its input's file flags (fcntl), stops the API server and removes its socket.
const MAIN: &[i64] = &[
    SYS_fcntl,
    SYS_ioctl,
    SYS_poll,
    SYS_ppoll,
    SYS_read,
    SYS_shutdown,
    SYS_tgkill,
    SYS_unlink,
];

/// The API: its connections (accept, read, write, poll with timeouts), and what the requests do:
/// build and start a VM (opening the kernel, disks, taps, /dev/kvm; KVM ioctls; eventfds and
/// threads), write and read snapshots (create, truncate, positioned I/O, fsync, rename,
/// /proc/self/pagemap), open a log or metrics file, make a vsock device's socket (`bind`, `listen`,
/// `chmod` to 0600: `PUT /vsock`, then InstanceStart). The threads it starts install their own
/// filters (`seccomp`). Listed here: only what the API adds to the device, vCPU, event-loop and
/// writer lists, which it holds too ([`allowed`]).
const API: &[i64] = &[
    SYS_accept4,
    SYS_bind,
    SYS_chmod,
    SYS_flock,
    SYS_fstat,
    SYS_ftruncate,
    SYS_listen,
    SYS_newfstatat,
    SYS_openat,
    SYS_poll,
    SYS_ppoll,
    SYS_recvfrom,
    SYS_rename,
    SYS_renameat2,
    SYS_rt_sigaction,
    SYS_sendto,
    SYS_setsockopt,
    SYS_shutdown,
    SYS_statx,
    SYS_timerfd_create,
    SYS_unlink,
];

/// The calls a thread of `kind` cannot make but that are answered `EACCES` rather than ending
/// kvmkit: opening a file, for the kinds that never open one. glibc opens files behind the
/// program's back: the first time a thread's malloc arena gives memory back, it reads
/// /proc/sys/vm/overcommit_memory (once per process; a failed open counts as 0). That ended a
/// snapshot with 159 when a network device's worker freed its buffers.
pub fn refused(kind: ThreadKind) -> Vec<i64> {
    let allowed = allowed(kind);
    [libc::SYS_open, libc::SYS_openat]
        .into_iter()
        .filter(|nr| !allowed.contains(nr))
        .collect()
}

/// The system calls `kind` may make, each at most once (`socket` with a condition: Unix sockets only).
pub fn allowed(kind: ThreadKind) -> Vec<i64> {
    let parts: &[&[i64]] = match kind {
        ThreadKind::Main => &[EVERY_THREAD, MAIN],
        ThreadKind::Api => &[
            EVERY_THREAD,
            API,
            DEVICE,
            VCPU,
            EVENT_LOOP,
            WRITER,
            CONSOLE_SOCKET,
            VSOCK,
        ],
        ThreadKind::Vcpu => &[EVERY_THREAD, VCPU, DEVICE, VSOCK],
        ThreadKind::Device => &[EVERY_THREAD, DEVICE],
        ThreadKind::Vsock => &[EVERY_THREAD, DEVICE, VSOCK],
        ThreadKind::EventLoop => &[EVERY_THREAD, EVENT_LOOP],
        ThreadKind::Console | ThreadKind::Metrics => &[EVERY_THREAD, WRITER],
        ThreadKind::ConsoleSocket => &[EVERY_THREAD, CONSOLE_SOCKET],
    };
    let mut all: Vec<i64> = parts.iter().flat_map(|p| p.iter().copied()).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// The ioctl types (bits 8 to 15 of the request) kvmkit uses: KVM's, `'T'` (TUN/TAP's `TUNSET*`,
/// and the terminal's and `FIONBIO`, which share the letter) and the socket interface ones
/// (`SIOCGIFINDEX`, for glibc's `if_nametoindex`). Any other driver's ioctl is refused.
pub const IOCTL_TYPES: [u8; 3] = [0xae, b'T', 0x89];

/// The conditions on a call (empty: any arguments); a call is allowed if one of its rules holds.
/// `socket` only makes Unix sockets: glibc's `if_nametoindex` (does a tap exist?) needs one; no
/// kvmkit thread talks IP. `mmap` and `mprotect` never make memory executable: kvmkit maps guest
/// RAM, files and thread stacks, none of them code, so a subverted thread cannot make room for
/// code of its own. `ioctl` only with a request of one of [`IOCTL_TYPES`].
pub fn rules(syscall: i64) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let conditions = if syscall == SYS_socket {
        vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?]
    } else if syscall == SYS_mmap || syscall == SYS_mprotect {
        vec![SeccompCondition::new(
            2,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )?]
    } else if syscall == SYS_ioctl {
        IOCTL_TYPES
            .iter()
            .map(|&t| {
                SeccompCondition::new(
                    1,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::MaskedEq(0xff00),
                    u64::from(t) << 8,
                )
            })
            .collect::<Result<_, _>>()?
    } else {
        return Ok(Vec::new());
    };
    conditions
        .into_iter()
        .map(|c| SeccompRule::new(vec![c]))
        .collect()
}
