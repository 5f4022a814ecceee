//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2): the register window a driver
//! uses to discover a device, negotiate features, set up queues and drive the device status.
//!
//! ```text
//! 0x000 MagicValue "virt"   0x030 QueueSel        0x070 Status
//! 0x004 Version 2           0x034 QueueNumMax     0x080 QueueDescLow/High
//! 0x008 DeviceID            0x038 QueueNum        0x090 QueueDriverLow/High (avail ring)
//! 0x00c VendorID            0x044 QueueReady      0x0a0 QueueDeviceLow/High (used ring)
//! 0x010 DeviceFeatures      0x050 QueueNotify     0x0ac SHMSel, 0x0b0 SHMLen, 0x0b8 SHMBase
//! 0x014 DeviceFeaturesSel   0x060 InterruptStatus 0x0fc ConfigGeneration
//! 0x020 DriverFeatures      0x064 InterruptACK    0x100 device configuration space
//! 0x024 DriverFeaturesSel
//! ```
//!
//! Queue notifications are meant to arrive as ioeventfds ([`MmioTransport::queue_events`], registered
//! by the VMM at [`NOTIFY_OFFSET`] with the queue index as datamatch), so a kick costs no exit; a
//! QueueNotify write that does reach the transport signals the same eventfd.
//!
//! The guest may write anything: a register access of the wrong width, a queue index out of range, a
//! status that clears bits, a queue set up after DRIVER_OK, misaligned or unmapped rings. Each is
//! ignored with a log line, or (rings that do not fit guest memory at DRIVER_OK) answered with
//! DEVICE_NEEDS_RESET. Nothing a guest writes panics the VMM.

use std::sync::Arc;

use bus::BusDevice;
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{Activation, ActiveQueue, DeviceMemory, VirtioDevice};
use crate::interrupt::Interrupt;

#[path = "mmio_state.rs"]
mod state;
pub use state::{MmioState, QueueRegisters, RestoreError};

/// "virt", little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The transport version: 2 is the modern (virtio 1.x) register layout.
pub const VERSION: u32 = 2;
/// The size of the register window one device occupies.
pub const WINDOW_SIZE: u64 = 0x1000;
/// Where the QueueNotify register is in the window (the ioeventfd address).
pub const NOTIFY_OFFSET: u64 = 0x50;
/// Where the device configuration space starts in the window.
pub const CONFIG_OFFSET: u64 = 0x100;

const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
const REG_QUEUE_NOTIFY: u64 = NOTIFY_OFFSET;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_SHM_SEL: u64 = 0x0ac;
const REG_SHM_LEN_LOW: u64 = 0x0b0;
const REG_SHM_LEN_HIGH: u64 = 0x0b4;
const REG_SHM_BASE_LOW: u64 = 0x0b8;
const REG_SHM_BASE_HIGH: u64 = 0x0bc;
const REG_CONFIG_GENERATION: u64 = 0x0fc;

/// Vendor id "KVMK" (the virtio-mmio vendor id is free-form).
const VENDOR_ID: u32 = u32::from_le_bytes(*b"KVMK");

/// A virtio device behind the virtio-mmio register window.
///
/// `M` is the guest memory the rings and buffers are in (see [`DeviceMemory`]).
pub struct MmioTransport<M: DeviceMemory = GuestMemoryMmap> {
    device: Box<dyn VirtioDevice<M>>,
    mem: M,
    interrupt: Arc<Interrupt>,
    queues: Vec<Queue>,
    kicks: Vec<EventFd>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    config_generation: u32,
    active: bool,
}

impl<M: DeviceMemory> std::fmt::Debug for MmioTransport<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("active", &self.active)
            .finish()
    }
}

/// Errors from creating a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A queue size the virtio-queue crate refuses (zero, not a power of two, above 32768).
    #[error("virtio-mmio: invalid maximum queue size {0}")]
    QueueSize(u16),
    /// An eventfd could not be created.
    #[error("virtio-mmio: cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

impl<M: DeviceMemory> MmioTransport<M> {
    /// Puts `device` behind a register window; `irq` is the eventfd its interrupt triggers.
    pub fn new(device: Box<dyn VirtioDevice<M>>, mem: M, irq: EventFd) -> Result<Self, Error> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|_| Error::QueueSize(max)))
            .collect::<Result<Vec<_>, _>>()?;
        let kicks = queues
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            device,
            mem,
            interrupt: Arc::new(Interrupt::new(irq)),
            queues,
            kicks,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            config_generation: 0,
            active: false,
        })
    }

    /// The eventfd of each queue, in index order: register each as an ioeventfd at
    /// `base + NOTIFY_OFFSET` with the queue index as a 4-byte datamatch.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.kicks
    }

    /// The device's interrupt (its eventfd is the irqfd to register).
    pub fn interrupt(&self) -> &Arc<Interrupt> {
        &self.interrupt
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    /// Whether the device is running (the driver set DRIVER_OK and activation succeeded).
    pub fn is_active(&self) -> bool {
        self.active
    }

    fn has(&self, bit: u32) -> bool {
        self.status & bit != 0
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, on a queue not yet ready.
    fn queue_config_allowed(&self) -> bool {
        self.has(VIRTIO_CONFIG_S_FEATURES_OK)
            && !self.has(VIRTIO_CONFIG_S_DRIVER_OK)
            && !self.has(VIRTIO_CONFIG_S_FAILED)
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
        }
        self.active = false;
        for q in &mut self.queues {
            q.reset();
        }
        // Drop kicks that arrived before the reset: the next activation starts clean.
        for k in &self.kicks {
            let _ = k.read();
        }
        self.interrupt.reset();
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only adds bits (or FAILED); clearing one takes a reset.
        if value & self.status != self.status {
            log::warn!(
                "virtio-mmio: status {value:#x} clears bits of {:#x} without a reset; ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let mut status = value;
        if added & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let offered = self.device.features();
            let unoffered = self.driver_features & !offered;
            if unoffered != 0 || self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                log::warn!(
                    "virtio-mmio: driver features {:#x} not acceptable (offered {offered:#x})",
                    self.driver_features
                );
                status &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if added & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            let needed =
                VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
            if status & needed != needed {
                log::warn!("virtio-mmio: DRIVER_OK before FEATURES_OK; ignored");
                status &= !VIRTIO_CONFIG_S_DRIVER_OK;
            } else {
                self.status = status;
                self.activate();
                return;
            }
        }
        self.status = status;
    }

    fn activate(&mut self) {
        if self.active {
            return;
        }
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::new();
        for (index, q) in self.queues.iter_mut().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                log::warn!(
                    "virtio-mmio: queue {index} (size {}) has rings outside guest memory; device needs reset",
                    q.size()
                );
                self.interrupt.signal_needs_reset();
                return;
            }
            q.set_event_idx(event_idx);
            let kick = match self.kicks[index].try_clone() {
                Ok(k) => k,
                Err(e) => {
                    log::error!("virtio-mmio: cannot clone queue {index}'s eventfd: {e}");
                    self.interrupt.signal_needs_reset();
                    return;
                }
            };
            // The device gets its own copy of the queue's state; the transport keeps the registers.
            let queue = match Queue::try_from(q.state()) {
                Ok(queue) => queue,
                Err(e) => {
                    log::warn!("virtio-mmio: queue {index}: {e}; device needs reset");
                    self.interrupt.signal_needs_reset();
                    return;
                }
            };
            queues.push(ActiveQueue {
                index: index as u16,
                queue,
                kick,
            });
        }
        let activation = Activation {
            mem: self.mem.clone(),
            features: self.driver_features,
            queues,
            interrupt: self.interrupt.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("virtio-mmio: {e}; device needs reset");
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => queue.map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => queue.map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            // No shared memory regions: length and base read as all ones.
            REG_SHM_LEN_LOW | REG_SHM_LEN_HIGH | REG_SHM_BASE_LOW | REG_SHM_BASE_HIGH => u32::MAX,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = value,
            REG_DRIVER_FEATURES => {
                if !self.has(VIRTIO_CONFIG_S_DRIVER) || self.has(VIRTIO_CONFIG_S_FEATURES_OK) {
                    log::warn!("virtio-mmio: driver features written outside negotiation; ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => {
                        self.driver_features =
                            (self.driver_features & !0xffff_ffff) | u64::from(value)
                    }
                    1 => {
                        self.driver_features =
                            (self.driver_features & 0xffff_ffff) | (u64::from(value) << 32)
                    }
                    sel => log::warn!("virtio-mmio: driver features word {sel} does not exist"),
                }
            }
            REG_QUEUE_SEL => self.queue_sel = value,
            REG_QUEUE_NOTIFY => match self.kicks.get(value as usize) {
                Some(kick) => {
                    if let Err(e) = kick.write(1) {
                        log::warn!("virtio-mmio: cannot signal queue {value}: {e}");
                    }
                }
                None => log::warn!("virtio-mmio: notify for queue {value}, which does not exist"),
            },
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.write_status(value),
            REG_QUEUE_NUM
            | REG_QUEUE_READY
            | REG_QUEUE_DESC_LOW
            | REG_QUEUE_DESC_HIGH
            | REG_QUEUE_DRIVER_LOW
            | REG_QUEUE_DRIVER_HIGH
            | REG_QUEUE_DEVICE_LOW
            | REG_QUEUE_DEVICE_HIGH => self.write_queue_register(offset, value),
            REG_SHM_SEL => {}
            _ => log::warn!(
                "virtio-mmio: write of {value:#x} to read-only or unknown register {offset:#x}"
            ),
        }
    }

    fn write_queue_register(&mut self, offset: u64, value: u32) {
        // Clearing QueueReady is how a driver may take a queue back before DRIVER_OK.
        let allowed = self.queue_config_allowed()
            || (offset == REG_QUEUE_READY
                && value == 0
                && self.has(VIRTIO_CONFIG_S_FEATURES_OK)
                && !self.has(VIRTIO_CONFIG_S_DRIVER_OK));
        let sel = self.queue_sel;
        let Some(q) = self.selected_queue().filter(|_| allowed) else {
            log::warn!(
                "virtio-mmio: queue {sel} register {offset:#x} written when it may not be; ignored"
            );
            return;
        };
        // virtio-queue checks sizes (power of two, at most the maximum) and ring alignments, and
        // leaves the queue unchanged (with a log line) when they are wrong.
        match offset {
            REG_QUEUE_NUM => q.set_size(value.try_into().unwrap_or(0)),
            REG_QUEUE_READY => q.set_ready(value == 1),
            REG_QUEUE_DESC_LOW => q.set_desc_table_address(Some(value), None),
            REG_QUEUE_DESC_HIGH => q.set_desc_table_address(None, Some(value)),
            REG_QUEUE_DRIVER_LOW => q.set_avail_ring_address(Some(value), None),
            REG_QUEUE_DRIVER_HIGH => q.set_avail_ring_address(None, Some(value)),
            REG_QUEUE_DEVICE_LOW => q.set_used_ring_address(Some(value), None),
            REG_QUEUE_DEVICE_HIGH => q.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }
}

impl<M: DeviceMemory> BusDevice for MmioTransport<M> {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= CONFIG_OFFSET {
            self.device.read_config(offset - CONFIG_OFFSET, data);
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            log::warn!(
                "virtio-mmio: {}-byte read at register {offset:#x}; registers are 4-byte aligned words",
                data.len()
            );
            return;
        }
        data.copy_from_slice(&self.read_register(offset).to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset >= CONFIG_OFFSET {
            if self.has(VIRTIO_CONFIG_S_FAILED) {
                return;
            }
            self.device.write_config(offset - CONFIG_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        let Ok(word) = <[u8; 4]>::try_from(data) else {
            log::warn!(
                "virtio-mmio: {}-byte write at register {offset:#x}; registers are 4-byte aligned words",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            log::warn!("virtio-mmio: misaligned write at register {offset:#x}");
            return;
        }
        self.write_register(offset, u32::from_le_bytes(word));
    }
}

impl<M: DeviceMemory> Drop for MmioTransport<M> {
    fn drop(&mut self) {
        if self.active {
            self.device.reset();
        }
    }
}
