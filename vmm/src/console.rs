//! The serial console on the host side: where guest output goes (and what kvmkit learns from it),
//! how host input reaches the guest, and the terminal's raw mode.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::timeline::{Event, Timeline};

/// What the Linux kernel prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";
/// What the Linux kernel prints when it starts userspace (`Run /init as init process`).
const RUN_INIT_MARKER: &[u8] = b" as init process";
/// What the tools/guest init prints once userspace has run: the guest's marker on the timeline when
/// the guest does not write to the boot-timer port (user-mode port I/O needs `ioperm`, which a
/// software KVM backend does not run).
pub const GUEST_MARKER: &[u8] = b"KVMKIT-INIT-OK";

/// Finds a pattern in a byte stream, one byte at a time. The patterns used here have no proper prefix
/// that is also a suffix, so a mismatch restarts the match at the mismatching byte.
#[derive(Debug)]
struct Matcher {
    pattern: &'static [u8],
    matched: usize,
}

impl Matcher {
    const fn new(pattern: &'static [u8]) -> Self {
        Self {
            pattern,
            matched: 0,
        }
    }

    /// True when `byte` completes the pattern.
    fn feed(&mut self, byte: u8) -> bool {
        if byte == self.pattern[self.matched] {
            self.matched += 1;
        } else {
            self.matched = usize::from(byte == self.pattern[0]);
        }
        if self.matched == self.pattern.len() {
            self.matched = 0;
            return true;
        }
        false
    }
}

/// Guest output to a writer, watching on the way for a kernel panic (which makes the following reset a
/// crash) and for the boot timeline's events (the first byte, the start of init).
pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    panic: Matcher,
    run_init: Matcher,
    guest_marker: Matcher,
    wrote_any: bool,
    panicked: Arc<AtomicBool>,
    timeline: Arc<Timeline>,
}

impl ConsoleOutput {
    /// Wraps `out`; `panicked` is set once the guest prints a kernel panic; `timeline` gets the
    /// first byte and the kernel's "Run /init" line.
    pub fn new(
        out: Box<dyn Write + Send>,
        panicked: Arc<AtomicBool>,
        timeline: Arc<Timeline>,
    ) -> Self {
        Self {
            out,
            panic: Matcher::new(PANIC_MARKER),
            run_init: Matcher::new(RUN_INIT_MARKER),
            guest_marker: Matcher::new(GUEST_MARKER),
            wrote_any: false,
            panicked,
            timeline,
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Every guest byte passes here: the timeline (a lock) is told of the first one only.
        if !self.wrote_any && !buf.is_empty() {
            self.wrote_any = true;
            self.timeline.mark(Event::FirstSerialByte);
        }
        for &b in buf {
            if self.panic.feed(b) {
                self.panicked.store(true, Ordering::SeqCst);
            }
            if self.run_init.feed(b) {
                self.timeline.mark(Event::RunInit);
            }
            if self.guest_marker.feed(b) {
                self.timeline.mark(Event::GuestMarker);
            }
        }
        // A console that went away (closed pipe, full disk) must not stop the guest: the guest output
        // is dropped and the UART counts the error.
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What a chunk of host input means.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Input {
    /// Bytes for the guest.
    pub to_guest: Vec<u8>,
    /// The user typed the quit sequence.
    pub quit: bool,
}

/// The escape character: Ctrl-A.
pub const ESCAPE: u8 = 0x01;

/// Splits host keyboard input into bytes for the guest and escape commands: Ctrl-A x quits,
/// Ctrl-A Ctrl-A sends one Ctrl-A, Ctrl-A followed by anything else sends both.
#[derive(Debug, Default)]
pub struct EscapeParser {
    pending_escape: bool,
}

impl EscapeParser {
    /// Parses one chunk of input (the escape may straddle chunks).
    pub fn feed(&mut self, bytes: &[u8]) -> Input {
        let mut input = Input::default();
        for &b in bytes {
            if self.pending_escape {
                self.pending_escape = false;
                match b {
                    b'x' | b'X' => {
                        input.quit = true;
                        return input;
                    }
                    ESCAPE => input.to_guest.push(ESCAPE),
                    other => input.to_guest.extend_from_slice(&[ESCAPE, other]),
                }
            } else if b == ESCAPE {
                self.pending_escape = true;
            } else {
                input.to_guest.push(b);
            }
        }
        input
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn panic_marker_is_seen_byte_by_byte() {
        let flag = Arc::new(AtomicBool::new(false));
        let sink = Sink::default();
        let timeline = Arc::new(Timeline::new());
        let mut out = ConsoleOutput::new(Box::new(sink.clone()), flag.clone(), timeline.clone());
        for b in b"[ 1.0] KKernel panic - not synci" {
            out.write_all(&[*b]).unwrap();
        }
        assert!(!flag.load(Ordering::SeqCst));
        out.write_all(b"ng: Attempted to kill init!\n").unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert!(sink.0.lock().unwrap().ends_with(b"kill init!\n"));
        assert!(timeline.get(Event::FirstSerialByte).is_some());
        assert!(timeline.get(Event::RunInit).is_none());
    }

    #[test]
    fn the_start_of_init_is_timed() {
        let timeline = Arc::new(Timeline::new());
        let flag = Arc::new(AtomicBool::new(false));
        let mut out = ConsoleOutput::new(Box::new(io::sink()), flag, timeline.clone());
        out.write_all(b"[ 55.4] Run /init as init").unwrap();
        assert!(timeline.get(Event::RunInit).is_none());
        out.write_all(b" process\n").unwrap();
        assert!(timeline.get(Event::RunInit).is_some());
        assert!(timeline.get(Event::GuestMarker).is_none());
        out.write_all(b"KVMKIT-INIT-OK pid=1\n").unwrap();
        assert!(timeline.get(Event::GuestMarker).is_some());
    }

    #[test]
    fn escape_sequences() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r").to_guest, b"ls\r");
        assert_eq!(p.feed(&[ESCAPE]).to_guest, b"");
        assert_eq!(p.feed(&[ESCAPE]).to_guest, vec![ESCAPE]);
        assert_eq!(p.feed(&[ESCAPE, b'c']).to_guest, vec![ESCAPE, b'c']);
        let q = p.feed(&[b'a', ESCAPE, b'x', b'z']);
        assert!(q.quit);
        assert_eq!(q.to_guest, b"a");
    }
}
