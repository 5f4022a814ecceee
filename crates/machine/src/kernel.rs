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

fn open(path: &Path, what: &'static str) -> Result<File> {
    File::open(path).map_err(|source| Error::Open {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Loads the kernel at `path` into `mem`, choosing PVH for an ELF with a PVH note.
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
    let loaded: std::result::Result<KernelLoaderResult, _> = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, himem),
        KernelFormat::BzImage => BzImage::load(mem, None, &mut file, himem),
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
pub fn load_initramfs(
    mem: &GuestMemoryMmap,
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
