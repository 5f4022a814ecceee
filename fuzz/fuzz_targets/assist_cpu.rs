//! Fuzzes the instruction assist and the system call bridge against a fake vCPU
//! (`assist::testing::FakeCpu`): what a guest controls when the backend gives up on an instruction
//! or when a vCPU stops at the bridge's breakpoint: the code bytes, the page tables kvmkit walks,
//! the registers, control registers, IDT, STAR/SFMASK, the exception frame on the kernel stack.
//!
//! Findings: any panic; an assist that fails (an `Err`) but changed the guest (registers, memory,
//! MSRs, an injected exception), which its contract forbids; a bridge that lets a page fault pass,
//! yet changed the guest's registers or memory; a bridge that finishes a system call anywhere but
//! the entry point, in a ring other than 0, or with IF or RF still set.
//!
//! Input: a 109-byte header, then up to 64 KiB of guest memory (identity-mapped, except the pages
//! the header's mask leaves out, for the fake's translation; kvmkit's own walk reads the page
//! tables at CR3 in that memory). Header: op (bit 0: assist, else bridge), mode flags (paging, WP,
//! PAE, SMAP, long mode, 32-bit CS, real mode, AC), CPL, the unmapped-page mask (2 bytes), then 8
//! bytes each: RIP, RSP, RCX, R11, RAX (also CR2), CR3, IDT base, IDT limit, LSTAR, STAR, SFMASK, and two
//! addresses the vCPU stops at for the bridge (an odd first byte: where the bridge put its
//! breakpoint). `fuzz/seeds/assist_cpu.py` writes seeds: each assisted instruction in long mode,
//! and a system call the backend left half done.

#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;

use accel::x86::{cr0, cr4, efer, msr, rflags, vector};
use kvm_bindings::{kvm_regs, kvm_sregs};
use kvmkit_assist::testing::FakeCpu;
use kvmkit_assist::{Assist, Entry, GuestCpu, SyscallBridge};
use kvmkit_memory::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};

const MEM_SIZE: usize = 64 << 10;
const HEADER: usize = 109;

fn word(data: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The vCPU the header describes.
fn cpu(h: &[u8]) -> FakeCpu {
    let flags = h[1];
    let cpl = u16::from(h[2] & 3);
    let unmapped = u16::from_le_bytes([h[3], h[4]]);
    let mut sregs = kvm_sregs::default();
    sregs.cr0 = cr0::PE | cr0::ET;
    if flags & 1 != 0 {
        sregs.cr0 |= cr0::PG;
    }
    if flags & 2 != 0 {
        sregs.cr0 |= cr0::WP;
    }
    if flags & 4 != 0 {
        sregs.cr4 |= cr4::PAE;
    }
    if flags & 8 != 0 {
        sregs.cr4 |= cr4::SMAP;
    }
    if flags & 16 != 0 {
        sregs.efer |= efer::LME | efer::LMA;
        sregs.cs.l = 1;
    } else if flags & 32 != 0 {
        sregs.cs.db = 1;
    }
    if flags & 64 != 0 {
        sregs.cr0 &= !cr0::PE;
    }
    sregs.cs.selector = cpl;
    sregs.cs.dpl = cpl as u8;
    sregs.ss.dpl = cpl as u8;
    sregs.cr3 = word(h, 45);
    // RAX doubles as CR2, the address of the page fault the bridge looks at.
    sregs.cr2 = word(h, 37);
    sregs.idt.base = word(h, 53);
    sregs.idt.limit = word(h, 61) as u16;
    let mut rf = 2;
    if flags & 128 != 0 {
        rf |= rflags::AC;
    }
    let regs = kvm_regs {
        rip: word(h, 5),
        rsp: word(h, 13),
        rcx: word(h, 21),
        r11: word(h, 29),
        rax: word(h, 37),
        rflags: rf,
        ..Default::default()
    };
    let pages = (0..16u64)
        .filter(|p| unmapped & (1 << p) == 0)
        .map(|p| (p << 12, p << 12))
        .collect();
    let msrs = HashMap::from([
        (msr::STAR, word(h, 77)),
        (msr::SYSCALL_MASK, word(h, 85)),
    ]);
    FakeCpu {
        regs: RefCell::new(regs),
        sregs: RefCell::new(sregs),
        mxcsr: RefCell::new(0x1f80),
        pages,
        injected: RefCell::new(Vec::new()),
        msrs: RefCell::new(msrs),
        breakpoint: RefCell::new(None),
    }
}

fn snapshot(memory: &GuestMemoryMmap) -> Vec<u8> {
    let mut bytes = vec![0u8; MEM_SIZE];
    memory.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    bytes
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, body) = data.split_at(HEADER);
    let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    memory
        .write_slice(&body[..body.len().min(MEM_SIZE)], GuestAddress(0))
        .unwrap();
    let cpu = cpu(h);
    let assist = Assist::new(memory.clone());
    if h[0] & 1 != 0 {
        let before = (cpu.clone(), snapshot(&memory));
        if assist.handle(&cpu).is_err() {
            assert!(cpu == before.0, "a failed assist changed the vCPU");
            assert!(snapshot(&memory) == before.1, "a failed assist changed memory");
        }
        return;
    }
    let mut bridge = SyscallBridge::default();
    let lstar = word(h, 69);
    if bridge.lstar_written(&assist, &cpu, lstar).is_err() {
        return;
    }
    assert_eq!(cpu.msr(msr::LSTAR).unwrap(), lstar);
    for at in [93, 101] {
        let pc = if h[at] & 1 != 0 {
            cpu.breakpoint.borrow().unwrap_or(0)
        } else {
            word(h, at)
        };
        let before = (cpu.clone(), snapshot(&memory));
        match bridge.breakpoint(&assist, &cpu, pc) {
            Ok(Entry::Finished) => {
                let regs = cpu.regs.borrow();
                let sregs = cpu.sregs.borrow();
                assert_eq!(Some(regs.rip), bridge.entry());
                assert_eq!(sregs.cs.selector & 3, 0, "a system call finished outside ring 0");
                assert_eq!(regs.rflags & (rflags::IF | rflags::RF), 0);
                assert!(snapshot(&memory) == before.1);
            }
            Ok(Entry::Passed | Entry::Rearmed) => {
                assert!(*cpu.regs.borrow() == *before.0.regs.borrow());
                assert!(*cpu.sregs.borrow() == *before.0.sregs.borrow());
                assert!(cpu.injected.borrow().len() == before.0.injected.borrow().len());
                assert!(snapshot(&memory) == before.1);
            }
            Ok(Entry::Reflected) => {
                assert_eq!(cpu.injected.borrow().last(), Some(&(vector::DB, None)));
                assert!(*cpu.regs.borrow() == *before.0.regs.borrow());
            }
            Err(_) => return,
        }
    }
});
