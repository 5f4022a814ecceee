//! Metrics in Firecracker's style: one JSON object per line, appended to the metrics file (or FIFO)
//! every [`PERIOD`] and on the API's `FlushMetrics`.
//!
//! ```text
//! {"utc_timestamp_ms":1796551641000,"api_server":{"requests_count":12,"requests_fails":1},
//!  "vcpu":{"exit_io_in":3,"exit_io_out":5120,...},"assist":{"int3":1,...},
//!  "block_vda":{"read_count":12,"read_bytes":49152,...},"net_eth0":{...},"entropy_rng0":{...}}
//! ```
//!
//! As in Firecracker, each counter is what happened since the previous line (the first line counts
//! from the start).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// How often metrics are written without being asked.
pub const PERIOD: Duration = Duration::from_secs(60);

/// A group of counters: its name and each counter's name and value (totals since the start).
pub type Group = (String, Vec<(&'static str, u64)>);

/// The metrics file and the totals last written to it.
#[derive(Debug)]
pub struct MetricsFile {
    file: File,
    last: HashMap<(String, &'static str), u64>,
}

impl MetricsFile {
    /// Opens `path` for appending (creating a file if there is none; a FIFO must have a reader).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            file,
            last: HashMap::new(),
        })
    }

    /// Writes one line: the time, then each group's counters as the change since the last line.
    pub fn write(&mut self, groups: &[Group]) -> std::io::Result<()> {
        let line = self.line(groups);
        let mut text = line.to_string();
        text.push('\n');
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }

    fn line(&mut self, groups: &[Group]) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut top = Map::new();
        top.insert("utc_timestamp_ms".into(), now.into());
        for (group, counters) in groups {
            let mut fields = Map::new();
            for &(name, total) in counters {
                let before = self.last.insert((group.clone(), name), total).unwrap_or(0);
                fields.insert(name.into(), total.saturating_sub(before).into());
            }
            top.insert(group.clone(), Value::Object(fields));
        }
        Value::Object(top)
    }
}

/// Calls a function every [`PERIOD`] on a thread of its own (`kvmkit-metrics`) until dropped.
#[derive(Debug)]
pub struct Ticker {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    /// Calls `tick(target)` every `period` for as long as `target` lives.
    pub fn start<T: Send + Sync + 'static>(
        target: Weak<T>,
        period: Duration,
        tick: fn(&T),
    ) -> std::io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kvmkit-metrics".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Metrics);
                let (lock, wake) = &*thread_stop;
                let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let (guard, timeout) = wake
                        .wait_timeout(stopped, period)
                        .unwrap_or_else(|e| e.into_inner());
                    stopped = guard;
                    if *stopped {
                        return;
                    }
                    if timeout.timed_out() {
                        let Some(target) = target.upgrade() else {
                            return;
                        };
                        drop(stopped);
                        tick(&target);
                        stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
                    }
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take()
            && t.thread().id() != std::thread::current().id()
        {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_the_change_since_the_line_before() {
        let path = std::env::temp_dir().join(format!("kvmkit-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut m = MetricsFile::open(&path).unwrap();
        m.write(&[("vcpu".into(), vec![("exit_io_out", 10)])])
            .unwrap();
        m.write(&[("vcpu".into(), vec![("exit_io_out", 25)])])
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["vcpu"]["exit_io_out"], 10);
        assert_eq!(lines[1]["vcpu"]["exit_io_out"], 15);
        assert!(lines[1]["utc_timestamp_ms"].as_u64().unwrap() > 1_700_000_000_000);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_ticker_ticks_until_its_target_is_gone() {
        let count = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let ticker = Ticker::start(Arc::downgrade(&count), Duration::from_millis(10), |c| {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while count.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "no ticks");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(ticker);
    }
}
