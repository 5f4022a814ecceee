//! The virtio console (hvc0) with a real kernel, driven through its pseudo-terminal as a person at
//! `screen` would: kvmkit (under `--landlock`) prints the pty's path, the guest's init writes a line
//! to /dev/hvc0, the test types a line into the pty, and the guest reads it from hvc0 and writes
//! it back.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use kvmkit_integration_tests::{Background, guest_cmdline, guest_dir};

/// Reads `pty` until what was read contains `marker` (or fails the test after `limit`).
fn read_until(pty: &mut std::fs::File, seen: &mut String, marker: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    while !seen.contains(marker) {
        assert!(
            Instant::now() < deadline,
            "{marker:?} never came through the pty; it gave: {seen:?}"
        );
        match pty.read(&mut buf) {
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("reading the pty: {e}; it gave: {seen:?}"),
        }
    }
}

#[test]
fn a_line_typed_into_the_console_s_pty_reaches_the_guest_and_comes_back() {
    let guest = guest_dir();
    let kvmkit = Background::spawn(
        std::process::Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .arg("--kernel")
            .arg(guest.join("vmlinux"))
            .arg("--initramfs")
            .arg(guest.join("initramfs.cpio"))
            .args([
                "--cmdline",
                &guest_cmdline("kvmkit_init=hvc,hvcecho"),
                "--memory",
                "256M",
                "--serial",
                "stdio",
                "--console",
                "pty",
                "--landlock",
            ]),
    );
    let announced = "kvmkit: virtio console (hvc0) on ";
    assert!(
        kvmkit.wait_for_stderr(announced, Duration::from_secs(60)),
        "no pty announced: {}",
        kvmkit.stderr()
    );
    let stderr = kvmkit.stderr();
    let path = kvmkit_integration_tests::line(&stderr, announced)
        .trim_start_matches(announced)
        .trim()
        .to_owned();
    assert!(path.starts_with("/dev/pts/"), "{path}");
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    let mut seen = String::new();
    read_until(
        &mut pty,
        &mut seen,
        "KVMKIT-HVC-OK written through hvc0",
        Duration::from_secs(600),
    );
    pty.write_all(b"ping from the host\n").unwrap();
    read_until(
        &mut pty,
        &mut seen,
        "KVMKIT-HVC-ECHO ping from the host",
        Duration::from_secs(120),
    );
    let (stdout, stderr, code) = kvmkit.finish(Duration::from_secs(120));
    let context =
        format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n--- pty ---\n{seen}");
    assert_eq!(code, Some(0), "{context}");
    assert!(stdout.contains("KVMKIT-HVC open="), "{context}");
    assert!(
        !stdout.contains("KVMKIT-HVC open=-"),
        "hvc0 opened: {context}"
    );
    assert!(stdout.contains("KVMKIT-HVC-ECHOED n=18"), "{context}");
}
