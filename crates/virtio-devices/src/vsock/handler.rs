//! The vsock device's event handler, on its worker thread: the queues' notifications, the host
//! socket and its clients, and each connection's host socket.
//!
//! Every transmit chain is taken at once (a guest's data waits in its connection, within the
//! credit it was given). Receive chains are filled while something waits for the guest; when the
//! guest has none, the rest waits for its next notification of the receive queue.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use virtio::{
    ActivateError, Activation, ActiveQueue, ChainHandler, DeviceMemory, Interrupt, QueueError,
};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryBackend};

use super::muxer::{CLIENT, CONNECTION, LISTENER, Muxer, TIMER};
use super::packet::{MAX_PAYLOAD, RxBuffer, read_tx};
use super::{EVENT_QUEUE, RX_QUEUE, SharedMuxer, TX_QUEUE, VsockStats, lock};

/// The event the driver is sent after a restore: every connection it had is gone.
const EVENT_TRANSPORT_RESET: u32 = 0;

/// Event data: which queue was notified.
const RX_KICK: u32 = 0;
const TX_KICK: u32 = 1;

/// Moves packets between the guest's queues and the muxer.
pub(super) struct VsockHandler<M> {
    name: String,
    mem: M,
    rx: ActiveQueue,
    tx: ActiveQueue,
    event: Option<ActiveQueue>,
    interrupt: Arc<Interrupt>,
    muxer: SharedMuxer,
    stats: Arc<VsockStats>,
    /// Send the driver a transport reset when the worker starts.
    announce_reset: bool,
    /// A packet's payload, either way.
    payload: Vec<u8>,
    /// The receive queue is broken: nothing more goes to the guest.
    rx_broken: bool,
}

impl<M: DeviceMemory> VsockHandler<M> {
    pub(super) fn new(
        name: &str,
        mut a: Activation<M>,
        muxer: SharedMuxer,
        stats: Arc<VsockStats>,
        announce_reset: bool,
    ) -> Result<Self, ActivateError> {
        Ok(Self {
            name: name.to_owned(),
            rx: a.take_queue(RX_QUEUE)?,
            tx: a.take_queue(TX_QUEUE)?,
            // Without an event queue the driver is not told of a transport reset.
            event: a.take_queue(EVENT_QUEUE).ok(),
            mem: a.mem,
            interrupt: a.interrupt,
            muxer,
            stats,
            announce_reset,
            payload: Vec::with_capacity(MAX_PAYLOAD as usize),
            rx_broken: false,
        })
    }

    pub(super) fn interrupt(&self) -> Arc<Interrupt> {
        self.interrupt.clone()
    }

    fn transmit(&mut self, muxer: &mut Muxer, ops: &mut EventOps<'_>) {
        let mut sink = TxSink {
            muxer,
            payload: &mut self.payload,
            stats: &self.stats,
        };
        if let Err(source) = virtio::drain(
            &self.name,
            &self.mem,
            &mut self.tx.queue,
            &self.interrupt,
            &mut sink,
        ) {
            QueueError {
                queue: TX_QUEUE,
                source,
            }
            .report(&self.name, &self.interrupt, &self.tx.kick, ops);
        }
    }

    /// Fills receive chains while something waits for the guest.
    fn receive(&mut self, muxer: &mut Muxer, ops: &mut EventOps<'_>) {
        muxer.settle(ops);
        let mut used = false;
        while !self.rx_broken && muxer.has_rx() {
            let Some(mut chain) = self.rx.queue.pop_descriptor_chain(&self.mem) else {
                // Ask for a notification when buffers come; if some came meanwhile, go on.
                match self.rx.queue.enable_notification(&self.mem) {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(source) => self.rx_failed(source, ops),
                }
                break;
            };
            let head = chain.head_index();
            let len = match RxBuffer::new(&self.mem, &mut chain) {
                Ok(mut buf) => match muxer.next_rx(buf.room(), &mut self.payload) {
                    Some(h) => {
                        self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                        self.stats
                            .rx_bytes
                            .fetch_add(self.payload.len() as u64, Ordering::Relaxed);
                        buf.fill(&h, &self.payload)
                    }
                    None => {
                        // Nothing to send after all (a host socket had no bytes): the chain
                        // goes back for the next packet.
                        self.rx.queue.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    self.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
                    log::debug!("{}: receive chain {head}: {e}", self.name);
                    0
                }
            };
            if let Err(source) = self.rx.queue.add_used(&self.mem, head, len) {
                self.rx_failed(source, ops);
                break;
            }
            used = true;
        }
        muxer.settle(ops);
        if used {
            virtio::notify_used(&mut self.rx.queue, &self.mem, &self.interrupt);
        }
    }

    fn rx_failed(&mut self, source: virtio_queue::Error, ops: &mut EventOps<'_>) {
        QueueError {
            queue: RX_QUEUE,
            source,
        }
        .report(&self.name, &self.interrupt, &self.rx.kick, ops);
        self.rx_broken = true;
    }
}

/// Hands each transmit chain's packet to the muxer.
struct TxSink<'a> {
    muxer: &'a mut Muxer,
    payload: &'a mut Vec<u8>,
    stats: &'a VsockStats,
}

impl<M: GuestMemoryBackend> ChainHandler<M> for TxSink<'_> {
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        match read_tx(mem, chain, self.payload) {
            Ok(h) => {
                self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .tx_bytes
                    .fetch_add(self.payload.len() as u64, Ordering::Relaxed);
                self.muxer.guest_packet(&h, self.payload);
            }
            Err(e) => {
                self.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
                log::debug!("vsock: transmit chain dropped: {e}");
            }
        }
        0
    }
}

impl<M: DeviceMemory> VsockHandler<M> {
    /// Tells the driver its connections are gone (a restored snapshot), with the event queue's
    /// first buffer; a driver that left none is not told (its connections are reset as it uses
    /// them).
    fn announce_transport_reset(&mut self) {
        let Some(event) = self.event.as_mut() else {
            return;
        };
        let Some(chain) = event.queue.pop_descriptor_chain(&self.mem) else {
            log::warn!("{}: no event buffer for the transport reset", self.name);
            return;
        };
        let head = chain.head_index();
        let mut len = 0;
        if let Some(desc) = chain.writable().next()
            && desc.len() >= 4
            && self
                .mem
                .write_obj(EVENT_TRANSPORT_RESET.to_le_bytes(), desc.addr())
                .is_ok()
        {
            len = 4;
        }
        if event.queue.add_used(&self.mem, head, len).is_ok() {
            self.interrupt.signal_used_queue();
        }
    }
}

impl<M: DeviceMemory> MutEventSubscriber for VsockHandler<M> {
    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        let muxer = self.muxer.clone();
        let mut muxer = lock(&muxer);
        match events.data() {
            RX_KICK => {
                let _ = self.rx.kick.read();
            }
            TX_KICK => {
                let _ = self.tx.kick.read();
                self.transmit(&mut muxer, ops);
            }
            LISTENER => muxer.accept(ops),
            CLIENT => muxer.client_readable(events.fd(), ops),
            CONNECTION => muxer.connection_event(events.fd(), events.event_set()),
            TIMER => muxer.timer_fired(),
            _ => {}
        }
        self.receive(&mut muxer, ops);
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        let muxer = self.muxer.clone();
        let mut muxer = lock(&muxer);
        let kicks = [
            Events::with_data(&self.rx.kick, RX_KICK, EventSet::IN),
            Events::with_data(&self.tx.kick, TX_KICK, EventSet::IN),
        ];
        let watched = kicks
            .into_iter()
            .try_for_each(|events| ops.add(events))
            .and_then(|()| muxer.attach(ops));
        if let Err(e) = watched {
            log::error!(
                "{}: cannot watch its queues and sockets: {e}; the device needs a reset",
                self.name
            );
            self.interrupt.signal_needs_reset();
            return;
        }
        if std::mem::take(&mut self.announce_reset) {
            self.announce_transport_reset();
        }
        // Packets the guest queued before DRIVER_OK (or the pause), and clients already waiting.
        self.transmit(&mut muxer, ops);
        muxer.accept(ops);
        self.receive(&mut muxer, ops);
    }
}
