//! The VM lifecycle: pause and resume of all vCPUs, stopping, back-to-back VMs that leave nothing
//! behind, and a stop signal in the middle of a Linux boot.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use kvmkit::Outcome;
use kvmkit_integration_tests::{Mode, PRINT_AND_RESET, TinyGuest};
use vm_memory::{Bytes, GuestAddress};

/// Long mode: count forever in the qword at 0x2000.
const COUNTER: &[u8] = &[
    0xb8, 0x00, 0x20, 0x00, 0x00, // mov eax, 0x2000
    0x48, 0xff, 0x00, //             loop: inc qword [rax]
    0xeb, 0xfb, //                   jmp loop
];

fn count(ram: &memory::GuestRam) -> u64 {
    ram.memory().read_obj(GuestAddress(0x2000)).unwrap()
}

/// Waits until the guest's counter passes `above`, for at most 10 s.
fn wait_past(ram: &memory::GuestRam, above: u64) -> u64 {
    for _ in 0..1000 {
        let c = count(ram);
        if c > above {
            return c;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the guest's counter stayed at {}", count(ram));
}

#[test]
fn pause_stops_the_guest_and_resume_lets_it_go_on() {
    let (vm, ram) = TinyGuest::new(Mode::Long, COUNTER, None).start();
    let running = wait_past(&ram, 0);
    vm.pause();
    let paused = count(&ram);
    assert!(paused >= running);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(&ram), paused, "the counter moved while paused");
    vm.pause(); // pausing twice is harmless
    vm.resume();
    wait_past(&ram, paused);
    vm.stop();
    assert_eq!(vm.wait().unwrap(), Outcome::Stopped);
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

#[test]
fn twenty_back_to_back_vms_leave_no_fds_or_threads() {
    // One VM first, so that one-time process state (signal handlers, lazily opened files) is in place.
    let warm = TinyGuest::new(Mode::Real, PRINT_AND_RESET, Some((0x1100, b"\0"))).run();
    assert_eq!(warm.0, Outcome::Reset);
    let (fds, tasks) = (open_fds(), threads());
    for i in 0..20 {
        let text = format!("vm {i}\n\0");
        let (outcome, out) =
            TinyGuest::new(Mode::Real, PRINT_AND_RESET, Some((0x1100, text.as_bytes()))).run();
        assert_eq!(outcome, Outcome::Reset);
        assert_eq!(out, text.trim_end_matches('\0').as_bytes());
    }
    assert_eq!(open_fds(), fds, "file descriptors leaked");
    assert_eq!(threads(), tasks, "threads leaked");
}

#[test]
fn sigterm_mid_boot_exits_143() {
    let guest = kvmkit_integration_tests::guest_dir();
    let cmdline = std::fs::read_to_string(guest.join("cmdline.txt")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .arg("--kernel")
        .arg(guest.join("vmlinux"))
        .arg("--initramfs")
        .arg(guest.join("initramfs.cpio"))
        .args(["--cmdline", cmdline.trim(), "--serial", "off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("stopped by signal 15"), "{stderr}");
}

#[test]
fn an_event_source_added_to_the_running_vm_can_end_it() {
    use kvmkit::events::EndOn;
    use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
    let (vm, ram) = TinyGuest::new(Mode::Long, COUNTER, None).start();
    wait_past(&ram, 0);
    let event = EventFd::new(EFD_NONBLOCK).unwrap();
    let source = EndOn::new(event.try_clone().unwrap(), Outcome::Quit, vm.vm_end());
    vm.add_event_source(Box::new(source)).unwrap();
    event.write(1).unwrap();
    assert_eq!(vm.wait().unwrap(), Outcome::Quit);
}
