//! Each kind's filter, installed for real in a child process (this test binary run again): a call on
//! the list goes through, one outside it ends the process with [`EXIT_BAD_SYSCALL`] and a line
//! naming the kind and the call.

use std::process::Command;

use super::*;

/// Set in the child: the kind whose filter it installs.
const CHILD: &str = "KVMKIT_SECCOMP_TEST_KIND";
/// Set in the child: the forbidden call it makes, `socket` (an IPv4 socket), `mmap` (executable
/// memory) or `ioctl` (a file system's: `FS_IOC_GETFLAGS`).
const CALL: &str = "KVMKIT_SECCOMP_TEST_CALL";

/// The child's side: install `kind`'s filter on a new thread, write (on every list), map memory
/// that is not executable (on every list), then make `call`, which no list allows.
fn child(kind: &str, call: &str) {
    let kind = ThreadKind::ALL
        .into_iter()
        .find(|k| k.name() == kind)
        .expect("a kind");
    let call = call.to_owned();
    std::thread::spawn(move || {
        apply(kind).expect("install the filter");
        eprintln!("filter installed");
        let map = |prot| {
            // SAFETY: a new anonymous mapping, unmapped at once; nothing else refers to it.
            unsafe {
                let p = libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    prot,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if p != libc::MAP_FAILED {
                    libc::munmap(p, 4096);
                }
                p != libc::MAP_FAILED
            }
        };
        eprintln!("data mapped: {}", map(libc::PROT_READ | libc::PROT_WRITE));
        // What glibc's malloc opens behind the program's back: refused, not fatal.
        if !allowed(kind).contains(&libc::SYS_openat) {
            let open = std::fs::File::open("/proc/sys/vm/overcommit_memory");
            eprintln!(
                "open refused: {}",
                open.is_err_and(|e| e.raw_os_error() == Some(libc::EACCES))
            );
        }
        if call == "mmap" {
            eprintln!("still running: {}", map(libc::PROT_READ | libc::PROT_EXEC));
        } else if call == "ioctl" {
            if allowed(kind).contains(&libc::SYS_ioctl) {
                // A terminal ioctl on a pipe: allowed, and answered ENOTTY.
                // SAFETY: TCGETS writes one termios into `t`, which lives through the call.
                let mut t: libc::termios = unsafe { std::mem::zeroed() };
                // SAFETY: as above; fd 2 is the test's stderr.
                let r = unsafe { libc::ioctl(2, libc::TCGETS, &mut t) };
                eprintln!("terminal ioctl made: {}", r == 0 || r == -1);
            }
            let mut flags: libc::c_long = 0;
            // SAFETY: FS_IOC_GETFLAGS writes one long into `flags`; the filter stops it first.
            let r = unsafe { libc::ioctl(2, 0x8008_6601, &mut flags) };
            eprintln!("still running: {r}");
        } else {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0");
            eprintln!("still running: {socket:?}");
        }
    })
    .join()
    .expect("the thread");
}

#[test]
fn every_kind_refuses_a_call_outside_its_list() {
    if let Ok(kind) = std::env::var(CHILD) {
        child(&kind, &std::env::var(CALL).unwrap_or_default());
        return;
    }
    let me = std::env::current_exe().unwrap();
    for (kind, (call, nr)) in ThreadKind::ALL.into_iter().flat_map(|k| {
        [
            ("socket", libc::SYS_socket),
            ("mmap", libc::SYS_mmap),
            ("ioctl", libc::SYS_ioctl),
        ]
        .into_iter()
        .map(move |c| (k, c))
    }) {
        let out = Command::new(&me)
            .args([
                "--exact",
                "seccomp::tests::every_kind_refuses_a_call_outside_its_list",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, kind.name())
            .env(CALL, call)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_BAD_SYSCALL),
            "{kind:?} {call}: {stderr}"
        );
        assert!(
            stderr.contains("filter installed"),
            "{kind:?} {call}: {stderr}"
        );
        assert!(
            stderr.contains("data mapped: true"),
            "{kind:?} {call}: {stderr}"
        );
        let line = format!(
            "kvmkit: error: seccomp: a {} thread made system call {nr}, which is not on its list",
            kind.name(),
        );
        assert!(stderr.contains(&line), "{kind:?} {call}: {stderr}");
        assert!(
            !stderr.contains("still running"),
            "{kind:?} {call}: {stderr}"
        );
    }
}

#[test]
fn every_list_builds_and_no_list_has_the_calls_no_thread_needs() {
    for kind in ThreadKind::ALL {
        program(kind, Mode::On).unwrap();
        program(kind, Mode::Log).unwrap();
        for forbidden in [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_mount,
            libc::SYS_init_module,
            libc::SYS_bpf,
            libc::SYS_process_vm_writev,
        ] {
            assert!(
                !allowed(kind).contains(&forbidden),
                "{kind:?} allows {forbidden}"
            );
        }
        // Sockets: Unix ones only, for the API's if_nametoindex and a vsock device's connections
        // to host listeners (made by its worker, so by the vCPU that starts it too).
        let socket = allowed(kind).contains(&libc::SYS_socket);
        assert_eq!(
            socket,
            matches!(kind, ThreadKind::Api | ThreadKind::Vsock | ThreadKind::Vcpu),
            "{kind:?}"
        );
        assert_eq!(lists::rules(libc::SYS_socket).unwrap().len(), 1);
        assert_eq!(lists::rules(libc::SYS_mmap).unwrap().len(), 1);
        assert_eq!(lists::rules(libc::SYS_mprotect).unwrap().len(), 1);
        assert_eq!(lists::rules(libc::SYS_ioctl).unwrap().len(), 3);
    }
}

#[test]
fn threads_started_by_a_kind_keep_within_its_list() {
    // A thread keeps the filters of the thread that made it: a device worker is started from a
    // vCPU thread, and every VM thread from an API thread (when the API starts the VM).
    let within = |inner: ThreadKind, outer: ThreadKind| {
        for nr in allowed(inner) {
            assert!(
                allowed(outer).contains(&nr),
                "{inner:?} needs {nr}, which {outer:?} does not allow"
            );
        }
    };
    within(ThreadKind::Device, ThreadKind::Vcpu);
    for kind in [
        ThreadKind::Vcpu,
        ThreadKind::Device,
        ThreadKind::EventLoop,
        ThreadKind::Console,
        ThreadKind::Metrics,
        ThreadKind::ConsoleSocket,
    ] {
        within(kind, ThreadKind::Api);
    }
}

#[test]
fn modes_parse() {
    assert_eq!("on".parse::<Mode>(), Ok(Mode::On));
    assert_eq!("log".parse::<Mode>(), Ok(Mode::Log));
    assert_eq!("off".parse::<Mode>(), Ok(Mode::Off));
    assert!("maybe".parse::<Mode>().is_err());
}

#[test]
fn decimal_numbers_without_allocation() {
    let mut b = [0u8; 12];
    for (n, s) in [(0, "0"), (41, "41"), (-1, "-1"), (i32::MAX, "2147483647")] {
        let len = decimal(&mut b, n);
        assert_eq!(&b[..len], s.as_bytes());
    }
}
