//! A fake vCPU for testing and fuzzing the assist and the system call bridge without KVM (the
//! `testing` feature): registers, MSRs and the exceptions injected live in cells, the linear to
//! guest-physical map is a table, and guest memory is real (vm-memory).

use std::cell::RefCell;
use std::collections::HashMap;

use kvm_bindings::{kvm_regs, kvm_sregs};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes as _, GuestAddress};

use crate::{Assist, GuestCpu};

/// Where [`long_mode`] puts its code.
pub const CODE: u64 = 0x1000;

/// A vCPU whose state lives in cells, with the exceptions injected into it recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeCpu {
    /// General-purpose registers, RIP and RFLAGS.
    pub regs: RefCell<kvm_regs>,
    /// Segment, control and descriptor-table registers.
    pub sregs: RefCell<kvm_sregs>,
    /// MXCSR.
    pub mxcsr: RefCell<u32>,
    /// Linear page -> guest-physical page; pages not here are not mapped.
    pub pages: HashMap<u64, u64>,
    /// The exceptions injected, in order (vector, error code).
    pub injected: RefCell<Vec<(u8, Option<u32>)>>,
    /// MSRs written (unwritten ones read 0).
    pub msrs: RefCell<HashMap<u32, u64>>,
    /// The VMM's execution breakpoint.
    pub breakpoint: RefCell<Option<u64>>,
}

impl GuestCpu for FakeCpu {
    fn regs(&self) -> Result<kvm_regs, accel::Error> {
        Ok(*self.regs.borrow())
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), accel::Error> {
        *self.regs.borrow_mut() = *regs;
        Ok(())
    }
    fn sregs(&self) -> Result<kvm_sregs, accel::Error> {
        Ok(*self.sregs.borrow())
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), accel::Error> {
        *self.sregs.borrow_mut() = *sregs;
        Ok(())
    }
    fn mxcsr(&self) -> Result<u32, accel::Error> {
        Ok(*self.mxcsr.borrow())
    }
    fn set_mxcsr(&self, mxcsr: u32) -> Result<(), accel::Error> {
        *self.mxcsr.borrow_mut() = mxcsr;
        Ok(())
    }
    fn translate(&self, gva: u64) -> Result<Option<u64>, accel::Error> {
        Ok(self.pages.get(&(gva & !0xfff)).map(|p| p | (gva & 0xfff)))
    }
    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<(), accel::Error> {
        self.injected.borrow_mut().push((vector, error_code));
        Ok(())
    }
    fn msr(&self, index: u32) -> Result<u64, accel::Error> {
        Ok(self.msrs.borrow().get(&index).copied().unwrap_or(0))
    }
    fn set_msr(&self, index: u32, value: u64) -> Result<(), accel::Error> {
        self.msrs.borrow_mut().insert(index, value);
        Ok(())
    }
    fn set_hw_breakpoint(&self, addr: Option<u64>) -> Result<(), accel::Error> {
        *self.breakpoint.borrow_mut() = addr;
        Ok(())
    }
}

/// Where [`long_mode`]'s page tables are: PML4, PDPT, PD, PT, one page each.
pub const TABLES: u64 = 0xb000;

/// 64 KiB of guest RAM, identity-mapped except page 0x8000 (not mapped), with `code` at [`CODE`];
/// the map is both the fake's translation and real 4-level page tables at [`TABLES`] (present,
/// writable, supervisor), for the accesses the assist checks itself.
pub fn long_mode(code: &[u8]) -> (FakeCpu, Assist) {
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)])
        .expect("64 KiB of guest memory");
    memory
        .write_slice(code, GuestAddress(CODE))
        .expect("code within the 64 KiB");
    for level in 0..3 {
        let entry = (TABLES + (level + 1) * 0x1000) | 0x3;
        memory
            .write_obj(entry, GuestAddress(TABLES + level * 0x1000))
            .expect("tables within the 64 KiB");
    }
    for page in (0..0x10000u64).step_by(0x1000).filter(|&p| p != 0x8000) {
        memory
            .write_obj(
                page | 0x3,
                GuestAddress(TABLES + 0x3000 + page / 0x1000 * 8),
            )
            .expect("tables within the 64 KiB");
    }
    let mut sregs = kvm_sregs {
        cr0: 0x8001_0011, // PG | WP | ET | PE
        cr3: TABLES,
        cr4: (1 << 21) | (1 << 9), // SMAP | OSFXSR
        efer: 0x500,               // LME | LMA
        ..Default::default()
    };
    sregs.cs.l = 1;
    sregs.idt.limit = 256 * 16 - 1;
    let pages = (0..0x10000u64)
        .step_by(0x1000)
        .filter(|&p| p != 0x8000)
        .map(|p| (p, p))
        .collect();
    let cpu = FakeCpu {
        regs: RefCell::new(kvm_regs {
            rip: CODE,
            rflags: 2,
            ..Default::default()
        }),
        sregs: RefCell::new(sregs),
        mxcsr: RefCell::new(0x1f80),
        pages,
        injected: RefCell::new(Vec::new()),
        msrs: RefCell::new(HashMap::new()),
        breakpoint: RefCell::new(None),
    };
    (cpu, Assist::new(memory))
}
