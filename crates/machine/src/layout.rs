//! Where the x86_64 PC puts its boot structures in guest-physical memory (the low 1 MiB).

/// The GDT.
pub const GDT_START: u64 = 0x500;
/// An empty IDT (the kernel installs its own).
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs).
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_START: u64 = 0x6100;
/// Room for PVH memory map entries (up to the zero page).
pub const PVH_MEMMAP_MAX_ENTRIES: usize = ((ZERO_PAGE_START - PVH_MEMMAP_START) / 24) as usize;
/// The Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Level-4 page table of the identity map.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table of the identity map.
pub const PDPT_START: u64 = 0xa000;
/// The four page directories of the identity map (4 GiB in 2 MiB pages).
pub const PD_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The longest command line, with its NUL, that Linux x86 accepts (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// The ACPI tables, RSDP first (in the range a kernel scans for it); reserved up to 1 MiB.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI tables' area: the MP table follows.
pub const ACPI_END: u64 = BIOS_START;
/// Start of the BIOS area (the MP table), reserved up to 1 MiB.
pub const BIOS_START: u64 = 0xf0000;
/// Start of high memory: kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
