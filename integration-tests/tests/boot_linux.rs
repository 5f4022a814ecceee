//! Boots the tools/guest kernel with kvmkit, as an ELF vmlinux through its PVH entry and as a bzImage
//! through the 64-bit boot protocol, and checks what the guest printed: the kernel banner, the 8250
//! UART, the start of init, and the marker line of the init program (guest userspace ran and made
//! system calls): its PID, the kernel's name, the guest's wall-clock time (from the CMOS RTC at boot, kept
//! since by the guest's clocksource, which must agree with the host's within 2 s) and the CPUs in /proc/cpuinfo. The init
//! then reboots the guest, so kvmkit exits 0.
//!
//! On a software-KVM host each boot takes one to two minutes of emulated guest time.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The value of `key=` in the init's marker line.
fn field(line: &str, key: &str) -> i64 {
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    value
        .parse()
        .unwrap_or_else(|_| panic!("bad {key}= in {line:?}"))
}

/// Boots `kernel` with `cpus` vCPUs. With `kvmkit_adds_flags`, the command line lacks the
/// software-KVM flags and kvmkit must add them itself where the backend needs them.
fn boot(kernel: &Path, cpus: u32, kvmkit_adds_flags: bool) {
    let started = now();
    let guest = kvmkit_integration_tests::guest_dir();
    let mut cmdline = std::fs::read_to_string(guest.join("cmdline.txt")).unwrap();
    if kvmkit_adds_flags {
        cmdline = cmdline
            .split_whitespace()
            .filter(|w| {
                // Drop each parameter kvmkit adds by itself on a software KVM backend.
                let key = |p: &str| p.split('=').next().unwrap_or(p).to_owned();
                !kvmkit::software_kvm::BACKEND_FLAGS
                    .iter()
                    .any(|f| key(f) == key(w))
            })
            .collect::<Vec<_>>()
            .join(" ");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .arg("--kernel")
        .arg(kernel)
        .arg("--initramfs")
        .arg(guest.join("initramfs.cpio"))
        .args([
            "--cmdline",
            cmdline.trim(),
            "--memory",
            "256M",
            "--serial",
            "stdio",
        ])
        .args(["--cpus", &cpus.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run kvmkit");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let brought_up = format!(
        "smp: Brought up 1 node, {cpus} CPU{}",
        if cpus == 1 { "" } else { "s" }
    );
    for expected in [
        brought_up.as_str(),
        "Linux version 6.1",
        "serial8250: ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
        "Run /init as init process",
        "KVMKIT-INIT-OK pid=1 sysname=Linux release=6.1",
    ] {
        assert!(
            stdout.contains(expected),
            "guest did not print {expected:?}\n{context}"
        );
    }
    assert!(stderr.contains("kvmkit: guest rebooted"), "{context}");
    assert_eq!(out.status.code(), Some(0), "{context}");
    let marker = stdout
        .lines()
        .find(|l| l.starts_with("KVMKIT-INIT-OK"))
        .unwrap();
    let guest_time = field(marker, "time");
    assert!(
        (started - 2..=now() + 2).contains(&guest_time),
        "guest time {guest_time} is not the host's ({started}..{}): {marker}",
        now()
    );
    assert_eq!(field(marker, "cpus"), i64::from(cpus), "{marker}");
    if kvmkit_adds_flags && Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            stderr.contains("software backend (kvm_pvm); guest command line additions: noxsave"),
            "{stderr}"
        );
        assert!(
            stdout.contains("Command line: ") && stdout.contains(" noxsave"),
            "{context}"
        );
    }
}

#[test]
fn boots_elf_vmlinux_through_pvh_to_init() {
    boot(
        &kvmkit_integration_tests::guest_dir().join("vmlinux"),
        1,
        false,
    );
}

#[test]
fn boots_bzimage_through_the_64bit_protocol_to_init() {
    boot(
        &kvmkit_integration_tests::guest_dir().join("bzImage"),
        1,
        false,
    );
}

#[test]
fn boots_two_vcpus_and_guest_userspace_sees_both() {
    // Also: the command line lacks the software-KVM flags; kvmkit adds them where needed.
    boot(
        &kvmkit_integration_tests::guest_dir().join("vmlinux"),
        2,
        true,
    );
}

#[test]
fn boots_four_vcpus_on_a_two_core_host() {
    boot(
        &kvmkit_integration_tests::guest_dir().join("vmlinux"),
        4,
        false,
    );
}
