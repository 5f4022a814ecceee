//! virtio-blk with a real kernel: the tools/guest init reads and writes ext4 disks that the host made
//! and then checks, boots from one as its root filesystem, and finds a read-only disk refusing writes.
//! Every assertion is about bytes: what the guest printed it read, and what the host finds in the
//! image files afterwards (with e2fsprogs' debugfs and e2fsck).
//!
//! On a software-KVM host each boot takes about a minute and a half.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const HELLO: &str = "hello from the host image";
const GUEST_WROTE: &str = "written by the kvmkit guest\n";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("kvmkit-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A 16 MiB ext4 image holding the files of `dir`.
fn ext4_image(image: &Path, dir: &Path) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(dir)
        .arg(image)
        .arg("16M"));
}

/// The contents of `file` inside an ext4 image, read on the host.
fn read_from_image(image: &Path, file: &str) -> String {
    let out = run(Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(image));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// e2fsck finds the file system clean.
fn assert_clean(image: &Path) {
    run(Command::new("e2fsck").arg("-fn").arg(image));
}

fn guest_cmdline(extra: &str) -> String {
    let guest = kvmkit_integration_tests::guest_dir();
    let base = std::fs::read_to_string(guest.join("cmdline.txt")).unwrap();
    format!("{} {extra}", base.trim())
}

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

fn line<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("guest did not print {prefix:?}:\n{stdout}"))
}

/// Two disks: vda an ext4 image with hello.txt, vdb a blank read-only image.
fn two_disks(s: &Scratch) -> (PathBuf, PathBuf) {
    let files = s.0.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("hello.txt"), format!("{HELLO}\n")).unwrap();
    let a = s.0.join("a.img");
    ext4_image(&a, &files);
    let b = s.0.join("b.img");
    std::fs::write(&b, vec![0u8; 1 << 20]).unwrap();
    (a, b)
}

/// kvmkit booting the test guest from its initramfs with `a` as vda and `b` as a read-only vdb, its
/// init in `mode` (`kvmkit_init=...`).
fn two_disk_guest(a: &Path, b: &Path, mode: &str) -> Command {
    let disk_a = format!("path={},serial=disk-A", a.display());
    let disk_b = format!("path={},readonly=on,serial=ro-B", b.display());
    let mut cmd = kvmkit(
        &["--disk", &disk_a, "--disk", &disk_b],
        &guest_cmdline(&format!("kvmkit_init={mode}")),
    );
    cmd.arg("--initramfs")
        .arg(kvmkit_integration_tests::guest_dir().join("initramfs.cpio"));
    cmd
}

#[test]
fn guest_reads_and_writes_ext4_and_a_read_only_disk_refuses_writes() {
    let s = Scratch::new("rw");
    let (a, b) = two_disks(&s);
    let out = two_disk_guest(&a, &b, "disk").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{context}");
    // Capacity, serial and read-only flag as the guest kernel sees them.
    assert_eq!(
        line(&stdout, "KVMKIT-DISK name=vda"),
        "KVMKIT-DISK name=vda sectors=32768 serial=disk-A ro=0"
    );
    assert_eq!(
        line(&stdout, "KVMKIT-DISK name=vdb"),
        "KVMKIT-DISK name=vdb sectors=2048 serial=ro-B ro=1"
    );
    assert_eq!(
        line(&stdout, "KVMKIT-DISK-MOUNT"),
        "KVMKIT-DISK-MOUNT ret=0"
    );
    assert_eq!(
        line(&stdout, "KVMKIT-DISK-READ"),
        format!("KVMKIT-DISK-READ {HELLO}")
    );
    assert_eq!(
        line(&stdout, "KVMKIT-DISK-WRITE"),
        "KVMKIT-DISK-WRITE write=28 fsync=0 umount=0"
    );
    // The read-only disk: opening it for writing fails, or the write does.
    let ro = line(&stdout, "KVMKIT-DISK-RO");
    let refused = ro.starts_with("KVMKIT-DISK-RO open=-") || ro.contains(" write=-");
    assert!(refused, "{ro}");
    // What the guest wrote is in the image, which is a clean file system; vdb is untouched.
    assert_eq!(read_from_image(&a, "/guest-wrote.txt"), GUEST_WROTE);
    assert_clean(&a);
    assert!(std::fs::read(&b).unwrap().iter().all(|&x| x == 0));
}

#[test]
fn data_the_guest_synced_survives_kill_9() {
    let s = Scratch::new("kill");
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
    let s = Scratch::new("root");
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
