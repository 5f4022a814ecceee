//! Tiny hand-assembled 64-bit guests, one per instruction the instruction assist finishes: each guest
//! runs the instruction in ring 0 and prints on COM1 what it and its exception handlers saw. On a
//! software KVM backend (kvm_pvm) the backend fails on these instructions and kvmkit finishes them;
//! on hardware KVM the CPU runs them and the guests print the same.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use kvmkit::Outcome;
use kvmkit::software_kvm::AssistMode;
use kvmkit_integration_tests::{CODE_ADDR, Mode, TinyGuest};
use vm_memory::{Bytes, GuestAddress};

/// Where the guests' IDT goes; it has gates for vectors 0 to 15.
const IDT: u64 = 0x3000;
/// Where the exception handler for vector `v` goes: `HANDLERS + v * 0x40`.
const HANDLERS: u64 = 0x2000;

/// `mov dx, 0x3f8; mov al, c; out dx, al`: prints `c` on COM1.
fn print(c: u8) -> Vec<u8> {
    vec![0x66, 0xba, 0xf8, 0x03, 0xb0, c, 0xee]
}

/// `mov al, 0xfe; out 0x64, al; jmp $`: resets through the i8042.
const RESET: [u8; 6] = [0xb0, 0xfe, 0xe6, 0x64, 0xeb, 0xfe];

/// `iretq`
const IRETQ: [u8; 2] = [0x48, 0xcf];

/// A 64-bit interrupt gate to `handler` through code selector 0x08 (kvmkit's boot GDT).
fn gate(handler: u64) -> [u8; 16] {
    let mut g = [0u8; 16];
    g[0..2].copy_from_slice(&(handler as u16).to_le_bytes());
    g[2..4].copy_from_slice(&0x08u16.to_le_bytes());
    g[5] = 0x8e; // present, DPL 0, 64-bit interrupt gate
    g[6..8].copy_from_slice(&((handler >> 16) as u16).to_le_bytes());
    g[8..12].copy_from_slice(&((handler >> 32) as u32).to_le_bytes());
    g
}

/// A long-mode guest running `code`, with an IDT whose handler for vector `v` is `handlers[v]` (a
/// handler that prints `!` and resets for vectors not given).
fn guest(code: &[u8], handlers: &[(u8, Vec<u8>)], assist: AssistMode) -> TinyGuest {
    let mut code = code.to_vec();
    code.extend_from_slice(&RESET);
    let guest = TinyGuest::with_assist(Mode::Long, &code, None, assist);
    let mem = guest.vm.ram().memory();
    for v in 0..16u8 {
        let at = HANDLERS + u64::from(v) * 0x40;
        let body = handlers
            .iter()
            .find(|(h, _)| *h == v)
            .map(|(_, b)| b.clone())
            .unwrap_or_else(|| [print(b'!'), RESET.to_vec()].concat());
        assert!(body.len() <= 0x40);
        mem.write_slice(&body, GuestAddress(at)).unwrap();
        mem.write_slice(&gate(at), GuestAddress(IDT + u64::from(v) * 16))
            .unwrap();
    }
    let vcpu = guest.vm.vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.idt.base = IDT;
    sregs.idt.limit = 16 * 16 - 1;
    vcpu.set_sregs(&sregs).unwrap();
    guest
}

/// Runs the guest; returns its outcome, console output and the assist counts (kind name, count).
fn run(guest: TinyGuest) -> (Outcome, String, Vec<(&'static str, u64)>) {
    let assist = guest.vm.assist().cloned();
    let (outcome, out) = guest.run();
    let counts = assist.map(|a| a.counts().nonzero()).unwrap_or_default();
    (outcome, String::from_utf8_lossy(&out).into_owned(), counts)
}

/// True if the assist ran on this host's KVM for the instruction (a software backend needs it;
/// hardware KVM runs the instruction itself). Either way the guest must see the same.
fn assisted(counts: &[(&str, u64)], kind: &str) -> bool {
    counts.iter().any(|&(k, n)| k == kind && n > 0)
}

fn software_kvm() -> bool {
    accel::Kvm::new().unwrap().is_software_backend()
}

#[test]
fn int3_runs_the_guests_bp_handler_which_returns_after_it() {
    // #BP handler: check that the saved RIP is just past the INT3, print B (or X), return.
    let mut bp = vec![
        0x48, 0x81, 0x3c, 0x24, 0x01, 0x10, 0x00, 0x00, // cmp qword [rsp], CODE_ADDR + 1
        0x75, 0x09, //                                     jne bad
    ];
    bp.extend(print(b'B'));
    bp.extend(IRETQ);
    bp.extend(print(b'X')); // bad:
    bp.extend(RESET);
    let mut code = vec![0xcc]; // int3
    code.extend(print(b'R'));
    let (outcome, out, counts) = run(guest(&code, &[(3, bp)], AssistMode::Auto));
    assert_eq!(out, "BR");
    assert_eq!(outcome, Outcome::Reset);
    assert_eq!(assisted(&counts, "int3"), software_kvm(), "{counts:?}");
}

#[test]
fn int3_with_an_empty_idt_is_a_triple_fault() {
    // kvmkit's boot IDT has one empty gate: nothing can deliver #BP. Linux's reboot=t does this.
    let guest = TinyGuest::new(Mode::Long, &[0xcc], None);
    let (outcome, _, _) = run(guest);
    assert_eq!(
        outcome,
        Outcome::TripleFault {
            vcpu: 0,
            rip: CODE_ADDR
        }
    );
}

#[test]
fn fwait_is_skipped_and_raises_nm_when_the_fpu_is_switched_away() {
    // cr0.MP|TS set: FWAIT takes #NM; the handler prints N, clears TS and returns to the FWAIT,
    // which now completes.
    let mut nm = print(b'N');
    nm.extend([0x0f, 0x06]); // clts
    nm.extend(IRETQ);
    let mut code = vec![
        0x0f, 0x20, 0xc0, // mov rax, cr0
        0x48, 0x83, 0xc8, 0x0a, // or rax, MP | TS
        0x0f, 0x22, 0xc0, // mov cr0, rax
        0x9b, // fwait
    ];
    code.extend(print(b'W'));
    code.push(0x9b); // fwait, TS clear
    code.extend(print(b'w'));
    let (outcome, out, counts) = run(guest(&code, &[(7, nm)], AssistMode::Auto));
    assert_eq!(out, "NWw");
    assert_eq!(outcome, Outcome::Reset);
    if software_kvm() {
        assert!(assisted(&counts, "fwait"), "{counts:?}");
    }
}

#[test]
fn popcnt_of_a_register_and_of_memory() {
    let mut code = vec![
        0x48, 0xbb, 0x07, 0, 0, 0, 0, 0, 0, 0x80, // mov rbx, 0x8000000000000007
        0xf3, 0x48, 0x0f, 0xb8, 0xc3, // popcnt rax, rbx        (4)
        0x04, b'0', //                   add al, '0'
        0x66, 0xba, 0xf8, 0x03, //       mov dx, 0x3f8
        0xee, //                         out dx, al
        0xbe, 0x00, 0x28, 0x00, 0x00, // mov esi, 0x2800
        0xf3, 0x0f, 0xb8, 0x06, //       popcnt eax, [rsi]      (0xff: 8)
        0x04, b'0', //                   add al, '0'
        0xee, //                         out dx, al
        0x31, 0xdb, //                   xor ebx, ebx
        0xf3, 0x48, 0x0f, 0xb8, 0xc3, // popcnt rax, rbx        (0, ZF)
        0x75, 0x02, //                   jnz +2
        0xb0, b'Z', //                   mov al, 'Z'
        0xee, //                         out dx, al
    ];
    code.extend(print(b'.'));
    let g = guest(&code, &[], AssistMode::Auto);
    g.vm.ram()
        .memory()
        .write_slice(&[0xff, 0, 0, 0], GuestAddress(0x2800))
        .unwrap();
    let (outcome, out, counts) = run(g);
    assert_eq!(out, "48Z.");
    assert_eq!(outcome, Outcome::Reset);
    if software_kvm() {
        assert_eq!(counts, vec![("popcnt", 3)]);
    }
}

#[test]
fn rdrand_reports_valid_random_numbers() {
    let mut code = vec![
        0x48, 0x0f, 0xc7, 0xf0, // rdrand rax
        0x72, 0x02, //             jc +2
        0xeb, 0xfe, //             jmp $   (never: CF must be set)
        0x48, 0x89, 0xc3, //       mov rbx, rax
        0x48, 0x0f, 0xc7, 0xf0, // rdrand rax
        0x48, 0x39, 0xd8, //       cmp rax, rbx
        0x74, 0x0b, //             je same (two equal 64-bit draws: broken)
    ];
    code.extend(print(b'D')); // 7 bytes
    code.extend([0xeb, 0x02]); // jmp +2
    code.extend([0xeb, 0xfe]); // same: jmp $
    let (outcome, out, counts) = run(guest(&code, &[], AssistMode::Auto));
    assert_eq!(out, "D");
    assert_eq!(outcome, Outcome::Reset);
    // kvm_pvm runs RDRAND itself; a backend that does not gets the assist (unit-tested in
    // kvmkit-assist), and the guest must see the same either way.
    assert!(counts.iter().all(|&(k, _)| k == "rdrand"), "{counts:?}");
}

#[test]
fn clac_outside_smap_is_an_invalid_opcode() {
    // kvmkit's vCPU has CR4.SMAP clear: CLAC raises #UD, whose handler prints U and resets.
    let mut ud = print(b'U');
    ud.extend(RESET);
    let mut code = vec![0x0f, 0x01, 0xca]; // clac
    code.extend(print(b'!'));
    let (outcome, out, counts) = run(guest(&code, &[(6, ud)], AssistMode::Auto));
    assert_eq!(out, "U");
    if software_kvm() {
        assert_eq!(counts, vec![("clac", 1)]);
    }
    assert_eq!(outcome, Outcome::Reset);
}

#[test]
fn an_instruction_nobody_runs_ends_the_vm_with_its_bytes_and_a_hint() {
    // xrstor64 [rdi] with XSAVE off in CR4: a CPU raises #UD, the backend gives up; either way the
    // guest must not just run on.
    let code = [0x48, 0x0f, 0xae, 0x2f];
    let (outcome, out, _) = run(guest(
        &code,
        &[(6, [print(b'U'), RESET.to_vec()].concat())],
        AssistMode::Auto,
    ));
    match outcome {
        Outcome::InternalError {
            assist: Some(why), ..
        } => {
            assert!(why.contains("xrstor64"), "{why}");
            assert!(why.contains("48 0f ae 2f"), "{why}");
            assert!(why.contains("noxsave"), "{why}");
        }
        Outcome::Reset => assert_eq!(out, "U", "a CPU's #UD"),
        other => panic!("unexpected outcome {other}"),
    }
}

#[test]
fn with_the_assist_off_int3_is_the_backends_internal_error() {
    let (outcome, out, counts) = run(guest(&[0xcc], &[], AssistMode::Off));
    assert!(counts.is_empty());
    if software_kvm() {
        match outcome {
            Outcome::InternalError {
                rip, assist: None, ..
            } => assert_eq!(rip, CODE_ADDR),
            other => panic!("expected KVM's internal error, got {other}"),
        }
    } else {
        assert_eq!((outcome, out.as_str()), (Outcome::Reset, "!"));
    }
}

#[test]
fn ldmxcsr_and_stmxcsr_round_trip_and_reserved_bits_fault() {
    // #GP handler: print G and reset.
    let gp = [print(b'G'), RESET.to_vec()].concat();
    let mut code = vec![
        0xbe, 0x00, 0x28, 0x00, 0x00, //             mov esi, 0x2800
        0xbf, 0x10, 0x28, 0x00, 0x00, //             mov edi, 0x2810
        0x0f, 0xae, 0x16, //                         ldmxcsr [rsi]      (0x7f80)
        0x0f, 0xae, 0x1f, //                         stmxcsr [rdi]
        0x81, 0x3f, 0x80, 0x7f, 0x00, 0x00, //       cmp dword [rdi], 0x7f80
        0x75, 0x07, //                               jne +7
    ];
    code.extend(print(b'M'));
    code.extend([0x0f, 0xae, 0x56, 0x04]); //        ldmxcsr [rsi + 4]  (0x10000: reserved)
    code.extend(print(b'!'));
    let g = guest(&code, &[(13, gp)], AssistMode::Auto);
    g.vm.ram()
        .memory()
        .write_slice(&[0x80, 0x7f, 0, 0, 0, 0, 1, 0], GuestAddress(0x2800))
        .unwrap();
    let vcpu = g.vm.vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cr4 |= 1 << 9; // OSFXSR: SSE state is the OS's
    vcpu.set_sregs(&sregs).unwrap();
    let (outcome, out, counts) = run(g);
    assert_eq!(out, "MG");
    assert_eq!(outcome, Outcome::Reset);
    if software_kvm() {
        assert_eq!(counts, vec![("ldmxcsr", 2), ("stmxcsr", 1)]);
    }
}

#[test]
fn a_non_canonical_lstar_write_is_a_general_protection_fault() {
    // On a software backend kvmkit traps LSTAR writes (the system call bridge); a value no CPU
    // would take must give the guest #GP, as the CPU does, not end the VM.
    let mut code = vec![
        0xb9, 0x82, 0x00, 0x00, 0xc0, // mov ecx, 0xc0000082 (LSTAR)
        0xb8, 0x00, 0x00, 0x00, 0x81, // mov eax, 0x81000000
        0xba, 0xff, 0xff, 0xff, 0xff, // mov edx, 0xffffffff
        0x0f, 0x30, //                   wrmsr: 0xffffffff81000000, canonical
    ];
    code.extend(print(b'W'));
    code.extend([
        0x31, 0xc0, //                   xor eax, eax
        0xba, 0x00, 0x00, 0x00, 0x80, // mov edx, 0x80000000
        0x0f, 0x30, //                   wrmsr: 0x8000000000000000, not canonical
    ]);
    code.extend(print(b'N'));
    let gp = [print(b'G'), RESET.to_vec()].concat();
    let (outcome, out, _) = run(guest(&code, &[(13, gp)], AssistMode::Auto));
    assert_eq!(out, "WG");
    assert_eq!(outcome, Outcome::Reset);
}
