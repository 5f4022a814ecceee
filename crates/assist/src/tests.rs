//! The assists against a fake vCPU: guest memory is real (vm-memory), the page tables are a map from
//! linear page to guest-physical page.

use vm_memory::{Bytes as _, GuestAddress};

use crate::testing::{CODE, FakeCpu, TABLES, long_mode};
use crate::{Assist, Error, GuestCpu, Kind, Resolution};

#[test]
fn int3_runs_the_bp_handler_after_it() {
    let (cpu, assist) = long_mode(&[0xcc]);
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Int3)
    );
    assert_eq!(cpu.regs.borrow().rip, CODE + 1);
    assert_eq!(*cpu.injected.borrow(), vec![(3, None)]);
    assert_eq!(assist.counts().get(Kind::Int3), 1);
}

#[test]
fn int3_with_an_empty_idt_is_a_triple_fault() {
    let (cpu, assist) = long_mode(&[0xcc]);
    cpu.sregs.borrow_mut().idt.limit = 0;
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::TripleFault(Kind::Int3)
    );
    assert_eq!(cpu.regs.borrow().rip, CODE);
    assert!(cpu.injected.borrow().is_empty());
}

#[test]
fn int3_in_real_mode_uses_cs_base_and_the_ivt() {
    let (cpu, assist) = long_mode(&[]);
    assist
        .memory
        .write_slice(&[0xcc], GuestAddress(0x2010))
        .unwrap();
    {
        let mut s = cpu.sregs.borrow_mut();
        s.cr0 = 0;
        s.efer = 0;
        s.cs.l = 0;
        s.cs.base = 0x2000;
        s.idt.limit = 0x3ff;
    }
    cpu.regs.borrow_mut().rip = 0x10;
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Int3)
    );
    assert_eq!(cpu.regs.borrow().rip, 0x11);
}

#[test]
fn fwait_is_skipped_unless_the_fpu_is_switched_away() {
    let (cpu, assist) = long_mode(&[0x9b, 0x9b]);
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Fwait)
    );
    assert_eq!(cpu.regs.borrow().rip, CODE + 1);
    cpu.sregs.borrow_mut().cr0 |= 0b1010; // MP | TS
    assist.handle(&cpu).unwrap();
    assert_eq!(cpu.regs.borrow().rip, CODE + 1, "#NM is a fault: RIP stays");
    assert_eq!(*cpu.injected.borrow(), vec![(7, None)]);
    assert_eq!(assist.counts().get(Kind::Fwait), 2);
}

#[test]
fn clac_and_stac_change_ac_in_ring_0_only() {
    let (cpu, assist) = long_mode(&[0x0f, 0x01, 0xcb, 0x0f, 0x01, 0xca]);
    assist.handle(&cpu).unwrap();
    assert_eq!(cpu.regs.borrow().rflags, 2 | 1 << 18);
    assist.handle(&cpu).unwrap();
    assert_eq!(cpu.regs.borrow().rflags, 2);
    assert_eq!(cpu.regs.borrow().rip, CODE + 6);
    cpu.sregs.borrow_mut().cs.dpl = 3;
    cpu.regs.borrow_mut().rip = CODE;
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Stac)
    );
    assert_eq!(*cpu.injected.borrow(), vec![(6, None)]);
    assert_eq!(cpu.regs.borrow().rflags, 2);
    assert_eq!(cpu.regs.borrow().rip, CODE);
}

#[test]
fn popcnt_of_registers_and_memory() {
    let code = [
        0xf3, 0x48, 0x0f, 0xb8, 0xc3, // popcnt rax, rbx
        0xf3, 0x0f, 0xb8, 0x0d, 0xf3, 0x0f, 0x00,
        0x00, // popcnt ecx, [rip + 0xff3] (= 0x2000)
        0x66, 0xf3, 0x0f, 0xb8, 0xd6, // popcnt dx, si
    ];
    let (cpu, assist) = long_mode(&code);
    assist
        .memory
        .write_obj(0xffff_0000_0000_0007u64, GuestAddress(0x2000))
        .unwrap();
    {
        let mut r = cpu.regs.borrow_mut();
        r.rbx = u64::MAX;
        r.rcx = u64::MAX;
        r.rdx = 0xaaaa_0000_0000_ffff;
        r.rsi = 0xffff_0000;
        r.rflags = 2 | 1; // CF set: POPCNT clears it
    }
    for _ in 0..3 {
        assert_eq!(
            assist.handle(&cpu).unwrap(),
            Resolution::Resumed(Kind::Popcnt)
        );
    }
    let r = *cpu.regs.borrow();
    assert_eq!(r.rax, 64);
    assert_eq!(
        r.rcx, 3,
        "32-bit read of 0x00000007, upper half of RCX zeroed"
    );
    assert_eq!(
        r.rdx, 0xaaaa_0000_0000_0000,
        "16-bit write keeps bits 16-63"
    );
    assert_eq!(r.rflags, 2 | 1 << 6, "source 0 sets ZF and clears CF");
    assert_eq!(r.rip, CODE + code.len() as u64);
}

#[test]
fn popcnt_of_an_unmapped_operand_is_a_page_fault() {
    let (cpu, assist) = long_mode(&[0xf3, 0x48, 0x0f, 0xb8, 0x03]); // popcnt rax, [rbx]
    cpu.regs.borrow_mut().rbx = 0x8010;
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Popcnt)
    );
    assert_eq!(*cpu.injected.borrow(), vec![(14, Some(0))]);
    assert_eq!(cpu.sregs.borrow().cr2, 0x8010);
    assert_eq!(cpu.regs.borrow().rip, CODE);
}

#[test]
fn rdrand_and_rdseed_return_valid_randomness() {
    let (cpu, assist) = long_mode(&[0x48, 0x0f, 0xc7, 0xf0, 0x0f, 0xc7, 0xf9]); // rdrand rax; rdseed ecx
    cpu.regs.borrow_mut().rcx = u64::MAX;
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Rdrand)
    );
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Rdseed)
    );
    let r = *cpu.regs.borrow();
    assert_eq!(r.rflags & 1, 1);
    assert!(r.rcx <= u64::from(u32::MAX));
    assert_eq!(r.rip, CODE + 7);
}

#[test]
fn other_instructions_are_reported_with_bytes_and_a_hint() {
    let (cpu, assist) = long_mode(&[0x48, 0x0f, 0xae, 0x2f]); // xrstor64 [rdi]
    let e = assist.handle(&cpu).unwrap_err().to_string();
    assert!(e.contains("xrstor64"), "{e}");
    assert!(e.contains("48 0f ae 2f"), "{e}");
    assert!(e.contains("rip 0x1000"), "{e}");
    assert!(e.contains("noxsave"), "{e}");
    let (cpu, assist) = long_mode(&[0x66, 0x44, 0x0f, 0x6e, 0xf9]); // movd xmm15, ecx
    let e = assist.handle(&cpu).unwrap_err().to_string();
    assert!(e.contains("`movd xmm15,ecx`"), "{e}");
    assert!(e.contains("needs CPU feature SSE2"), "{e}");
    assert_eq!(cpu.regs.borrow().rip, CODE, "state unchanged");
    assert_eq!(assist.counts().total(), 0);
}

#[test]
fn unreadable_or_invalid_code_is_an_error_not_a_panic() {
    let (cpu, assist) = long_mode(&[0x06]); // PUSH ES: not an instruction in 64-bit mode
    assert!(matches!(assist.handle(&cpu), Err(Error::Decode { .. })));
    cpu.regs.borrow_mut().rip = 0x8000; // not mapped
    assert!(matches!(assist.handle(&cpu), Err(Error::Fetch { .. })));
    cpu.regs.borrow_mut().rip = 0xffff_ffff_ffff_fff0; // maps nowhere, wraps at the top
    assert!(matches!(assist.handle(&cpu), Err(Error::Fetch { .. })));
    // POPCNT whose last bytes are on the unmapped page: too short to decode.
    assist
        .memory
        .write_slice(&[0xf3, 0x48, 0x0f], GuestAddress(0x7ffd))
        .unwrap();
    cpu.regs.borrow_mut().rip = 0x7ffd;
    assert!(matches!(assist.handle(&cpu), Err(Error::Decode { .. })));
}

#[test]
fn a_page_table_pointing_outside_ram_is_an_error() {
    let (mut cpu, assist) = long_mode(&[]);
    cpu.pages.insert(0x4000_0000, 0xfee0_0000);
    cpu.regs.borrow_mut().rip = 0x4000_0000;
    let e = assist.handle(&cpu).unwrap_err().to_string();
    assert!(e.contains("not guest RAM"), "{e}");
}

#[test]
fn ldmxcsr_and_stmxcsr_go_through_the_fpu_state() {
    let code = [
        0x0f, 0xae, 0x16, // ldmxcsr [rsi]
        0x0f, 0xae, 0x1f, // stmxcsr [rdi]
    ];
    let (cpu, assist) = long_mode(&code);
    assist
        .memory
        .write_obj(0x7f80u32, GuestAddress(0x2000))
        .unwrap();
    {
        let mut r = cpu.regs.borrow_mut();
        r.rsi = 0x2000;
        r.rdi = 0x2ffe; // straddles two pages
    }
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Ldmxcsr)
    );
    assert_eq!(*cpu.mxcsr.borrow(), 0x7f80);
    assert_eq!(
        assist.handle(&cpu).unwrap(),
        Resolution::Resumed(Kind::Stmxcsr)
    );
    assert_eq!(
        assist.memory.read_obj::<u32>(GuestAddress(0x2ffe)).unwrap(),
        0x7f80
    );
    assert_eq!(cpu.regs.borrow().rip, CODE + 6);
}

#[test]
fn ldmxcsr_faults_like_a_cpu() {
    let (cpu, assist) = long_mode(&[0x0f, 0xae, 0x16]); // ldmxcsr [rsi]
    assist
        .memory
        .write_obj(0x1_0000u32, GuestAddress(0x2000))
        .unwrap();
    cpu.regs.borrow_mut().rsi = 0x2000;
    assist.handle(&cpu).unwrap();
    assert_eq!(*cpu.mxcsr.borrow(), 0x1f80, "reserved bit: unchanged");
    cpu.regs.borrow_mut().rsi = 0x7ffe; // the operand's second half is on the unmapped page
    assist.handle(&cpu).unwrap();
    cpu.sregs.borrow_mut().cr0 |= 1 << 3; // TS
    assist.handle(&cpu).unwrap();
    cpu.sregs.borrow_mut().cr4 &= !(1 << 9); // no OSFXSR
    assist.handle(&cpu).unwrap();
    assert_eq!(
        *cpu.injected.borrow(),
        vec![(13, Some(0)), (14, Some(0)), (7, None), (6, None)]
    );
    assert_eq!(cpu.sregs.borrow().cr2, 0x8000);
    assert_eq!(cpu.regs.borrow().rip, CODE);
}

#[test]
fn stmxcsr_to_an_unmapped_page_writes_nothing() {
    let (cpu, assist) = long_mode(&[0x0f, 0xae, 0x1f]); // stmxcsr [rdi]
    cpu.regs.borrow_mut().rdi = 0x7ffe;
    assist.handle(&cpu).unwrap();
    assert_eq!(*cpu.injected.borrow(), vec![(14, Some(2))]);
    assert_eq!(
        assist.memory.read_obj::<u16>(GuestAddress(0x7ffe)).unwrap(),
        0
    );
}

/// Changes the flags of [`long_mode`]'s page-table entry for the page at `page`.
fn set_pte_flags(assist: &Assist, page: u64, flags: u64) {
    assist
        .memory
        .write_obj(
            page | flags,
            GuestAddress(TABLES + 0x3000 + page / 0x1000 * 8),
        )
        .unwrap();
}

#[test]
fn stmxcsr_to_a_read_only_page_is_a_protection_fault_and_writes_nothing() {
    let (cpu, assist) = long_mode(&[0x0f, 0xae, 0x1f]); // stmxcsr [rdi]
    set_pte_flags(&assist, 0x2000, 0x1); // present, read-only
    cpu.regs.borrow_mut().rdi = 0x2010;
    assist.handle(&cpu).unwrap();
    assert_eq!(*cpu.injected.borrow(), vec![(14, Some(0x3))], "P | W");
    assert_eq!(cpu.sregs.borrow().cr2, 0x2010);
    assert_eq!(
        assist.memory.read_obj::<u32>(GuestAddress(0x2010)).unwrap(),
        0
    );
    // Without CR0.WP a supervisor write to a read-only page is allowed, as on a CPU.
    cpu.sregs.borrow_mut().cr0 &= !(1 << 16);
    cpu.injected.borrow_mut().clear();
    assist.handle(&cpu).unwrap();
    assert!(cpu.injected.borrow().is_empty());
    assert_eq!(
        assist.memory.read_obj::<u32>(GuestAddress(0x2010)).unwrap(),
        0x1f80
    );
    // The page's entry is now accessed and dirty.
    let pte: u64 = assist
        .memory
        .read_obj(GuestAddress(TABLES + 0x3000 + 2 * 8))
        .unwrap();
    assert_eq!(pte & 0x60, 0x60);
}

#[test]
fn user_mode_cannot_reach_supervisor_pages_and_smap_guards_user_pages() {
    let code = [0xf3, 0x48, 0x0f, 0xb8, 0x03]; // popcnt rax, [rbx]
    let (cpu, assist) = long_mode(&code);
    assist
        .memory
        .write_obj(0xffu64, GuestAddress(0x2000))
        .unwrap();
    cpu.regs.borrow_mut().rbx = 0x2000;
    // CPL 3 reading a supervisor page: #PF, P | U.
    cpu.sregs.borrow_mut().cs.dpl = 3;
    assist.handle(&cpu).unwrap();
    assert_eq!(*cpu.injected.borrow(), vec![(14, Some(0x5))]);
    // Make the page (and the tables above it) user pages: CPL 3 reads it.
    for level in 0..3 {
        let at = GuestAddress(TABLES + level * 0x1000);
        let e: u64 = assist.memory.read_obj(at).unwrap();
        assist.memory.write_obj(e | 0x4, at).unwrap();
    }
    set_pte_flags(&assist, 0x2000, 0x7);
    cpu.injected.borrow_mut().clear();
    assist.handle(&cpu).unwrap();
    assert!(cpu.injected.borrow().is_empty());
    assert_eq!(cpu.regs.borrow().rax, 8);
    // CPL 0 reading the user page with SMAP on and AC clear: #PF, P.
    cpu.sregs.borrow_mut().cs.dpl = 0;
    cpu.regs.borrow_mut().rip = CODE;
    assist.handle(&cpu).unwrap();
    assert_eq!(*cpu.injected.borrow(), vec![(14, Some(0x1))]);
    // With AC set (after STAC) it may.
    cpu.injected.borrow_mut().clear();
    cpu.regs.borrow_mut().rflags |= 1 << 18;
    cpu.regs.borrow_mut().rax = 0;
    assist.handle(&cpu).unwrap();
    assert!(cpu.injected.borrow().is_empty());
    assert_eq!(cpu.regs.borrow().rax, 8);
}

#[test]
fn a_non_canonical_operand_is_a_general_protection_or_stack_fault() {
    let code = [
        0xf3, 0x48, 0x0f, 0xb8, 0x03, // popcnt rax, [rbx]
    ];
    let (cpu, assist) = long_mode(&code);
    cpu.regs.borrow_mut().rbx = 0x8000_0000_0000_0000;
    assist.handle(&cpu).unwrap();
    let (cpu2, assist2) = long_mode(&[0xf3, 0x48, 0x0f, 0xb8, 0x04, 0x24]); // popcnt rax, [rsp]
    cpu2.regs.borrow_mut().rsp = 0x0000_8000_0000_0000;
    assist2.handle(&cpu2).unwrap();
    assert_eq!(*cpu.injected.borrow(), vec![(13, Some(0))]);
    assert_eq!(*cpu2.injected.borrow(), vec![(12, Some(0))]);
    assert_eq!(cpu.regs.borrow().rip, CODE, "a fault: RIP stays");
}

mod syscall_bridge {
    use super::*;
    use crate::{Entry, SyscallBridge};
    use accel::x86::msr;

    const IDT: u64 = 0x3000;
    const HANDLER: u64 = 0x5000;
    const ENTRY: u64 = 0x6000;
    const KERNEL_STACK: u64 = 0x4000;

    /// A long-mode vCPU whose IDT's #PF gate points at [`HANDLER`] (code `handler`), with Linux's
    /// STAR and SFMASK.
    fn kernel(handler: &[u8]) -> (FakeCpu, Assist) {
        let (cpu, assist) = long_mode(&[]);
        let mut gate = [0u8; 16];
        gate[0..2].copy_from_slice(&(HANDLER as u16).to_le_bytes());
        gate[2..4].copy_from_slice(&0x10u16.to_le_bytes());
        gate[5] = 0x8e;
        assist
            .memory
            .write_slice(&gate, GuestAddress(IDT + 14 * 16))
            .unwrap();
        assist
            .memory
            .write_slice(handler, GuestAddress(HANDLER))
            .unwrap();
        {
            let mut s = cpu.sregs.borrow_mut();
            s.idt.base = IDT;
            s.idt.limit = 256 * 16 - 1;
        }
        cpu.set_msr(msr::STAR, 0x0023_0010_0000_0000).unwrap();
        cpu.set_msr(msr::SYSCALL_MASK, 0x47700).unwrap();
        (cpu, assist)
    }

    /// [`kernel`] after its LSTAR write: the bridge armed.
    fn armed(handler: &[u8]) -> (FakeCpu, Assist, SyscallBridge) {
        let (cpu, assist) = kernel(handler);
        let mut bridge = SyscallBridge::default();
        assert!(bridge.lstar_written(&assist, &cpu, ENTRY).unwrap());
        (cpu, assist, bridge)
    }

    /// Where the user program's SYSCALL instruction is.
    const USER_SYSCALL: u64 = 0x7000;

    /// Puts the vCPU where the backend leaves it on entering the #PF handler from ring 3 after a
    /// SYSCALL it did not finish: the frame on the kernel stack (its RFLAGS with IF cleared by
    /// SFMASK), CR2, RIP at the handler, RCX after the SYSCALL at [`USER_SYSCALL`] and R11 the user
    /// RFLAGS (as seen on kvm_pvm: frame RFLAGS 0x10002, R11 0x246).
    fn page_fault_from_user(cpu: &FakeCpu, assist: &Assist, rip: u64, cr2: u64, error: u64) {
        assist
            .memory
            .write_slice(&[0x0f, 0x05, 0x90], GuestAddress(USER_SYSCALL))
            .unwrap();
        let frame = [error, rip, 0x33, 0x10002, 0x7ff0, 0x2b];
        for (i, word) in frame.iter().enumerate() {
            assist
                .memory
                .write_obj(*word, GuestAddress(KERNEL_STACK + i as u64 * 8))
                .unwrap();
        }
        let mut r = cpu.regs.borrow_mut();
        r.rip = HANDLER;
        r.rsp = KERNEL_STACK;
        r.rflags = 2;
        r.rcx = USER_SYSCALL + 2; // SYSCALL's return address, as the backend left it
        r.r11 = 0x246;
        cpu.sregs.borrow_mut().cr2 = cr2;
    }

    #[test]
    fn an_lstar_write_is_done_for_the_guest_and_arms_the_pf_handler() {
        let (cpu, assist) = kernel(&[0x90]);
        let mut bridge = SyscallBridge::default();
        assert!(bridge.lstar_written(&assist, &cpu, ENTRY).unwrap());
        assert_eq!(cpu.msr(msr::LSTAR).unwrap(), ENTRY);
        assert_eq!(*cpu.breakpoint.borrow(), Some(HANDLER));
    }

    #[test]
    fn an_idt_at_the_top_of_the_address_space_is_no_overflow() {
        let (cpu, assist) = kernel(&[0x90]);
        cpu.sregs.borrow_mut().idt.base = u64::MAX - 0x10;
        let mut bridge = SyscallBridge::default();
        // The gate's address wraps to a low page that holds no gate: nothing is armed.
        assert!(!bridge.lstar_written(&assist, &cpu, ENTRY).unwrap());
        assert_eq!(*cpu.breakpoint.borrow(), None);
    }

    #[test]
    fn without_a_pf_gate_nothing_is_armed() {
        let (cpu, assist) = kernel(&[0x90]);
        cpu.sregs.borrow_mut().idt.limit = 7;
        let mut bridge = SyscallBridge::default();
        assert!(!bridge.lstar_written(&assist, &cpu, ENTRY).unwrap());
        assert_eq!(cpu.msr(msr::LSTAR).unwrap(), ENTRY);
        assert_eq!(*cpu.breakpoint.borrow(), None);
    }

    #[test]
    fn a_syscall_left_in_ring_3_is_finished_in_ring_0() {
        let (cpu, assist, mut bridge) = armed(&[0x90]);
        page_fault_from_user(&cpu, &assist, ENTRY, ENTRY, 0x15); // present | user | fetch
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Finished
        );
        let (r, s) = (*cpu.regs.borrow(), *cpu.sregs.borrow());
        assert_eq!((r.rip, r.rsp, r.rcx), (ENTRY, 0x7ff0, USER_SYSCALL + 2));
        assert_eq!(r.rflags, 0x2, "IF, TF, DF, AC... masked by SFMASK");
        assert_eq!(r.r11, 0x246, "R11 as the backend saved it");
        assert_eq!((s.cs.selector, s.cs.dpl, s.cs.l), (0x10, 0, 1));
        assert_eq!((s.ss.selector, s.ss.dpl), (0x18, 0));
        assert_eq!(assist.counts().get(Kind::Syscall), 1);
        assert_eq!(*cpu.breakpoint.borrow(), Some(HANDLER), "still armed");
    }

    #[test]
    fn a_jump_to_the_entry_point_is_a_page_fault_not_a_system_call() {
        // A ring-3 `jmp` to the entry point faults like a SYSCALL left in ring 3, but with user
        // mode's own RFLAGS in the frame (IF set), and RCX and R11 of its choosing (IOPL 3 in R11
        // would reach user mode through SYSRET).
        let (cpu, assist, mut bridge) = armed(&[0x90, 0xfc]);
        page_fault_from_user(&cpu, &assist, ENTRY, ENTRY, 0x15);
        assist
            .memory
            .write_obj(0x10246u64, GuestAddress(KERNEL_STACK + 3 * 8))
            .unwrap();
        cpu.regs.borrow_mut().r11 = 0x3202;
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
        let r = *cpu.regs.borrow();
        assert_eq!(
            (r.rip, r.r11),
            (HANDLER, 0x3202),
            "the fault goes to the guest"
        );
        // A kernel whose SFMASK keeps IF cannot tell the two apart: no system call is finished.
        let (cpu, assist, mut bridge) = armed(&[0x90, 0xfc]);
        cpu.set_msr(msr::SYSCALL_MASK, 0x47500).unwrap();
        page_fault_from_user(&cpu, &assist, ENTRY, ENTRY, 0x15);
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
        assert_eq!(assist.counts().get(Kind::Syscall), 0);
    }

    #[test]
    fn a_fault_whose_rcx_follows_no_syscall_is_passed_on() {
        // RCX after other bytes, in the kernel half, on an unmapped page, or below 2.
        for rcx in [USER_SYSCALL + 3, 0xffff_8000_0000_7002, 0x8002, 1] {
            let (cpu, assist, mut bridge) = armed(&[0x90, 0xfc]);
            page_fault_from_user(&cpu, &assist, ENTRY, ENTRY, 0x15);
            cpu.regs.borrow_mut().rcx = rcx;
            assert_eq!(
                bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
                Entry::Passed,
                "RCX {rcx:#x}"
            );
            assert_eq!(cpu.regs.borrow().rip, HANDLER);
            assert_eq!(assist.counts().get(Kind::Syscall), 0);
        }
    }

    #[test]
    fn other_page_faults_reach_the_handler_and_the_breakpoint_comes_back() {
        let (cpu, assist, mut bridge) = armed(&[0x90, 0xfc]); // nop; cld
        page_fault_from_user(&cpu, &assist, 0x40_1000, 0x40_1000, 0x14);
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
        assert_eq!(cpu.regs.borrow().rip, HANDLER, "the handler runs unchanged");
        assert_eq!(*cpu.breakpoint.borrow(), Some(HANDLER + 1));
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER + 1).unwrap(),
            Entry::Rearmed
        );
        assert_eq!(*cpu.breakpoint.borrow(), Some(HANDLER));
        // A data fault at the entry address (not a fetch) is not a system call either.
        page_fault_from_user(&cpu, &assist, 0x40_1000, ENTRY, 0x05);
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
        assert_eq!(assist.counts().get(Kind::Syscall), 0);
    }

    #[test]
    fn a_handler_that_starts_with_a_jump_disarms_the_bridge() {
        let (cpu, assist, mut bridge) = armed(&[0xeb, 0xfe]); // jmp $
        page_fault_from_user(&cpu, &assist, 0x40_1000, 0x40_1000, 0x14);
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
        assert_eq!(*cpu.breakpoint.borrow(), None);
    }

    #[test]
    fn the_guests_own_debug_exceptions_go_back_to_it() {
        let (cpu, assist, mut bridge) = armed(&[0x90]);
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, 0x1234).unwrap(),
            Entry::Reflected
        );
        assert_eq!(*cpu.injected.borrow(), vec![(1, None)]);
    }

    #[test]
    fn an_unreadable_frame_is_passed_on() {
        let (cpu, assist, mut bridge) = armed(&[0x90]);
        page_fault_from_user(&cpu, &assist, ENTRY, ENTRY, 0x15);
        cpu.regs.borrow_mut().rsp = 0x7ff8; // the frame runs into the unmapped page
        assert_eq!(
            bridge.breakpoint(&assist, &cpu, HANDLER).unwrap(),
            Entry::Passed
        );
    }
}
