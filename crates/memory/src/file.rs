//! Guest RAM to and from a file: what a snapshot's memory file holds.
//!
//! The file is the RAM ranges ([`crate::ram_ranges`]) one after the other, so its size is the RAM
//! size. Writing skips pages that are all zeros (the file stays sparse: a guest that touched little
//! of its RAM makes a small file). Reading maps the file `MAP_PRIVATE`: nothing is read up front,
//! each page loads when the guest (or KVM) first touches it, and the guest's writes go to private
//! copies, never to the file, so one memory file can back any number of restored VMs.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;

use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::{Error, GuestMemoryMmap, GuestRam, GuestRegionMmap, PAGE_SIZE, check_size, ram_ranges};

/// The unit written at once (and checked for zeros).
const CHUNK: usize = 64 << 10;

/// Why guest RAM could not be mapped from a file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// The file's size is not the RAM size the snapshot says.
    #[error("memory file is {found} bytes, the snapshot's guest has {expected} bytes of RAM")]
    Size {
        /// The RAM size.
        expected: u64,
        /// The file's size.
        found: u64,
    },
    /// The size is not one kvmkit accepts.
    #[error(transparent)]
    Ram(#[from] Error),
    /// The file could not be read or mapped.
    #[error("cannot map the memory file: {0}")]
    Io(#[source] std::io::Error),
}

impl GuestRam {
    /// Writes every RAM range to `file`, in address order, from its current position, leaving
    /// holes for all-zero chunks; the file ends up exactly the RAM's size longer. Chunks the
    /// guest never touched are skipped without being read (`untouched`).
    pub fn write_to(&self, file: &mut File) -> std::io::Result<()> {
        let start = file.stream_position()?;
        let mut buf = vec![0u8; CHUNK];
        let mut offset = start;
        let page = PAGE_SIZE as usize;
        for region in self.memory.iter() {
            let len = region.len() as usize;
            let untouched = region
                .get_host_address(MemoryRegionAddress(0))
                .ok()
                .and_then(|host| crate::untouched::untouched_pages(host as usize, len))
                .unwrap_or_default();
            let mut done = 0usize;
            while done < len {
                let n = CHUNK.min(len - done);
                let addr = region.start_addr().unchecked_add(done as u64);
                let pages = done / page..(done + n).div_ceil(page);
                if untouched.get(pages).is_some_and(|p| p.iter().all(|&u| u)) {
                    offset += n as u64;
                    done += n;
                    continue;
                }
                self.memory
                    .read_slice(&mut buf[..n], addr)
                    .map_err(std::io::Error::other)?;
                if buf[..n].iter().any(|&b| b != 0) {
                    file.write_all_at(&buf[..n], offset)?;
                }
                offset += n as u64;
                done += n;
            }
        }
        file.set_len(offset)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(())
    }

    /// Guest RAM of `size` bytes backed by `file` (which [`GuestRam::write_to`] wrote), mapped
    /// private: pages load on first touch and writes stay in this process.
    pub fn from_file(size: u64, file: &File) -> Result<Self, FileError> {
        check_size(size)?;
        let found = file.metadata().map_err(FileError::Io)?.len();
        if found != size {
            return Err(FileError::Size {
                expected: size,
                found,
            });
        }
        let mut regions = Vec::new();
        let mut offset = 0u64;
        for (start, len) in ram_ranges(size) {
            let clone = file.try_clone().map_err(FileError::Io)?;
            let bitmap = AtomicBitmap::with_len(len as usize);
            let mapping = MmapRegionBuilder::new_with_bitmap(len as usize, bitmap)
                .with_file_offset(FileOffset::new(clone, offset))
                .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
                .build()
                .map_err(|e| FileError::Io(std::io::Error::other(e)))?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(start))
                .ok_or_else(|| FileError::Io(std::io::Error::other("a RAM range wraps around")))?;
            regions.push(region);
            offset += len;
        }
        let memory = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| FileError::Io(std::io::Error::other(e)))?;
        debug_assert_eq!(offset % PAGE_SIZE, 0);
        Ok(Self { memory, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kvmkit-memfile-{}-{name}", std::process::id()))
    }

    #[test]
    fn ram_round_trips_through_a_sparse_file_mapped_private() {
        let ram = GuestRam::new(64 << 20).unwrap();
        ram.memory()
            .write_obj(0xfeed_u64, GuestAddress(0x1000))
            .unwrap();
        ram.memory()
            .write_obj(0xbeef_u64, GuestAddress((64 << 20) - 8))
            .unwrap();
        let path = temp("a");
        let mut file = File::create(&path).unwrap();
        ram.write_to(&mut file).unwrap();
        drop(file);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 < 1 << 20, "zero pages take no space");

        let file = File::open(&path).unwrap();
        let a = GuestRam::from_file(64 << 20, &file).unwrap();
        let b = GuestRam::from_file(64 << 20, &file).unwrap();
        assert_eq!(
            a.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xfeed
        );
        assert_eq!(
            a.memory()
                .read_obj::<u64>(GuestAddress((64 << 20) - 8))
                .unwrap(),
            0xbeef
        );
        // Private: one restored VM's writes are not the other's, nor the file's.
        a.memory().write_obj(1u64, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            b.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0xfeed
        );
        let mut on_disk = [0u8; 8];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(u64::from_le_bytes(on_disk), 0xfeed);

        assert!(matches!(
            GuestRam::from_file(128 << 20, &file),
            Err(FileError::Size { .. })
        ));
        let _ = std::fs::remove_file(&path);
    }
}
