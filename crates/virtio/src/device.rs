//! The trait a virtio device model implements, without knowing the transport under it.

use std::sync::Arc;

use memory::GuestMemoryMmap;
use virtio_queue::Queue;
use vm_memory::GuestMemoryBackend;
use vmm_sys_util::eventfd::EventFd;

use crate::Interrupt;

/// A queue the driver set up, handed to the device when the driver is done (DRIVER_OK).
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue's index.
    pub index: u16,
    /// Its state: size, ring addresses, event-index mode.
    pub queue: Queue,
    /// Signalled when the driver notifies the queue (an ioeventfd: no exit to userspace).
    pub kick: EventFd,
}

/// Guest memory a device can work in: any [`GuestMemoryBackend`] a device's worker thread can own
/// a handle to. kvmkit's own is [`memory::GuestMemoryMmap`] (the default everywhere); a
/// `vm_memory::GuestMemoryMmap<()>` (no dirty-page bitmap) or another backend works as well.
pub trait DeviceMemory: GuestMemoryBackend + Clone + Send + Sync + 'static {}

impl<T: GuestMemoryBackend + Clone + Send + Sync + 'static> DeviceMemory for T {}

/// What a device gets when the driver activates it.
#[derive(Debug)]
pub struct Activation<M = GuestMemoryMmap> {
    /// Guest memory, where the rings and buffers are.
    pub mem: M,
    /// The features the driver accepted.
    pub features: u64,
    /// The queues the driver made ready, in index order.
    pub queues: Vec<ActiveQueue>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

impl<M> Activation<M> {
    /// Takes queue `index` out of [`Activation::queues`]: a device's `activate` picks its queues
    /// this way, and fails with [`ActivateError::QueueNotReady`] if the driver did not set one up.
    pub fn take_queue(&mut self, index: u16) -> Result<ActiveQueue, ActivateError> {
        let at = self
            .queues
            .iter()
            .position(|q| q.index == index)
            .ok_or(ActivateError::QueueNotReady(index))?;
        Ok(self.queues.remove(at))
    }
}

/// Why a device could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivateError {
    /// The driver did not set up a queue the device needs.
    #[error("virtio: queue {0} is not ready")]
    QueueNotReady(u16),
    /// The device's worker could not be started.
    #[error("virtio: cannot start the device worker: {0}")]
    Worker(#[source] std::io::Error),
}

/// What a device counts as it works (requests, bytes, errors), for the VMM's metrics. Counters only
/// grow; readers take differences.
pub trait DeviceCounters: Send + Sync + std::fmt::Debug {
    /// The kind of device, as metrics name it (`block`, `net`, `entropy`).
    fn kind(&self) -> &'static str;
    /// Each counter's name and value.
    fn counters(&self) -> Vec<(&'static str, u64)>;
}

/// A virtio device model, whatever guest memory it works in: its identity, features,
/// configuration space, lifecycle and counters. [`VirtioDevice`] adds starting it in guest memory;
/// a device implements both.
///
/// The transport owns the feature negotiation and status state machine and calls
/// [`VirtioDevice::activate`] once the driver sets DRIVER_OK with valid queues, and
/// [`DeviceModel::reset`] when the driver resets the device.
pub trait DeviceModel: Send {
    /// The virtio device id (2 = block, 1 = net, 4 = rng, ...).
    fn device_type(&self) -> u32;

    /// The largest size of each queue; the number of entries is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The feature bits the device offers (including `VIRTIO_F_VERSION_1`).
    fn features(&self) -> u64;

    /// Reads the device configuration space at `offset`. Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes the device configuration space at `offset`; read-only fields ignore writes.
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }

    /// Stops the device (its workers, its queues) and returns it to the state before activation.
    fn reset(&mut self);

    /// Stops the device's work without the driver knowing (a pause, a snapshot): the next
    /// [`VirtioDevice::activate`] goes on where it stopped. A device that keeps state with the
    /// host (open connections) keeps it here; the default is [`DeviceModel::reset`].
    fn pause(&mut self) {
        self.reset();
    }

    /// The transport's registers were restored from a snapshot into this (new) device: what the
    /// device kept with the host when the snapshot was taken is gone. The default does nothing.
    fn restored(&mut self) {}

    /// The device's counters, shared with whoever reports metrics; `None` if it keeps none.
    fn counters(&self) -> Option<Arc<dyn DeviceCounters>> {
        None
    }
}

/// A [`DeviceModel`] that works in guest memory `M` (see [`DeviceMemory`]): what a transport
/// holds. kvmkit's devices implement it for every `M`.
pub trait VirtioDevice<M: DeviceMemory = GuestMemoryMmap>: DeviceModel {
    /// Starts the device on the queues the driver set up.
    fn activate(&mut self, activation: Activation<M>) -> Result<(), ActivateError>;
}

/// What a read of `data.len()` bytes at `offset` of a configuration space holding `config` gives:
/// the bytes that are there, zeros past its end (and for an offset past it). For
/// [`DeviceModel::read_config`].
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}
