//! Every kind of virtio device with a real kernel, in one boot per kernel: two disks (ext4 read and
//! written, a read-only one refusing writes), a network card on a tap in a network namespace the test
//! makes (ping, and a byte stream over TCP each way, checked on both ends), and the entropy device
//! (the kernel's hardware RNG, read). Once with the test kernel, which has ACPI and finds the devices
//! in the DSDT, and once with the same kernel built without ACPI, which finds them on its command
//! line, both with kvmkit's default `--acpi on`: each must see every device exactly once. The second
//! boot runs under `--landlock`: the devices work with kvmkit restricted to the files they name.
//!
//! The network part needs root (a network namespace and a tap). On a software-KVM host each boot
//! takes about two minutes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use kvmkit_integration_tests::disks::{
    HELLO, Scratch, assert_clean, read_from_image, two_disk_args, two_disks,
};
use kvmkit_integration_tests::netns::{NetNs, TAP};
use kvmkit_integration_tests::{guest_cmdline, guest_dir, line, output_within};
use virtio_devices::net::MacAddr;

/// Bytes the guest sends and receives over TCP.
const NET_BYTES: u64 = 1 << 20;
const GUEST_WROTE: &str = "written by the kvmkit guest\n";

/// What a boot showed: the guest's console, kvmkit's stderr, the peer's report.
struct Seen {
    stdout: String,
    stderr: String,
    peer: String,
}

impl Seen {
    fn context(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}\n--- peer ---\n{}",
            self.stdout, self.stderr, self.peer
        )
    }
}

/// Boots `kernel` with two disks, a network card (`mac`, or none for the generated one) and the
/// default entropy device, its init running the virtio, rng, disk and net checks.
/// `sandbox` is extra flags (`--landlock`).
fn boot_with_every_device(
    test: &str,
    kernel: &str,
    mac: Option<MacAddr>,
    sandbox: &[&str],
) -> (Seen, Scratch) {
    let s = Scratch::new(test);
    let (a, b) = two_disks(&s);
    let ns = NetNs::new(test);
    let peer = ns.peer(env!("CARGO_BIN_EXE_kvmkit-net-peer"), NET_BYTES);
    let net = match mac {
        Some(mac) => format!("tap={TAP},mac={mac}"),
        None => format!("tap={TAP}"),
    };
    let cmdline = guest_cmdline(&format!(
        "kvmkit_init=virtio,rng,disk,net {} kvmkit_netbytes={NET_BYTES}",
        ns.guest_cmdline()
    ));
    let guest = guest_dir();
    let mut cmd = ns.command(env!("CARGO_BIN_EXE_kvmkit-e2e"));
    cmd.arg("--kernel")
        .arg(guest.join(kernel))
        .arg("--initramfs")
        .arg(guest.join("initramfs.cpio"))
        .args([
            "--cmdline",
            &cmdline,
            "--memory",
            "256M",
            "--serial",
            "stdio",
        ])
        .args(two_disk_args(&a, &b))
        .args(["--net", &net])
        .args(sandbox);
    let (stdout, stderr, code) = output_within(&mut cmd, Duration::from_secs(900));
    let seen = Seen {
        stdout,
        stderr,
        peer: peer.finish(Duration::from_secs(10)),
    };
    assert_eq!(code, Some(0), "{}", seen.context());
    (seen, s)
}

/// Each device shows what it should, in the guest and on the host.
fn check_every_device(seen: &Seen, s: &Scratch, mac: MacAddr) {
    let (out, context) = (&seen.stdout, seen.context());
    // Each device once, in kvmkit's order: the disks, the network card, the entropy source; and no
    // failed probe (a device described twice would make the second probe fail).
    assert_eq!(
        line(out, "KVMKIT-VIRTIO"),
        "KVMKIT-VIRTIO count=4 ids=2,2,1,4",
        "{context}"
    );
    assert!(!out.contains("probe of"), "{context}");
    assert_eq!(
        line(out, "KVMKIT-RNG"),
        "KVMKIT-RNG current=virtio_rng.0 read=32",
        "{context}"
    );

    assert_eq!(
        line(out, "KVMKIT-DISK name=vda"),
        "KVMKIT-DISK name=vda sectors=32768 serial=disk-A ro=0"
    );
    assert_eq!(
        line(out, "KVMKIT-DISK name=vdb"),
        "KVMKIT-DISK name=vdb sectors=2048 serial=ro-B ro=1"
    );
    assert_eq!(line(out, "KVMKIT-DISK-MOUNT"), "KVMKIT-DISK-MOUNT ret=0");
    assert_eq!(
        line(out, "KVMKIT-DISK-READ"),
        format!("KVMKIT-DISK-READ {HELLO}")
    );
    assert_eq!(
        line(out, "KVMKIT-DISK-WRITE"),
        "KVMKIT-DISK-WRITE write=28 fsync=0 umount=0"
    );
    // The read-only disk: opening it for writing fails, or the write does.
    let ro = line(out, "KVMKIT-DISK-RO");
    assert!(
        ro.starts_with("KVMKIT-DISK-RO open=-") || ro.contains(" write=-"),
        "{ro}"
    );
    let (a, b) = (s.0.join("a.img"), s.0.join("b.img"));
    assert_eq!(read_from_image(&a, "/guest-wrote.txt"), GUEST_WROTE);
    assert_clean(&a);
    assert!(std::fs::read(&b).unwrap().iter().all(|&x| x == 0));

    assert_eq!(
        line(out, "KVMKIT-NET mac="),
        format!("KVMKIT-NET mac={mac} up=0 addr=0"),
        "{context}"
    );
    let ping = line(out, "KVMKIT-NET-PING");
    assert!(
        ping.starts_with("KVMKIT-NET-PING sent=3 received=3 "),
        "{context}"
    );
    let n = NET_BYTES;
    assert!(
        line(out, "KVMKIT-NET-TX").starts_with(&format!("KVMKIT-NET-TX bytes={n} ret=0 ")),
        "{context}"
    );
    assert!(
        line(out, "KVMKIT-NET-RX").starts_with(&format!("KVMKIT-NET-RX bytes={n} bad=0 ")),
        "{context}"
    );
    // The host got the guest's stream, byte for byte, and sent all of its own.
    let peer = &seen.peer;
    assert!(
        line(peer, "PEER-RX").starts_with(&format!("PEER-RX bytes={n} bad=0 ")),
        "{context}"
    );
    assert!(
        line(peer, "PEER-TX").starts_with(&format!("PEER-TX bytes={n} ")),
        "{context}"
    );
}

#[test]
fn an_acpi_kernel_uses_disks_network_and_entropy_found_in_the_dsdt() {
    let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
    let (seen, s) = boot_with_every_device("acpi", "vmlinux", Some(mac), &[]);
    // The devices are on the command line too (for kernels without ACPI); this kernel took them
    // from the DSDT and skipped the command line's, which had turned into placeholders.
    assert!(seen.stdout.contains("ACPI: DSDT 0x"), "{}", seen.context());
    assert!(
        seen.stdout.contains(" virtio_mmio.device=4K@0x"),
        "{}",
        seen.context()
    );
    check_every_device(&seen, &s, mac);
}

#[test]
fn a_kernel_without_acpi_finds_every_device_on_its_command_line_with_the_defaults() {
    let (seen, s) = boot_with_every_device("noacpi", "vmlinux-noacpi", None, &["--landlock"]);
    assert!(!seen.stdout.contains("ACPI: RSDP"), "{}", seen.context());
    assert!(
        seen.stdout
            .contains("virtio-mmio: Registering device virtio-mmio.0"),
        "{}",
        seen.context()
    );
    // Without mac=, the address is the one kvmkit derives from the tap's name.
    check_every_device(&seen, &s, MacAddr::local_from(TAP));
}
