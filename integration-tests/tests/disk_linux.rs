//! virtio-blk with a real kernel: what the guest synced survives kvmkit's SIGKILL, and the guest boots
//! from an ext4 root disk it finds through its command line. (Reading and writing disks, with the
//! other devices, is devices_linux.rs.) Every assertion is about bytes: what the guest printed it
//! read, and what the host finds in the image files afterwards (with e2fsprogs' debugfs and e2fsck).
//!
//! On a software-KVM host each boot takes about a minute and a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use kvmkit_integration_tests::disks::{
    Scratch, assert_clean, ext4_image, read_from_image, two_disk_args, two_disks,
};
use kvmkit_integration_tests::{guest_cmdline, line};

const GUEST_WROTE: &str = "written by the kvmkit guest\n";

fn kvmkit(args: &[&str], cmdline: &str) -> Command {
    let guest = kvmkit_integration_tests::guest_dir();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"));
    cmd.arg("--kernel")
        .arg(guest.join("vmlinux"))
        .args([
            "--cmdline",
            cmdline,
            "--memory",
            "256M",
            "--serial",
            "stdio",
        ])
        .args(args)
        .stdin(Stdio::null());
    cmd
}

/// kvmkit booting the test guest from its initramfs with `a` as vda and `b` as a read-only vdb, its
/// init in `mode` (`kvmkit_init=...`).
fn two_disk_guest(a: &Path, b: &Path, mode: &str) -> Command {
    let disks = two_disk_args(a, b);
    let disks: Vec<&str> = disks.iter().map(String::as_str).collect();
    let mut cmd = kvmkit(&disks, &guest_cmdline(&format!("kvmkit_init={mode}")));
    cmd.arg("--initramfs")
        .arg(kvmkit_integration_tests::guest_dir().join("initramfs.cpio"));
    cmd
}

#[test]
fn data_the_guest_synced_survives_kill_9() {
    let s = Scratch::new("disk-kill");
    let (a, b) = two_disks(&s);
    let mut child = two_disk_guest(&a, &b, "disk-then-hang")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut synced = false;
    for l in BufReader::new(stdout).lines() {
        let l = l.unwrap();
        seen.push_str(&l);
        seen.push('\n');
        if l.starts_with("KVMKIT-DISK-SYNCED") {
            synced = true;
            break;
        }
    }
    // SIGKILL: kvmkit gets no chance to flush or close anything.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(synced, "the guest never synced:\n{seen}");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert_eq!(read_from_image(&a, "/guest-wrote.txt"), GUEST_WROTE);
    assert_clean(&a);
}

#[test]
fn boots_from_an_ext4_root_disk_found_through_the_command_line() {
    // With --acpi off the kernel learns of the disk from virtio_mmio.device= on its command line.
    let s = Scratch::new("disk-root");
    let root = s.0.join("root");
    for d in ["dev", "proc", "sys", "mnt"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(
        kvmkit_integration_tests::guest_dir().join("init"),
        root.join("init"),
    )
    .unwrap();
    std::fs::write(root.join("hello.txt"), "hello from the root disk\n").unwrap();
    let image = s.0.join("root.img");
    ext4_image(&image, &root);
    // The console node, made inside the image (mknod on the host would need root).
    let mut debugfs = Command::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(&image)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    debugfs
        .stdin
        .take()
        .unwrap()
        .write_all(b"cd /dev\nmknod console c 5 1\n")
        .unwrap();
    assert!(debugfs.wait().unwrap().success());
    assert_clean(&image);
    let disk = format!("path={}", image.display());
    let cmdline = guest_cmdline("root=/dev/vda rootfstype=ext4 ro init=/init kvmkit_init=rootdisk");
    let out = kvmkit(&["--acpi", "off", "--disk", &disk], &cmdline)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{context}");
    assert!(
        stdout.contains("virtio_mmio.device=4K@0xd0000000:5"),
        "{context}"
    );
    assert!(
        stdout.contains("VFS: Mounted root (ext4 filesystem)"),
        "{context}"
    );
    line(&stdout, "KVMKIT-INIT-OK pid=1");
    assert_eq!(
        line(&stdout, "KVMKIT-ROOT-READ"),
        "KVMKIT-ROOT-READ hello from the root disk"
    );
    assert_clean(&image);
}
