#![doc = include_str!("../README.md")]

mod allocator;
mod dirty;
mod file;
mod layout;
mod map_file;
mod untouched;

pub use allocator::{Allocator, Error as AllocError};
pub use dirty::{DirtyPages, LayoutError, WriteError as DirtyWriteError};
pub use file::FileError;
pub use layout::{
    MMIO_DEVICES_END, MMIO_DEVICES_START, MMIO_HOLE_END, MMIO_HOLE_START, PAGE_SIZE, ram_ranges,
};
pub use map_file::{MapFileError, guest_address_of, map_file_pages};

use vm_memory::GuestAddress;
use vm_memory::bitmap::AtomicBitmap;

/// Guest memory as every kvmkit crate sees it: vm-memory's mmap backend with a dirty-page bitmap.
/// Each write the VMM makes through it (a device filling a buffer, a used ring, a loader) sets the
/// bit of the page it touched, which KVM's own dirty log cannot see; a diff snapshot joins the two.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<AtomicBitmap>;

/// One mapped range of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<AtomicBitmap>;

/// Errors from creating guest RAM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The size is not a whole number of 4 KiB pages.
    #[error("guest memory size {0:#x} is not a multiple of 4 KiB")]
    Unaligned(u64),
    /// The size is below [`MIN_RAM`].
    #[error("guest memory {size} MiB is too small: at least {min} MiB is needed", size = .0 >> 20, min = MIN_RAM >> 20)]
    TooSmall(u64),
    /// The size is above [`MAX_RAM`].
    #[error("guest memory {size} GiB is too large: at most {max} GiB", size = .0 >> 30, max = MAX_RAM >> 30)]
    TooLarge(u64),
    /// The host refused the mapping.
    #[error("cannot map {size} MiB of guest memory: {source}", size = .size >> 20)]
    Mmap {
        /// Bytes asked for.
        size: u64,
        /// What vm-memory reported.
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The least guest RAM kvmkit accepts: room for the boot structures, a kernel loaded at 16 MiB and
/// its early allocations.
pub const MIN_RAM: u64 = 32 << 20;

/// The most guest RAM kvmkit accepts: 1 TiB.
pub const MAX_RAM: u64 = 1 << 40;

impl GuestRam {
    /// Asks the host to back the RAM with transparent huge pages where it can (2 MiB at a time: a
    /// five-hundredth of the page faults when a kernel is loaded or the guest first touches its
    /// RAM, for host memory taken 2 MiB at a time, and a first touch that may wait for the host to
    /// compact memory). Only advice: a host without THP, or with THP set to `never`, ignores it.
    pub fn use_transparent_huge_pages(&self) {
        advise_huge_pages(&self.memory);
    }
}

fn advise_huge_pages(memory: &GuestMemoryMmap) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
    for region in memory.iter() {
        let Ok(host) = region.get_host_address(MemoryRegionAddress(0)) else {
            continue;
        };
        // SAFETY: `host` is the start of `region`'s live anonymous mapping of `region.len()` bytes;
        // MADV_HUGEPAGE changes how the kernel backs it, not its contents or validity.
        unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_HUGEPAGE) };
    }
}

/// Fails unless `size` is a RAM size kvmkit accepts.
fn check_size(size: u64) -> Result<(), Error> {
    if !size.is_multiple_of(PAGE_SIZE) {
        return Err(Error::Unaligned(size));
    }
    if size < MIN_RAM {
        return Err(Error::TooSmall(size));
    }
    if size > MAX_RAM {
        return Err(Error::TooLarge(size));
    }
    Ok(())
}

/// A guest's RAM: anonymous host memory mapped at guest-physical addresses around the 32-bit MMIO hole.
#[derive(Debug, Clone)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    size: u64,
}

impl GuestRam {
    /// Maps `size` bytes of guest RAM, laid out by [`ram_ranges`]. Pages are only backed by host memory
    /// once the guest touches them.
    pub fn new(size: u64) -> Result<Self, Error> {
        check_size(size)?;
        let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let memory =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|source| Error::Mmap { size, source })?;
        Ok(Self { memory, size })
    }

    /// The vm-memory view of the RAM, for loaders, device models and KVM slot registration.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Total bytes of RAM.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The `(start, length)` of each RAM range, in address order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        ram_ranges(self.size)
    }

    /// The first guest-physical address above RAM below the MMIO hole.
    pub fn end_below_hole(&self) -> u64 {
        self.size.min(MMIO_HOLE_START)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn small_ram_is_one_region_and_reads_back() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.memory().num_regions(), 1);
        ram.memory()
            .write_obj(0xdead_beefu32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            ram.memory().read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(ram.memory().read_obj::<u8>(GuestAddress(64 << 20)).is_err());
    }

    #[test]
    fn bad_sizes_are_errors() {
        assert!(matches!(
            GuestRam::new((64 << 20) + 1),
            Err(Error::Unaligned(_))
        ));
        assert!(matches!(GuestRam::new(1 << 20), Err(Error::TooSmall(_))));
        assert!(matches!(GuestRam::new(2 << 40), Err(Error::TooLarge(_))));
        assert_eq!(
            Error::TooSmall(1 << 20).to_string(),
            "guest memory 1 MiB is too small: at least 32 MiB is needed"
        );
    }
}
