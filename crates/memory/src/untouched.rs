//! Which pages of guest RAM were never touched, so a snapshot can skip them without reading them.
//!
//! Reading a page of anonymous memory that was never touched maps the zero page: about 0.3 µs per
//! 4 KiB, 2.5 s for 8 GiB, to learn that it holds zeros. The kernel already knows: in
//! `/proc/self/pagemap` such a page is neither present nor swapped. That holds only for anonymous
//! memory: a page of a file mapping (a kernel image mapped from its file, or RAM restored from a
//! memory file) that is not present still holds the file's bytes. So a page counts as untouched
//! only if it is in an anonymous mapping (`/proc/self/maps`: no inode) and pagemap says it is
//! neither present nor swapped. Anything unreadable makes every page count as touched.

use std::fs::File;
use std::os::unix::fs::FileExt;

use crate::PAGE_SIZE;

/// Pagemap bit 63: the page is present in RAM.
const PRESENT: u64 = 1 << 63;
/// Pagemap bit 62: the page is swapped out.
const SWAPPED: u64 = 1 << 62;

/// The file-backed mappings of this process overlapping `start..end`, as `(start, end)`.
fn file_mappings(start: usize, end: usize) -> Option<Vec<(usize, usize)>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut found = Vec::new();
    for line in maps.lines() {
        // "start-end perms offset dev inode [path]"
        let mut fields = line.split_whitespace();
        let range = fields.next()?;
        let inode = fields.nth(3)?;
        let (a, b) = range.split_once('-')?;
        let (a, b) = (
            usize::from_str_radix(a, 16).ok()?,
            usize::from_str_radix(b, 16).ok()?,
        );
        if b > start && a < end && inode != "0" {
            found.push((a, b));
        }
    }
    Some(found)
}

/// For each page of the host range `host..host + len` (page-aligned), whether it was certainly
/// never touched (anonymous, neither present nor swapped). `None` if the kernel could not say.
pub(crate) fn untouched_pages(host: usize, len: usize) -> Option<Vec<bool>> {
    let page = PAGE_SIZE as usize;
    if !host.is_multiple_of(page) || !len.is_multiple_of(page) {
        return None;
    }
    let files = file_mappings(host, host + len)?;
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let pages = len / page;
    let mut untouched = Vec::with_capacity(pages);
    let mut entries = vec![0u8; 8 * 4096];
    let mut first = 0;
    while first < pages {
        let n = (pages - first).min(entries.len() / 8);
        let at = ((host / page + first) * 8) as u64;
        pagemap.read_exact_at(&mut entries[..n * 8], at).ok()?;
        for (i, entry) in entries[..n * 8].chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().ok()?);
            let addr = host + (first + i) * page;
            let in_file = files.iter().any(|&(a, b)| addr >= a && addr < b);
            untouched.push(!in_file && entry & (PRESENT | SWAPPED) == 0);
        }
        first += n;
    }
    Some(untouched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn written_and_read_pages_are_touched_the_rest_not() {
        let ram = crate::GuestRam::new(64 << 20).unwrap();
        let mem = ram.memory();
        mem.write_obj(1u8, GuestAddress(0x3000)).unwrap();
        let _: u8 = mem.read_obj(GuestAddress(0x5000)).unwrap();
        let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        let pages = untouched_pages(host, 16 * 4096).unwrap();
        assert!(!pages[3], "written");
        assert!(!pages[5], "read: the zero page is mapped");
        assert!(pages[4] && pages[15], "never touched");
        assert!(mem.num_regions() == 1);
    }

    #[test]
    fn pages_of_a_file_mapping_count_as_touched_even_when_not_present() {
        let ram = crate::GuestRam::new(64 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("kvmkit-untouched-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 8 * 4096]).unwrap();
        let file = File::open(&path).unwrap();
        crate::map_file_pages(ram.memory(), GuestAddress(0x10_0000), &file, 0, 8 * 4096).unwrap();
        let host = ram
            .memory()
            .get_host_address(GuestAddress(0x10_0000))
            .unwrap() as usize;
        let pages = untouched_pages(host - 4096, 10 * 4096).unwrap();
        assert!(pages[0], "anonymous, untouched");
        assert!(
            pages[1..9].iter().all(|&u| !u),
            "the file's pages: {pages:?}"
        );
        assert!(pages[9], "anonymous again");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn a_snapshot_holds_file_pages_never_touched_and_skips_only_untouched_anonymous_ones() {
        let ram = crate::GuestRam::new(64 << 20).unwrap();
        let dir = std::env::temp_dir();
        let image = dir.join(format!("kvmkit-untouched-img-{}", std::process::id()));
        std::fs::write(&image, vec![0x5au8; 4 * 4096]).unwrap();
        let file = File::open(&image).unwrap();
        crate::map_file_pages(ram.memory(), GuestAddress(0x20_0000), &file, 0, 4 * 4096).unwrap();
        ram.memory()
            .write_obj(0x77u8, GuestAddress(0x30_0000))
            .unwrap();
        let snap = dir.join(format!("kvmkit-untouched-mem-{}", std::process::id()));
        ram.write_to(&mut File::create(&snap).unwrap()).unwrap();
        let saved = std::fs::read(&snap).unwrap();
        assert_eq!(saved.len(), 64 << 20);
        assert!(
            saved[0x20_0000..0x20_4000].iter().all(|&b| b == 0x5a),
            "kernel pages saved"
        );
        assert_eq!(saved[0x30_0000], 0x77);
        assert!(saved[0x40_0000..0x50_0000].iter().all(|&b| b == 0));
        std::fs::remove_file(image).unwrap();
        std::fs::remove_file(snap).unwrap();
    }
}
