//! Log lines from every crate (`log` macros) to stderr as `kvmkit: <level>: <message>`.
//!
//! The level comes from `KVMKIT_LOG` (`error`, `warn` (the default), `info`, `debug`, `trace`, `off`).
//! A guest can provoke a warning per request it sends: after [`BURST`] lines only every
//! [`THINNING`]th is printed, so a hostile guest cannot flood the host's logs.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines printed before thinning starts.
pub const BURST: u64 = 200;
/// After the burst, one line in this many is printed.
pub const THINNING: u64 = 1000;

struct StderrLogger {
    lines: AtomicU64,
}

static LOGGER: StderrLogger = StderrLogger {
    lines: AtomicU64::new(0),
};

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n >= BURST && !(n - BURST).is_multiple_of(THINNING) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "kvmkit: {level}: {}", record.args());
        if n == BURST {
            let _ = writeln!(
                err,
                "kvmkit: too many log lines: printing one in {THINNING} from now on"
            );
        }
    }

    fn flush(&self) {}
}

/// Installs the logger (once; later calls do nothing).
pub fn init() {
    let level = match std::env::var("KVMKIT_LOG").as_deref() {
        Ok("off") => LevelFilter::Off,
        Ok("error") => LevelFilter::Error,
        Ok("info") => LevelFilter::Info,
        Ok("debug") => LevelFilter::Debug,
        Ok("trace") => LevelFilter::Trace,
        _ => LevelFilter::Warn,
    };
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}
