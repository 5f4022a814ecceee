//! virtio-console (virtio 1.2, section 5.3): a terminal for the guest (`/dev/hvc0` in Linux), beside
//! or instead of the UART.
//!
//! One port, two queues: the driver posts device-writable buffers on the receive queue (0), which
//! the device fills with what the host types, and device-readable buffers on the transmit queue
//! (1), whose bytes the device writes out. With `VIRTIO_CONSOLE_F_SIZE` the configuration space
//! holds the terminal's columns and rows, and a [`Resizer`] changes them (the driver hears of it
//! through a configuration interrupt); with `VIRTIO_CONSOLE_F_EMERG_WRITE` a byte written to
//! `emerg_wr` goes out at once.
//!
//! The output never blocks the device: the writer it is given must take every byte at once (kvmkit
//! gives it a bounded buffer drained by a thread of its own, and counts what that drops). The input
//! is a file descriptor the device's worker watches and reads without blocking; it is read only
//! while the guest has buffers for it, so a guest that never reads leaves the host's bytes with
//! their sender (a pty, a socket), never in kvmkit.

mod handler;
#[cfg(test)]
mod tests;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

pub use handler::MAX_TX;
use virtio::{
    ActivateError, Activation, ChainHandler, DeviceCounters, DeviceMemory, DeviceModel, Interrupt,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, Worker,
};
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryBackend;

/// The virtio device ID of a console.
pub const VIRTIO_ID_CONSOLE: u32 = 3;
/// Feature bit: the configuration space has the terminal's size.
pub const VIRTIO_CONSOLE_F_SIZE: u32 = 0;
/// Feature bit: the driver may write a byte to `emerg_wr` for the device to print at once.
pub const VIRTIO_CONSOLE_F_EMERG_WRITE: u32 = 2;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest to host).
pub const TX_QUEUE: u16 = 1;
/// The configuration space: cols (u16), rows (u16), max_nr_ports (u32), emerg_wr (u32).
const CONFIG_SIZE: usize = 12;
/// Where `emerg_wr` is in the configuration space.
const EMERG_WR: u64 = 8;

/// Where a console's input comes from: a file descriptor to watch (a pty, a socket, stdin) that
/// reads without blocking.
pub trait ConsoleInput: Read + AsRawFd + Send {}

impl<T: Read + AsRawFd + Send> ConsoleInput for T {}

/// What the device moved, for metrics. Counters only grow.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ConsoleStats {
    /// Bytes from the guest written out.
    pub tx_bytes: AtomicU64,
    /// Bytes from the guest the output refused (dropped).
    pub tx_dropped: AtomicU64,
    /// Bytes from the input given to the guest.
    pub rx_bytes: AtomicU64,
}

impl DeviceCounters for ConsoleStats {
    fn kind(&self) -> &'static str {
        "console"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("tx_bytes", self.tx_bytes.load(Ordering::Relaxed)),
            ("tx_dropped", self.tx_dropped.load(Ordering::Relaxed)),
            ("rx_bytes", self.rx_bytes.load(Ordering::Relaxed)),
        ]
    }
}

/// The console's output, shared by the worker (the transmit queue) and the vCPU that writes
/// `emerg_wr`.
type Output = Arc<Mutex<Box<dyn Write + Send>>>;

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes `bytes` to `output`, counting them as written or, if the output refused them, dropped.
fn write_out(output: &Output, stats: &ConsoleStats, bytes: &[u8]) {
    match lock(output).write_all(bytes) {
        Ok(()) => stats
            .tx_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed),
        Err(_) => stats
            .tx_dropped
            .fetch_add(bytes.len() as u64, Ordering::Relaxed),
    };
}

/// The terminal's size, and whom to tell when it changes: shared with [`Resizer`]s.
#[derive(Default)]
struct Size {
    /// Columns in the high half, rows in the low; 0 when the size is unknown.
    packed: AtomicU32,
    /// The running driver accepted `VIRTIO_CONSOLE_F_SIZE`.
    negotiated: AtomicBool,
    /// The running driver's interrupt.
    interrupt: Mutex<Option<Arc<Interrupt>>>,
}

impl Size {
    fn get(&self) -> (u16, u16) {
        let size = self.packed.load(Ordering::SeqCst);
        ((size >> 16) as u16, size as u16)
    }

    fn set(&self, cols: u16, rows: u16) {
        self.packed
            .store(u32::from(cols) << 16 | u32::from(rows), Ordering::SeqCst);
        if self.negotiated.load(Ordering::SeqCst)
            && let Some(interrupt) = lock(&self.interrupt).as_ref()
        {
            interrupt.signal_config();
        }
    }
}

/// A virtio console.
pub struct Console {
    name: String,
    output: Output,
    input: Option<Arc<Mutex<Box<dyn ConsoleInput>>>>,
    size: Arc<Size>,
    features: u64,
    stats: Arc<ConsoleStats>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Console {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console")
            .field("name", &self.name)
            .field("input", &self.input.is_some())
            .field("size", &self.size())
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Console {
    /// A console named `name` (its worker thread is `kvmkit-<name>`) writing to `output`, which
    /// must take every byte without blocking, and reading `input` if there is one. With `size`
    /// (columns, rows) the guest is told the terminal's size.
    pub fn new(
        name: &str,
        output: Box<dyn Write + Send>,
        input: Option<Box<dyn ConsoleInput>>,
        size: Option<(u16, u16)>,
    ) -> Self {
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | (1 << VIRTIO_CONSOLE_F_EMERG_WRITE);
        if size.is_some() {
            features |= 1 << VIRTIO_CONSOLE_F_SIZE;
        }
        let shared = Size::default();
        if let Some((cols, rows)) = size {
            shared.set(cols, rows);
        }
        Self {
            name: name.to_owned(),
            output: Arc::new(Mutex::new(output)),
            input: input.map(|i| Arc::new(Mutex::new(i))),
            size: Arc::new(shared),
            features,
            stats: Arc::default(),
            worker: None,
        }
    }

    /// The terminal's size the guest is told: (columns, rows).
    pub fn size(&self) -> (u16, u16) {
        self.size.get()
    }

    /// A handle that changes the terminal's size from another thread (the one that sees the
    /// host terminal's `SIGWINCH`).
    pub fn resizer(&self) -> Resizer {
        Resizer {
            size: self.size.clone(),
        }
    }

    /// The device's counters (shared: they keep counting while the device runs).
    pub fn stats(&self) -> Arc<ConsoleStats> {
        self.stats.clone()
    }

    /// What the device's worker runs for each chain of its transmit queue (with
    /// [`virtio::drain`]): the chain's device-readable bytes, at most [`MAX_TX`], go to this
    /// console's output and its counts. For fuzzing and benchmarks, which drive the queue path
    /// without a thread. `M` is the guest memory the chains are in.
    pub fn transmit_handler<M: GuestMemoryBackend>(&self) -> impl ChainHandler<M> + use<'_, M> {
        handler::Transmit {
            name: &self.name,
            output: &self.output,
            stats: &self.stats,
            buf: Vec::new(),
        }
    }
}

/// What the device's worker does with a receive chain: writes the start of `input` (the host's
/// bytes) into the chain's device-writable buffers and returns how many it wrote, the chain's used
/// length. For fuzzing, which drives the queue path without a thread.
pub fn fill_receive_chain<M: GuestMemoryBackend>(
    mem: &M,
    chain: DescriptorChain<&M>,
    input: &[u8],
) -> u32 {
    handler::give("virtio-console", mem, chain, input)
}

/// Changes a console's terminal size from another thread (see [`Console::resizer`]).
#[derive(Clone)]
pub struct Resizer {
    size: Arc<Size>,
}

impl std::fmt::Debug for Resizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resizer")
            .field("size", &self.size.get())
            .finish()
    }
}

impl Resizer {
    /// Sets the size to (`cols`, `rows`); a running driver that accepted
    /// `VIRTIO_CONSOLE_F_SIZE` gets a configuration interrupt.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.size.set(cols, rows);
    }
}

impl DeviceModel for Console {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_CONSOLE
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let (cols, rows) = self.size();
        let mut config = [0u8; CONFIG_SIZE];
        config[0..2].copy_from_slice(&cols.to_le_bytes());
        config[2..4].copy_from_slice(&rows.to_le_bytes());
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        virtio::read_config_bytes(&config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only emerg_wr is writable: its first byte goes out (a wider write is one character).
        if offset == EMERG_WR
            && self.features & (1 << VIRTIO_CONSOLE_F_EMERG_WRITE) != 0
            && let Some(&byte) = data.first()
        {
            write_out(&self.output, &self.stats, &[byte]);
        }
    }

    fn reset(&mut self) {
        self.worker = None;
        self.size.negotiated.store(false, Ordering::SeqCst);
        *lock(&self.size.interrupt) = None;
    }

    fn counters(&self) -> Option<Arc<dyn DeviceCounters>> {
        Some(self.stats.clone())
    }
}

impl<M: DeviceMemory> VirtioDevice<M> for Console {
    fn activate(&mut self, a: Activation<M>) -> Result<(), ActivateError> {
        *lock(&self.size.interrupt) = Some(a.interrupt.clone());
        self.size.negotiated.store(
            a.features & (1 << VIRTIO_CONSOLE_F_SIZE) != 0,
            Ordering::SeqCst,
        );
        let handler = handler::ConsoleHandler::new(
            &self.name,
            a,
            self.output.clone(),
            self.input.clone(),
            self.stats.clone(),
        )?;
        let interrupt = handler.interrupt();
        self.worker = Some(
            Worker::spawn(&self.name, handler, interrupt.clone()).map_err(ActivateError::Worker)?,
        );
        // Linux reads the size only on a configuration interrupt: one now gives it the first.
        if self.size.negotiated.load(Ordering::SeqCst) && self.size.get() != (0, 0) {
            interrupt.signal_config();
        }
        Ok(())
    }
}
