//! A real distribution guest: the Debian root filesystem tools/guest/rootfs.sh builds (bookworm
//! `minbase`, from Debian's packages), booted by the test kernel from a read-only `--disk` with a
//! `--net` card on a tap in a network namespace. Its init runs shell commands given on the kernel
//! command line (`kvmkit_cmd64=`, base64), which the test reads back from the console: Debian's own `ip`
//! shows eth0 with its address, Debian's `ping` reaches the host, and the guest powers off.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use kvmkit_integration_tests::netns::{GUEST_IP, HOST_IP, NetNs, TAP};
use kvmkit_integration_tests::{guest_dir, line, output_within};

#[test]
fn a_debian_root_filesystem_boots_and_its_shell_commands_reach_the_host() {
    let guest = guest_dir();
    let rootfs = guest.join("rootfs.ext4");
    assert!(
        rootfs.is_file(),
        "{} is missing: build it with tools/guest/rootfs.sh (tools/setup.sh does)",
        rootfs.display()
    );
    let base = std::fs::read_to_string(guest.join("cmdline.txt")).unwrap();
    let commands =
        format!("ip -br addr show eth0; ping -c 2 -W 10 {HOST_IP}; cat /etc/debian_version");
    let cmdline = format!(
        "{} root=/dev/vda ro init=/sbin/kvmkit-init kvmkit_ip={GUEST_IP}/24 kvmkit_cmd64={}",
        base.trim(),
        base64(commands.as_bytes())
    );
    let ns = NetNs::new("rootfs");
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_kvmkit-e2e"));
    cmd.arg("--kernel")
        .arg(guest.join("vmlinux"))
        .arg("--disk")
        .arg(format!("path={},readonly=on", rootfs.display()))
        .args([
            "--net",
            &format!("tap={TAP}"),
            "--memory",
            "256M",
            "--serial",
            "stdio",
            "--cmdline",
            &cmdline,
        ]);
    let (out, err, code) = output_within(&mut cmd, Duration::from_secs(900));
    let context = format!("--- stdout ---\n{out}\n--- stderr ---\n{err}");
    assert_eq!(
        code,
        Some(0),
        "kvmkit exits 0 when the guest powers off\n{context}"
    );
    let ready = line(&out, "KVMKIT-ROOTFS-READY");
    assert!(
        ready.contains("Debian GNU/Linux 12 (bookworm)"),
        "{context}"
    );
    let eth0 = line(&out, "eth0");
    assert!(
        eth0.contains("UP") && eth0.contains(&format!("{GUEST_IP}/24")),
        "{context}"
    );
    assert!(
        out.contains("2 packets transmitted, 2 received"),
        "Debian's ping reaches the host\n{context}"
    );
    assert!(
        out.lines().any(|l| l.trim().starts_with("12.")),
        "/etc/debian_version\n{context}"
    );
    assert_eq!(
        line(&out, "KVMKIT-ROOTFS-DONE"),
        "KVMKIT-ROOTFS-DONE status=0",
        "{context}"
    );
}

/// `bytes` in base64 (RFC 4648, padded), as the init's `base64 -d` reads it.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn base64_is_rfc_4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64(b"a_b c;"), "YV9iIGM7");
}
