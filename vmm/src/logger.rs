//! Log lines from every crate (`log` macros) as `kvmkit: <level>: <message>`, to stderr or to a file.
//!
//! The level comes from `--log-level`, else `KVMKIT_LOG` (`error`, `warn` (the default), `info`,
//! `debug`, `trace`, `off`); the API's `PUT /logger` can change it and send the lines to a file
//! ([`configure`]). A guest can provoke a warning per request it sends: after [`BURST`] lines only
//! every [`THINNING`]th is printed, so a hostile guest cannot flood the host's logs.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Lines printed before thinning starts.
pub const BURST: u64 = 200;
/// After the burst, one line in this many is printed.
pub const THINNING: u64 = 1000;

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

struct KvmkitLogger {
    lines: AtomicU64,
    show_level: AtomicBool,
    show_origin: AtomicBool,
    file: Mutex<Option<File>>,
}

static LOGGER: KvmkitLogger = KvmkitLogger {
    lines: AtomicU64::new(0),
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
        let n = self.lines.fetch_add(1, Ordering::Relaxed);
        if n >= BURST && !(n - BURST).is_multiple_of(THINNING) {
            return;
        }
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
        self.write_line(&line);
        if n == BURST {
            self.write_line(&format!(
                "kvmkit: too many log lines: printing one in {THINNING} from now on"
            ));
        }
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
