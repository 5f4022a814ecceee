//! Putting virtio devices on the machine: a 4 KiB virtio-mmio window and an interrupt line from the
//! allocator, each queue's notification eventfd registered with KVM as an ioeventfd (a kick never exits
//! to userspace) and the interrupt eventfd as an irqfd, and the transport on the MMIO bus.

use std::sync::{Arc, Mutex};

use accel::EventFd;
use memory::Allocator;
use virtio::mmio::{NOTIFY_OFFSET, WINDOW_SIZE};
use virtio::{MmioTransport, VirtioDevice};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use crate::vm::Error;

/// Where a virtio-mmio device sits: its window and its interrupt (GSI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// Base of the register window.
    pub base: u64,
    /// Its interrupt line.
    pub irq: u32,
}

/// Adds `device` behind a new virtio-mmio window.
pub fn add_device(
    vm: &accel::Vm,
    mem: &GuestMemoryMmap,
    mmio: &mut bus::Bus,
    allocator: &mut Allocator,
    device: Box<dyn VirtioDevice>,
) -> Result<VirtioSlot, Error> {
    let base = allocator.mmio(WINDOW_SIZE, WINDOW_SIZE)?;
    let irq = allocator.irq()?;
    let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
    vm.register_irqfd(&irq_evt, irq)?;
    let transport = MmioTransport::new(device, mem.clone(), irq_evt)?;
    for (index, kick) in transport.queue_events().iter().enumerate() {
        vm.register_ioeventfd(kick, base + NOTIFY_OFFSET, index as u32)?;
    }
    mmio.insert(Arc::new(Mutex::new(transport)), base, WINDOW_SIZE)?;
    Ok(VirtioSlot { base, irq })
}
