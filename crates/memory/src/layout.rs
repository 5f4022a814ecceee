//! Where RAM and the 32-bit MMIO hole sit in guest-physical address space.

/// Size of a guest page.
pub const PAGE_SIZE: u64 = 4096;

/// Start of the 32-bit MMIO hole: no RAM from here to 4 GiB.
pub const MMIO_HOLE_START: u64 = 3 << 30;

/// End of the 32-bit MMIO hole (4 GiB); RAM beyond [`MMIO_HOLE_START`] continues here.
pub const MMIO_HOLE_END: u64 = 1 << 32;

/// Start of the part of the hole handed out to MMIO devices.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;

/// End (exclusive) of the part of the hole handed out to MMIO devices: the IOAPIC, LAPIC, TSS and the
/// reset vector live above it.
pub const MMIO_DEVICES_END: u64 = 0xfec0_0000;

/// The `(start, length)` of the RAM ranges for `size` bytes of RAM: everything below the MMIO hole
/// first, the rest from 4 GiB up.
///
/// ```
/// use kvmkit_memory::ram_ranges;
/// assert_eq!(ram_ranges(1 << 30), vec![(0, 1 << 30)]);
/// assert_eq!(ram_ranges(4 << 30), vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
/// ```
pub fn ram_ranges(size: u64) -> Vec<(u64, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(0, size)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (MMIO_HOLE_END, size - MMIO_HOLE_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hole_boundary() {
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        assert_eq!(
            ram_ranges(MMIO_HOLE_START + PAGE_SIZE),
            vec![(0, MMIO_HOLE_START), (MMIO_HOLE_END, PAGE_SIZE)]
        );
    }
}
