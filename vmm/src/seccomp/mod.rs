//! seccomp filters, one per kind of kvmkit thread: each thread installs its own when it starts
//! (a filter is per thread, and a thread also keeps the filters of the thread that made it), and
//! from then on may make only the system calls on its kind's list ([`allowed`]). Anything else ends
//! kvmkit at once with exit code [`EXIT_BAD_SYSCALL`] and a line naming the thread kind and the
//! system call's number.
//!
//! `--seccomp on` (the default) enforces the lists, `--seccomp log` allows everything but has the
//! kernel log each call outside the lists (audit, `dmesg`: `type=1326 ... comm="kvmkit-vcpu-0"
//! syscall=N`), for finding what a list misses; `--seccomp off` installs nothing. docs/security.md
//! has the threat model.

mod lists;

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Once, OnceLock};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

pub use lists::{allowed, refused};

/// The exit code when a thread makes a system call outside its list: 128 + SIGSYS.
pub const EXIT_BAD_SYSCALL: i32 = 128 + libc::SIGSYS;

/// What kvmkit does with its threads' system calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Each thread may make only the calls on its list; any other ends kvmkit.
    #[default]
    On,
    /// Calls outside the lists are made, and logged by the kernel.
    Log,
    /// No filters.
    Off,
}

impl std::str::FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(Self::On),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            _ => Err(format!("invalid --seccomp '{s}': expected on, log or off")),
        }
    }
}

/// The kinds of kvmkit threads, each with its own list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread, once the VM runs (or once it waits for the API to start one).
    Main,
    /// The API server and its connections (which build, snapshot and restore VMs).
    Api,
    /// A vCPU: `KVM_RUN`, device emulation on exits, starting device workers.
    Vcpu,
    /// A virtio device's worker: its queues, its disk image or tap.
    Device,
    /// The VM's event loop: stop requests, signals, console input, the VM's end.
    EventLoop,
    /// The console writer.
    Console,
    /// The metrics writer.
    Metrics,
    /// The relay of a console on a socket (`--console socket=PATH`).
    ConsoleSocket,
    /// A vsock device's worker: a device's calls, and its host sockets.
    Vsock,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 9] = [
        ThreadKind::Main,
        ThreadKind::Api,
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::EventLoop,
        ThreadKind::Console,
        ThreadKind::Metrics,
        ThreadKind::ConsoleSocket,
        ThreadKind::Vsock,
    ];

    /// The kind's name, as messages and docs/security.md give it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Api => "api",
            Self::Vcpu => "vcpu",
            Self::Device => "device",
            Self::EventLoop => "event loop",
            Self::Console => "console",
            Self::Metrics => "metrics",
            Self::ConsoleSocket => "console socket",
            Self::Vsock => "vsock",
        }
    }
}

/// Errors from building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// seccompiler refused the filter (a bug in the lists).
    #[error("seccomp: cannot build the {kind} filter: {source}")]
    Build {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::BackendError,
    },
    /// A program built earlier failed (the message is that error's).
    #[error("{0}")]
    Prepared(String),
    /// The kernel refused the filter.
    #[error("seccomp: cannot install the {kind} filter: {source}")]
    Install {
        /// The thread kind.
        kind: &'static str,
        /// Why.
        #[source]
        source: seccompiler::Error,
    },
}

static MODE: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// The kind whose filter this thread installed, for the SIGSYS message (+1; 0 for none).
    static KIND: Cell<u8> = const { Cell::new(0) };
    /// Whether this thread's list lets the SIGSYS handler restore the terminal (an ioctl).
    static MAY_RESTORE_TERMINAL: Cell<bool> = const { Cell::new(true) };
}

/// Sets the mode for the threads that start from now on.
pub fn set_mode(mode: Mode) {
    MODE.store(
        match mode {
            Mode::On => 0,
            Mode::Log => 1,
            Mode::Off => 2,
        },
        Ordering::SeqCst,
    );
}

/// The current mode.
pub fn mode() -> Mode {
    match MODE.load(Ordering::SeqCst) {
        0 => Mode::On,
        1 => Mode::Log,
        _ => Mode::Off,
    }
}

/// The BPF program of `kind`'s filter: its list allowed, anything else trapped (`On`) or logged
/// (`Log`). With `On`, the calls [`refused`] are let through here; [`refusal`] answers them.
pub fn program(kind: ThreadKind, mode: Mode) -> Result<BpfProgram, Error> {
    let mismatch = match mode {
        Mode::Log => SeccompAction::Log,
        _ => SeccompAction::Trap,
    };
    let build = |source| Error::Build {
        kind: kind.name(),
        source,
    };
    let mut rules = allowed(kind)
        .into_iter()
        .map(|nr| lists::rules(nr).map(|r| (nr, r)))
        .collect::<Result<BTreeMap<i64, Vec<SeccompRule>>, _>>()
        .map_err(build)?;
    if mode == Mode::On {
        rules.extend(refused(kind).into_iter().map(|nr| (nr, Vec::new())));
    }
    let filter = SeccompFilter::new(
        rules,
        mismatch,
        SeccompAction::Allow,
        seccompiler::TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map_err(build)
}

/// The second filter of a kind with calls [`refused`] (`On` only): those calls fail with
/// `EACCES`, everything else is left to [`program`]'s filter. (A call two filters disagree on gets
/// the stricter answer: `EACCES` over allow.)
pub fn refusal(kind: ThreadKind) -> Result<Option<BpfProgram>, Error> {
    let calls = refused(kind);
    if calls.is_empty() {
        return Ok(None);
    }
    let build = |source| Error::Build {
        kind: kind.name(),
        source,
    };
    let filter = SeccompFilter::new(
        calls.into_iter().map(|nr| (nr, Vec::new())).collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        seccompiler::TargetArch::x86_64,
    )
    .map_err(build)?;
    filter.try_into().map(Some).map_err(build)
}

/// A kind's programs: its filter, and its refusal filter if it has one.
type Programs = (BpfProgram, Option<BpfProgram>);

/// Each kind's programs for the mode set at start-up, built once ([`prepare`], or the first
/// [`apply`]), or why they could not be built.
static PROGRAMS: [OnceLock<Result<Programs, String>>; ThreadKind::ALL.len()] =
    [const { OnceLock::new() }; ThreadKind::ALL.len()];

fn cached(kind: ThreadKind) -> Result<&'static Programs, Error> {
    PROGRAMS[kind as usize]
        .get_or_init(|| {
            let mode = mode();
            let main = program(kind, mode).map_err(|e| e.to_string())?;
            let refusal = match mode {
                Mode::On => refusal(kind).map_err(|e| e.to_string())?,
                _ => None,
            };
            Ok((main, refusal))
        })
        .as_ref()
        .map_err(|message| Error::Prepared(message.clone()))
}

/// Sets the mode and builds every kind's program on a thread of its own (`kvmkit-seccomp`), so that
/// a vCPU does not build its program between its start and its first `KVM_RUN` (about a
/// millisecond here). Call once, before any thread applies a filter.
pub fn prepare(mode: Mode) {
    set_mode(mode);
    if mode == Mode::Off {
        return;
    }
    install_sigsys_handler();
    let built = std::thread::Builder::new()
        .name("kvmkit-seccomp".into())
        .spawn(|| {
            // In the order the threads start: the vCPUs' first (it is on the way to KVM_RUN).
            for kind in [
                ThreadKind::Vcpu,
                ThreadKind::Console,
                ThreadKind::EventLoop,
                ThreadKind::Main,
                ThreadKind::Device,
                ThreadKind::Api,
                ThreadKind::Metrics,
                ThreadKind::ConsoleSocket,
            ] {
                let _ = cached(kind);
            }
        });
    if let Err(e) = built {
        log::debug!("seccomp: programs built on demand ({e})");
    }
}

/// Installs `kind`'s filter on the calling thread (nothing with `--seccomp off`).
pub fn apply(kind: ThreadKind) -> Result<(), Error> {
    let mode = mode();
    if mode == Mode::Off {
        return Ok(());
    }
    install_sigsys_handler();
    let (program, refusal) = cached(kind)?;
    // Set before the filter: the handler must not need a call the filter refuses.
    KIND.with(|k| k.set(kind as u8 + 1));
    MAY_RESTORE_TERMINAL.with(|m| m.set(allowed(kind).contains(&libc::SYS_ioctl)));
    // The refusal first: the main filter may not allow `seccomp` itself.
    for program in refusal.iter().chain(std::iter::once(program)) {
        seccompiler::apply_filter(program).map_err(|source| Error::Install {
            kind: kind.name(),
            source,
        })?;
    }
    Ok(())
}

/// [`apply`], or, if the filter cannot be installed, the end of kvmkit: a thread must not run
/// unconfined when the user asked for filters.
pub fn apply_or_exit(kind: ThreadKind) {
    if let Err(e) = apply(kind) {
        log::error!("{e}");
        crate::terminal::restore();
        std::process::exit(crate::outcome::EXIT_GUEST_ERROR);
    }
}

fn install_sigsys_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SIGSYS is a valid, catchable signal: registration cannot fail.
        let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys);
    });
}

/// Where the system call number is in a SIGSYS `siginfo_t` on x86_64: after si_signo, si_errno,
/// si_code (and padding) comes `_sigsys { void *_call_addr; int _syscall; unsigned _arch; }`.
const SI_SYSCALL_OFFSET: usize = 24;

/// The SIGSYS handler: says which kind of thread made which call, and ends kvmkit. Only
/// async-signal-safe calls (write, _exit), no allocation.
extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let syscall = if info.is_null() {
        -1
    } else {
        // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler; for a seccomp
        // SIGSYS its _sigsys member is filled, and _syscall is an int at this offset on x86_64.
        unsafe {
            info.cast::<u8>()
                .add(SI_SYSCALL_OFFSET)
                .cast::<i32>()
                .read_unaligned()
        }
    };
    let kind = KIND.with(Cell::get);
    let name = ThreadKind::ALL
        .get(usize::from(kind).wrapping_sub(1))
        .map_or("unfiltered", |k| k.name());
    let mut line = [0u8; 160];
    let mut len = 0;
    for part in [
        "kvmkit: error: seccomp: a ".as_bytes(),
        name.as_bytes(),
        b" thread made system call ",
    ] {
        len += copy(&mut line[len..], part);
    }
    len += decimal(&mut line[len..], syscall);
    len += copy(
        &mut line[len..],
        b", which is not on its list (docs/security.md; --seccomp log to find more)\n",
    );
    if MAY_RESTORE_TERMINAL.with(Cell::get) {
        crate::terminal::restore();
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `line` is a live buffer of at least
    // `len` bytes.
    unsafe {
        libc::write(2, line.as_ptr().cast(), len);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// Copies as much of `src` as fits; returns how much.
fn copy(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len().min(dst.len());
    dst[..n].copy_from_slice(&src[..n]);
    n
}

/// Writes `n` in decimal; returns how many bytes.
fn decimal(dst: &mut [u8], n: i32) -> usize {
    let mut digits = [0u8; 12];
    let mut v = i64::from(n).unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if n < 0 {
        i -= 1;
        digits[i] = b'-';
    }
    copy(dst, &digits[i..])
}

#[cfg(test)]
mod tests;
