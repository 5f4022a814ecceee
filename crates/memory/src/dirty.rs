//! Which pages of guest RAM changed, and a diff of them written into a memory file.
//!
//! Two writers change guest RAM: the guest, whose writes KVM logs per memory slot
//! (`KVM_MEM_LOG_DIRTY_PAGES`), and the VMM itself (devices filling buffers and used rings,
//! loaders), whose writes through [`GuestMemoryMmap`](crate::GuestMemoryMmap) set bits in each
//! region's bitmap. A diff snapshot needs both: [`DirtyPages`] joins them, in the layout both
//! use (one bitmap per RAM range, bit `i` of word `w` is page `64 * w + i` of the range).

use std::fs::File;
use std::os::unix::fs::FileExt;

use vm_memory::bitmap::AtomicBitmap;
use vm_memory::mmap::MmapRegion;
use vm_memory::{Address, Bytes, GuestMemoryBackend, GuestMemoryRegion};

use crate::{GuestRam, PAGE_SIZE};

/// The most bytes copied at once when a diff is written.
const RUN: usize = 1 << 20;

/// A set of guest RAM pages: one bitmap per RAM range, in address order.
#[derive(Debug, Clone, Default)]
pub struct DirtyPages(Vec<Vec<u64>>);

/// The bitmaps do not fit the RAM they are meant for.
#[derive(Debug, thiserror::Error)]
#[error("a dirty-page log of {found} ranges does not fit guest RAM of {expected} ranges")]
pub struct LayoutError {
    /// Ranges of RAM.
    pub expected: usize,
    /// Bitmaps given.
    pub found: usize,
}

impl DirtyPages {
    /// Pages from bitmaps in KVM's `KVM_GET_DIRTY_LOG` layout, one per RAM range in order.
    pub fn from_bitmaps(bitmaps: Vec<Vec<u64>>) -> Self {
        Self(bitmaps)
    }

    /// Adds the pages of `other`. Missing ranges or words count as clean.
    pub fn union(&mut self, other: &DirtyPages) {
        if self.0.len() < other.0.len() {
            self.0.resize(other.0.len(), Vec::new());
        }
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            if mine.len() < theirs.len() {
                mine.resize(theirs.len(), 0);
            }
            for (a, b) in mine.iter_mut().zip(theirs) {
                *a |= b;
            }
        }
    }

    /// How many pages are in the set.
    pub fn count(&self) -> u64 {
        self.0
            .iter()
            .flatten()
            .map(|w| u64::from(w.count_ones()))
            .sum()
    }

    /// Every page in the set as `(range, page in the range)`, in address order.
    pub fn list(&self) -> Vec<(usize, u64)> {
        (0..self.0.len())
            .flat_map(|r| {
                self.runs(r)
                    .into_iter()
                    .flat_map(move |(p, n)| (p..p + n).map(move |q| (r, q)))
            })
            .collect()
    }

    /// Runs of consecutive pages of range `range`: `(first page, pages)`.
    fn runs(&self, range: usize) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let Some(words) = self.0.get(range) else {
            return runs;
        };
        for (w, &word) in words.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let page = (w as u64) * 64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                match runs.last_mut() {
                    Some((start, len)) if *start + *len == page => *len += 1,
                    _ => runs.push((page, 1)),
                }
            }
        }
        runs
    }
}

/// The bitmap vm-memory keeps for `region`.
pub(crate) fn bitmap_of(region: &crate::GuestRegionMmap) -> &AtomicBitmap {
    let mapping: &MmapRegion<AtomicBitmap> = region;
    mapping.bitmap()
}

impl GuestRam {
    /// The pages the VMM wrote through [`GuestRam::memory`] since the last call (or since the RAM
    /// was mapped), and clears the record.
    pub fn take_vmm_dirty(&self) -> DirtyPages {
        DirtyPages(
            self.memory
                .iter()
                .map(|r| bitmap_of(r).get_and_reset())
                .collect(),
        )
    }

    /// Records `pages` as written by the VMM again (a diff that could not be written is not
    /// lost: the next one has its pages).
    pub fn mark_dirty(&self, pages: &DirtyPages) {
        for (range, region) in self.memory.iter().enumerate() {
            for (page, len) in pages.runs(range) {
                bitmap_of(region)
                    .set_addr_range((page * PAGE_SIZE) as usize, (len * PAGE_SIZE) as usize);
            }
        }
    }

    /// Writes the pages `pages` names into `file`, at their places in the memory-file layout
    /// ([`GuestRam::write_to`]: the RAM ranges one after the other), and leaves every other byte
    /// of the file as it is: written over the memory file of the snapshot the pages changed
    /// since, the file becomes the RAM as it is now; written into a new file, the file holds the
    /// diff alone, with holes elsewhere. The file ends up the RAM's size. Returns the bytes
    /// written.
    pub fn write_dirty_to(&self, file: &File, pages: &DirtyPages) -> Result<u64, WriteError> {
        let layout = || {
            WriteError::Layout(LayoutError {
                expected: self.memory.num_regions(),
                found: pages.0.len(),
            })
        };
        if pages.0.len() > self.memory.num_regions() {
            return Err(layout());
        }
        let mut buf = vec![0u8; RUN];
        let mut file_start = 0u64;
        let mut written = 0u64;
        for (range, region) in self.memory.iter().enumerate() {
            let region_pages = region.len() / PAGE_SIZE;
            for (page, len) in pages.runs(range) {
                if page + len > region_pages {
                    return Err(layout());
                }
                let mut done = 0u64;
                let bytes = len * PAGE_SIZE;
                while done < bytes {
                    let n = (bytes - done).min(RUN as u64) as usize;
                    let offset = page * PAGE_SIZE + done;
                    self.memory
                        .read_slice(&mut buf[..n], region.start_addr().unchecked_add(offset))
                        .map_err(|e| WriteError::Io(std::io::Error::other(e)))?;
                    file.write_all_at(&buf[..n], file_start + offset)
                        .map_err(WriteError::Io)?;
                    done += n as u64;
                }
                written += bytes;
            }
            file_start += region.len();
        }
        file.set_len(file_start).map_err(WriteError::Io)?;
        Ok(written)
    }
}

/// Why a diff could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The page set is not this RAM's.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// The file could not be written.
    #[error("cannot write the memory file: {0}")]
    Io(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::GuestAddress;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kvmkit-dirty-{}-{name}", std::process::id()))
    }

    fn pages(list: &[(usize, u64)]) -> DirtyPages {
        let p = set(list);
        assert_eq!(p.list(), list);
        p
    }

    fn set(list: &[(usize, u64)]) -> DirtyPages {
        let mut p = DirtyPages::default();
        for &(range, page) in list {
            if p.0.len() <= range {
                p.0.resize(range + 1, Vec::new());
            }
            let words = &mut p.0[range];
            let w = (page / 64) as usize;
            if words.len() <= w {
                words.resize(w + 1, 0);
            }
            words[w] |= 1 << (page % 64);
        }
        p
    }

    #[test]
    fn the_vmm_s_writes_are_recorded_once() {
        let ram = GuestRam::new(64 << 20).unwrap();
        assert_eq!(ram.take_vmm_dirty().count(), 0);
        ram.memory().write_obj(1u32, GuestAddress(0x3000)).unwrap();
        // Across a page boundary: both pages.
        ram.memory().write_obj(1u64, GuestAddress(0x7ffc)).unwrap();
        let dirty = ram.take_vmm_dirty();
        assert_eq!(dirty.list(), [(0, 3), (0, 7), (0, 8)]);
        assert_eq!(ram.take_vmm_dirty().count(), 0, "taking clears");
        // Reads are not writes.
        let _: u64 = ram.memory().read_obj(GuestAddress(0x9000)).unwrap();
        assert_eq!(ram.take_vmm_dirty().count(), 0);
        ram.mark_dirty(&dirty);
        assert_eq!(ram.take_vmm_dirty().list(), dirty.list());
    }

    #[test]
    fn ram_restored_from_a_file_records_writes_too() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let path = temp("mapped");
        let mut file = File::create(&path).unwrap();
        ram.write_to(&mut file).unwrap();
        let restored = GuestRam::from_file(64 << 20, &File::open(&path).unwrap()).unwrap();
        restored
            .memory()
            .write_obj(7u8, GuestAddress(0x10_0000))
            .unwrap();
        assert_eq!(restored.take_vmm_dirty().list(), [(0, 0x100)]);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_diff_over_a_full_file_gives_the_current_ram_and_alone_is_sparse() {
        let ram = GuestRam::new(64 << 20).unwrap();
        ram.memory()
            .write_obj(0x1111u64, GuestAddress(0x1000))
            .unwrap();
        ram.memory()
            .write_obj(0x2222u64, GuestAddress(0x2000))
            .unwrap();
        let full = temp("full");
        ram.write_to(&mut File::create(&full).unwrap()).unwrap();
        ram.take_vmm_dirty();

        // After the full snapshot: page 2 changes, page 5 is written, page 1 is left alone.
        ram.memory()
            .write_obj(0x3333u64, GuestAddress(0x2000))
            .unwrap();
        ram.memory()
            .write_obj(0x5555u64, GuestAddress(0x5000))
            .unwrap();
        let dirty = ram.take_vmm_dirty();
        assert_eq!(dirty.count(), 2);

        let file = std::fs::OpenOptions::new().write(true).open(&full).unwrap();
        assert_eq!(ram.write_dirty_to(&file, &dirty).unwrap(), 2 * PAGE_SIZE);
        let merged = GuestRam::from_file(64 << 20, &File::open(&full).unwrap()).unwrap();
        for addr in [0x1000, 0x2000, 0x5000, 0x9000] {
            assert_eq!(
                merged.memory().read_obj::<u64>(GuestAddress(addr)).unwrap(),
                ram.memory().read_obj::<u64>(GuestAddress(addr)).unwrap(),
                "{addr:#x}"
            );
        }

        let alone = temp("alone");
        let file = File::create(&alone).unwrap();
        ram.write_dirty_to(&file, &dirty).unwrap();
        let meta = std::fs::metadata(&alone).unwrap();
        assert_eq!(meta.len(), 64 << 20);
        assert!(meta.blocks() * 512 <= 64 << 10, "only the diff takes space");
        let diff = GuestRam::from_file(64 << 20, &File::open(&alone).unwrap()).unwrap();
        assert_eq!(
            diff.memory().read_obj::<u64>(GuestAddress(0x5000)).unwrap(),
            0x5555
        );
        assert_eq!(
            diff.memory().read_obj::<u64>(GuestAddress(0x1000)).unwrap(),
            0
        );
        std::fs::remove_file(full).unwrap();
        std::fs::remove_file(alone).unwrap();
    }

    #[test]
    fn pages_above_the_hole_land_after_the_ranges_below_it() {
        let ram = GuestRam::new(crate::MMIO_HOLE_START + (64 << 20)).unwrap();
        ram.memory()
            .write_obj(0xabcdu64, GuestAddress(crate::MMIO_HOLE_END + 0x4000))
            .unwrap();
        let dirty = ram.take_vmm_dirty();
        assert_eq!(dirty.list(), [(1, 4)]);
        let path = temp("high");
        let file = File::create(&path).unwrap();
        ram.write_dirty_to(&file, &dirty).unwrap();
        let mut got = [0u8; 8];
        File::open(&path)
            .unwrap()
            .read_exact_at(&mut got, crate::MMIO_HOLE_START + 0x4000)
            .unwrap();
        assert_eq!(u64::from_le_bytes(got), 0xabcd);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_page_set_of_other_ram_is_refused() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let path = temp("other");
        let file = File::create(&path).unwrap();
        let too_far = pages(&[(0, (64 << 20) / PAGE_SIZE)]);
        assert!(matches!(
            ram.write_dirty_to(&file, &too_far),
            Err(WriteError::Layout(_))
        ));
        assert!(matches!(
            ram.write_dirty_to(&file, &pages(&[(3, 0)])),
            Err(WriteError::Layout(_))
        ));
        std::fs::remove_file(path).unwrap();
    }
}
