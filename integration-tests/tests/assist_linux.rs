//! Boots kernels that no other VMM boots on a software-KVM host, with no workaround flags on their
//! command line: tools/guest's kernel built without any of its patches (`vmlinux-unpatched`), and
//! Debian's own cloud kernel (`debian-vmlinux`, from tools/guest/debian-kernel.sh), each to the test
//! init, which makes system calls and prints its marker. kvmkit's instruction assist finishes the
//! INT3s, FWAITs... the backend's emulator gives up on, and its system call bridge finishes the
//! SYSCALLs the backend leaves in ring 3. With `--instruction-assist off` the first INT3 ends the VM
//! with KVM's internal error, as in any other VMM.
//!
//! On hardware KVM the same kernels boot without any assist, and the tests check that instead.
//! On a software-KVM host the unpatched kernel takes about a minute; Debian's about 16-20 minutes to
//! init alone on the machine, and twice that on a busy one. So that test is `#[ignore]`d (run it with
//! `cargo test --test assist_linux -- --ignored`); the default run boots Debian's kernel through its
//! own INT3 self-test (about two minutes) and stops it there.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::Command;
use std::time::Duration;

/// What kvmkit and the guest printed, and kvmkit's exit code.
struct Run {
    stdout: String,
    stderr: String,
    code: Option<i32>,
}

impl Run {
    fn context(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// The count kvmkit reported at exit for assist `kind` (0 if none).
    fn assists(&self, kind: &str) -> u64 {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("kvmkit: instruction assists: "))
            .unwrap_or_else(|| panic!("no assist counts\n{}", self.context()));
        line.split(", ")
            .find_map(|item| item.strip_prefix(kind)?.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn software_kvm() -> bool {
    accel::Kvm::new().unwrap().is_software_backend()
}

/// The command line of every boot here: the serial console, the i8042 reboot, reboot on panic. No
/// workaround for the backend.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1";

/// Boots `kernel` (a file in the test guest directory) with the test initramfs, [`CMDLINE`] and
/// `cmdline_extra`, and `extra` kvmkit arguments. A guest still running after `limit` is killed (the
/// test then fails on what it printed so far).
fn boot(kernel: &str, cmdline_extra: &str, extra: &[&str], limit: Duration) -> Run {
    boot_until(kernel, cmdline_extra, extra, None, limit)
}

/// [`boot`], stopping kvmkit with SIGTERM once the guest printed `stop_at` (if given).
fn boot_until(
    kernel: &str,
    cmdline_extra: &str,
    extra: &[&str],
    stop_at: Option<&str>,
    limit: Duration,
) -> Run {
    let guest = kvmkit_integration_tests::guest_dir();
    let path = guest.join(kernel);
    assert!(
        path.is_file(),
        "{} is missing: run tools/guest/build.sh and tools/guest/debian-kernel.sh",
        path.display()
    );
    let (stdout, stderr, code) = kvmkit_integration_tests::output_until(
        Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
            .arg("--kernel")
            .arg(&path)
            .arg("--initramfs")
            .arg(guest.join("initramfs.cpio"))
            .args(["--cmdline", &format!("{CMDLINE} {cmdline_extra}")])
            .args(["--memory", "256M", "--serial", "stdio"])
            .args(extra),
        stop_at,
        limit,
    );
    Run {
        stdout,
        stderr,
        code,
    }
}

/// The kernel started init, init ran (its marker line needs system calls), and the guest rebooted;
/// on a software-KVM host kvmkit assisted at least the INT3 of the kernel's boot-time INT3 self-test
/// and init's system calls, and reported them.
fn check_runs_init(run: &Run) {
    let context = run.context();
    assert!(
        run.stdout.contains("Run /init as init process"),
        "guest did not reach init\n{context}"
    );
    assert!(
        run.stdout
            .contains("KVMKIT-INIT-OK pid=1 sysname=Linux release=6.1"),
        "init did not run\n{context}"
    );
    assert!(
        run.stdout.contains("reboot: Restarting system"),
        "{context}"
    );
    assert!(run.stderr.contains("kvmkit: guest rebooted"), "{context}");
    assert_eq!(run.code, Some(0), "{context}");
    if software_kvm() {
        assert!(run.stderr.contains("instruction assist on"), "{context}");
        assert!(run.assists("int3") >= 1, "{context}");
        // getpid, uname, clock_gettime, the /proc reads, reboot: init makes a dozen.
        assert!(run.assists("syscall") >= 5, "{context}");
    }
}

#[test]
fn the_unpatched_test_kernel_boots_to_init() {
    let run = boot("vmlinux-unpatched", "", &[], Duration::from_secs(600));
    check_runs_init(&run);
}

/// What Linux prints at the end of `alternative_instructions()`, which begins with the INT3 self-test
/// (one INT3 the backend cannot run, and its #BP handler).
const ALTERNATIVES_DONE: &str = "Freeing SMP alternatives memory";

#[test]
fn debians_cloud_kernel_runs_its_int3_self_test() {
    // About two minutes on a software-KVM host (where the kernel's console starts at about 90 s of
    // guest time); stopped there, as a user's Ctrl-C would.
    let run = boot_until(
        "debian-vmlinux",
        "",
        &[],
        Some(ALTERNATIVES_DONE),
        Duration::from_secs(15 * 60),
    );
    let context = run.context();
    assert!(run.stdout.contains("-cloud-amd64"), "{context}");
    assert!(run.stdout.contains(ALTERNATIVES_DONE), "{context}");
    assert!(
        run.stderr.contains("kvmkit: stopped by signal 15"),
        "{context}"
    );
    assert_eq!(run.code, Some(128 + 15), "{context}");
    if software_kvm() {
        assert!(run.stderr.contains("instruction assist on"), "{context}");
        assert!(run.stderr.contains(" cryptomgr.notests"), "{context}");
        assert!(run.assists("int3") >= 1, "{context}");
    }
}

#[test]
#[ignore = "16-20 minutes on an idle software-KVM host, 40 on a busy one: `cargo test --test assist_linux -- --ignored`"]
fn debians_cloud_kernel_boots_to_init() {
    // About 16-20 minutes on a software-KVM host, nearly all of it emulated ring-0 code in the
    // kernel's own boot (tracing setup, the BTF parse behind cubic's registration): see
    // docs/software-kvm.md. The command line is the same as for the unpatched kernel; kvmkit adds
    // what the backend needs, including `cryptomgr.notests` (without it the crypto self-tests keep
    // this kernel from init for well over half an hour).
    let run = boot("debian-vmlinux", "", &[], Duration::from_secs(60 * 60));
    check_runs_init(&run);
    assert!(run.stdout.contains("-cloud-amd64"), "{}", run.context());
    if software_kvm() {
        assert!(
            run.stdout.contains("alg: self-tests disabled"),
            "{}",
            run.context()
        );
    }
}

#[test]
fn with_the_assist_off_the_unpatched_kernel_dies_at_its_first_int3() {
    let run = boot(
        "vmlinux-unpatched",
        "",
        &["--instruction-assist", "off"],
        Duration::from_secs(600),
    );
    let context = run.context();
    if software_kvm() {
        assert_eq!(run.code, Some(1), "{context}");
        assert!(
            run.stderr.contains("KVM internal error on vCPU 0")
                && run.stderr.contains("emulation failure"),
            "{context}"
        );
        assert!(run.stderr.contains("instruction assist off"), "{context}");
        assert!(!run.stdout.contains("Run /init"), "{context}");
        assert!(!run.stderr.contains("instruction assists:"), "{context}");
    } else {
        check_runs_init(&run);
    }
}
