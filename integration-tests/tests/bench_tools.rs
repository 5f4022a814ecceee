//! The benchmark tools and tools/soak run and print well-formed results on short runs (one kvmkit
//! boot each for tools/bench, tools/bench-snapshot, tools/bench-vsock and tools/soak, no QEMU).
//! Nothing here asserts a speed: the numbers are only checked to be numbers.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn tools_bench_prints_a_table_and_writes_a_chart() {
    let svg = std::env::temp_dir().join(format!("kvmkit-bench-{}.svg", std::process::id()));
    let out = Command::new(root().join("tools/bench"))
        .args([
            "--runs",
            "1",
            "--no-qemu",
            "--kvmkit",
            env!("CARGO_BIN_EXE_kvmkit-e2e"),
        ])
        .arg("--svg")
        .arg(&svg)
        .env("KVMKIT_GUEST_DIR", kvmkit_integration_tests::guest_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| 256 MiB, 1 vCPU |"))
        .collect();
    assert_eq!(rows.len(), 4, "one row per figure:\n{context}");
    for row in rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // "| config | figure | kvmkit | qemu | ratio |": kvmkit's cell is "median (min–max)".
        let median: f64 = cells[3]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {row:?}"));
        assert!(median >= 0.0, "{row}");
        assert_eq!(cells[4], "-", "no QEMU column on a --no-qemu run: {row}");
    }
    let chart = std::fs::read_to_string(&svg).unwrap();
    let _ = std::fs::remove_file(&svg);
    assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
    assert!(chart.contains("<rect"), "{chart}");
}

#[test]
fn tools_bench_vsock_prints_a_table() {
    let out = Command::new(root().join("tools/bench-vsock"))
        .args([
            "--runs",
            "1",
            "--bytes",
            "262144",
            "--pings",
            "5",
            "--kvmkit",
            env!("CARGO_BIN_EXE_kvmkit-e2e"),
        ])
        .env("KVMKIT_GUEST_DIR", kvmkit_integration_tests::guest_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    let cells = rows(&stdout, "| ");
    let figures: Vec<&Vec<&str>> = cells
        .iter()
        .filter(|c| c[1].contains("round trip") || c[1].contains("echo"))
        .collect();
    assert_eq!(figures.len(), 3, "one row per figure:\n{context}");
    for row in figures {
        let value: f64 = row[2]
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {row:?}:\n{context}"));
        assert!(value > 0.0, "{row:?}");
    }
}

/// The cells of the table rows of `stdout` that start with `prefix`.
fn rows<'a>(stdout: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    stdout
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect()
}

/// A time cell ("60.4 s", "62 ms", "62 ms (58 ms–70 ms)") in seconds.
fn seconds(cell: &str) -> f64 {
    let mut words = cell.split_whitespace();
    let value: f64 = words
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {cell:?}"));
    match words.next() {
        Some("s") => value,
        Some("ms") => value / 1e3,
        _ => panic!("not a time: {cell:?}"),
    }
}

#[test]
fn tools_bench_snapshot_and_bench_start_print_tables() {
    let keep = std::env::temp_dir().join(format!("kvmkit-bench-snap-{}", std::process::id()));
    let svg = keep.join("chart.svg");
    std::fs::create_dir_all(&keep).unwrap();
    let e2e = env!("CARGO_BIN_EXE_kvmkit-e2e");
    let out = Command::new(root().join("tools/bench-snapshot"))
        .args([
            "--memory",
            "256M",
            "--restores",
            "1",
            "--no-qemu",
            "--kvmkit",
            e2e,
        ])
        .arg("--svg")
        .arg(&svg)
        .arg("--keep")
        .arg(&keep)
        .env("KVMKIT_GUEST_DIR", kvmkit_integration_tests::guest_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    let table = rows(&stdout, "| 256 MiB |");
    assert_eq!(table.len(), 7, "one row per figure:\n{context}");
    // "| memory | figure | kvmkit | QEMU |"
    let cold = seconds(table[0][3]);
    let restore = seconds(table[1][3]);
    let echo = seconds(table[2][3]);
    assert!(cold > 0.0 && restore > 0.0 && echo > 0.0, "{context}");
    assert!(table[5][3].contains("MiB"), "memory file sizes: {context}");
    assert_eq!(
        table[0][4], "-",
        "no QEMU column on a --no-qemu run: {context}"
    );
    let chart = std::fs::read_to_string(&svg).unwrap();
    assert!(
        chart.starts_with("<svg") && chart.contains("<rect"),
        "{chart}"
    );

    // bench-start restores the snapshot bench-snapshot kept (no boot of its own).
    let dir = keep.join("256");
    let out = Command::new(root().join("tools/bench-start"))
        .args(["--runs", "1", "--kvmkit", e2e, "--snapshot"])
        .arg(format!(
            "{},{}",
            dir.join("vm.snap").display(),
            dir.join("vm.mem").display()
        ))
        .env("KVMKIT_GUEST_DIR", kvmkit_integration_tests::guest_dir())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&keep);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{context}");
    let table = rows(&stdout, "| cold boot, ");
    assert_eq!(table.len(), 3, "{context}");
    for row in table.iter().chain(&rows(&stdout, "| restore, ")) {
        let median: f64 = row[2]
            .parse()
            .unwrap_or_else(|_| panic!("not a number in {row:?}: {context}"));
        assert!(median > 0.0, "{context}");
    }
}

#[test]
fn tools_soak_prints_both_tables_and_a_verdict() {
    let out = Command::new(root().join("tools/soak"))
        .args(["--vms", "150", "--minutes", "0.4", "--kvmkit"])
        .arg(env!("CARGO_BIN_EXE_kvmkit-e2e"))
        .arg("--tiny")
        .arg(env!("CARGO_BIN_EXE_kvmkit-soak-tiny"))
        .env("KVMKIT_GUEST_DIR", kvmkit_integration_tests::guest_dir())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let context = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // Exit 1 would be a leak (or a bad API answer): the soak's own verdict, not a timing.
    assert!(out.status.success(), "{context}");
    let tiny = rows(&stdout, "| 0 |");
    assert!(!tiny.is_empty(), "{context}");
    let samples: Vec<Vec<&str>> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("## One guest"))
        .filter(|l| l.starts_with("| ") && !l.starts_with("| t (s)"))
        .map(|l| l.split('|').map(str::trim).collect())
        .collect();
    assert!(samples.len() >= 2, "{context}");
    for row in &samples {
        let fds: u64 = row[2]
            .parse()
            .unwrap_or_else(|_| panic!("{row:?}: {context}"));
        assert!(fds > 0, "{context}");
    }
    assert!(stdout.contains("fds: flat; threads: flat"), "{context}");
}
