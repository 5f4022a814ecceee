//! Tiny guests back to back, for tools/soak: each prints a line on COM1 and resets; this process
//! creates, runs and drops one VM after another and, every `--every` VMs, prints its open file
//! descriptors, threads, resident memory and the anonymous part of it. A leak shows as a column
//! that grows.
//!
//! ```text
//! kvmkit-soak-tiny [VMS] [EVERY]     (defaults: 500, 50)
//! vms fds threads rss_kib anon_kib
//! 0 5 1 9876 1200
//! 50 5 1 10012 1320
//! ```

use kvmkit::Outcome;
use kvmkit_integration_tests::{Mode, PRINT_AND_RESET, TinyGuest};

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map(Iterator::count).unwrap_or(0)
}

/// A `/proc/self/status` field in KiB: `VmRSS` (all resident memory, the binary's pages too) or
/// `RssAnon` (the heap, stacks and other anonymous memory: where a leak shows).
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn arg(n: usize, default: usize) -> Result<usize, String> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| format!("not a number: {v}")),
    }
}

fn main() {
    let (vms, every) = match (arg(1, 500), arg(2, 50)) {
        (Ok(v), Ok(e)) if e > 0 => (v, e),
        _ => {
            eprintln!("usage: kvmkit-soak-tiny [VMS] [EVERY]");
            std::process::exit(2);
        }
    };
    println!("vms fds threads rss_kib anon_kib");
    for i in 0..=vms {
        if i % every == 0 {
            println!(
                "{i} {} {} {} {}",
                count("/proc/self/fd"),
                count("/proc/self/task"),
                status_kib("VmRSS:"),
                status_kib("RssAnon:")
            );
        }
        if i == vms {
            break;
        }
        let guest = TinyGuest::new(Mode::Real, PRINT_AND_RESET, Some((0x1100, b"soak\n\0")));
        let (outcome, out) = guest.run();
        if outcome != Outcome::Reset || out != b"soak\n" {
            eprintln!(
                "VM {i}: {outcome:?}, printed {:?}",
                String::from_utf8_lossy(&out)
            );
            std::process::exit(1);
        }
    }
}
