//! The request loop of a device with one queue whose every descriptor chain is answered on its own
//! (block, rng): the device supplies a [`ChainHandler`], and [`QueueHandler`] does the rest.
//!
//! On each notification it takes every available chain, hands it to the handler, puts it in the used
//! ring with the length the handler wrote, and interrupts the driver if the driver asked for it
//! (event-index aware: with `VIRTIO_RING_F_EVENT_IDX` it keeps going while chains arrive as it works).
//! A head index outside the descriptor table is dropped with a log line (there is no used-ring id to
//! give back); a broken queue (a lying available index) shows DEVICE_NEEDS_RESET.

use std::sync::Arc;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use memory::GuestMemoryMmap;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryBackend;

use crate::{ActiveQueue, DeviceMemory, Interrupt, QueueError, Worker};

/// What a device does with one descriptor chain in guest memory `M`.
pub trait ChainHandler<M: GuestMemoryBackend = GuestMemoryMmap>: Send {
    /// Answers the request in `chain` (buffers in `mem`); returns how many bytes it wrote into the
    /// chain's device-writable buffers (the used length).
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32;
}

/// One queue and the handler of its chains: the event subscriber a device's [`Worker`]
/// runs, or a loop a benchmark drives by hand with [`QueueHandler::process_queue`].
pub struct QueueHandler<H, M = GuestMemoryMmap> {
    name: String,
    mem: M,
    queue: ActiveQueue,
    interrupt: Arc<Interrupt>,
    handler: H,
}

impl<H, M> std::fmt::Debug for QueueHandler<H, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueHandler")
            .field("name", &self.name)
            .field("queue", &self.queue.index)
            .finish()
    }
}

impl<M: GuestMemoryBackend, H: ChainHandler<M>> QueueHandler<H, M> {
    /// `handler` answering `queue`'s chains in `mem`; `name` prefixes log lines.
    pub fn new(
        name: &str,
        mem: M,
        queue: ActiveQueue,
        interrupt: Arc<Interrupt>,
        handler: H,
    ) -> Self {
        Self {
            name: name.to_owned(),
            mem,
            queue,
            interrupt,
            handler,
        }
    }

    /// Takes every available chain, answers each, and interrupts the guest if it wants that.
    /// An error means the queue itself is broken (the device needs a reset).
    pub fn process_queue(&mut self) -> Result<(), virtio_queue::Error> {
        drain(
            &self.name,
            &self.mem,
            &mut self.queue.queue,
            &self.interrupt,
            &mut self.handler,
        )
    }
}

/// Takes every available chain of `queue`, has `handler` answer each, puts it in the used ring and
/// interrupts the driver through `interrupt` if it wants that: what a notification of a queue whose
/// chains are answered one by one calls for. An error means the queue itself is broken (the device
/// needs a reset); `name` prefixes log lines.
pub fn drain<M: GuestMemoryBackend, H: ChainHandler<M> + ?Sized>(
    name: &str,
    mem: &M,
    queue: &mut Queue,
    interrupt: &Interrupt,
    handler: &mut H,
) -> Result<(), virtio_queue::Error> {
    let event_idx = queue.event_idx_enabled();
    let mut used_any = false;
    loop {
        if event_idx {
            queue.disable_notification(mem)?;
        }
        let chains: Vec<DescriptorChain<&M>> = queue.iter(mem)?.collect();
        let size = queue.size();
        for chain in chains {
            let head = chain.head_index();
            if head >= size {
                log::warn!("{name}: available ring names descriptor {head} of {size}; dropped");
                continue;
            }
            let len = handler.handle(mem, chain);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        // With event-index, re-enabling notifications reports chains that arrived meanwhile.
        if !event_idx || !queue.enable_notification(mem)? {
            break;
        }
    }
    if used_any && queue.needs_notification(mem)? {
        interrupt.signal_used_queue();
    }
    Ok(())
}

/// Interrupts the driver through `interrupt` after the device put chains in `queue`'s used ring,
/// if the driver asked for that (event-index aware) or if that cannot be told (a `used_event`
/// outside guest memory): better a spurious interrupt than a driver left waiting. For devices
/// that fill their used rings themselves rather than through [`drain`].
pub fn notify_used<M: GuestMemoryBackend>(queue: &mut Queue, mem: &M, interrupt: &Interrupt) {
    match queue.needs_notification(mem) {
        Ok(false) => {}
        Ok(true) | Err(_) => interrupt.signal_used_queue(),
    }
}

impl<M: GuestMemoryBackend, H: ChainHandler<M>> MutEventSubscriber for QueueHandler<H, M> {
    fn process(&mut self, _events: Events, ops: &mut EventOps<'_>) {
        let _ = self.queue.kick.read();
        if let Err(source) = self.process_queue() {
            QueueError {
                queue: self.queue.index,
                source,
            }
            .report(&self.name, &self.interrupt, &self.queue.kick, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(e) = ops.add(Events::new(&self.queue.kick, EventSet::IN)) {
            log::error!(
                "{}: cannot watch queue {}: {e}; the device needs a reset",
                self.name,
                self.queue.index
            );
            self.interrupt.signal_needs_reset();
        }
    }
}

/// Starts a one-queue device: `handler` answering queue 0 of `activation` on a new [`Worker`]
/// named `name` (what a one-queue device's [`VirtioDevice::activate`](crate::VirtioDevice::activate)
/// does).
pub fn start_worker<M: DeviceMemory, H: ChainHandler<M> + 'static>(
    name: &str,
    mut activation: crate::Activation<M>,
    handler: H,
) -> Result<Worker, crate::ActivateError> {
    let queue = activation.take_queue(0)?;
    let crate::Activation { mem, interrupt, .. } = activation;
    let subscriber = QueueHandler::new(name, mem, queue, interrupt.clone(), handler);
    Worker::spawn(name, subscriber, interrupt).map_err(crate::ActivateError::Worker)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{FakeDriver, W};
    use crate::{ActivateError, Activation, DeviceModel, VIRTIO_F_VERSION_1, VirtioDevice};

    /// Answers chains with their first buffer's length, and panics on a buffer of 13 bytes.
    struct Fragile;

    impl ChainHandler for Fragile {
        fn handle(&mut self, _: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
            let len = chain.into_iter().next().map_or(0, |d| d.len());
            assert_ne!(len, 13, "a device bug");
            len
        }
    }

    struct FragileDevice(Option<Worker>);

    impl DeviceModel for FragileDevice {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn features(&self) -> u64 {
            VIRTIO_F_VERSION_1
        }
        fn read_config(&self, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn reset(&mut self) {
            self.0 = None;
        }
    }

    impl VirtioDevice for FragileDevice {
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.0 = Some(start_worker("fragile", a, Fragile)?);
            Ok(())
        }
    }

    #[test]
    fn a_suspended_device_restored_behind_a_new_transport_goes_on_where_it_was() {
        let mut d = FakeDriver::new(Box::new(FragileDevice(None)), 1 << 20, 16);
        d.start(VIRTIO_F_VERSION_1);
        for len in [8, 9, 10] {
            d.add(0, &[(0x40000, len, W)]);
            d.kick(0);
        }
        assert_eq!(d.wait_used(0, 3).len(), 3);
        d.transport.suspend();
        // A request while the device is stopped waits.
        d.add(0, &[(0x40000, 20, W)]);
        d.kick(0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(d.used_idx(0), 3);
        let state: crate::mmio::MmioState =
            serde_json::from_str(&serde_json::to_string(&d.transport.state()).unwrap()).unwrap();
        assert_eq!(state.status & 4, 4, "DRIVER_OK is kept");
        // A new transport and device over the same memory: the restored VM of a snapshot.
        let irq = d.irq.try_clone().unwrap();
        let mut t =
            crate::MmioTransport::new(Box::new(FragileDevice(None)), d.mem.clone(), irq).unwrap();
        t.restore(&state).unwrap();
        assert_eq!(t.state(), state);
        t.resume();
        d.transport = t;
        assert_eq!(d.wait_used(0, 1)[0].1, 20, "the waiting request is served");
        assert_eq!(d.used_idx(0), 4);
        d.add(0, &[(0x40000, 5, W)]);
        d.kick(0);
        assert_eq!(d.wait_used(0, 1)[0].1, 5);
    }

    #[test]
    fn a_device_whose_worker_panics_needs_a_reset_and_a_reset_restarts_it() {
        let mut d = FakeDriver::new(Box::new(FragileDevice(None)), 1 << 20, 16);
        d.start(VIRTIO_F_VERSION_1);
        d.add(0, &[(0x40000, 8, W)]);
        d.kick(0);
        assert_eq!(d.wait_used(0, 1)[0].1, 8);
        // The device's bug: its worker panics. The driver sees DEVICE_NEEDS_RESET and a
        // configuration interrupt; the process goes on.
        d.add(0, &[(0x40000, 13, W)]);
        d.kick(0);
        d.wait_for("DEVICE_NEEDS_RESET", |d| d.status() & 64 != 0);
        assert_ne!(d.r(0x60) & 2, 0, "configuration interrupt");
        // The driver's reset stops the dead worker; the device works again.
        d.start(VIRTIO_F_VERSION_1);
        assert_eq!(d.status() & 64, 0);
        d.add(0, &[(0x40000, 5, W)]);
        d.kick(0);
        assert_eq!(d.wait_used(0, 1)[0].1, 5);
    }
}
