//! Identity page tables for entering long mode.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{PD_START, PDPT_START, PML4_START};
use crate::{Error, Result};

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// Writes page tables that identity-map the first 4 GiB with 2 MiB pages; returns the CR3 value.
pub fn write_identity_map<M: GuestMemoryBackend>(mem: &M) -> Result<u64> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|_| Error::BootStructure("identity page tables"))
    };
    write(PDPT_START | PRESENT_WRITABLE, PML4_START)?;
    for gib in 0..4u64 {
        let pd = PD_START + gib * 0x1000;
        write(pd | PRESENT_WRITABLE, PDPT_START + gib * 8)?;
        for i in 0..512u64 {
            let phys = (gib << 30) | (i << 21);
            write(phys | PRESENT_WRITABLE | PAGE_SIZE_2M, pd + i * 8)?;
        }
    }
    Ok(PML4_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory::GuestMemoryMmap;

    #[test]
    fn maps_the_last_2m_page_below_4g() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert_eq!(write_identity_map(&mem).unwrap(), PML4_START);
        let last: u64 = mem
            .read_obj(GuestAddress(PD_START + 3 * 0x1000 + 511 * 8))
            .unwrap();
        assert_eq!(last, 0xffe0_0000 | 0x83);
        let pdpte3: u64 = mem.read_obj(GuestAddress(PDPT_START + 24)).unwrap();
        assert_eq!(pdpte3, (PD_START + 0x3000) | 3);
    }
}
