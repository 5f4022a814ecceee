//! The guest's page tables walked as the CPU walks them for a data access: the guest-physical
//! address, or the fault the CPU raises (#PF with its error code, or #GP for a non-canonical
//! address), honouring the permissions KVM_TRANSLATE does not report: present, writable (with
//! CR0.WP for supervisor writes), user/supervisor, SMAP (with RFLAGS.AC). Accessed and dirty bits
//! are set as the CPU sets them. 32-bit, PAE, 4-level and 5-level paging, with large pages.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use accel::x86::{cr0, cr4, efer, pf_error, rflags};
use kvm_bindings::kvm_sregs;
use vm_memory::bitmap::Bitmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, VolatileMemory};

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const LARGE: u64 = 1 << 7;
/// Bits 51:12 of an entry: the next table or the page.
const ADDRESS: u64 = 0x000f_ffff_ffff_f000;

/// A data access the assist makes for the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// A write (else a read).
    pub write: bool,
    /// Made from CPL 3.
    pub user: bool,
}

/// Why the CPU would not make the access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// #PF: CR2 is `linear`, the error code `error`.
    Page {
        /// The faulting linear address.
        linear: u64,
        /// The page-fault error code.
        error: u32,
    },
    /// A non-canonical address: #GP(0) (#SS(0) for a stack reference).
    NonCanonical,
    /// The page tables, or the page, lie outside guest RAM.
    NotRam {
        /// The linear address.
        linear: u64,
        /// The guest-physical address that is not RAM.
        physical: u64,
    },
}

/// One page-table entry on the way: where it is and how wide.
#[derive(Debug, Clone, Copy)]
struct Entry {
    at: u64,
    wide: bool,
}

/// Where a walk ended.
#[derive(Debug)]
struct Leaf {
    physical: u64,
    writable: bool,
    user: bool,
    entries: Vec<Entry>,
}

/// Reads `buf.len()` bytes at `linear` as the CPU would for `access` (a read).
pub fn read(
    memory: &impl GuestMemoryBackend,
    sregs: &kvm_sregs,
    flags: u64,
    linear: u64,
    buf: &mut [u8],
    access: Access,
) -> Result<(), Fault> {
    for (done, physical, n) in pages(memory, sregs, flags, linear, buf.len(), access)? {
        memory
            .read_slice(&mut buf[done..done + n], GuestAddress(physical))
            .map_err(|_| Fault::NotRam {
                linear: linear.wrapping_add(done as u64),
                physical,
            })?;
    }
    Ok(())
}

/// Writes `data` at `linear` as the CPU would for `access` (a write): every page is translated and
/// checked before any byte is written, so a write that faults changes nothing.
pub fn write(
    memory: &impl GuestMemoryBackend,
    sregs: &kvm_sregs,
    flags: u64,
    linear: u64,
    data: &[u8],
    access: Access,
) -> Result<(), Fault> {
    for (done, physical, n) in pages(memory, sregs, flags, linear, data.len(), access)? {
        memory
            .write_slice(&data[done..done + n], GuestAddress(physical))
            .map_err(|_| Fault::NotRam {
                linear: linear.wrapping_add(done as u64),
                physical,
            })?;
    }
    Ok(())
}

/// `len` bytes at `linear` cut at 4 KiB page boundaries: (offset, linear address, bytes) of each
/// piece, in order. Linear addresses wrap at the top of the address space, as the CPU's do.
pub(crate) fn split_at_pages(linear: u64, len: usize) -> impl Iterator<Item = (usize, u64, usize)> {
    const PAGE: u64 = 4096;
    let mut done = 0;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let at = linear.wrapping_add(done as u64);
            let n = (PAGE - at % PAGE).min((len - done) as u64) as usize;
            let piece = (done, at, n);
            done += n;
            piece
        })
    })
}

/// The pieces of `len` bytes at `linear`, one per page: (offset, guest-physical address, bytes).
fn pages(
    memory: &impl GuestMemoryBackend,
    sregs: &kvm_sregs,
    flags: u64,
    linear: u64,
    len: usize,
    access: Access,
) -> Result<Vec<(usize, u64, usize)>, Fault> {
    split_at_pages(linear, len)
        .map(|(done, at, n)| {
            let physical = translate(memory, sregs, flags, at, access)?;
            if !GuestMemoryBackend::check_range(memory, GuestAddress(physical), n) {
                return Err(Fault::NotRam {
                    linear: at,
                    physical,
                });
            }
            Ok((done, physical, n))
        })
        .collect()
}

/// Translates `linear` for `access` from the vCPU state `sregs` and `flags` (RFLAGS), setting the
/// accessed bit of every entry on the way and, for a write, the dirty bit of the last.
pub fn translate(
    memory: &impl GuestMemoryBackend,
    sregs: &kvm_sregs,
    flags: u64,
    linear: u64,
    access: Access,
) -> Result<u64, Fault> {
    let fault = |present: bool| Fault::Page {
        linear,
        error: (if present { pf_error::PRESENT } else { 0 }
            | if access.write { pf_error::WRITE } else { 0 }
            | if access.user { pf_error::USER } else { 0 }) as u32,
    };
    let leaf = match walk(memory, sregs, linear)? {
        Some(leaf) => leaf,
        None => return Err(fault(false)),
    };
    let allowed = if access.user {
        leaf.user && (leaf.writable || !access.write)
    } else {
        let write_ok = leaf.writable || !access.write || sregs.cr0 & cr0::WP == 0;
        // SMAP: a supervisor data access to a user page faults unless RFLAGS.AC is set.
        let smap_ok = !leaf.user || sregs.cr4 & cr4::SMAP == 0 || flags & rflags::AC != 0;
        write_ok && smap_ok
    };
    if !allowed {
        return Err(fault(true));
    }
    let last = leaf.entries.len().wrapping_sub(1);
    for (i, entry) in leaf.entries.iter().enumerate() {
        let dirty = if access.write && i == last { DIRTY } else { 0 };
        set_bits(memory, *entry, ACCESSED | dirty);
    }
    Ok(leaf.physical)
}

/// Walks the page tables: `None` if an entry on the way is not present.
fn walk(
    memory: &impl GuestMemoryBackend,
    sregs: &kvm_sregs,
    linear: u64,
) -> Result<Option<Leaf>, Fault> {
    let mut leaf = Leaf {
        physical: linear,
        writable: true,
        user: true,
        entries: Vec::new(),
    };
    if sregs.cr0 & cr0::PG == 0 {
        leaf.physical &= 0xffff_ffff;
        return Ok(Some(leaf));
    }
    let read = |at: u64, wide: bool| -> Result<u64, Fault> {
        let value = if wide {
            memory.read_obj::<u64>(GuestAddress(at))
        } else {
            memory.read_obj::<u32>(GuestAddress(at)).map(u64::from)
        };
        value.map_err(|_| Fault::NotRam {
            linear,
            physical: at,
        })
    };
    // The first table, the levels below it, index bits per level, 8-byte entries.
    let (mut table, levels, bits, wide) = if sregs.efer & efer::LMA != 0 {
        let levels = if sregs.cr4 & cr4::LA57 != 0 { 5 } else { 4 };
        let width = 12 + 9 * levels;
        let top = (linear as i64) >> (width - 1);
        if top != 0 && top != -1 {
            return Err(Fault::NonCanonical);
        }
        (sregs.cr3 & ADDRESS, levels, 9, true)
    } else if sregs.cr4 & cr4::PAE != 0 {
        // The PDPTE: present, no permission bits of its own.
        let at = (sregs.cr3 & 0xffff_ffe0) + ((linear >> 30) & 3) * 8;
        let pdpte = read(at, true)?;
        if pdpte & PRESENT == 0 {
            return Ok(None);
        }
        (pdpte & ADDRESS, 2, 9, true)
    } else {
        (sregs.cr3 & 0xffff_f000, 2, 10, false)
    };
    let large_pages = wide || sregs.cr4 & cr4::PSE != 0;
    for level in (1..=levels).rev() {
        let shift = 12 + bits * (level - 1);
        let index = (linear >> shift) & ((1 << bits) - 1);
        let at = table + index * if wide { 8 } else { 4 };
        let entry = read(at, wide)?;
        if entry & PRESENT == 0 {
            return Ok(None);
        }
        leaf.entries.push(Entry { at, wide });
        leaf.writable &= entry & WRITABLE != 0;
        leaf.user &= entry & USER != 0;
        let address = if wide {
            entry & ADDRESS
        } else {
            entry & 0xffff_f000
        };
        let is_large = level > 1 && level <= 3 && large_pages && entry & LARGE != 0;
        if is_large || level == 1 {
            let offset_mask = (1u64 << shift) - 1;
            leaf.physical = (address & !offset_mask) | (linear & offset_mask);
            return Ok(Some(leaf));
        }
        table = address;
    }
    Ok(None)
}

/// Sets `bits` in the entry at `entry` atomically (another vCPU may be walking or changing it), and
/// marks its page written for dirty-page tracking.
fn set_bits(memory: &impl GuestMemoryBackend, entry: Entry, bits: u64) {
    let size = if entry.wide { 8 } else { 4 };
    let Ok(slice) = memory.get_slice(GuestAddress(entry.at), size) else {
        return;
    };
    let done = if entry.wide {
        slice
            .get_atomic_ref::<AtomicU64>(0)
            .map(|a| a.fetch_or(bits, Ordering::SeqCst) & bits != bits)
    } else {
        slice
            .get_atomic_ref::<AtomicU32>(0)
            .map(|a| u64::from(a.fetch_or(bits as u32, Ordering::SeqCst)) & bits != bits)
    };
    if let Ok(true) = done {
        slice.bitmap().mark_dirty(0, size);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory::GuestMemoryMmap;

    const READ: Access = Access {
        write: false,
        user: false,
    };

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn put(m: &GuestMemoryMmap, at: u64, v: u64) {
        m.write_obj(v, GuestAddress(at)).unwrap();
    }

    fn put32(m: &GuestMemoryMmap, at: u64, v: u32) {
        m.write_obj(v, GuestAddress(at)).unwrap();
    }

    #[test]
    fn accesses_are_cut_at_page_boundaries_and_wrap_at_the_top() {
        let pieces = |at, len| split_at_pages(at, len).collect::<Vec<_>>();
        assert_eq!(pieces(0x1ffe, 4), vec![(0, 0x1ffe, 2), (2, 0x2000, 2)]);
        assert_eq!(pieces(0x3000, 4096), vec![(0, 0x3000, 4096)]);
        assert_eq!(
            pieces(u64::MAX - 1, 4),
            vec![(0, u64::MAX - 1, 2), (2, 0, 2)]
        );
        assert_eq!(pieces(0x5000, 0), vec![]);
    }

    #[test]
    fn without_paging_linear_is_physical() {
        let s = kvm_sregs::default();
        assert_eq!(translate(&ram(), &s, 2, 0x1234_5678, READ), Ok(0x1234_5678));
    }

    #[test]
    fn thirty_two_bit_paging_with_4k_and_4m_pages() {
        let m = ram();
        let s = kvm_sregs {
            cr0: cr0::PG | cr0::PE,
            cr3: 0x1000,
            cr4: cr4::PSE,
            ..Default::default()
        };
        put32(&m, 0x1000, 0x2000 | 0x3); // PDE 0 -> page table at 0x2000
        put32(&m, 0x2000 + 5 * 4, 0x0040_0000 | 0x3); // PTE 5 -> 0x400000
        put32(&m, 0x1000 + 4, 0x0080_0000 | 0x83); // PDE 1: a 4 MiB page at 0x800000
        assert_eq!(translate(&m, &s, 2, 0x5123, READ), Ok(0x40_0123));
        assert_eq!(translate(&m, &s, 2, 0x40_1234, READ), Ok(0x80_1234));
        let page_fault = Err(Fault::Page {
            linear: 0x6000,
            error: 0,
        });
        assert_eq!(translate(&m, &s, 2, 0x6000, READ), page_fault);
    }

    #[test]
    fn pae_paging_with_a_2m_page() {
        let m = ram();
        let s = kvm_sregs {
            cr0: cr0::PG | cr0::PE,
            cr3: 0x1000,
            cr4: cr4::PAE,
            ..Default::default()
        };
        put(&m, 0x1000 + 8, 0x2000 | 1); // PDPTE 1 (1-2 GiB)
        put(&m, 0x2000 + 3 * 8, 0x0060_0000 | 0x83); // PDE 3: 2 MiB page at 0x600000
        assert_eq!(translate(&m, &s, 2, 0x4060_1234, READ), Ok(0x60_1234));
        assert!(matches!(
            translate(&m, &s, 2, 0x1234, READ),
            Err(Fault::Page { error: 0, .. })
        ));
    }

    #[test]
    fn long_mode_1g_pages_canonical_checks_and_five_levels() {
        let m = ram();
        let mut s = kvm_sregs {
            cr0: cr0::PG | cr0::PE,
            cr3: 0x1000,
            cr4: cr4::PAE,
            efer: efer::LME | efer::LMA,
            ..Default::default()
        };
        put(&m, 0x1000 + 511 * 8, 0x2000 | 3); // PML4 511
        put(&m, 0x2000 + 510 * 8, 0x4000_0000 | 0x83); // PDPTE 510: 1 GiB page at 1 GiB
        assert_eq!(
            translate(&m, &s, 2, 0xffff_ffff_8012_3456, READ),
            Ok(0x4012_3456)
        );
        assert_eq!(
            translate(&m, &s, 2, 0x0000_8000_0000_0000, READ),
            Err(Fault::NonCanonical)
        );
        // With 5 levels that address is canonical (and not mapped).
        s.cr4 |= cr4::LA57;
        assert!(matches!(
            translate(&m, &s, 2, 0x0000_8000_0000_0000, READ),
            Err(Fault::Page { .. })
        ));
    }

    #[test]
    fn tables_outside_ram_are_not_ram() {
        let m = ram();
        let s = kvm_sregs {
            cr0: cr0::PG | cr0::PE,
            cr3: 0x1_0000_0000,
            cr4: cr4::PAE,
            efer: efer::LMA,
            ..Default::default()
        };
        assert!(matches!(
            translate(&m, &s, 2, 0x1000, READ),
            Err(Fault::NotRam { .. })
        ));
    }
}
