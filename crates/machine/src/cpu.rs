//! The boot vCPU's registers: long mode for the Linux 64-bit entry, protected mode for PVH.

use accel::Vcpu;
use accel::x86::{cr0, cr4, efer};
use kvm_bindings::{kvm_fpu, kvm_regs};
use vm_memory::{Bytes, GuestAddress};

use crate::gdt::{GDT_LONG_MODE, GDT_PROTECTED_MODE, segment};
use crate::kernel::EntryKind;
use crate::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START};
use crate::paging::write_identity_map;
use crate::{Error, Result};

/// Puts the boot vCPU at `entry` in the mode `kind` requires, with `boot_info` (zero page or
/// `hvm_start_info`) in `rsi` or `rbx`. Writes the GDT (and, for long mode, the identity page tables).
pub fn setup_boot_cpu<M: vm_memory::GuestMemoryBackend>(
    vcpu: &Vcpu,
    mem: &M,
    kind: EntryKind,
    entry: u64,
    boot_info: u64,
) -> Result<()> {
    let gdt = match kind {
        EntryKind::Pvh => GDT_PROTECTED_MODE,
        EntryKind::Linux64 => GDT_LONG_MODE,
    };
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + i as u64 * 8))
            .map_err(|_| Error::BootStructure("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| Error::BootStructure("IDT"))?;

    let mut sregs = vcpu.sregs()?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    let code = segment(1, gdt[1]);
    let data = segment(2, gdt[2]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, gdt[3]);

    let mut regs = kvm_regs {
        rip: entry,
        rflags: 0x2,
        ..Default::default()
    };
    match kind {
        EntryKind::Pvh => {
            sregs.cr0 = cr0::PE | cr0::ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rbx = boot_info;
        }
        EntryKind::Linux64 => {
            sregs.cr3 = write_identity_map(mem)?;
            sregs.cr4 |= cr4::PAE;
            sregs.cr0 |= cr0::PE | cr0::PG | cr0::ET;
            sregs.efer |= efer::LME | efer::LMA;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = boot_info;
        }
    }
    vcpu.set_sregs(&sregs)?;
    vcpu.set_regs(&regs)?;
    vcpu.set_fpu(&kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    })?;
    Ok(())
}
