//! The device manager: the buses, the address and interrupt allocator, and every device on them,
//! described once.
//!
//! Each device goes on a bus through the manager, which records what the guest must be told about
//! it. The same record gives the ACPI DSDT its devices ([`DeviceManager::acpi_config`]) and the
//! kernel command line its `virtio_mmio.device=` entries ([`DeviceManager::cmdline_entries`]), so the
//! two never disagree. The buses take devices at any time, also while the vCPUs run.
//!
//! ```text
//!   config::DevicesConfig ──catalog──► DeviceManager::add_virtio ──► MMIO bus (window + alias)
//!   legacy::place ──────────────────► DeviceManager::add_port   ──► PIO bus
//!                                          │
//!                      acpi_config() ◄─────┴────► cmdline_entries()
//! ```

mod catalog;
pub mod hvc;
pub mod hvc_socket;
mod legacy;
mod virtio;
pub mod vsock;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use ::legacy::PortRange;
use bus::{Bus, SharedDevice};
use machine::acpi::{AcpiConfig, IsaDevice, MmioDevice, PowerPorts};
use memory::Allocator;

pub use self::catalog::{add_configured, disk_name};
pub use self::legacy::{Legacy, place as place_legacy};
pub use self::virtio::VirtioSlot;

/// Errors from putting devices on the machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused an irqfd or ioeventfd.
    #[error(transparent)]
    Accel(#[from] accel::Error),
    /// Two devices claimed the same addresses.
    #[error("cannot place a device: {0}")]
    Bus(#[from] bus::Error),
    /// No device window or interrupt line is left.
    #[error("cannot place a device: {0}")]
    Allocate(#[from] memory::AllocError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A device thread (the console's writer) could not be started.
    #[error("cannot start a device thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A virtio transport could not be created.
    #[error(transparent)]
    Virtio(#[from] ::virtio::mmio::Error),
    /// A disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] virtio_devices::block::disk::Error),
    /// A network device's tap cannot be used.
    #[error(transparent)]
    Net(#[from] virtio_devices::net::Error),
    /// The virtio console's host side cannot be set up.
    #[error(transparent)]
    Console(#[from] hvc::Error),
    /// The vsock device's host side cannot be set up.
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    /// More virtio devices than free interrupt lines (each device has a line of its own).
    #[error(
        "too many virtio devices: {asked} asked for (disks, network cards, the entropy device \
         the console and vsock together), room for {room}"
    )]
    TooMany {
        /// Disks, network cards and the rng asked for.
        asked: usize,
        /// How many fit.
        room: usize,
    },
}

/// The address spaces a vCPU's exits go to.
#[derive(Debug, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Owns the buses and the allocator, and knows every device placed through it.
#[derive(Debug)]
pub struct DeviceManager {
    buses: Arc<Buses>,
    allocator: Allocator,
    acpi: bool,
    /// Set when the guest's ACPI interpreter runs the DSDT's `\_SB._INI`: the guest takes its
    /// devices from ACPI, and the command line's aliases turn into placeholders.
    ospm_seen: Arc<AtomicBool>,
    isa: Vec<IsaDevice>,
    power: Option<PowerPorts>,
    ospm_probe: Option<u16>,
    power_button: Option<u32>,
    virtio: Vec<VirtioSlot>,
    /// The output buffers of consoles other than the UART, drained at the VM's end.
    console_drains: Vec<crate::console_buffer::ConsoleDrain>,
    /// Where the virtio console's terminal size changes come from.
    console_resize: Option<hvc::ResizeSource>,
    /// A socket console's relay, stopped (and its socket removed) with the devices.
    console_relay: Option<hvc_socket::SocketConsole>,
    /// The vsock device's host socket, removed with the devices.
    vsock_socket: Option<vsock::HostSocket>,
}

impl DeviceManager {
    /// An empty machine; `acpi` says whether the guest gets ACPI tables.
    pub fn new(acpi: bool) -> Self {
        Self {
            buses: Arc::default(),
            allocator: Allocator::new(),
            acpi,
            ospm_seen: Arc::default(),
            isa: Vec::new(),
            power: None,
            ospm_probe: None,
            power_button: None,
            virtio: Vec::new(),
            console_drains: Vec::new(),
            console_resize: None,
            console_relay: None,
            vsock_socket: None,
        }
    }

    /// Where the virtio console's terminal size changes come from, for the event loop (taken
    /// once).
    pub fn take_console_resize(&mut self) -> Option<hvc::ResizeSource> {
        self.console_resize.take()
    }

    /// The output buffers of the virtio consoles, for the VM's end to drain (taken once).
    pub fn take_console_drains(&mut self) -> Vec<crate::console_buffer::ConsoleDrain> {
        std::mem::take(&mut self.console_drains)
    }

    /// The buses, shared with the vCPU threads.
    pub fn buses(&self) -> &Arc<Buses> {
        &self.buses
    }

    /// Whether the guest gets ACPI tables.
    pub fn acpi(&self) -> bool {
        self.acpi
    }

    /// Set once the guest's ACPI interpreter ran `\_SB._INI` (the command line's device aliases then
    /// read as placeholders).
    pub fn ospm_seen(&self) -> &Arc<AtomicBool> {
        &self.ospm_seen
    }

    /// Puts `device` on the port bus at `at`; `isa` is how the DSDT describes it, if it does.
    pub fn add_port(
        &mut self,
        device: SharedDevice,
        at: PortRange,
        isa: Option<IsaDevice>,
    ) -> Result<(), Error> {
        self.buses
            .pio
            .insert(device, u64::from(at.base), u64::from(at.len))?;
        self.isa.extend(isa);
        Ok(())
    }

    /// The virtio-mmio devices placed so far, in order.
    pub fn virtio(&self) -> &[VirtioSlot] {
        &self.virtio
    }

    /// What the ACPI tables say about the machine: `cpus` vCPUs and every device placed here.
    pub fn acpi_config(&self, cpus: u32) -> Option<AcpiConfig> {
        let power = self.power.filter(|_| self.acpi)?;
        let mut config = AcpiConfig::new(cpus, power);
        config.isa = self.isa.clone();
        config.virtio_mmio = self
            .virtio
            .iter()
            .map(|s| MmioDevice {
                base: s.base,
                size: ::virtio::mmio::WINDOW_SIZE as u32,
                irq: s.irq,
            })
            .collect();
        config.ospm_probe = self.ospm_probe;
        config.power_button = self.power_button;
        Some(config)
    }

    /// Each virtio device's counters, keyed `<kind>_<name>` (`block_vda`, `net_eth0`, ...), for
    /// metrics.
    pub fn counters(&self) -> Vec<(String, Arc<dyn ::virtio::DeviceCounters>)> {
        self.virtio
            .iter()
            .filter_map(|s| {
                let c = s.counters.clone()?;
                Some((format!("{}_{}", c.kind(), s.name), c))
            })
            .collect()
    }

    /// The `virtio_mmio.device=` kernel parameters for the virtio devices: their windows without
    /// ACPI, their aliases with it (which turn into placeholders once the guest's ACPI runs).
    pub fn cmdline_entries(&self) -> Vec<String> {
        self.virtio
            .iter()
            .map(|s| ::virtio::cmdline_device(s.cmdline_base(), s.irq))
            .collect()
    }
}
