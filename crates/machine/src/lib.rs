#![doc = include_str!("../README.md")]

pub mod acpi;
pub mod boot;
pub mod cpu;
pub mod cpuid;
pub mod e820;
pub mod gdt;
pub mod kernel;
mod kernel_image;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod paging;

use std::path::{Path, PathBuf};

use accel::{Kvm, Vcpu};
use memory::GuestRam;

pub use kernel::{EntryKind, Initramfs, KernelFormat, LoadedKernel};

/// Errors from building the machine and loading what it boots.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {what} {path}: {source}")]
    Open {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither an ELF vmlinux nor a bzImage.
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    KernelFormat(PathBuf),
    /// linux-loader rejected the kernel.
    #[error("cannot load kernel {path}: {source}")]
    KernelLoad {
        /// The file.
        path: PathBuf,
        /// linux-loader's reason.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs does not fit in RAM beside the kernel.
    #[error(
        "initramfs of {size} bytes does not fit in guest memory ({room} bytes free above the kernel)"
    )]
    InitramfsTooLarge {
        /// Its size.
        size: u64,
        /// The room there was.
        room: u64,
    },
    /// The command line is invalid or too long.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// A boot structure could not be written to guest memory.
    #[error("cannot write the {0} to guest memory")]
    BootStructure(&'static str),
    /// The ACPI tables could not be built or placed.
    #[error(transparent)]
    Acpi(#[from] acpi::Error),
    /// A vCPU ioctl failed.
    #[error(transparent)]
    Accel(#[from] accel::Error),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// What to boot.
#[derive(Debug, Clone, Copy)]
pub struct BootSpec<'a> {
    /// ELF vmlinux or bzImage.
    pub kernel: &'a Path,
    /// Optional initramfs (any format the kernel unpacks).
    pub initramfs: Option<&'a Path>,
    /// Kernel command line.
    pub cmdline: &'a str,
}

/// A kernel loaded and ready to enter.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// The kernel image as loaded.
    pub kernel: LoadedKernel,
    /// Where the initramfs went.
    pub initramfs: Option<Initramfs>,
    /// Address of the zero page or `hvm_start_info`.
    pub boot_info: u64,
}

/// The machine a kernel boots on, as its boot structures describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Number of vCPUs.
    pub cpus: u32,
    /// ACPI tables to write (their `cpus` should match); `None` leaves the MP table alone.
    pub acpi: Option<acpi::AcpiConfig>,
}

/// Loads the kernel, initramfs and command line into `ram` and writes the boot structures
/// (memory map, MP table, ACPI tables if asked for, zero page or PVH start info).
pub fn load(ram: &GuestRam, spec: &BootSpec<'_>, platform: &Platform) -> Result<BootInfo> {
    let cmdline = boot::cmdline(spec.cmdline)?;
    let mem = ram.memory();
    let kernel = kernel::load_kernel(mem, spec.kernel)?;
    let initramfs = match spec.initramfs {
        Some(path) => {
            // The zero page's ramdisk fields are 32 bits wide, and the header may lower the limit.
            let mut limit = ram.end_below_hole();
            if let Some(hdr) = kernel.setup_header
                && hdr.initrd_addr_max != 0
            {
                limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
            }
            Some(kernel::load_initramfs(mem, path, kernel.end, limit)?)
        }
        None => None,
    };
    mptable::write(mem, platform.cpus)?;
    let rsdp = match &platform.acpi {
        Some(config) => Some(acpi::write(mem, config)?),
        None => None,
    };
    let map = e820::memory_map(&ram.ranges());
    let boot_info = boot::write_boot_info(mem, &kernel, &cmdline, initramfs, &map, rsdp)?;
    Ok(BootInfo {
        kernel,
        initramfs,
        boot_info,
    })
}

/// Sets up vCPU `id` of `cpus`: CPUID (without the hypercall-based KVM features on a software KVM
/// backend, where hypercalls never complete), MSRs, LAPIC, and for the boot vCPU (`boot` given) the
/// registers that enter the kernel.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &Vcpu,
    ram: &GuestRam,
    cpus: u32,
    boot: Option<&BootInfo>,
) -> Result<()> {
    let mut cpuid = kvm.supported_cpuid()?;
    let mut entries = cpuid.as_slice().to_vec();
    cpuid::normalize(
        &mut entries,
        cpuid::Topology {
            apic_id: vcpu.id() as u32,
            cpus,
        },
    );
    if kvm.is_software_backend() {
        cpuid::mask_hypercall_features(&mut entries);
    }
    if entries.len() != cpuid.as_slice().len() {
        cpuid = kvm_bindings::CpuId::from_entries(&entries)
            .map_err(|_| Error::BootStructure("CPUID table"))?;
    } else {
        cpuid.as_mut_slice().copy_from_slice(&entries);
    }
    vcpu.set_cpuid(&cpuid)?;
    vcpu.set_msrs(&msrs::boot_msrs())?;
    let mut lapic = vcpu.lapic()?;
    lapic::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic)?;
    if let Some(b) = boot {
        cpu::setup_boot_cpu(
            vcpu,
            ram.memory(),
            b.kernel.entry_kind,
            b.kernel.entry,
            b.boot_info,
        )?;
    }
    Ok(())
}
