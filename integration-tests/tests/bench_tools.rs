//! The benchmark tools run and print well-formed results on a short run (one kvmkit boot, no QEMU).
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
