//! The boot timeline: when each phase of a VM's life happened, from kvmkit's start to its exit.
//!
//! Marks come from wherever the event is seen: the vmm's own steps, the first vCPU thread, the serial
//! console (its first byte, the kernel's `Run /init` line), the boot-timer port (the guest's own
//! marker), the event loop (the guest shut down). Each event keeps its first time only.
//! `--boot-timeline` prints them as a table on stderr, `--boot-timeline json` as one JSON object.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// A point in a VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// kvmkit's `main` started (t = 0).
    ProcessStart,
    /// KVM is open, the VM exists and guest RAM is mapped and registered.
    MemoryReady,
    /// The kernel, initramfs and boot structures are in guest memory; the vCPUs are set up.
    KernelLoaded,
    /// vCPU 0's thread is about to enter `KVM_RUN` for the first time.
    FirstKvmRun,
    /// The guest wrote its first byte to the serial port.
    FirstSerialByte,
    /// The kernel printed `Run /init` (it is about to start userspace).
    RunInit,
    /// The guest marked its own progress: its first write to the boot-timer port (0x440), or its
    /// console line with [`crate::console::GUEST_MARKER`] (the tools/guest init's marker).
    GuestMarker,
    /// The guest rebooted, powered off or crashed (the event loop saw it end).
    GuestShutdown,
    /// kvmkit is about to exit (every vCPU and device thread has stopped).
    ProcessExit,
}

impl Event {
    /// Every event, in the order they normally happen.
    pub const ALL: [Event; 9] = [
        Event::ProcessStart,
        Event::MemoryReady,
        Event::KernelLoaded,
        Event::FirstKvmRun,
        Event::FirstSerialByte,
        Event::RunInit,
        Event::GuestMarker,
        Event::GuestShutdown,
        Event::ProcessExit,
    ];

    /// The event's name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Event::ProcessStart => "process_start",
            Event::MemoryReady => "memory_ready",
            Event::KernelLoaded => "kernel_loaded",
            Event::FirstKvmRun => "first_kvm_run",
            Event::FirstSerialByte => "first_serial_byte",
            Event::RunInit => "run_init",
            Event::GuestMarker => "guest_marker",
            Event::GuestShutdown => "guest_shutdown",
            Event::ProcessExit => "process_exit",
        }
    }
}

/// When each event happened, relative to [`Event::ProcessStart`].
#[derive(Debug)]
pub struct Timeline {
    start: Instant,
    /// The wall-clock time of t = 0, so that a tool that started kvmkit can add what came before
    /// `main` (its fork and exec, the dynamic loader).
    start_wall: SystemTime,
    marks: Mutex<Vec<(Event, Duration)>>,
    /// Instruction assists by kind (`None`: the assist was off).
    assists: Mutex<Option<Vec<(&'static str, u64)>>>,
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Timeline {
    /// A timeline whose t = 0 is now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            start_wall: SystemTime::now(),
            marks: Mutex::new(vec![(Event::ProcessStart, Duration::ZERO)]),
            assists: Mutex::new(None),
        }
    }

    /// Records how many instructions of each kind kvmkit finished for a software KVM backend
    /// (`--instruction-assist`), for the table and the JSON.
    pub fn set_assists(&self, counts: Vec<(&'static str, u64)>) {
        *self.assists.lock().unwrap_or_else(|e| e.into_inner()) = Some(counts);
    }

    fn assists(&self) -> Option<Vec<(&'static str, u64)>> {
        self.assists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records `event` now, unless it was recorded before.
    pub fn mark(&self, event: Event) {
        let at = self.start.elapsed();
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        if !marks.iter().any(|(e, _)| *e == event) {
            marks.push((event, at));
        }
    }

    /// When `event` happened, if it did.
    pub fn get(&self, event: Event) -> Option<Duration> {
        let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.iter().find(|(e, _)| *e == event).map(|(_, t)| *t)
    }

    /// The events that happened, in time order.
    fn sorted(&self) -> Vec<(Event, Duration)> {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        marks.sort_by_key(|(e, t)| (*t, *e));
        marks
    }

    /// A table: each event, its time since start, and the time since the event before it.
    pub fn table(&self) -> String {
        let marks = self.sorted();
        let mut out = String::from("kvmkit boot timeline          at (ms)   phase (ms)\n");
        let mut prev = Duration::ZERO;
        for &(event, at) in &marks {
            out.push_str(&format!(
                "  {:<24} {:>10.1} {:>12.1}\n",
                event.name(),
                ms(at),
                ms(at - prev)
            ));
            prev = at;
        }
        let longest = marks
            .windows(2)
            .map(|w| (w[1].0, w[1].1 - w[0].1))
            .max_by_key(|(_, d)| *d);
        if let Some((event, d)) = longest {
            out.push_str(&format!(
                "  longest phase: up to {} ({:.1} ms)\n",
                event.name(),
                ms(d)
            ));
        }
        if let Some(assists) = self.assists() {
            let list: Vec<String> = assists.iter().map(|(k, n)| format!("{k} {n}")).collect();
            out.push_str(&format!(
                "  instruction assists: {}\n",
                if list.is_empty() {
                    "none".to_owned()
                } else {
                    list.join(", ")
                }
            ));
        }
        out
    }

    /// One JSON object: `{"process_start_ms": 0.0, "memory_ready_ms": 12.3, ...}` with the events that
    /// happened, in time order, then `"assists": {"int3": 1, ...}` when the instruction assist was on,
    /// and `"process_start_unix_ns"`: t = 0 on the wall clock.
    pub fn json(&self) -> String {
        let mut fields: Vec<String> = self
            .sorted()
            .into_iter()
            .map(|(e, t)| format!("\"{}_ms\": {:.3}", e.name(), ms(t)))
            .collect();
        if let Some(assists) = self.assists() {
            let counts: Vec<String> = assists
                .iter()
                .map(|(k, n)| format!("\"{k}\": {n}"))
                .collect();
            fields.push(format!("\"assists\": {{{}}}", counts.join(", ")));
        }
        if let Ok(since) = self.start_wall.duration_since(SystemTime::UNIX_EPOCH) {
            fields.push(format!("\"process_start_unix_ns\": {}", since.as_nanos()));
        }
        format!("{{{}}}", fields.join(", "))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// How to print the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A table on stderr.
    Table,
    /// One line of JSON on stderr.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_mark_wins_and_output_is_in_time_order() {
        let t = Timeline::new();
        t.mark(Event::MemoryReady);
        std::thread::sleep(Duration::from_millis(2));
        t.mark(Event::FirstKvmRun);
        let first = t.get(Event::FirstKvmRun).unwrap();
        t.mark(Event::FirstKvmRun);
        assert_eq!(t.get(Event::FirstKvmRun), Some(first));
        assert!(t.get(Event::MemoryReady).unwrap() < first);
        assert_eq!(t.get(Event::GuestMarker), None);
        let table = t.table();
        let order: Vec<_> = ["process_start", "memory_ready", "first_kvm_run"]
            .iter()
            .map(|n| table.find(n).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{table}");
        assert!(
            table.contains("longest phase: up to first_kvm_run"),
            "{table}"
        );
        let json = t.json();
        assert!(json.starts_with("{\"process_start_ms\": 0.000, \"memory_ready_ms\": "));
        assert!(json.ends_with('}') && !json.contains("guest_marker"));
        assert!(!json.contains("assists") && !table.contains("assists"));
    }

    #[test]
    fn assist_counts_are_in_the_table_and_the_json() {
        let t = Timeline::new();
        t.set_assists(vec![("int3", 1), ("fwait", 2)]);
        assert!(
            t.table()
                .contains("  instruction assists: int3 1, fwait 2\n")
        );
        assert!(
            t.json()
                .contains(", \"assists\": {\"int3\": 1, \"fwait\": 2}, ")
        );
        t.set_assists(Vec::new());
        assert!(t.table().contains("instruction assists: none"));
        assert!(t.json().contains("\"assists\": {}, "));
    }

    #[test]
    fn the_json_says_when_t0_was_on_the_wall_clock() {
        let before = SystemTime::now();
        let t = Timeline::new();
        let after = SystemTime::now();
        let v: serde_json::Value = serde_json::from_str(&t.json()).unwrap();
        let ns = |s: SystemTime| s.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos();
        let start = u128::from(v["process_start_unix_ns"].as_u64().unwrap());
        assert!(ns(before) <= start && start <= ns(after), "{v}");
    }
}
