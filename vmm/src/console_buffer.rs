//! Guest console output that never blocks the guest: the UART's writes go into a bounded buffer, and
//! a thread of its own (`kvmkit-console`) writes them to the real output.
//!
//! A console whose reader stalls (a full pipe, a terminal on hold with Ctrl-S, a slow disk) would
//! otherwise stop the vCPU thread inside `write` while it holds the UART's lock, and with it every
//! stop request. Here the vCPU only copies bytes into memory; when the buffer is full the newest
//! bytes are dropped and counted (Firecracker's `uart.missed_write_count`), and a note goes to the
//! log once per stall. When the VM ends, what is left is written for at most a moment
//! ([`ConsoleDrain::finish`]): a stalled reader never holds up kvmkit's exit.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How many bytes of guest output wait for a slow reader before the newest are dropped.
pub const CAPACITY: usize = 1 << 20;
/// The most bytes the writer thread takes from the buffer for one `write`.
const CHUNK: usize = 64 << 10;

#[derive(Debug, Default)]
struct State {
    bytes: VecDeque<u8>,
    /// The writer thread is inside a `write` of bytes it took from `bytes`.
    writing: bool,
    /// The output failed (a closed pipe): everything from now on is dropped.
    broken: bool,
    /// Set while bytes are being dropped, so the log says so once per stall.
    dropping: bool,
    /// No more bytes will come: the writer thread ends once it has written what is left.
    closed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when bytes arrive (for the writer) and when the writer took or wrote some (for
    /// [`ConsoleDrain::finish`]).
    changed: Condvar,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The UART's side: a [`Write`] that copies into the buffer and returns at once.
#[derive(Debug)]
pub struct BufferedConsole {
    shared: Arc<Shared>,
}

/// The VMM's side: how many bytes were dropped, and the final drain.
#[derive(Debug, Clone)]
pub struct ConsoleDrain {
    shared: Arc<Shared>,
}

/// Starts the writer thread for `out`; returns the UART's writer and the drain handle.
pub fn spawn(mut out: Box<dyn Write + Send>) -> io::Result<(BufferedConsole, ConsoleDrain)> {
    let shared = Arc::new(Shared::default());
    let writer = shared.clone();
    std::thread::Builder::new()
        .name("kvmkit-console".into())
        .spawn(move || write_loop(&writer, &mut *out))?;
    Ok((
        BufferedConsole {
            shared: shared.clone(),
        },
        ConsoleDrain { shared },
    ))
}

/// The writer thread: waits for bytes, writes them, until the output fails. It holds no lock
/// while it writes; the process may exit while it is blocked in a write.
fn write_loop(shared: &Shared, out: &mut dyn Write) {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut filtered = false;
    loop {
        {
            let mut state = shared.lock();
            state.writing = false;
            shared.changed.notify_all();
            while state.bytes.is_empty() {
                if state.closed {
                    return;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|e| e.into_inner());
            }
            let n = state.bytes.len().min(CHUNK);
            chunk.clear();
            chunk.extend(state.bytes.drain(..n));
            state.writing = true;
            shared.changed.notify_all();
        }
        // The filter goes in before the first guest byte is written, not at the thread's start:
        // the thread waits idle until then, and installing it at once would compete with the
        // vCPUs' start for the CPU.
        if !filtered {
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Console);
            filtered = true;
        }
        if let Err(e) = out.write_all(&chunk).and_then(|()| out.flush()) {
            log::warn!("console output failed, guest output is dropped from now on: {e}");
            let mut state = shared.lock();
            state.broken = true;
            state.writing = false;
            let left = state.bytes.len() + chunk.len();
            state.bytes.clear();
            shared.dropped.fetch_add(left as u64, Ordering::Relaxed);
            shared.changed.notify_all();
            return;
        }
    }
}

impl Write for BufferedConsole {
    /// Takes all of `buf`: what does not fit is dropped and counted, never waited for.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let shared = &self.shared;
        let mut state = shared.lock();
        let room = if state.broken {
            0
        } else {
            CAPACITY.saturating_sub(state.bytes.len())
        };
        let take = room.min(buf.len());
        state.bytes.extend(&buf[..take]);
        if take < buf.len() {
            shared
                .dropped
                .fetch_add((buf.len() - take) as u64, Ordering::Relaxed);
            if !state.dropping && !state.broken {
                state.dropping = true;
                log::warn!(
                    "console output is not being read: guest output is dropped until it is \
                     (uart missed_write_count counts the bytes)"
                );
            }
        } else if take > 0 {
            state.dropping = false;
        }
        if take > 0 {
            shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for BufferedConsole {
    /// The UART is gone: the writer thread ends once it has written what is left.
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

impl ConsoleDrain {
    /// Guest output bytes dropped so far (the reader was too slow, or the output failed).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Waits until the guest's output has been written, or `limit` has passed (a stalled reader),
    /// and ends the writer thread once it has written what is left: true if everything was
    /// written. Output after this is still buffered, but no longer written.
    pub fn finish(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.changed.notify_all();
        loop {
            if state.broken || (state.bytes.is_empty() && !state.writing) {
                return !state.broken;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// An output that holds every write until the test lets it go.
    struct Stalled {
        go: mpsc::Receiver<()>,
        got: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.go.recv();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// An output like a closed pipe.
    struct Broken;

    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn everything_reaches_a_reader_that_keeps_up() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tx, go) = mpsc::channel();
        let (mut console, drain) = spawn(Box::new(Stalled {
            go,
            got: got.clone(),
        }))
        .unwrap();
        let text: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        for piece in text.chunks(1000) {
            console.write_all(piece).unwrap();
        }
        // Let every write through.
        for _ in 0..1000 {
            let _ = tx.send(());
        }
        assert!(drain.finish(Duration::from_secs(30)));
        assert_eq!(*got.lock().unwrap(), text);
        assert_eq!(drain.dropped(), 0);
        // finish() ended the writer thread.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Arc::strong_count(&drain.shared) > 2 {
            assert!(
                Instant::now() < deadline,
                "the writer thread is still there"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(console);
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer_and_drops_are_counted() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let (tx, go) = mpsc::channel();
        let (mut console, drain) = spawn(Box::new(Stalled {
            go,
            got: got.clone(),
        }))
        .unwrap();
        // Four times the buffer, to a reader that reads nothing: every write returns.
        let block = vec![b'x'; 4096];
        let total = 4 * CAPACITY;
        for _ in 0..total / block.len() {
            assert_eq!(console.write(&block).unwrap(), block.len());
        }
        // The writer thread holds at most one chunk, the buffer CAPACITY: the rest was dropped.
        let dropped = drain.dropped();
        assert!(
            dropped >= (total - CAPACITY - CHUNK) as u64 && dropped <= (total - CAPACITY) as u64,
            "{dropped}"
        );
        // The drain gives up on a stalled reader.
        assert!(!drain.finish(Duration::from_millis(50)));
        drop(tx);
    }

    #[test]
    fn a_broken_output_drops_everything_after_it() {
        let (mut console, drain) = spawn(Box::new(Broken)).unwrap();
        console.write_all(b"hello").unwrap();
        // The writer thread met the error: the drain says so at once.
        assert!(!drain.finish(Duration::from_secs(30)));
        console.write_all(b"more").unwrap();
        assert_eq!(drain.dropped(), 9);
    }
}
