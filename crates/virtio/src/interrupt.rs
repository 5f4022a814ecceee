//! The interrupt a virtio device raises: a status word the driver reads and acknowledges, and an
//! `EventFd` the VMM registers as a KVM irqfd so that raising it costs no exit.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// InterruptStatus bit 0: the device used a buffer in a queue.
pub const INT_USED_RING: u32 = 1;
/// InterruptStatus bit 1: the device's configuration (or status: DEVICE_NEEDS_RESET) changed.
pub const INT_CONFIG: u32 = 2;

/// A device's interrupt line and its InterruptStatus register.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFd,
}

impl Interrupt {
    /// An interrupt that triggers `irq` (an irqfd, or any eventfd in tests).
    pub fn new(irq: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        }
    }

    /// Tells the driver that buffers were used.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Tells the driver that the configuration or the device status changed.
    pub fn signal_config(&self) {
        self.raise(INT_CONFIG);
    }

    /// The device hit an error it cannot recover from without a reset (a broken queue): the transport
    /// shows DEVICE_NEEDS_RESET in the device status, and the driver gets a configuration interrupt.
    pub fn signal_needs_reset(&self) {
        self.needs_reset.store(true, Ordering::SeqCst);
        self.signal_config();
    }

    /// Whether [`Interrupt::signal_needs_reset`] was called since the last reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    fn raise(&self, bits: u32) {
        self.status.fetch_or(bits, Ordering::SeqCst);
        // A failed write means the counter is saturated: an interrupt is pending anyway.
        if let Err(e) = self.irq.write(1) {
            log::warn!("virtio: cannot trigger the interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Sets the status bits and the needs-reset flag as a snapshot had them (no interrupt is raised:
    /// a restored guest still has the interrupt KVM's irqchip state carries).
    pub fn restore(&self, status: u32, needs_reset: bool) {
        self.status.store(status, Ordering::SeqCst);
        self.needs_reset.store(needs_reset, Ordering::SeqCst);
    }

    /// Clears every bit and the needs-reset flag (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// The eventfd behind the interrupt, to register as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.irq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_sets_status_and_triggers_ack_clears() {
        let i = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        i.signal_used_queue();
        i.signal_config();
        assert_eq!(i.status(), INT_USED_RING | INT_CONFIG);
        assert_eq!(i.eventfd().read().unwrap(), 2);
        i.acknowledge(INT_USED_RING);
        assert_eq!(i.status(), INT_CONFIG);
        i.reset();
        assert_eq!(i.status(), 0);
    }
}
