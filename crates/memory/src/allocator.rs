//! Hands out MMIO ranges, port ranges and interrupt lines to devices, without overlaps.

use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator};

use crate::layout::{MMIO_DEVICES_END, MMIO_DEVICES_START};

/// Errors from the resource allocator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No room left (or the exact range asked for is taken).
    #[error("cannot allocate {what} of size {size:#x}: {source}")]
    Exhausted {
        /// Which resource ran out.
        what: &'static str,
        /// The size asked for.
        size: u64,
        /// vm-allocator's reason.
        #[source]
        source: vm_allocator::Error,
    },
    /// No interrupt line left.
    #[error("no free interrupt line: {0}")]
    Irq(#[source] vm_allocator::Error),
}

/// First interrupt line handed to devices: 0-4 belong to the PIT, keyboard, cascade and COM ports.
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// Last interrupt line handed to devices (the IOAPIC has 24 pins).
pub const LAST_DEVICE_IRQ: u32 = 23;
/// Port-I/O space handed to devices: above the legacy PC ports.
const PIO_START: u64 = 0x1000;
const PIO_END: u64 = 0xffff;

/// Allocates the MMIO, port-I/O and interrupt resources of a VM's devices.
#[derive(Debug)]
pub struct Allocator {
    mmio: AddressAllocator,
    pio: AddressAllocator,
    irqs: IdAllocator,
}

impl Default for Allocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Allocator {
    /// An allocator over kvmkit's device windows.
    pub fn new() -> Self {
        // These ranges are constants known to be valid, so construction cannot fail.
        let mmio = AddressAllocator::new(MMIO_DEVICES_START, MMIO_DEVICES_END - MMIO_DEVICES_START);
        let pio = AddressAllocator::new(PIO_START, PIO_END - PIO_START + 1);
        let irqs = IdAllocator::new(FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ);
        match (mmio, pio, irqs) {
            (Ok(mmio), Ok(pio), Ok(irqs)) => Self { mmio, pio, irqs },
            _ => unreachable!("constant allocator ranges are valid"),
        }
    }

    /// A `size`-byte MMIO range aligned to `align` (a power of two); returns its base.
    pub fn mmio(&mut self, size: u64, align: u64) -> Result<u64, Error> {
        self.mmio
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map(|r| r.start())
            .map_err(|source| Error::Exhausted {
                what: "MMIO range",
                size,
                source,
            })
    }

    /// A `size`-port range aligned to `align`; returns its first port.
    pub fn pio(&mut self, size: u64, align: u64) -> Result<u16, Error> {
        self.pio
            .allocate(size, align, AllocPolicy::FirstMatch)
            .map(|r| r.start() as u16)
            .map_err(|source| Error::Exhausted {
                what: "port range",
                size,
                source,
            })
    }

    /// A free interrupt line (GSI).
    pub fn irq(&mut self) -> Result<u32, Error> {
        self.irqs.allocate_id().map_err(Error::Irq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmio_ranges_do_not_overlap_and_are_aligned() {
        let mut a = Allocator::new();
        let x = a.mmio(0x200, 0x1000).unwrap();
        let y = a.mmio(0x200, 0x1000).unwrap();
        assert_eq!(x, MMIO_DEVICES_START);
        assert_eq!(y, MMIO_DEVICES_START + 0x1000);
        assert!(a.mmio(MMIO_DEVICES_END, 0x1000).is_err());
    }

    #[test]
    fn irqs_run_out_with_an_error() {
        let mut a = Allocator::new();
        let got: Vec<u32> = (FIRST_DEVICE_IRQ..=LAST_DEVICE_IRQ)
            .map(|_| a.irq().unwrap())
            .collect();
        assert_eq!(got.first(), Some(&FIRST_DEVICE_IRQ));
        assert!(a.irq().is_err());
    }

    #[test]
    fn pio_above_legacy_ports() {
        let mut a = Allocator::new();
        assert_eq!(a.pio(8, 8).unwrap(), 0x1000);
    }
}
