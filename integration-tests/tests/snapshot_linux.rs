//! Snapshots of a real guest: the test guest, counting (`KVMKIT-TICK n`, five a second) and writing
//! each count to its disk, with a network card on a tap, is paused and snapshotted through the API,
//! and its kvmkit killed. A new kvmkit restores it (`--restore`): the count goes on from where it
//! was, the console works, the disk gets the new counts, the host pings it, Ctrl-Alt-Del reboots it.
//! The same snapshot loaded again through the API (`PUT /snapshot/load`) is an independent VM that
//! counts on from the same point; a diff snapshot of it, written over a copy of the first memory
//! file, restores where the diff was taken. Damaged snapshot files and wrong memory files are
//! refused with exit 2.
//!
//! One cold boot (a minute on a software-KVM host); each restore takes milliseconds. Needs root for
//! the network namespace, as the other network tests.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kvmkit::api::client::call;
use kvmkit_integration_tests::disks::Scratch;
use kvmkit_integration_tests::netns::{GUEST_IP, NetNs, TAP};
use kvmkit_integration_tests::{Background, guest_cmdline, guest_dir, wait_for_path};
use serde_json::{Value, json};

/// kvmkit, run in the test's network namespace (where the tap is).
fn kvmkit(ns: &NetNs) -> Command {
    ns.command(env!("CARGO_BIN_EXE_kvmkit-e2e"))
}

/// The host pings the guest (ICMP echo, answered by the guest's kernel): both queues of its
/// network card carry frames.
fn ping(ns: &NetNs) {
    let out = ns
        .command("ping")
        .args(["-c", "2", "-w", "30", GUEST_IP])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no answer from the guest: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn api(sock: &Path, method: &str, path: &str, body: &Value) -> (u16, String) {
    call(sock, method, path, Some(&body.to_string())).unwrap()
}

fn ok(sock: &Path, method: &str, path: &str, body: &Value) {
    let (status, text) = api(sock, method, path, body);
    assert_eq!(status, 204, "{method} {path}: {text}");
}

/// The counts the guest printed, in order.
fn ticks(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("KVMKIT-TICK "))
        .filter_map(|n| n.trim().parse().ok())
        .collect()
}

/// The count at the start of the disk image.
fn disk_tick(disk: &Path) -> u64 {
    let bytes = std::fs::read(disk).unwrap();
    let text = String::from_utf8_lossy(&bytes[..64]);
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("KVMKIT-TICK ")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no count on the disk: {line:?}"))
}

/// Waits until the guest of `vm` printed a count of at least `n`.
fn wait_for_tick(vm: &Background, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ticks(&vm.stdout()).last().copied().unwrap_or(0) < n {
        assert!(
            Instant::now() < deadline,
            "no KVMKIT-TICK {n}:\n{}",
            vm.stdout()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `kvmkit --restore` with a bad input: exit 2 and one error line containing `needle`.
fn refused(ns: &NetNs, snapshot: &Path, memory: &Path, needle: &str) {
    let out = kvmkit(ns)
        .arg("--restore")
        .arg(format!("{},mem={}", snapshot.display(), memory.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
}

#[test]
fn a_counting_guest_is_snapshotted_killed_restored_twice_diffed_and_counts_on() {
    let s = Scratch::new("snap-count");
    let disk = s.0.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let (snapshot, memory) = (s.0.join("vm.snap"), s.0.join("vm.mem"));
    let ns = NetNs::new("snap");

    // The cold boot, configured through the API.
    let sock = s.0.join("first.sock");
    let first = Background::spawn(kvmkit(&ns).arg("--api-sock").arg(&sock));
    wait_for_path(&sock);
    let guest = guest_dir();
    ok(
        &sock,
        "PUT",
        "/boot-source",
        &json!({
            "kernel_image_path": guest.join("vmlinux"),
            "initrd_path": guest.join("initramfs.cpio"),
            "boot_args": guest_cmdline(&format!("kvmkit_init=netup,control {}", ns.guest_cmdline())),
        }),
    );
    ok(
        &sock,
        "PUT",
        "/network-interfaces/eth0",
        &json!({"iface_id": "eth0", "host_dev_name": TAP}),
    );
    ok(
        &sock,
        "PUT",
        "/drives/counts",
        &json!({"drive_id": "counts", "path_on_host": disk, "is_root_device": false,
                "is_read_only": false}),
    );
    ok(
        &sock,
        "PUT",
        "/actions",
        &json!({"action_type": "InstanceStart"}),
    );
    assert!(
        first.wait_for_stdout(
            "KVMKIT-CONTROL-READY inputs=2 disk=vda",
            Duration::from_secs(600)
        ),
        "{}",
        first.stdout()
    );
    assert!(
        first.stdout().contains(" up=0 addr=0"),
        "eth0 configured: {}",
        first.stdout()
    );
    wait_for_tick(&first, 5);

    // Snapshot: only a paused VM.
    let params = json!({"snapshot_path": snapshot, "mem_file_path": memory});
    let (status, text) = api(&sock, "PUT", "/snapshot/create", &params);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("must be paused"), "{text}");
    ok(&sock, "PATCH", "/vm", &json!({"state": "Paused"}));
    std::thread::sleep(Duration::from_millis(300));
    let at = ticks(&first.stdout()).last().copied().unwrap();
    let diff = json!({"snapshot_type": "Diff", "snapshot_path": snapshot, "mem_file_path": memory});
    let (status, text) = api(&sock, "PUT", "/snapshot/create", &diff);
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("track_dirty_pages"), "{text}");
    ok(&sock, "PUT", "/snapshot/create", &params);
    assert_eq!(disk_tick(&disk), at, "the disk has the last count");
    first.signal(libc::SIGKILL);
    let _ = first.finish(Duration::from_secs(10));
    assert_eq!(
        std::fs::metadata(&memory).unwrap().len(),
        256 << 20,
        "the memory file is the guest's RAM"
    );

    // Damaged snapshots and wrong memory files: exit 2, never a guest.
    let good = std::fs::read(&snapshot).unwrap();
    let damaged = s.0.join("damaged.snap");
    let mut flipped = good.clone();
    let last = flipped.len() - 10;
    flipped[last] ^= 0x40;
    std::fs::write(&damaged, &flipped).unwrap();
    refused(&ns, &damaged, &memory, "corrupted (checksum mismatch)");
    std::fs::write(&damaged, &good[..good.len() / 2]).unwrap();
    refused(&ns, &damaged, &memory, "truncated");
    let mut other = good.clone();
    other[8] = 99;
    std::fs::write(&damaged, &other).unwrap();
    refused(&ns, &damaged, &memory, "format version 99");
    refused(&ns, &disk, &memory, "not a kvmkit snapshot");
    refused(&ns, &snapshot, &disk, "memory file");
    refused(&ns, &snapshot, &s.0.join("nonexistent.mem"), "memory file");

    // Restore in a new process: it counts on from where it was, and writes its disk.
    let sock2 = s.0.join("second.sock");
    let second = Background::spawn(
        kvmkit(&ns)
            .arg("--restore")
            .arg(format!("{},mem={}", snapshot.display(), memory.display()))
            .arg("--api-sock")
            .arg(&sock2),
    );
    wait_for_tick(&second, at + 5);
    let counted = ticks(&second.stdout());
    assert_eq!(counted[0], at + 1, "the count goes on: {counted:?}");
    wait_for_path(&sock2);
    let info: Value = serde_json::from_str(&call(&sock2, "GET", "/", None).unwrap().1).unwrap();
    assert_eq!(info["state"], "Running");
    ping(&ns);
    let written = disk_tick(&disk);
    assert!(
        written > at,
        "the disk got counts after the restore: {written}"
    );
    ok(
        &sock2,
        "PUT",
        "/actions",
        &json!({"action_type": "SendCtrlAltDel"}),
    );
    let (stdout, stderr, code) = second.finish(Duration::from_secs(60));
    assert!(stdout.contains("KVMKIT-CTRL-ALT-DEL"), "{stdout}\n{stderr}");
    assert_eq!(code, Some(0), "{stderr}");

    // The same snapshot again, through the API: an independent VM that starts from the same count,
    // logging dirty pages.
    let sock3 = s.0.join("third.sock");
    let third = Background::spawn(kvmkit(&ns).arg("--api-sock").arg(&sock3));
    wait_for_path(&sock3);
    ok(
        &sock3,
        "PUT",
        "/snapshot/load",
        &json!({"snapshot_path": snapshot,
                "mem_backend": {"backend_type": "File", "backend_path": memory},
                "track_dirty_pages": true, "resume_vm": true}),
    );
    wait_for_tick(&third, at + 5);
    assert_eq!(ticks(&third.stdout())[0], at + 1, "{}", third.stdout());

    // A diff snapshot of it: the pages written since its restore, once over a sparse copy of the
    // full snapshot's memory file (which then is the RAM as it is now), once alone (small).
    ok(&sock3, "PATCH", "/vm", &json!({"state": "Paused"}));
    std::thread::sleep(Duration::from_millis(300));
    let at3 = ticks(&third.stdout()).last().copied().unwrap();
    let (diff_snap, merged, alone) = (
        s.0.join("diff.snap"),
        s.0.join("merged.mem"),
        s.0.join("alone.mem"),
    );
    kvmkit_integration_tests::disks::run(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(&memory)
            .arg(&merged),
    );
    ok(
        &sock3,
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": diff_snap, "mem_file_path": merged}),
    );
    ok(
        &sock3,
        "PUT",
        "/snapshot/create",
        &json!({"snapshot_type": "Diff", "snapshot_path": s.0.join("empty.snap"),
                "mem_file_path": alone}),
    );
    use std::os::unix::fs::MetadataExt;
    let (full_blocks, alone_meta) = (
        std::fs::metadata(&memory).unwrap().blocks(),
        std::fs::metadata(&alone).unwrap(),
    );
    assert_eq!(alone_meta.len(), 256 << 20);
    assert!(
        alone_meta.blocks() * 10 < full_blocks,
        "a diff right after a diff is nearly empty: {} blocks, the full file {full_blocks}",
        alone_meta.blocks()
    );
    third.signal(libc::SIGKILL);
    let _ = third.finish(Duration::from_secs(10));

    // The full snapshot's memory with the diff over it, and the diff's state: the count goes on
    // from where the diff was taken.
    let fourth = Background::spawn(kvmkit(&ns).arg("--restore").arg(format!(
        "{},mem={}",
        diff_snap.display(),
        merged.display()
    )));
    wait_for_tick(&fourth, at3 + 3);
    assert_eq!(ticks(&fourth.stdout())[0], at3 + 1, "{}", fourth.stdout());
    fourth.signal(libc::SIGTERM);
    let (stdout, stderr, code) = fourth.finish(Duration::from_secs(60));
    assert_eq!(code, Some(143), "{stdout}\n{stderr}");
}
