//! The network device's event handler, on its worker thread: the receive queue's and the transmit
//! queue's notifications, and the tap.
//!
//! The tap is watched only while there is somewhere to put its frames. When the guest runs out of
//! receive buffers, the frame read last waits in the handler, the tap is no longer watched, and
//! (with event-index) the device asks the driver to notify it when it adds a buffer; that
//! notification delivers the waiting frame and watches the tap again.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio::{ActivateError, Activation, ActiveQueue, DeviceMemory, Interrupt, QueueError};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;

use super::rx::{self, Delivery, Scratch};
use super::tx::Transmit;
use super::{Backend, MAX_FRAME, NetStats, RX_QUEUE, TX_QUEUE};

/// Event data: which source fired.
const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;
const TAP: u32 = 2;
/// Frames moved from the tap per wake-up before the handler lets the transmit side run.
const RX_BUDGET: usize = 64;

/// Receives from the tap and transmits to it for one device.
pub(super) struct NetHandler<M> {
    name: String,
    mem: M,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<Interrupt>,
    backend: Box<dyn Backend>,
    mergeable: bool,
    stats: Arc<NetStats>,
    /// The frame read from the tap last, `rx_len` bytes of it, waiting if `rx_len > 0`.
    rx_frame: Vec<u8>,
    rx_len: usize,
    rx_scratch: Scratch,
    /// The tap is not watched: the guest has no receive buffers (or its receive queue is broken).
    tap_paused: bool,
    rx_broken: bool,
    tx_frame: Vec<u8>,
}

impl<M: DeviceMemory> NetHandler<M> {
    pub(super) fn new(
        name: &str,
        mut a: Activation<M>,
        backend: Box<dyn Backend>,
        stats: Arc<NetStats>,
    ) -> Result<Self, ActivateError> {
        Ok(Self {
            name: name.to_owned(),
            rx: a.take_queue(RX_QUEUE)?,
            tx: a.take_queue(TX_QUEUE)?,
            mem: a.mem,
            interrupt: a.interrupt,
            backend,
            mergeable: a.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            stats,
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            rx_scratch: Scratch::default(),
            tap_paused: false,
            rx_broken: false,
            tx_frame: Vec::with_capacity(MAX_FRAME),
        })
    }

    pub(super) fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn watch_tap(&mut self, ops: &mut EventOps<'_>, on: bool) {
        let set = if on { EventSet::IN } else { EventSet::empty() };
        if let Err(e) = ops.modify(Events::with_data_raw(self.backend.as_raw_fd(), TAP, set)) {
            log::error!("{}: cannot change how the tap is watched: {e}", self.name);
        }
        self.tap_paused = !on;
    }

    /// Moves frames from the tap into the guest until the tap is empty, the guest has no room, or
    /// the budget is spent.
    fn receive(&mut self, ops: &mut EventOps<'_>) {
        let mut delivered = false;
        for _ in 0..RX_BUDGET {
            if self.rx_len == 0 {
                match self.backend.read_frame(&mut self.rx_frame) {
                    Ok(n) => self.rx_len = n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        log::warn!("{}: reading the tap: {e}", self.name);
                        break;
                    }
                }
            }
            let frame = &mut self.rx_frame[..self.rx_len];
            let result = rx::deliver(
                &mut self.rx.queue,
                &self.mem,
                frame,
                self.mergeable,
                &mut self.rx_scratch,
            );
            // Chains with bad buffers went back to the driver unused: it must hear of them too.
            delivered |= self.rx_scratch.rejected() > 0;
            match result {
                Ok(Delivery::Delivered { .. }) => {
                    NetStats::add(&self.stats.rx_frames, 1);
                    NetStats::add(&self.stats.rx_bytes, self.rx_len as u64);
                    self.rx_len = 0;
                    delivered = true;
                }
                Ok(Delivery::Dropped(why)) => {
                    NetStats::add(&self.stats.rx_dropped, 1);
                    log::warn!("{}: received frame dropped: {why}", self.name);
                    self.rx_len = 0;
                }
                Ok(Delivery::NoBuffers) => {
                    // Ask for a notification when buffers come; if some came meanwhile, go on.
                    match self.rx.queue.enable_notification(&self.mem) {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(source) => self.rx_failed(source, ops),
                    }
                    if !self.tap_paused {
                        self.watch_tap(ops, false);
                    }
                    break;
                }
                Err(source) => {
                    self.rx_failed(source, ops);
                    break;
                }
            }
        }
        if delivered {
            self.notify(RX_QUEUE);
        }
    }

    fn rx_failed(&mut self, source: virtio_queue::Error, ops: &mut EventOps<'_>) {
        QueueError {
            queue: RX_QUEUE,
            source,
        }
        .report(&self.name, &self.interrupt, &self.rx.kick, ops);
        self.rx_broken = true;
        self.rx_len = 0;
        if !self.tap_paused {
            self.watch_tap(ops, false);
        }
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
        let mut transmit = Transmit {
            name: &self.name,
            backend: self.backend.as_mut(),
            frame: &mut self.tx_frame,
            stats: &self.stats,
        };
        if let Err(source) = virtio::drain(
            &self.name,
            &self.mem,
            &mut self.tx.queue,
            &self.interrupt,
            &mut transmit,
        ) {
            QueueError {
                queue: TX_QUEUE,
                source,
            }
            .report(&self.name, &self.interrupt, &self.tx.kick, ops);
        }
    }
}

impl<M: DeviceMemory> MutEventSubscriber for NetHandler<M> {
    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match events.data() {
            RX_KICK => {
                let _ = self.rx.kick.read();
                if self.rx_broken {
                    return;
                }
                if self.tap_paused {
                    self.watch_tap(ops, true);
                }
                self.receive(ops);
            }
            TX_KICK => {
                let _ = self.tx.kick.read();
                self.transmit(ops);
            }
            TAP => {
                if events
                    .event_set()
                    .intersects(EventSet::ERROR | EventSet::HANG_UP)
                {
                    log::error!("{}: the tap failed; no more frames from it", self.name);
                    let _ = ops.remove(Events::empty_raw(self.backend.as_raw_fd()));
                    return;
                }
                self.receive(ops);
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        let sources = [
            Events::with_data(&self.rx.kick, RX_KICK, EventSet::IN),
            Events::with_data(&self.tx.kick, TX_KICK, EventSet::IN),
            Events::with_data_raw(self.backend.as_raw_fd(), TAP, EventSet::IN),
        ];
        for events in sources {
            if let Err(e) = ops.add(events) {
                log::error!(
                    "{}: cannot watch its queues and tap: {e}; the device needs a reset",
                    self.name
                );
                self.interrupt.signal_needs_reset();
                return;
            }
        }
        // Frames the guest queued before DRIVER_OK, and frames already waiting on the tap.
        self.transmit(ops);
        self.receive(ops);
    }
}
