//! The kvmkit command line: bad flags, bad sizes, unusable kernel, initramfs or disk files, taps that
//! are missing or not kvmkit's to open, config files kvmkit cannot use and API socket paths it cannot
//! take give one line on stderr and exit code 2; --help and --version exit 0. (The tap kvmkit may not
//! open needs root to set up: a network namespace.)

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn kvmkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run kvmkit")
}

/// Asserts exit code 2 and exactly one line on stderr containing `needle`.
fn assert_bad_input(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("kvmkit: error: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
}

fn scratch(name: &str, contents: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmkit-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_and_version() {
    let help = kvmkit(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--kernel",
        "--initramfs",
        "--cmdline",
        "--memory",
        "--cpus",
        "--serial",
        "--acpi",
        "--disk",
        "--net",
        "--rng",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}");
    }
    let version = kvmkit(&["--version"]);
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_flags_and_values() {
    assert_bad_input(&kvmkit(&[]), "--kernel");
    assert_bad_input(&kvmkit(&["--kernel", "k", "--frobnicate"]), "--frobnicate");
    assert_bad_input(
        &kvmkit(&["--kernel", "k", "--memory", "lots"]),
        "invalid memory size 'lots'",
    );
    assert_bad_input(
        &kvmkit(&["--kernel", "k", "--cpus", "0"]),
        "invalid --cpus '0'",
    );
    assert_bad_input(
        &kvmkit(&["--kernel", "k", "--serial", "tcp:1"]),
        "invalid --serial",
    );
    assert_bad_input(&kvmkit(&["--kernel", "k", "--memory"]), "--memory");
}

#[test]
fn memory_too_small_or_too_large() {
    let k = scratch("small-k", b"x");
    assert_bad_input(&kvmkit(&["--kernel", s(&k), "--memory", "1M"]), "too small");
    assert_bad_input(
        &kvmkit(&["--kernel", s(&k), "--memory", "900T"]),
        "more than the host's",
    );
    assert_bad_input(
        &kvmkit(&["--kernel", s(&k), "--memory", "1000001K"]),
        "multiple of 4 KiB",
    );
}

#[test]
fn missing_directory_and_malformed_kernels() {
    assert_bad_input(
        &kvmkit(&["--kernel", "/nonexistent/vmlinux"]),
        "cannot read kernel /nonexistent/vmlinux",
    );
    let dir = std::env::temp_dir();
    assert_bad_input(
        &kvmkit(&["--kernel", s(&dir)]),
        "neither an ELF vmlinux nor a bzImage",
    );
    let empty = scratch("empty", b"");
    assert_bad_input(
        &kvmkit(&["--kernel", s(&empty)]),
        "neither an ELF vmlinux nor a bzImage",
    );
    let junk = scratch("junk", &[0x5a; 4096]);
    assert_bad_input(
        &kvmkit(&["--kernel", s(&junk)]),
        "neither an ELF vmlinux nor a bzImage",
    );
    // ELF magic, then garbage: linux-loader rejects the header.
    let mut elf = b"\x7fELF\x02\x01\x01".to_vec();
    elf.resize(4096, 0xee);
    let bad_elf = scratch("bad.elf", &elf);
    assert_bad_input(&kvmkit(&["--kernel", s(&bad_elf)]), "cannot load kernel");
    // A bzImage header whose protocol fields are nonsense.
    let mut bz = vec![0u8; 8192];
    bz[0x1fe] = 0x55;
    bz[0x1ff] = 0xaa;
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    let bad_bz = scratch("bad.bz", &bz);
    assert_bad_input(&kvmkit(&["--kernel", s(&bad_bz)]), "cannot load kernel");
}

#[test]
fn initramfs_missing_or_larger_than_ram() {
    let guest = kvmkit_integration_tests::guest_dir();
    let kernel = guest.join("vmlinux");
    let k = s(&kernel);
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--initramfs", "/nonexistent/initrd"]),
        "cannot read initramfs /nonexistent/initrd",
    );
    let big = std::env::temp_dir().join(format!("kvmkit-big-initrd-{}", std::process::id()));
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: costs no disk
    let out = kvmkit(&["--kernel", k, "--initramfs", s(&big), "--memory", "48M"]);
    std::fs::remove_file(&big).unwrap();
    assert_bad_input(&out, "does not fit in guest memory");
}

#[test]
fn unusable_disks() {
    let k = scratch("disk-k", b"x");
    let k = s(&k);
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", "/some/file.img"]),
        "invalid --disk '/some/file.img'",
    );
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", "path=x.img,readonly=perhaps"]),
        "readonly is on or off",
    );
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", "path=/nonexistent/disk.img"]),
        "cannot open disk image /nonexistent/disk.img",
    );
    let dir = std::env::temp_dir();
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", &format!("path={}", s(&dir))]),
        "is not a regular file",
    );
    let odd = scratch("odd.img", &[0u8; 1000]);
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", &format!("path={}", s(&odd))]),
        "is 1000 bytes, not a multiple of 512",
    );
    // Another process has the image: kvmkit locks a writable image exclusively, a read-only one
    // shared, as QEMU does.
    let held = scratch("held.img", &[0u8; 4096]);
    let holder = std::fs::File::open(&held).unwrap();
    holder.lock_shared().unwrap();
    let disk = format!("path={}", s(&held));
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", &disk]),
        "is in use: another VM has it open",
    );
    holder.unlock().unwrap();
    holder.lock().unwrap();
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--disk", &format!("{disk},readonly=on")]),
        "is in use: another VM has it open writable",
    );
    // More devices than interrupt lines.
    let many: Vec<String> = (0..20)
        .map(|i| format!("path={}", s(&scratch(&format!("many{i}.img"), &[0u8; 512]))))
        .collect();
    let mut args = vec!["--kernel", k];
    for d in &many {
        args.extend(["--disk", d.as_str()]);
    }
    assert_bad_input(&kvmkit(&args), "too many virtio devices: 21 asked for");
}

#[test]
fn network_cards_kvmkit_cannot_use() {
    let k = scratch("net-k", b"x");
    let k = s(&k);
    let bad = |net: &[&str], needle: &str| {
        let mut args = vec!["--kernel", k];
        for n in net {
            args.extend(["--net", n]);
        }
        assert_bad_input(&kvmkit(&args), needle);
    };
    bad(&["tap0"], "invalid --net 'tap0'");
    bad(&["tap=t0,mac=52:54:00:12:34"], "invalid MAC address");
    bad(&["tap=t0,mac=01:00:5e:00:00:01"], "multicast");
    bad(&["tap=t0", "tap=t0"], "tap 't0' is given twice");
    bad(
        &["tap=kvmkit-nosuch0"],
        "tap 'kvmkit-nosuch0' does not exist",
    );
    bad(&["tap=lo"], "'lo' is not a tap device");
    assert_bad_input(
        &kvmkit(&["--kernel", k, "--rng", "maybe"]),
        "invalid --rng 'maybe'",
    );
    // A tap that belongs to another user, opened without CAP_NET_ADMIN: the kernel says no.
    let ns = kvmkit_integration_tests::netns::NetNs::new("cli");
    ns.add_tap_owned_by("kuser0", 12345);
    let out = ns
        .command("setpriv")
        .args([
            "--bounding-set",
            "-net_admin",
            env!("CARGO_BIN_EXE_kvmkit-e2e"),
        ])
        .args(["--kernel", k, "--net", "tap=kuser0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_bad_input(
        &out,
        "cannot attach to tap 'kuser0': Operation not permitted",
    );
    assert_bad_input(&out, "belongs to another user");
}

#[test]
fn config_files_and_api_sockets_kvmkit_cannot_use() {
    let file = scratch(
        "vm.json",
        br#"{"boot-source": {"kernel_image_path": "/k"}, "drives": 3}"#,
    );
    assert_bad_input(
        &kvmkit(&["--config-file", s(&file)]),
        &format!("config file {}: drives: invalid type", s(&file)),
    );
    let file = scratch(
        "vm2.json",
        br#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#,
    );
    assert_bad_input(&kvmkit(&["--config-file", s(&file)]), "cannot be opened");
    let k = scratch("cfg-k", b"x");
    let file = scratch(
        "vm3.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "balloon": {{"amount_mib": 3}}}}"#,
            s(&k)
        )
        .as_bytes(),
    );
    assert_bad_input(
        &kvmkit(&["--config-file", s(&file)]),
        "balloon is not supported by kvmkit",
    );
    // A vsock section kvmkit has, but incomplete: the error names the field.
    let vsock = scratch(
        "vm4.json",
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}"}}, "vsock": {{"guest_cid": 3}}}}"#,
            s(&k)
        )
        .as_bytes(),
    );
    assert_bad_input(
        &kvmkit(&["--config-file", s(&vsock)]),
        "vsock: missing field `uds_path`",
    );
    assert_bad_input(
        &kvmkit(&["--config-file", "/nonexistent/vm.json"]),
        "config file /nonexistent/vm.json",
    );
    assert_bad_input(
        &kvmkit(&["--config-file", s(&file), "--kernel", "k"]),
        "cannot be used with",
    );
    // Something that is not a socket at the API's path.
    let not_a_socket = scratch("not-a-socket", b"x");
    assert_bad_input(
        &kvmkit(&["--api-sock", s(&not_a_socket)]),
        "the path exists and is not a socket",
    );
    assert!(
        not_a_socket.exists(),
        "a file that is not ours is left alone"
    );
}

#[test]
fn a_stop_signal_while_waiting_for_the_api_removes_the_socket() {
    let sock = std::env::temp_dir().join(format!("kvmkit-cli-{}-wait.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kvmkit_integration_tests::wait_for_path(&sock);
    let (status, body) = kvmkit::api::client::call(&sock, "GET", "/", None).unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"state\":\"Not started\""), "{body}");
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    assert!(!sock.exists(), "the socket is removed");
}

#[test]
fn under_landlock_the_api_can_name_only_the_files_its_rules_allow() {
    let dir = std::env::temp_dir().join(format!("kvmkit-cli-{}-landlock", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let inside = allowed.join("data.img");
    let outside = dir.join("outside.img");
    for image in [&inside, &outside] {
        std::fs::write(image, vec![0u8; 4096]).unwrap();
    }
    let sock = dir.join("api.sock");
    let rule = format!("path={},access=rw", s(&allowed));
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .args([
            "--landlock",
            "--landlock-rules",
            &rule,
            "--api-sock",
            s(&sock),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    kvmkit_integration_tests::wait_for_path(&sock);
    let put = |path: &str, body: String| {
        kvmkit::api::client::call(&sock, "PUT", path, Some(&body)).unwrap()
    };
    let drive = |image: &Path| {
        format!(
            r#"{{"drive_id":"data","path_on_host":"{}","is_root_device":false,"is_read_only":false}}"#,
            s(image)
        )
    };
    let (status, body) = put("/drives/data", drive(&outside));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Permission denied"), "{body}");
    assert!(body.contains("--landlock-rules"), "the hint: {body}");
    assert_eq!(put("/drives/data", drive(&inside)).0, 204);
    // A log file: refused beside the rule's directory, created inside it.
    let logger = |path: &Path| format!(r#"{{"log_path":"{}"}}"#, s(path));
    assert_eq!(put("/logger", logger(&dir.join("kvmkit.log"))).0, 400);
    assert_eq!(put("/logger", logger(&allowed.join("kvmkit.log"))).0, 204);
    assert!(allowed.join("kvmkit.log").exists());
    assert!(!dir.join("kvmkit.log").exists());
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not reaped yet.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(128 + libc::SIGTERM));
    let _ = std::fs::remove_dir_all(&dir);
}
