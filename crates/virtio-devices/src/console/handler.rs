//! The console's event handler, on its worker thread: the two queues' notifications and the input.
//!
//! The input is watched only while the guest has receive buffers: when it has none, the bytes read
//! last wait here (at most [`CHUNK`]), the input is no longer watched, and the receive queue's next
//! notification delivers them and watches the input again. So a guest that stops reading makes
//! the host's writer wait (its pty or socket fills up), and kvmkit holds at most one chunk.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio::{
    ActivateError, Activation, ActiveQueue, ChainHandler, DeviceMemory, Interrupt, QueueError,
};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::{ConsoleInput, ConsoleStats, Output, RX_QUEUE, TX_QUEUE, lock, write_out};

/// Event data: which source fired.
const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;
const INPUT: u32 = 2;
/// The most input read at once.
const CHUNK: usize = 4096;
/// The most bytes one transmit chain is taken for (longer chains are cut).
pub const MAX_TX: u32 = 64 << 10;

/// Moves the guest's output to the output, and the input to the guest, for one console.
pub(super) struct ConsoleHandler<M> {
    name: String,
    mem: M,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<Interrupt>,
    output: Output,
    input: Option<Arc<Mutex<Box<dyn ConsoleInput>>>>,
    stats: Arc<ConsoleStats>,
    /// Input read but not yet given to the guest, from `pending_at` on.
    pending: Vec<u8>,
    pending_at: usize,
    /// The input is not watched: the guest has no receive buffers.
    input_paused: bool,
    /// The input ended or failed, or the receive queue is broken: no more input.
    input_done: bool,
}

impl<M: DeviceMemory> ConsoleHandler<M> {
    pub(super) fn new(
        name: &str,
        mut a: Activation<M>,
        output: Output,
        input: Option<Arc<Mutex<Box<dyn ConsoleInput>>>>,
        stats: Arc<ConsoleStats>,
    ) -> Result<Self, ActivateError> {
        Ok(Self {
            name: name.to_owned(),
            rx: a.take_queue(RX_QUEUE)?,
            tx: a.take_queue(TX_QUEUE)?,
            mem: a.mem,
            interrupt: a.interrupt,
            output,
            input_done: input.is_none(),
            input,
            stats,
            pending: Vec::with_capacity(CHUNK),
            pending_at: 0,
            input_paused: false,
        })
    }

    pub(super) fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn input_fd(&self) -> Option<i32> {
        self.input.as_ref().map(|i| lock(i).as_raw_fd())
    }

    fn watch_input(&mut self, ops: &mut EventOps<'_>, on: bool) {
        if let Some(fd) = self.input_fd() {
            let set = if on { EventSet::IN } else { EventSet::empty() };
            if let Err(e) = ops.modify(Events::with_data_raw(fd, INPUT, set)) {
                log::error!("{}: cannot change how the input is watched: {e}", self.name);
            }
        }
        self.input_paused = !on;
    }

    fn stop_input(&mut self, ops: &mut EventOps<'_>) {
        if let Some(fd) = self.input_fd() {
            let _ = ops.remove(Events::empty_raw(fd));
        }
        self.input_done = true;
    }

    /// Reads the input into the pending chunk if it is empty. False when there is nothing to give.
    fn fill(&mut self, ops: &mut EventOps<'_>) -> bool {
        if self.pending_at < self.pending.len() {
            return true;
        }
        let Some(input) = self.input.clone() else {
            return false;
        };
        self.pending.resize(CHUNK, 0);
        self.pending_at = 0;
        let read = lock(&input).read(&mut self.pending);
        match read {
            Ok(0) => {
                self.pending.clear();
                log::info!("{}: the console's input ended", self.name);
                self.stop_input(ops);
                false
            }
            Ok(n) => {
                self.pending.truncate(n);
                true
            }
            Err(e) => {
                self.pending.clear();
                if !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) {
                    log::warn!(
                        "{}: reading the console's input: {e}; no more input",
                        self.name
                    );
                    self.stop_input(ops);
                }
                false
            }
        }
    }

    /// Gives the input to the guest until the input has nothing more or the guest has no room.
    fn receive(&mut self, ops: &mut EventOps<'_>) {
        let mut used = false;
        while !self.input_done && self.fill(ops) {
            let chain = match self.rx.queue.pop_descriptor_chain(&self.mem) {
                Some(chain) => chain,
                None => {
                    // Ask for a notification when buffers come; if some came meanwhile, go on.
                    match self.rx.queue.enable_notification(&self.mem) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(source) => self.rx_failed(source, ops),
                    }
                    if !self.input_paused && !self.input_done {
                        self.watch_input(ops, false);
                    }
                    break;
                }
            };
            let head = chain.head_index();
            let n = give(
                &self.name,
                &self.mem,
                chain,
                &self.pending[self.pending_at..],
            );
            self.pending_at += n as usize;
            self.stats
                .rx_bytes
                .fetch_add(u64::from(n), Ordering::Relaxed);
            if let Err(source) = self.rx.queue.add_used(&self.mem, head, n) {
                self.rx_failed(source, ops);
                break;
            }
            used = true;
        }
        if used {
            self.notify(RX_QUEUE);
        }
    }

    fn rx_failed(&mut self, source: virtio_queue::Error, ops: &mut EventOps<'_>) {
        QueueError {
            queue: RX_QUEUE,
            source,
        }
        .report(&self.name, &self.interrupt, &self.rx.kick, ops);
        self.pending.clear();
        self.pending_at = 0;
        self.stop_input(ops);
    }

    fn notify(&mut self, queue: u16) {
        let q = if queue == RX_QUEUE {
            &mut self.rx.queue
        } else {
            &mut self.tx.queue
        };
        virtio::notify_used(q, &self.mem, &self.interrupt);
    }

    fn transmit(&mut self, ops: &mut EventOps<'_>) {
        let mut out = Transmit {
            name: &self.name,
            output: &self.output,
            stats: &self.stats,
            buf: Vec::new(),
        };
        if let Err(source) = virtio::drain(
            &self.name,
            &self.mem,
            &mut self.tx.queue,
            &self.interrupt,
            &mut out,
        ) {
            QueueError {
                queue: TX_QUEUE,
                source,
            }
            .report(&self.name, &self.interrupt, &self.tx.kick, ops);
        }
    }
}

/// Writes the start of `input` into the chain's device-writable buffers; returns how many bytes.
pub(super) fn give<M: GuestMemoryBackend>(
    name: &str,
    mem: &M,
    chain: DescriptorChain<&M>,
    input: &[u8],
) -> u32 {
    let mut written = 0usize;
    for desc in chain.writable() {
        let left = &input[written..];
        if left.is_empty() {
            break;
        }
        let n = left.len().min(desc.len() as usize);
        if let Err(e) = mem.write_slice(&left[..n], desc.addr()) {
            log::warn!(
                "{name}: receive buffer at {:#x} is not in guest memory: {e}",
                desc.addr().0
            );
            break;
        }
        written += n;
    }
    // At most CHUNK bytes.
    written as u32
}

/// Writes each transmit chain's bytes out.
pub(super) struct Transmit<'a> {
    pub(super) name: &'a str,
    pub(super) output: &'a Output,
    pub(super) stats: &'a ConsoleStats,
    pub(super) buf: Vec<u8>,
}

impl<M: GuestMemoryBackend> ChainHandler<M> for Transmit<'_> {
    /// Writes the chain's device-readable bytes (at most [`MAX_TX`]); the used length is 0, as
    /// the device writes nothing into the chain.
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        self.buf.clear();
        for desc in chain.readable() {
            let room = MAX_TX as usize - self.buf.len();
            let n = (desc.len() as usize).min(room);
            let start = self.buf.len();
            self.buf.resize(start + n, 0);
            if let Err(e) = mem.read_slice(&mut self.buf[start..], desc.addr()) {
                log::warn!(
                    "{}: transmit buffer at {:#x} is not in guest memory: {e}",
                    self.name,
                    desc.addr().0
                );
                self.buf.truncate(start);
                break;
            }
            if self.buf.len() == MAX_TX as usize {
                break;
            }
        }
        write_out(self.output, self.stats, &self.buf);
        0
    }
}

impl<M: DeviceMemory> MutEventSubscriber for ConsoleHandler<M> {
    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match events.data() {
            RX_KICK => {
                let _ = self.rx.kick.read();
                if self.input_done {
                    return;
                }
                if self.input_paused {
                    self.watch_input(ops, true);
                }
                self.receive(ops);
            }
            TX_KICK => {
                let _ = self.tx.kick.read();
                self.transmit(ops);
            }
            INPUT => {
                if events.event_set().contains(EventSet::IN) {
                    self.receive(ops);
                } else if events
                    .event_set()
                    .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    // A hang-up with nothing left to read: the input is gone.
                    self.stop_input(ops);
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        let mut sources = vec![
            Events::with_data(&self.rx.kick, RX_KICK, EventSet::IN),
            Events::with_data(&self.tx.kick, TX_KICK, EventSet::IN),
        ];
        if let Some(fd) = self.input_fd() {
            sources.push(Events::with_data_raw(fd, INPUT, EventSet::IN));
        }
        for events in sources {
            if let Err(e) = ops.add(events) {
                log::error!(
                    "{}: cannot watch its queues and input: {e}; the device needs a reset",
                    self.name
                );
                self.interrupt.signal_needs_reset();
                return;
            }
        }
        // Output the guest queued before DRIVER_OK, and input already waiting.
        self.transmit(ops);
        self.receive(ops);
    }
}
