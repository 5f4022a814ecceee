//! A virtio-mmio transport's state, for snapshots: what the driver wrote to its registers.
//!
//! The queues' positions are not saved: while a device is suspended nothing is in flight, and every
//! device kvmkit has returns each chain it takes to the used ring before it takes the next, so on
//! resume both the next available and the next used index are the used ring's index in guest memory
//! (which the snapshot's memory carries).
//!
//! ```text
//!   pause vCPUs ─► suspend() (the worker stops; nothing in flight) ─► state() ─► save memory
//!                  └─ resume() to go on               restore(state) + resume() in a new VM ─┘
//! ```

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};

use super::MmioTransport;

/// One queue's registers as the driver set them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRegisters {
    /// QueueNum.
    pub size: u16,
    /// QueueReady.
    pub ready: bool,
    /// The descriptor table's guest address.
    pub desc_table: u64,
    /// The available ring's guest address.
    pub avail_ring: u64,
    /// The used ring's guest address.
    pub used_ring: u64,
}

/// The transport's registers, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    /// The virtio device type (a snapshot restores only into the same kind of device).
    pub device_type: u32,
    /// The device status register (without NEEDS_RESET, which is `needs_reset`).
    pub status: u32,
    /// DeviceFeaturesSel.
    pub device_features_sel: u32,
    /// DriverFeaturesSel.
    pub driver_features_sel: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// QueueSel.
    pub queue_sel: u32,
    /// ConfigGeneration.
    pub config_generation: u32,
    /// Each queue's registers.
    pub queues: Vec<QueueRegisters>,
    /// InterruptStatus.
    pub interrupt_status: u32,
    /// Whether the device shows DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
}

/// Why a transport state cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The snapshot's device is of another type.
    #[error("virtio-mmio: snapshot has a device of type {found}, this one is {expected}")]
    DeviceType {
        /// This transport's device type.
        expected: u32,
        /// The snapshot's.
        found: u32,
    },
    /// A queue count or size the device does not have.
    #[error("virtio-mmio: snapshot queue {0} does not fit this device")]
    Queue(usize),
}

impl MmioTransport {
    /// Stops the device's work (its worker ends; what it was doing is done) without the driver
    /// noticing: the registers stay, DRIVER_OK included. Kicks that arrive meanwhile wait in their
    /// eventfds. Nothing happens if the device is not running.
    pub fn suspend(&mut self) {
        if self.active {
            self.device.pause();
            self.active = false;
        }
    }

    /// Starts the device again after [`MmioTransport::suspend`] (or [`MmioTransport::restore`]) if the
    /// driver had set DRIVER_OK: each ready queue resumes at its used ring's index in guest memory.
    /// A device that needs a reset stays stopped until the driver resets it.
    pub fn resume(&mut self) {
        if self.active
            || !self.has(virtio_bindings::virtio_config::VIRTIO_CONFIG_S_DRIVER_OK)
            || self.interrupt.needs_reset()
        {
            return;
        }
        for q in self.queues.iter_mut().filter(|q| q.ready()) {
            if let Ok(used) = q.used_idx(&self.mem, Ordering::Acquire) {
                q.set_next_used(used.0);
                q.set_next_avail(used.0);
            }
        }
        self.activate();
        // Work the driver asked for while the device was stopped: in this process its kicks wait in
        // the eventfds the new worker watches; in a restored VM they went to the old process's. One
        // kick per queue makes the device look at what is available (an extra look finds nothing).
        for (q, kick) in self.queues.iter().zip(&self.kicks) {
            if q.ready() {
                let _ = kick.write(1);
            }
        }
    }

    /// The registers, as the driver left them.
    pub fn state(&self) -> MmioState {
        MmioState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            queues: self
                .queues
                .iter()
                .map(|q| QueueRegisters {
                    size: q.size(),
                    ready: q.ready(),
                    desc_table: q.desc_table(),
                    avail_ring: q.avail_ring(),
                    used_ring: q.used_ring(),
                })
                .collect(),
            interrupt_status: self.interrupt.status(),
            needs_reset: self.interrupt.needs_reset(),
        }
    }

    /// Sets the registers as `state` has them, on a transport whose device is not running; call
    /// [`MmioTransport::resume`] (once guest memory is in place) to start the device.
    pub fn restore(&mut self, state: &MmioState) -> Result<(), RestoreError> {
        let expected = self.device.device_type();
        if state.device_type != expected {
            return Err(RestoreError::DeviceType {
                expected,
                found: state.device_type,
            });
        }
        if state.queues.len() != self.queues.len() {
            return Err(RestoreError::Queue(state.queues.len()));
        }
        self.suspend();
        let mut queues = Vec::with_capacity(state.queues.len());
        for (i, (regs, q)) in state.queues.iter().zip(&self.queues).enumerate() {
            let mut queue = Queue::new(q.max_size()).map_err(|_| RestoreError::Queue(i))?;
            if regs.size != 0 {
                queue
                    .try_set_size(regs.size)
                    .map_err(|_| RestoreError::Queue(i))?;
            }
            queue
                .try_set_desc_table_address(vm_memory::GuestAddress(regs.desc_table))
                .map_err(|_| RestoreError::Queue(i))?;
            queue
                .try_set_avail_ring_address(vm_memory::GuestAddress(regs.avail_ring))
                .map_err(|_| RestoreError::Queue(i))?;
            queue
                .try_set_used_ring_address(vm_memory::GuestAddress(regs.used_ring))
                .map_err(|_| RestoreError::Queue(i))?;
            queue.set_ready(regs.ready);
            queues.push(queue);
        }
        self.queues = queues;
        self.status = state.status;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.config_generation = state.config_generation;
        self.interrupt
            .restore(state.interrupt_status, state.needs_reset);
        self.device.restored();
        Ok(())
    }
}
