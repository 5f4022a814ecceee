//! Log lines from every crate (`log` macros) as `kvmkit: <level>: <message>`, to stderr or to a file.
//!
//! The level comes from `--log-level`, else `KVMKIT_LOG` (`error`, `warn` (the default), `info`,
//! `debug`, `trace`, `off`); the API's `PUT /logger` can change it and send the lines to a file
//! ([`configure`]). A guest can provoke a warning per request it sends, so lines are limited per
//! cause (the line of code that logs them) and per time window: each cause prints at most
//! [`PER_WINDOW`] lines per [`WINDOW`], and its next line after a quiet spell says how many were
//! left out. One noisy cause never hides another, and errors are always printed.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The most lines one cause prints per [`WINDOW`] (errors are not limited).
pub const PER_WINDOW: u32 = 20;
/// The time window of [`PER_WINDOW`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// Errors from configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A level name that is not one of the known ones.
    #[error("invalid log level '{0}': expected off, error, warn, info, debug or trace")]
    Level(String),
    /// The log file could not be opened for appending.
    #[error("cannot open log file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where a line comes from: the source file and line of the `log!` call.
type Cause = (&'static str, u32);

/// One cause's current window.
#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    printed: u32,
    left_out: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Print it; `left_out` lines of its cause were not printed before it; `last` if it is the
    /// last its cause prints in this window.
    Print { left_out: u64, last: bool },
    /// Leave it out (counted).
    LeaveOut,
}

/// The per-cause, per-window limit.
#[derive(Debug, Default)]
struct Limiter {
    causes: HashMap<Cause, Window>,
}

impl Limiter {
    fn judge(&mut self, cause: Cause, level: Level, now: Instant) -> Verdict {
        if level == Level::Error {
            return Verdict::Print {
                left_out: 0,
                last: false,
            };
        }
        let w = self.causes.entry(cause).or_insert(Window {
            start: now,
            printed: 0,
            left_out: 0,
        });
        let mut left_out = 0;
        if now.duration_since(w.start) >= WINDOW {
            left_out = w.left_out;
            *w = Window {
                start: now,
                printed: 0,
                left_out: 0,
            };
        }
        if w.printed >= PER_WINDOW {
            w.left_out += 1;
            return Verdict::LeaveOut;
        }
        w.printed += 1;
        Verdict::Print {
            left_out,
            last: w.printed == PER_WINDOW,
        }
    }
}

struct KvmkitLogger {
    limiter: LazyLock<Mutex<Limiter>>,
    show_level: AtomicBool,
    show_origin: AtomicBool,
    file: Mutex<Option<File>>,
}

static LOGGER: KvmkitLogger = KvmkitLogger {
    limiter: LazyLock::new(Mutex::default),
    show_level: AtomicBool::new(true),
    show_origin: AtomicBool::new(false),
    file: Mutex::new(None),
};

impl KvmkitLogger {
    fn write_line(&self, line: &str) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        match file.as_mut() {
            Some(f) => {
                let _ = writeln!(f, "{line}");
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }
}

impl Log for KvmkitLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let cause = (
            record
                .file_static()
                .or(record.module_path_static())
                .unwrap_or("?"),
            record.line().unwrap_or(0),
        );
        let verdict = self
            .limiter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .judge(cause, record.level(), Instant::now());
        let Verdict::Print { left_out, last } = verdict else {
            return;
        };
        let mut line = String::from("kvmkit: ");
        if self.show_level.load(Ordering::Relaxed) {
            line.push_str(match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "info: ",
                Level::Debug => "debug: ",
                Level::Trace => "trace: ",
            });
        }
        if self.show_origin.load(Ordering::Relaxed) {
            let file = record.file().unwrap_or("?");
            let at = record.line().unwrap_or(0);
            line.push_str(&format!("{file}:{at}: "));
        }
        line.push_str(&record.args().to_string());
        if left_out > 0 {
            line.push_str(&format!(" ({left_out} more like this were left out)"));
        }
        if last {
            line.push_str(&format!(
                " (more like this are left out for up to {} s)",
                WINDOW.as_secs()
            ));
        }
        self.write_line(&line);
    }

    fn flush(&self) {
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = file.as_mut() {
            let _ = f.flush();
        }
    }
}

/// Parses a level name: `off`, `error`, `warn` (or `warning`), `info`, `debug`, `trace`, in any case
/// (Firecracker's `Error`, `Warning`, `Info`, `Debug`, `Trace`, `Off` included).
///
/// ```
/// use kvmkit::logger::parse_level;
/// assert_eq!(parse_level("Warning").unwrap(), log::LevelFilter::Warn);
/// assert!(parse_level("loud").is_err());
/// ```
pub fn parse_level(s: &str) -> Result<LevelFilter, Error> {
    match s.to_ascii_lowercase().as_str() {
        "off" => Ok(LevelFilter::Off),
        "error" => Ok(LevelFilter::Error),
        "warn" | "warning" => Ok(LevelFilter::Warn),
        "info" => Ok(LevelFilter::Info),
        "debug" => Ok(LevelFilter::Debug),
        "trace" => Ok(LevelFilter::Trace),
        _ => Err(Error::Level(s.to_owned())),
    }
}

/// Installs the logger (once; later calls do nothing), at the level `KVMKIT_LOG` names (default
/// `warn`).
pub fn init() {
    let level = std::env::var("KVMKIT_LOG")
        .ok()
        .and_then(|v| parse_level(&v).ok())
        .unwrap_or(LevelFilter::Warn);
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Sets the level from now on.
pub fn set_level(level: LevelFilter) {
    log::set_max_level(level);
}

/// What `PUT /logger` (or a config file's `logger`) can change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings<'a> {
    /// Append log lines to this file (or FIFO) instead of stderr.
    pub path: Option<&'a Path>,
    /// The level.
    pub level: Option<LevelFilter>,
    /// Whether lines name their level (default yes).
    pub show_level: Option<bool>,
    /// Whether lines name the source file and line that logged them (default no).
    pub show_origin: Option<bool>,
}

/// Applies `settings`; a file that cannot be opened changes nothing.
pub fn configure(settings: &Settings<'_>) -> Result<(), Error> {
    if let Some(path) = settings.path {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| Error::File {
                path: path.display().to_string(),
                source,
            })?;
        *LOGGER.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    }
    if let Some(level) = settings.level {
        set_level(level);
    }
    if let Some(show) = settings.show_level {
        LOGGER.show_level.store(show, Ordering::Relaxed);
    }
    if let Some(show) = settings.show_origin {
        LOGGER.show_origin.store(show, Ordering::Relaxed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOISY: Cause = ("virtio-devices/src/block/handler.rs", 120);
    const OTHER: Cause = ("vmm/src/run.rs", 300);

    fn printed(v: Verdict) -> bool {
        matches!(v, Verdict::Print { .. })
    }

    #[test]
    fn a_noisy_cause_is_limited_per_window_and_says_what_it_left_out() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let verdicts: Vec<Verdict> = (0..1000).map(|_| l.judge(NOISY, Level::Warn, t0)).collect();
        assert_eq!(verdicts.iter().filter(|v| printed(**v)).count(), 20);
        assert_eq!(
            verdicts[19],
            Verdict::Print {
                left_out: 0,
                last: true
            }
        );
        // Another cause is not hidden by the noisy one, nor are errors from it.
        assert!(printed(l.judge(OTHER, Level::Warn, t0)));
        assert!(printed(l.judge(NOISY, Level::Error, t0)));
        // Still inside the window: left out.
        assert_eq!(
            l.judge(NOISY, Level::Warn, t0 + WINDOW - Duration::from_millis(1)),
            Verdict::LeaveOut
        );
        // The next window prints again, counting what was left out.
        assert_eq!(
            l.judge(NOISY, Level::Warn, t0 + WINDOW),
            Verdict::Print {
                left_out: 981,
                last: false
            }
        );
    }
}
