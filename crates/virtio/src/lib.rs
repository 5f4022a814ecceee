#![doc = include_str!("../README.md")]

pub mod alias;
pub mod device;
pub mod interrupt;
pub mod mmio;
pub mod queue;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod worker;

pub use alias::MmioAlias;
pub use device::{
    ActivateError, Activation, ActiveQueue, DeviceCounters, DeviceMemory, DeviceModel,
    VirtioDevice, read_config_bytes,
};
pub use interrupt::Interrupt;
pub use mmio::MmioTransport;
pub use queue::{ChainHandler, QueueHandler, drain, notify_used, start_worker};
pub use worker::{QueueError, Worker, WorkerRole, on_thread_start};

/// Feature bit: the device complies with virtio 1.x (required by the modern transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Feature bit: the used/available event index fields suppress notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
/// Feature bit: descriptors may point at indirect descriptor tables.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

/// The `virtio_mmio.device=` kernel parameter that announces a device at `base` with `irq`, for
/// kernels that do not find it through ACPI.
///
/// ```
/// assert_eq!(kvmkit_virtio::cmdline_device(0xd000_0000, 5), "virtio_mmio.device=4K@0xd0000000:5");
/// ```
pub fn cmdline_device(base: u64, irq: u32) -> String {
    format!(
        "virtio_mmio.device={}K@{base:#x}:{irq}",
        mmio::WINDOW_SIZE >> 10
    )
}

#[cfg(test)]
mod mmio_tests;
