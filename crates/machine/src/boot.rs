//! The structures a kernel reads at entry: command line, zero page (Linux boot protocol) or
//! `hvm_start_info` (PVH), and the memory map inside them.

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{GuestAddress, GuestMemoryBackend};

use crate::e820::E820Entry;
use crate::kernel::{EntryKind, Initramfs, LoadedKernel};
use crate::layout::{
    CMDLINE_MAX_SIZE, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_MAX_ENTRIES, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::{Error, Result};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// Parses and bounds-checks a kernel command line.
pub fn cmdline(text: &str) -> Result<Cmdline> {
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    if !text.is_empty() {
        c.insert_str(text)
            .map_err(|e| Error::Cmdline(e.to_string()))?;
    }
    Ok(c)
}

/// Writes the command line and the boot structures `kernel.entry_kind` needs, pointing the kernel at
/// the ACPI RSDP if there is one. Returns the address the entry register (`rsi` or `ebx`) must hold.
pub fn write_boot_info<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initramfs: Option<Initramfs>,
    map: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<u64> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    let cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes_with_nul().len())
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    match kernel.entry_kind {
        EntryKind::Pvh => write_pvh(mem, initramfs, map, rsdp),
        EntryKind::Linux64 => write_zero_page(mem, kernel, cmdline_size, initramfs, map, rsdp),
    }
}

fn write_pvh<M: GuestMemoryBackend>(
    mem: &M,
    initramfs: Option<Initramfs>,
    map: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<u64> {
    if map.len() > PVH_MEMMAP_MAX_ENTRIES {
        return Err(Error::BootStructure("PVH memory map (too many entries)"));
    }
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        rsdp_paddr: rsdp.unwrap_or(0),
        nr_modules: u32::from(initramfs.is_some()),
        modlist_paddr: if initramfs.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    if let Some(rd) = initramfs {
        params.set_modules(
            &[hvm_modlist_entry {
                paddr: rd.addr,
                size: rd.size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST_START),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|_| Error::BootStructure("PVH start info"))?;
    Ok(PVH_INFO_START)
}

fn write_zero_page<M: GuestMemoryBackend>(
    mem: &M,
    kernel: &LoadedKernel,
    cmdline_size: usize,
    initramfs: Option<Initramfs>,
    map: &[E820Entry],
    rsdp: Option<u64>,
) -> Result<u64> {
    let mut zp = boot_params {
        // Boot protocol 2.14: where the RSDP is (0: let the kernel scan for it).
        acpi_rsdp_addr: rsdp.unwrap_or(0),
        ..Default::default()
    };
    if let Some(hdr) = kernel.setup_header {
        zp.hdr = hdr;
    }
    zp.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    zp.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    zp.hdr.header = KERNEL_HDR_MAGIC;
    zp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    zp.hdr.cmdline_size = cmdline_size as u32;
    if zp.hdr.kernel_alignment == 0 {
        zp.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    if let Some(rd) = initramfs {
        zp.hdr.ramdisk_image = rd.addr as u32;
        zp.hdr.ramdisk_size = rd.size as u32;
    }
    if map.len() > zp.e820_table.len() {
        return Err(Error::BootStructure("e820 table (too many entries)"));
    }
    for (slot, e) in zp.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    zp.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&zp, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(|_| Error::BootStructure("zero page"))?;
    Ok(ZERO_PAGE_START)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::KernelFormat;
    use memory::GuestMemoryMmap;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn kernel(kind: EntryKind) -> LoadedKernel {
        LoadedKernel {
            format: KernelFormat::Elf,
            entry_kind: kind,
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        }
    }

    #[test]
    fn zero_page_has_cmdline_initramfs_and_e820() {
        let m = mem();
        let map = crate::e820::memory_map(&[(0, 64 << 20)]);
        let rd = Initramfs {
            addr: 0x300_0000,
            size: 0x1234,
        };
        let at = write_boot_info(
            &m,
            &kernel(EntryKind::Linux64),
            &cmdline("console=ttyS0").unwrap(),
            Some(rd),
            &map,
            Some(0xe0000),
        )
        .unwrap();
        assert_eq!(at, ZERO_PAGE_START);
        let zp: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ zp.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ zp.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ zp.hdr.ramdisk_size }, 0x1234);
        assert_eq!(zp.e820_entries as usize, map.len());
        assert_eq!({ zp.acpi_rsdp_addr }, 0xe0000);
        let mut text = [0u8; 14];
        m.read_slice(&mut text, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&text, b"console=ttyS0\0");
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_module() {
        let m = mem();
        let map = crate::e820::memory_map(&[(0, 64 << 20)]);
        let rd = Initramfs {
            addr: 0x300_0000,
            size: 0x1000,
        };
        let at = write_boot_info(
            &m,
            &kernel(EntryKind::Pvh),
            &cmdline("").unwrap(),
            Some(rd),
            &map,
            None,
        )
        .unwrap();
        let info: hvm_start_info = m.read_obj(GuestAddress(at)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(info.memmap_entries as usize, map.len());
        assert_eq!(info.nr_modules, 1);
        assert_eq!(info.rsdp_paddr, 0, "no ACPI: the kernel finds the MP table");
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 0x1000));
    }

    #[test]
    fn overlong_cmdline_is_an_error() {
        assert!(matches!(
            cmdline(&"x".repeat(CMDLINE_MAX_SIZE)),
            Err(Error::Cmdline(_))
        ));
    }
}
