//! Boots the tools/guest kernel with kvmkit, as an ELF vmlinux through its PVH entry and as a bzImage
//! through the 64-bit boot protocol, and checks what the guest printed: the kernel banner, the 8250
//! UART, the start of init, and the marker line of the init program (guest userspace ran and made
//! system calls): its PID, the kernel's name, the guest's wall-clock time (from the CMOS RTC at boot, kept
//! since by the guest's clocksource, which must agree with the host's within 2 s) and the CPUs in
//! /proc/cpuinfo. The init then reboots the guest (through the i8042, or the ACPI reset register) or
//! powers it off (ACPI S5), and either way kvmkit exits 0.
//!
//! The machine is described by ACPI tables and an MP table, or with `--acpi off` by the MP table
//! alone; the kernel's log says which it used.
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

/// How to boot the test guest, and what it must then show.
struct Boot {
    /// "vmlinux" (PVH entry) or "bzImage" (64-bit boot protocol).
    kernel: &'static str,
    cpus: u32,
    /// The command line lacks the software-KVM flags: kvmkit must add them where the backend needs them.
    kvmkit_adds_flags: bool,
    acpi: bool,
    /// How the guest ends.
    end: End,
    /// Ask for `--boot-timeline json` and check it.
    timeline: bool,
    /// Run under `--landlock`, the console going to a file (`--serial file=`) that does not
    /// exist yet: kvmkit makes it before the ruleset.
    landlock_serial_file: bool,
}

#[derive(PartialEq)]
enum End {
    /// `reboot=k`: the i8042 reset line.
    RebootI8042,
    /// `reboot=a`: the FADT's reset register.
    RebootAcpi,
    /// The init powers off: ACPI S5 through the FADT's sleep control register.
    PowerOff,
}

impl Boot {
    fn new(kernel: &'static str) -> Self {
        Self {
            kernel,
            cpus: 1,
            kvmkit_adds_flags: false,
            acpi: true,
            end: End::RebootI8042,
            timeline: false,
            landlock_serial_file: false,
        }
    }
}

fn cmdline(b: &Boot) -> String {
    let text =
        std::fs::read_to_string(kvmkit_integration_tests::guest_dir().join("cmdline.txt")).unwrap();
    let key = |p: &str| p.split('=').next().unwrap_or(p).to_owned();
    let mut words: Vec<String> = text
        .split_whitespace()
        .filter(|w| {
            // Drop each parameter kvmkit adds by itself on a software KVM backend.
            !b.kvmkit_adds_flags
                || !kvmkit::software_kvm::BACKEND_FLAGS
                    .iter()
                    .any(|f| key(f) == key(w))
        })
        .map(|w| match (w, &b.end) {
            ("reboot=k", End::RebootAcpi) => "reboot=a".to_owned(),
            _ => w.to_owned(),
        })
        .collect();
    if b.end == End::PowerOff {
        words.push("kvmkit_init=poweroff".to_owned());
    }
    words.join(" ")
}

fn boot(b: Boot) {
    let started = now();
    let guest = kvmkit_integration_tests::guest_dir();
    let serial_file = std::env::temp_dir().join(format!(
        "kvmkit-boot-{}-{}.serial",
        std::process::id(),
        b.kernel
    ));
    let _ = std::fs::remove_file(&serial_file);
    let serial = if b.landlock_serial_file {
        vec![
            "--landlock".to_owned(),
            "--serial".to_owned(),
            format!("file={}", serial_file.display()),
        ]
    } else {
        vec!["--serial".to_owned(), "stdio".to_owned()]
    };
    let out = Command::new(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .arg("--kernel")
        .arg(guest.join(b.kernel))
        .arg("--initramfs")
        .arg(guest.join("initramfs.cpio"))
        .args(["--cmdline", &cmdline(&b)])
        .args(["--memory", "256M"])
        .args(&serial)
        .args(["--cpus", &b.cpus.to_string()])
        .args(["--acpi", if b.acpi { "on" } else { "off" }])
        .args(if b.timeline {
            &["--boot-timeline", "json"][..]
        } else {
            &[]
        })
        .stdin(Stdio::null())
        .output()
        .expect("run kvmkit");
    let stdout = if b.landlock_serial_file {
        assert!(out.stdout.is_empty(), "the console goes to the file");
        let text = std::fs::read_to_string(&serial_file).unwrap_or_default();
        let _ = std::fs::remove_file(&serial_file);
        text
    } else {
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    let context = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let brought_up = format!(
        "smp: Brought up 1 node, {} CPU{}",
        b.cpus,
        if b.cpus == 1 { "" } else { "s" }
    );
    let mut expected = vec![
        brought_up.as_str(),
        "Linux version 6.1",
        // Through ACPI the UART is a PNP device, and Linux numbers its GSI 4 freely.
        "ttyS0 at I/O 0x3f8 (irq = ",
        "Run /init as init process",
        "KVMKIT-INIT-OK pid=1 sysname=Linux release=6.1",
    ];
    if b.acpi {
        // The kernel found kvmkit's tables (RSDP where kvmkit put it), took the CPUs and the IOAPIC
        // from the MADT, loaded the DSDT, found S5 in it and the COM1, PS/2 and RTC devices.
        expected.extend([
            "ACPI: RSDP 0x00000000000E0000",
            "ACPI: DSDT 0x",
            "ACPI: Using ACPI (MADT) for SMP configuration information",
            "ACPI: 1 ACPI AML tables successfully acquired and loaded",
            "ACPI: PM: (supports S0 S5)",
            "pnp: PnP ACPI: found 3 devices",
        ]);
    } else {
        expected.push("Intel MultiProcessor Specification v1.4");
    }
    for expected in expected {
        assert!(
            stdout.contains(expected),
            "guest did not print {expected:?}\n{context}"
        );
    }
    if !b.acpi {
        assert!(!stdout.contains("ACPI: RSDP"), "{context}");
    }
    let (guest_says, kvmkit_says) = match b.end {
        End::RebootI8042 | End::RebootAcpi => {
            ("reboot: Restarting system", "kvmkit: guest rebooted")
        }
        End::PowerOff => ("reboot: Power down", "kvmkit: guest powered off"),
    };
    assert!(stdout.contains(guest_says), "{context}");
    assert!(stderr.contains(kvmkit_says), "{context}");
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
    assert_eq!(field(marker, "cpus"), i64::from(b.cpus), "{marker}");
    if b.timeline {
        check_timeline(&stderr);
    }
    if b.kvmkit_adds_flags && Path::new("/sys/module/kvm_pvm").exists() {
        assert!(
            stderr.contains("software backend (kvm_pvm); instruction assist on; guest command line additions: noxsave"),
            "{stderr}"
        );
        assert!(
            stdout.contains("Command line: ") && stdout.contains(" noxsave"),
            "{context}"
        );
    }
}

/// The `--boot-timeline json` line has every event, in the order a boot goes through them.
fn check_timeline(stderr: &str) {
    let line = stderr
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no timeline JSON on stderr:\n{stderr}"));
    assert!(line.ends_with('}'), "{line}");
    let events = [
        "process_start",
        "memory_ready",
        "kernel_loaded",
        "first_kvm_run",
        "first_serial_byte",
        "run_init",
        "guest_marker",
        "guest_shutdown",
        "process_exit",
    ];
    let times: Vec<f64> = events
        .iter()
        .map(|e| {
            let key = format!("\"{e}_ms\": ");
            let at = line
                .find(&key)
                .unwrap_or_else(|| panic!("{e} missing: {line}"))
                + key.len();
            let value: String = line[at..]
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            value.parse().unwrap_or_else(|_| panic!("bad {e}: {line}"))
        })
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "out of order: {line}"
    );
}

#[test]
fn boots_elf_vmlinux_through_pvh_to_init_with_acpi() {
    boot(Boot {
        timeline: true,
        ..Boot::new("vmlinux")
    });
}

#[test]
fn boots_bzimage_through_the_64bit_protocol_and_powers_off_through_acpi() {
    // Also: under Landlock, with the console in a file.
    boot(Boot {
        end: End::PowerOff,
        landlock_serial_file: true,
        ..Boot::new("bzImage")
    });
}

#[test]
fn boots_two_vcpus_from_the_mp_table_alone_with_acpi_off() {
    // Also: the command line lacks the software-KVM flags; kvmkit adds them where needed.
    boot(Boot {
        cpus: 2,
        kvmkit_adds_flags: true,
        acpi: false,
        ..Boot::new("vmlinux")
    });
}

#[test]
fn boots_four_vcpus_on_a_two_core_host_and_reboots_through_acpi() {
    boot(Boot {
        cpus: 4,
        end: End::RebootAcpi,
        ..Boot::new("vmlinux")
    });
}
