//! The guest's physical memory map, as e820 entries.

use crate::layout::{ACPI_START, EBDA_START, HIMEM_START};

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// One memory-map entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// First address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The memory map for RAM laid out as `ram` (`(start, len)` ranges in address order, the first
/// starting at 0): low RAM up to the EBDA, the ACPI tables and BIOS area reserved, then RAM from 1 MiB on.
///
/// ```
/// use kvmkit_machine::e820::{memory_map, E820_RAM};
/// let map = memory_map(&[(0, 256 << 20)]);
/// assert_eq!(map.iter().filter(|e| e.kind == E820_RAM).map(|e| e.size).sum::<u64>(),
///            0x9fc00 + (256 << 20) - 0x10_0000);
/// ```
pub fn memory_map(ram: &[(u64, u64)]) -> Vec<E820Entry> {
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: EBDA_START,
            size: 0xa0000 - EBDA_START,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: ACPI_START,
            size: HIMEM_START - ACPI_START,
            kind: E820_RESERVED,
        },
    ];
    for &(start, len) in ram {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(E820Entry {
                addr: start,
                size: end - start,
                kind: E820_RAM,
            });
        }
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_above_the_hole_is_listed() {
        let map = memory_map(&[(0, 3 << 30), (4 << 30, 1 << 30)]);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[3],
            E820Entry {
                addr: HIMEM_START,
                size: (3 << 30) - HIMEM_START,
                kind: E820_RAM
            }
        );
        assert_eq!(
            map[4],
            E820Entry {
                addr: 4 << 30,
                size: 1 << 30,
                kind: E820_RAM
            }
        );
    }
}
