//! The serial console on the host side: where guest output goes (and what kvmkit learns from it),
//! how host input reaches the guest, and the terminal's raw mode.

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// What the Linux kernel prints when it panics.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

/// Guest output to a writer, watching for a kernel panic message on the way.
pub struct ConsoleOutput {
    out: Box<dyn Write + Send>,
    matched: usize,
    panicked: Arc<AtomicBool>,
}

impl ConsoleOutput {
    /// Wraps `out`; `panicked` is set once the guest prints a kernel panic.
    pub fn new(out: Box<dyn Write + Send>, panicked: Arc<AtomicBool>) -> Self {
        Self {
            out,
            matched: 0,
            panicked,
        }
    }

    fn watch(&mut self, byte: u8) {
        // PANIC_MARKER has no proper prefix that is also its suffix, so a mismatch restarts the
        // match at this byte.
        if byte == PANIC_MARKER[self.matched] {
            self.matched += 1;
        } else {
            self.matched = usize::from(byte == PANIC_MARKER[0]);
        }
        if self.matched == PANIC_MARKER.len() {
            self.panicked.store(true, Ordering::SeqCst);
            self.matched = 0;
        }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            self.watch(b);
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
        let mut out = ConsoleOutput::new(Box::new(sink.clone()), flag.clone());
        for b in b"[ 1.0] KKernel panic - not synci" {
            out.write_all(&[*b]).unwrap();
        }
        assert!(!flag.load(Ordering::SeqCst));
        out.write_all(b"ng: Attempted to kill init!\n").unwrap();
        assert!(flag.load(Ordering::SeqCst));
        assert!(sink.0.lock().unwrap().ends_with(b"kill init!\n"));
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
