//! The rule syntax, the plan a configuration makes, and the ruleset applied for real in a child
//! process (this test binary run again, single-threaded): what the rules name is usable, nothing
//! else is.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;
use crate::config::{BootConfig, SerialMode, VmConfig};

/// Set in the child: the scratch directory the parent made.
const CHILD: &str = "KVMKIT_LANDLOCK_TEST_DIR";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kvmkit-landlock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn rules_parse_as_cloud_hypervisor_writes_them() {
    let rule: Rule = "path=/var/lib/vms,access=rw".parse().unwrap();
    assert_eq!(rule.path, Path::new("/var/lib/vms"));
    assert_eq!(rule.access, Permission::ReadWrite);
    let rule: Rule = "access=r,path=/k".parse().unwrap();
    assert_eq!(rule.access, Permission::Read);
    for bad in [
        "",
        "path=/x",
        "access=rw",
        "path=,access=r",
        "path=/x,access=w",
        "path=/x,access=r,mode=1",
        "/x",
    ] {
        let e = bad.parse::<Rule>().unwrap_err().to_string();
        assert!(e.contains("invalid --landlock-rules"), "{bad}: {e}");
    }
}

#[test]
fn file_rules_grant_only_file_rights_and_reads_never_write() {
    for permission in [Permission::Read, Permission::ReadWrite] {
        let file = rights(permission, false);
        assert!(file.contains(AccessFs::ReadFile));
        assert!(!file.contains(AccessFs::Execute));
        assert!(!file.intersects(AccessFs::MakeReg | AccessFs::RemoveFile | AccessFs::ReadDir));
        // Every right a rule grants is one the ruleset handles.
        assert!(handled_fs().contains(rights(permission, true)));
    }
    assert!(!rights(Permission::Read, true).intersects(AccessFs::WriteFile | AccessFs::MakeReg));
    assert!(rights(Permission::ReadWrite, true).contains(AccessFs::MakeReg | AccessFs::RemoveFile));
}

#[test]
fn a_plan_names_what_the_configuration_opens_and_creates_its_outputs() {
    let dir = scratch("plan");
    let kernel = dir.join("vmlinux");
    std::fs::write(&kernel, b"k").unwrap();
    let disk = dir.join("ro.img");
    std::fs::write(&disk, b"d").unwrap();
    let serial = dir.join("serial.log");
    let mut config = VmConfig {
        boot: BootConfig {
            kernel: kernel.clone(),
            initramfs: Some(dir.join("missing.cpio")),
            cmdline: String::new(),
        },
        machine: Default::default(),
        devices: Default::default(),
        serial: SerialMode::File(serial.clone()),
        boot_timeline: None,
    };
    config
        .devices
        .disks
        .push(virtio_devices::BlockConfig::new(disk.clone()).read_only(true));
    let extra = Rule {
        path: dir.clone(),
        access: Permission::Read,
    };
    let mut plan = Plan::new(std::slice::from_ref(&extra));
    plan.vm(&config);
    let rules = plan.rules();
    let find = |p: &Path| rules.iter().find(|r| r.path == p).map(|r| r.access);
    assert_eq!(find(&kernel), Some(Permission::Read));
    assert_eq!(find(&disk), Some(Permission::Read));
    assert_eq!(find(&serial), Some(Permission::ReadWrite));
    assert!(
        serial.exists(),
        "the serial file is made before the ruleset"
    );
    assert_eq!(find(&dir), Some(Permission::Read));
    assert_eq!(
        find(&dir.join("missing.cpio")),
        None,
        "a missing file is left to its open"
    );
    if Path::new("/dev/kvm").exists() {
        assert_eq!(find(Path::new("/dev/kvm")), Some(Permission::ReadWrite));
    }
    assert_eq!(
        find(Path::new("/dev/net/tun")),
        None,
        "no network card, no TUN"
    );
    plan.api();
    if Path::new("/dev/net/tun").exists() {
        assert!(plan.paths().contains(&PathBuf::from("/dev/net/tun")));
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// The child's side: the ruleset allows `dir/allowed` to be read, `dir/out` to be written, and
/// `dir/rw/` for anything; everything else is refused.
fn child(dir: &Path) {
    let rule = |name: &str, access| Rule {
        path: dir.join(name),
        access,
    };
    // The harness runs the test on a thread of its own: restrict that thread.
    let status = restrict(&[
        rule("allowed", Permission::Read),
        rule("out", Permission::ReadWrite),
        rule("rw", Permission::ReadWrite),
    ])
    .expect("apply the ruleset");
    eprintln!("status {status:?}");
    let denied = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == ErrorKind::PermissionDenied => "denied",
        Err(_) => "error",
        Ok(()) => "allowed",
    };
    let read = |p: &Path| std::fs::read(p).map(drop);
    let append = |p: &Path| std::fs::OpenOptions::new().append(true).open(p).map(drop);
    eprintln!("read allowed: {}", denied(read(&dir.join("allowed"))));
    eprintln!("write allowed: {}", denied(append(&dir.join("allowed"))));
    eprintln!("read secret: {}", denied(read(&dir.join("secret"))));
    eprintln!("write out: {}", denied(append(&dir.join("out"))));
    eprintln!(
        "read /etc/hostname: {}",
        denied(read(Path::new("/etc/hostname")))
    );
    eprintln!(
        "create in rw: {}",
        denied(std::fs::write(dir.join("rw").join("new"), b"x"))
    );
    eprintln!(
        "create beside: {}",
        denied(std::fs::write(dir.join("new"), b"x"))
    );
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").map(drop);
    eprintln!("tcp bind: {}", denied(tcp));
    eprintln!("active: {}", active());
    let hint = explain("open x: Permission denied (os error 13)".to_owned());
    eprintln!("hint: {}", hint.contains("--landlock-rules"));
}

#[test]
fn the_ruleset_allows_what_it_names_and_refuses_the_rest() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(Path::new(&dir));
        return;
    }
    let dir = scratch("apply");
    for name in ["allowed", "secret", "out"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    std::fs::create_dir(dir.join("rw")).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "landlock::tests::the_ruleset_allows_what_it_names_and_refuses_the_rest",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, &dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // A kernel before Landlock ABI 4 (Linux 6.7) enforces the file rules but not the TCP ones.
    let full = stderr.contains("status FullyEnforced");
    assert!(
        full || stderr.contains("status PartiallyEnforced"),
        "{stderr}"
    );
    assert!(!full || stderr.contains("tcp bind: denied"), "{stderr}");
    for line in [
        "read allowed: allowed",
        "write allowed: denied",
        "read secret: denied",
        "write out: allowed",
        "read /etc/hostname: denied",
        "create in rw: allowed",
        "create beside: denied",
        "active: true",
        "hint: true",
    ] {
        assert!(stderr.contains(line), "{line:?} not in {stderr}");
    }
    assert!(dir.join("rw").join("new").exists());
    assert!(!dir.join("new").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_process_with_threads_is_refused() {
    // A second thread runs while the ruleset is asked for (whatever thread the harness runs this on).
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || stopped.recv());
    let result = apply(&[]);
    stop.send(()).unwrap();
    other.join().unwrap().unwrap();
    match result {
        Err(Error::Threads(n)) => assert!(n > 1),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!active());
}

#[test]
fn a_refused_open_gets_a_hint_only_under_landlock() {
    let message = "cannot open x: Permission denied (os error 13)".to_owned();
    assert_eq!(explain(message.clone()), message);
}
