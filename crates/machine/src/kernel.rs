//! Loading a kernel image (ELF vmlinux or bzImage) and an initramfs into guest memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::{
    KernelLoader, KernelLoaderResult, bootparam::setup_header, bzimage::BzImage, elf::Elf,
    elf::PvhBootCapability,
};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

use crate::kernel_image::KernelImage;
use crate::layout::HIMEM_START;
use crate::{Error, Result};

/// The formats kvmkit boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed `bzImage` (x86 boot protocol 2.x).
    BzImage,
}

/// How the boot vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// 32-bit protected mode at the ELF's PVH entry note, `ebx` = `hvm_start_info`.
    Pvh,
    /// 64-bit long mode through the Linux boot protocol, `rsi` = the zero page.
    Linux64,
}

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// The file format it came from.
    pub format: KernelFormat,
    /// How to enter it.
    pub entry_kind: EntryKind,
    /// Guest-physical entry address.
    pub entry: u64,
    /// First guest-physical address above the loaded image.
    pub end: u64,
    /// The bzImage setup header, when there is one.
    pub setup_header: Option<setup_header>,
}

/// Identifies the format from the file's first bytes.
pub fn detect_format(head: &[u8]) -> Option<KernelFormat> {
    if head.starts_with(b"\x7fELF") {
        return Some(KernelFormat::Elf);
    }
    // The setup header's "HdrS" magic at 0x202, and the 0xAA55 boot flag at 0x1fe.
    if head.get(0x202..0x206) == Some(b"HdrS") && head.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) {
        return Some(KernelFormat::BzImage);
    }
    None
}

/// Opens `path` for reading. A FIFO, socket or device is refused before it is opened: opening a
/// FIFO would wait for a writer, and none of them has a size to load.
fn open(path: &Path, what: &'static str) -> Result<File> {
    let error = |source| Error::Open {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(error)?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    File::open(path).map_err(error)
}

/// Loads the kernel at `path` into `mem`, choosing PVH for an ELF with a PVH note. Whole pages of
/// its segments are mapped from the file rather than copied (`kernel_image`): the file must not
/// be changed in place while the VM runs. That mapping is why `mem` is kvmkit-memory's
/// `GuestMemoryMmap` rather than any guest memory: it replaces pages of its mmap-backed regions
/// in place and marks them in their dirty-page bitmaps.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let mut file = open(path, "kernel")?;
    if file.metadata().map(|m| m.is_dir()).unwrap_or(false) {
        return Err(Error::KernelFormat(path.to_owned()));
    }
    let mut head = vec![0u8; 0x300];
    let n = read_up_to(&mut file, &mut head).map_err(|source| Error::Open {
        what: "kernel",
        path: path.to_owned(),
        source,
    })?;
    let format = detect_format(&head[..n]).ok_or_else(|| Error::KernelFormat(path.to_owned()))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut image = KernelImage::new(file, len, mem);
    let loaded: std::result::Result<KernelLoaderResult, _> = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut image, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut image, himem),
    };
    let r = loaded.map_err(|source| Error::KernelLoad {
        path: path.to_owned(),
        source,
    })?;
    let (entry_kind, entry) = match (format, r.pvh_boot_cap) {
        (KernelFormat::Elf, PvhBootCapability::PvhEntryPresent(addr)) => (EntryKind::Pvh, addr.0),
        (KernelFormat::Elf, _) => (EntryKind::Linux64, r.kernel_load.0),
        // The 64-bit entry point of a bzImage is 0x200 past where its protected-mode code loads.
        (KernelFormat::BzImage, _) => (EntryKind::Linux64, r.kernel_load.0 + 0x200),
    };
    Ok(LoadedKernel {
        format,
        entry_kind,
        entry,
        end: r.kernel_end,
        setup_header: r.setup_header,
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(n)
}

/// Where an initramfs was put.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Initramfs {
    /// Guest-physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads the initramfs at `path` at the top of RAM below `limit` (page-aligned), above `kernel_end`.
pub fn load_initramfs<M: vm_memory::GuestMemoryBackend>(
    mem: &M,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<Initramfs> {
    let mut file = open(path, "initramfs")?;
    let meta = file.metadata().map_err(|source| Error::Open {
        what: "initramfs",
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        return Err(Error::Open {
            what: "initramfs",
            path: path.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::IsADirectory),
        });
    }
    let size = meta.len();
    let addr = place_initramfs(size, kernel_end, limit).ok_or(Error::InitramfsTooLarge {
        size,
        room: limit.saturating_sub(kernel_end),
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|e| Error::Open {
            what: "initramfs",
            path: path.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok(Initramfs { addr, size })
}

/// The page-aligned address for `size` bytes placed as high as possible below `limit` and above
/// `kernel_end`, if it fits.
pub fn place_initramfs(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let addr = limit.checked_sub(size)? & !0xfff;
    (addr >= kernel_end).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(detect_format(b"\x7fELF\x02\x01"), Some(KernelFormat::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x1fe] = 0x55;
        bz[0x1ff] = 0xaa;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(detect_format(&bz), Some(KernelFormat::BzImage));
        assert_eq!(detect_format(b"MZ garbage"), None);
        assert_eq!(detect_format(&[]), None);
    }

    /// An ELF with one loadable segment at 16 MiB: `filesz` bytes of a pattern at file offset
    /// 0x1000, 0x3000 bytes in memory, and 0x100 bytes of 0xee after it in the file.
    fn elf(path: &Path, filesz: u64) -> Vec<u8> {
        let mut f = vec![0u8; 0x1000];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // 64-bit
        f[5] = 1; // little-endian
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes()); // executable
        f[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        f[20..24].copy_from_slice(&1u32.to_le_bytes());
        f[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes()); // entry
        f[32..40].copy_from_slice(&64u64.to_le_bytes()); // program headers
        f[52..54].copy_from_slice(&64u16.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = &mut f[64..120];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&0x1000u64.to_le_bytes()); // offset
        ph[16..24].copy_from_slice(&0x100_0000u64.to_le_bytes());
        ph[24..32].copy_from_slice(&0x100_0000u64.to_le_bytes());
        ph[32..40].copy_from_slice(&filesz.to_le_bytes());
        ph[40..48].copy_from_slice(&0x3000u64.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        let segment: Vec<u8> = (0..filesz).map(|i| (i % 251) as u8 + 1).collect();
        f.extend_from_slice(&segment);
        f.extend_from_slice(&[0xee; 0x100]);
        std::fs::write(path, &f).unwrap();
        segment
    }

    fn maps_of(path: &Path) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let name = path.to_str().unwrap();
        maps.lines().filter(|l| l.ends_with(name)).count()
    }

    #[test]
    fn an_elf_segment_s_whole_pages_are_mapped_and_the_rest_read() {
        for filesz in [0x2345u64, 0x2000, 0x800] {
            let path =
                std::env::temp_dir().join(format!("kvmkit-elf-{}-{filesz:x}", std::process::id()));
            let segment = elf(&path, filesz);
            let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
            let loaded = load_kernel(&mem, &path).unwrap();
            assert_eq!(loaded.entry_kind, EntryKind::Linux64);
            assert_eq!(loaded.end, 0x100_3000);
            let mut got = vec![0u8; 0x3000];
            mem.read_slice(&mut got, GuestAddress(0x100_0000)).unwrap();
            assert_eq!(&got[..filesz as usize], &segment[..], "{filesz:#x}");
            assert!(
                got[filesz as usize..].iter().all(|&b| b == 0),
                "past the segment's file bytes: zeros, not the file's next bytes ({filesz:#x})"
            );
            // Whole pages come from the file; a segment under a page is read.
            assert_eq!(maps_of(&path) > 0, filesz >= 0x1000, "{filesz:#x}");
            // The guest's writes stay in its memory.
            mem.write_obj(0u8, GuestAddress(0x100_0000)).unwrap();
            assert_eq!(std::fs::read(&path).unwrap()[0x1000], 1);
            drop(mem);
            assert_eq!(maps_of(&path), 0, "unmapped with guest memory");
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_fifo_or_device_is_refused_before_it_is_opened() {
        // Opening a FIFO for reading would wait for a writer: this test would hang.
        let fifo = std::env::temp_dir().join(format!("kvmkit-kernel-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        for path in [fifo.as_path(), Path::new("/dev/null")] {
            let e = load_kernel(&mem, path).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
            let e = open(path, "initramfs").unwrap_err().to_string();
            assert!(
                e.contains("cannot read initramfs") && e.contains("not a regular file"),
                "{e}"
            );
        }
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn initramfs_goes_high_and_must_fit() {
        assert_eq!(
            place_initramfs(0x1800, 0x100_0000, 0x800_0000),
            Some(0x7ffe000)
        );
        assert_eq!(place_initramfs(0x800_0000, 0x100_0000, 0x800_0000), None);
        assert_eq!(place_initramfs(u64::MAX, 0, 0x800_0000), None);
    }
}
