//! Putting a virtio device on the machine: a 4 KiB virtio-mmio window and an interrupt line from the
//! allocator, each queue's notification eventfd registered with KVM as an ioeventfd (a kick never
//! exits to userspace), the interrupt eventfd as an irqfd, and the transport on the MMIO bus.
//!
//! With ACPI the device gets a second window, an alias for the kernel command line
//! ([`virtio::MmioAlias`]): a kernel without ACPI drives the device through it, and for a kernel with
//! ACPI it becomes an empty placeholder once the kernel's ACPI interpreter runs, so that the device
//! is probed once, through the DSDT.

use std::sync::{Arc, Mutex};

use bus::SharedDevice;
use memory::GuestMemoryMmap;
use virtio::mmio::{NOTIFY_OFFSET, WINDOW_SIZE};
use virtio::{DeviceCounters, MmioAlias, MmioTransport, VirtioDevice};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceManager, Error};

/// Where a virtio-mmio device sits, and what it is.
#[derive(Clone)]
pub struct VirtioSlot {
    /// Its name (`vda`, `net0`, `rng0`): worker thread and log lines.
    pub name: String,
    /// The virtio device type (2 block, 1 net, 4 rng...).
    pub device_type: u32,
    /// Base of the register window (the DSDT's, or the command line's without ACPI).
    pub base: u64,
    /// Base of the command line's alias window, with ACPI.
    pub alias: Option<u64>,
    /// Its interrupt line.
    pub irq: u32,
    /// The transport, shared with the MMIO bus.
    pub transport: Arc<Mutex<MmioTransport>>,
    /// What the device counts, for metrics.
    pub counters: Option<Arc<dyn DeviceCounters>>,
}

impl std::fmt::Debug for VirtioSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioSlot")
            .field("name", &self.name)
            .field("device_type", &self.device_type)
            .field("base", &format_args!("{:#x}", self.base))
            .field("alias", &self.alias.map(|a| format!("{a:#x}")))
            .field("irq", &self.irq)
            .finish()
    }
}

impl VirtioSlot {
    /// The window the kernel command line names.
    pub fn cmdline_base(&self) -> u64 {
        self.alias.unwrap_or(self.base)
    }
}

impl DeviceManager {
    /// Puts `device`, named `name`, behind a new virtio-mmio window (and with ACPI, an alias).
    pub fn add_virtio(
        &mut self,
        vm: &accel::Vm,
        mem: &GuestMemoryMmap,
        name: &str,
        device: Box<dyn VirtioDevice>,
    ) -> Result<&VirtioSlot, Error> {
        let device_type = device.device_type();
        let counters = device.counters();
        let base = self.allocator.mmio(WINDOW_SIZE, WINDOW_SIZE)?;
        let alias = if self.acpi {
            Some(self.allocator.mmio(WINDOW_SIZE, WINDOW_SIZE)?)
        } else {
            None
        };
        let irq = self.allocator.irq()?;
        let irq_evt = EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)?;
        vm.register_irqfd(&irq_evt, irq)?;
        let transport = MmioTransport::new(device, mem.clone(), irq_evt)?;
        for (index, kick) in transport.queue_events().iter().enumerate() {
            for window in std::iter::once(base).chain(alias) {
                vm.register_ioeventfd(kick, window + NOTIFY_OFFSET, index as u32)?;
            }
        }
        let transport = Arc::new(Mutex::new(transport));
        let shared: SharedDevice = transport.clone();
        self.buses.mmio.insert(shared.clone(), base, WINDOW_SIZE)?;
        if let Some(alias) = alias {
            let window = MmioAlias::new(shared, self.ospm_seen.clone());
            self.buses
                .mmio
                .insert(Arc::new(Mutex::new(window)), alias, WINDOW_SIZE)?;
        }
        self.virtio.push(VirtioSlot {
            name: name.to_owned(),
            device_type,
            base,
            alias,
            irq,
            transport,
            counters,
        });
        Ok(&self.virtio[self.virtio.len() - 1])
    }
}
