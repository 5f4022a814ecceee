//! The kernel file as linux-loader reads it: where a segment's file offset and guest address are
//! both page-aligned, its whole pages are mapped from the file (`memory::map_file_pages`) instead
//! of copied; the rest (headers, a segment's last partial page, anything unaligned) is read.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use memory::{GuestMemoryMmap, PAGE_SIZE};
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice};

/// A kernel image file being loaded into `mem`.
pub(crate) struct KernelImage<'a> {
    file: File,
    len: u64,
    mem: &'a GuestMemoryMmap,
}

impl<'a> KernelImage<'a> {
    /// `file`, of `len` bytes, to be loaded into `mem`.
    pub(crate) fn new(file: File, len: u64, mem: &'a GuestMemoryMmap) -> Self {
        Self { file, len, mem }
    }

    /// Maps the whole pages at the start of `buf` from the file's current position, if both are
    /// page-aligned and `buf` is guest memory; returns how many bytes it mapped (0: none).
    fn map_pages<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> u64 {
        let Ok(pos) = self.file.stream_position() else {
            return 0;
        };
        let host = buf.ptr_guard_mut().as_ptr();
        let pages = (buf.len() as u64).min(self.len.saturating_sub(pos)) / PAGE_SIZE * PAGE_SIZE;
        if pages == 0 || !pos.is_multiple_of(PAGE_SIZE) {
            return 0;
        }
        let Some(addr) = memory::guest_address_of(self.mem, host) else {
            return 0;
        };
        match memory::map_file_pages(self.mem, addr, &self.file, pos, pages) {
            Ok(()) if self.file.seek(SeekFrom::Start(pos + pages)).is_ok() => pages,
            _ => 0,
        }
    }
}

impl Read for KernelImage<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }
}

impl Seek for KernelImage<'_> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(pos)
    }
}

impl ReadVolatile for KernelImage<'_> {
    /// Fills all of `buf` when it maps pages (vm-memory takes a short read of a guest-memory
    /// slice as an error), else reads as the file would.
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let mapped = self.map_pages(buf) as usize;
        if mapped == 0 {
            return self.file.read_volatile(buf);
        }
        let mut rest = buf.offset(mapped)?;
        self.file.read_exact_volatile(&mut rest)?;
        Ok(buf.len())
    }
}
