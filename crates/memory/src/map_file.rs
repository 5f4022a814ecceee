//! Pages of a file mapped into guest memory instead of copied: a kernel image's segments.
//!
//! Copying an image into guest RAM costs a fresh host page per 4 KiB (allocated and zeroed on the
//! first write: about 3 µs each on a nested host, 7 ms for a 9 MiB kernel) and then the copy.
//! Mapping the file's pages `MAP_PRIVATE` over that part of RAM costs one `mmap`: the pages come
//! from the page cache when the guest first touches them, and a guest write makes a private copy,
//! so the file never changes. The pages count as written by the VMM in the dirty bitmap, so a
//! diff snapshot of a freshly booted VM holds them.
//!
//! As with any private file mapping (a snapshot's memory file too), the file must not be changed
//! in place or truncated while the VM runs: pages the guest has not written would follow the file.
//! Replacing it (a new file renamed over the path, as compilers and `install` do) is safe.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::{
    Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress,
};

use crate::{GuestMemoryMmap, PAGE_SIZE};

/// Why file pages could not be mapped into guest memory (the caller then reads them instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapFileError {
    /// The address, file offset or length is not a whole number of pages.
    #[error(
        "guest address {addr:#x}, file offset {offset:#x} or length {len:#x} is not page-aligned"
    )]
    Unaligned {
        /// Guest-physical address.
        addr: u64,
        /// Offset in the file.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The range is not inside one RAM region.
    #[error("guest range {addr:#x}+{len:#x} is not inside one RAM region")]
    NotRam {
        /// Guest-physical address.
        addr: u64,
        /// Bytes.
        len: u64,
    },
    /// The file ends before the range does.
    #[error("the file ends before offset {end:#x}")]
    PastEnd {
        /// The end of the range in the file.
        end: u64,
    },
    /// The host refused the mapping.
    #[error("mmap: {0}")]
    Mmap(#[source] std::io::Error),
}

/// The host address of guest range `addr`+`len`, and the region's bitmap and offset, if the range
/// lies inside one region of `mem`.
fn host_range(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: u64,
) -> Option<(*mut u8, &AtomicBitmap, usize)> {
    let region = mem.find_region(addr)?;
    let offset = addr.checked_offset_from(region.start_addr())?;
    if offset.checked_add(len)? > region.len() {
        return None;
    }
    let host = region.get_host_address(MemoryRegionAddress(offset)).ok()?;
    Some((host, crate::dirty::bitmap_of(region), offset as usize))
}

/// Maps `len` bytes of `file` from `offset` over guest memory at `addr`, private and writable.
/// All three must be page-aligned, the range inside one region of `mem`, and the file at least
/// `offset + len` bytes long.
///
/// `mem` is this crate's [`GuestMemoryMmap`] rather than any guest memory: the new mapping
/// replaces pages of one of its mmap-backed regions in place (sound only because that region owns
/// the mapping), and marks them in that region's dirty-page bitmap.
pub fn map_file_pages(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<(), MapFileError> {
    if len == 0
        || !addr.raw_value().is_multiple_of(PAGE_SIZE)
        || !offset.is_multiple_of(PAGE_SIZE)
        || !len.is_multiple_of(PAGE_SIZE)
    {
        return Err(MapFileError::Unaligned {
            addr: addr.raw_value(),
            offset,
            len,
        });
    }
    let not_ram = || MapFileError::NotRam {
        addr: addr.raw_value(),
        len,
    };
    let (host, bitmap, region_offset) = host_range(mem, addr, len).ok_or_else(not_ram)?;
    let end = offset.checked_add(len).ok_or_else(not_ram)?;
    let file_len = file.metadata().map_err(MapFileError::Mmap)?.len();
    if end > file_len {
        return Err(MapFileError::PastEnd { end });
    }
    let file_offset = libc::off_t::try_from(offset).map_err(|_| MapFileError::PastEnd { end })?;
    // SAFETY: `host`..`host + len` lies inside one region of `mem` (checked above): a live mapping
    // that `mem` owns and unmaps as a whole when its last handle drops, which also unmaps this
    // one. MAP_FIXED replaces those pages with a private copy-on-write view of `file`, readable and
    // writable like the rest of guest RAM, so every address stays valid; only the contents change,
    // and vm-memory reaches guest memory through volatile accesses only, never through references
    // that could see the change. The file's length covers the range, so no access faults past EOF.
    let got = unsafe {
        libc::mmap(
            host.cast(),
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(MapFileError::Mmap(std::io::Error::last_os_error()));
    }
    bitmap.set_addr_range(region_offset, len as usize);
    Ok(())
}

/// The guest-physical address of host address `host`, if it lies in a region of `mem` (any guest
/// memory whose regions have host addresses).
pub fn guest_address_of<M: GuestMemoryBackend>(mem: &M, host: *const u8) -> Option<GuestAddress> {
    mem.iter().find_map(|region| {
        let base = region.get_host_address(MemoryRegionAddress(0)).ok()? as usize;
        let at = (host as usize).checked_sub(base)?;
        (at < region.len() as usize).then(|| region.start_addr().unchecked_add(at as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn file_of(name: &str, bytes: &[u8]) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("kvmkit-mapfile-{}-{name}", std::process::id()));
        File::create(&path).unwrap().write_all(bytes).unwrap();
        let file = File::open(&path).unwrap();
        (path, file)
    }

    #[test]
    fn mapped_pages_read_as_the_file_and_writes_stay_private() {
        let ram = crate::GuestRam::new(64 << 20).unwrap();
        let mut bytes = vec![0u8; 3 * 4096];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i / 4096 + 1) as u8;
        }
        let (path, file) = file_of("a", &bytes);
        ram.take_vmm_dirty();
        map_file_pages(ram.memory(), GuestAddress(0x10_0000), &file, 4096, 2 * 4096).unwrap();
        let mut got = [0u8; 2];
        ram.memory()
            .read_slice(&mut got[..1], GuestAddress(0x10_0000))
            .unwrap();
        ram.memory()
            .read_slice(&mut got[1..], GuestAddress(0x10_1fff))
            .unwrap();
        assert_eq!(got, [2, 3], "file pages 1 and 2 at the address");
        assert_eq!(
            ram.take_vmm_dirty().list(),
            [(0, 0x100), (0, 0x101)],
            "mapped pages count as the VMM's writes"
        );
        ram.memory()
            .write_obj(9u8, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap()[4096],
            2,
            "the file is unchanged"
        );
        assert_eq!(
            ram.memory()
                .read_obj::<u8>(GuestAddress(0x10_0001))
                .unwrap(),
            2
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn what_cannot_be_mapped_is_refused_and_left_alone() {
        let ram = crate::GuestRam::new(64 << 20).unwrap();
        let (path, file) = file_of("b", &[7u8; 8192]);
        let mem = ram.memory();
        assert!(matches!(
            map_file_pages(mem, GuestAddress(0x800), &file, 0, 4096),
            Err(MapFileError::Unaligned { .. })
        ));
        assert!(matches!(
            map_file_pages(mem, GuestAddress(0x1000), &file, 0, 0),
            Err(MapFileError::Unaligned { .. })
        ));
        assert!(matches!(
            map_file_pages(mem, GuestAddress(0x1000), &file, 4096, 8192),
            Err(MapFileError::PastEnd { .. })
        ));
        assert!(matches!(
            map_file_pages(mem, GuestAddress((64 << 20) - 4096), &file, 0, 8192),
            Err(MapFileError::NotRam { .. })
        ));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn host_addresses_map_back_to_guest_addresses() {
        let ram = crate::GuestRam::new(crate::MMIO_HOLE_START + (64 << 20)).unwrap();
        let mem = ram.memory();
        for addr in [0x1234u64, crate::MMIO_HOLE_END + 0x5000] {
            let host = mem.get_host_address(GuestAddress(addr)).unwrap();
            assert_eq!(guest_address_of(mem, host), Some(GuestAddress(addr)));
        }
        assert_eq!(guest_address_of(mem, std::ptr::null()), None);
    }
}
