//! Reading and writing general-purpose registers named by the decoder, with x86's partial-register
//! rules.

use iced_x86::Register;
use kvm_bindings::{kvm_regs, kvm_sregs};

use crate::mode::Mode;

/// The 64-bit register slot that `reg` (any size) lives in, or `None` for non-GPRs.
fn slot(regs: &mut kvm_regs, reg: Register) -> Option<&mut u64> {
    Some(match reg.full_register() {
        Register::RAX => &mut regs.rax,
        Register::RCX => &mut regs.rcx,
        Register::RDX => &mut regs.rdx,
        Register::RBX => &mut regs.rbx,
        Register::RSP => &mut regs.rsp,
        Register::RBP => &mut regs.rbp,
        Register::RSI => &mut regs.rsi,
        Register::RDI => &mut regs.rdi,
        Register::R8 => &mut regs.r8,
        Register::R9 => &mut regs.r9,
        Register::R10 => &mut regs.r10,
        Register::R11 => &mut regs.r11,
        Register::R12 => &mut regs.r12,
        Register::R13 => &mut regs.r13,
        Register::R14 => &mut regs.r14,
        Register::R15 => &mut regs.r15,
        Register::RIP => &mut regs.rip,
        _ => return None,
    })
}

/// The value of `reg` as an address or operand component: GPRs of any width (8-bit high registers
/// included), RIP/EIP, and segment registers as their base (ES/CS/SS/DS are 0 in 64-bit mode).
pub fn value(regs: &kvm_regs, sregs: &kvm_sregs, mode: Mode, reg: Register) -> Option<u64> {
    let segment = |base: u64, flat_in_64: bool| {
        if mode.bitness == 64 && flat_in_64 {
            0
        } else {
            base
        }
    };
    match reg {
        Register::ES => return Some(segment(sregs.es.base, true)),
        Register::CS => return Some(segment(sregs.cs.base, true)),
        Register::SS => return Some(segment(sregs.ss.base, true)),
        Register::DS => return Some(segment(sregs.ds.base, true)),
        Register::FS => return Some(sregs.fs.base),
        Register::GS => return Some(sregs.gs.base),
        _ => {}
    }
    let mut copy = *regs;
    let full = *slot(&mut copy, reg)?;
    let high_byte = matches!(
        reg,
        Register::AH | Register::CH | Register::DH | Register::BH
    );
    Some(match (reg.size(), high_byte) {
        (1, true) => (full >> 8) & 0xff,
        (1, false) => full & 0xff,
        (2, _) => full & 0xffff,
        (4, _) => full & 0xffff_ffff,
        _ => full,
    })
}

/// Writes `value` to GPR `reg` as the CPU would: 64-bit writes replace, 32-bit writes zero the upper
/// half, 16-bit writes keep bits 16-63. Returns false for a register that is not a 16/32/64-bit GPR.
pub fn write(regs: &mut kvm_regs, reg: Register, value: u64) -> bool {
    let size = reg.size();
    let Some(slot) = slot(regs, reg) else {
        return false;
    };
    match size {
        8 => *slot = value,
        4 => *slot = value & 0xffff_ffff,
        2 => *slot = (*slot & !0xffff) | (value & 0xffff),
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long() -> Mode {
        Mode {
            bitness: 64,
            cpl: 0,
            protected: true,
        }
    }

    #[test]
    fn partial_register_writes_follow_x86_rules() {
        let mut regs = kvm_regs {
            rax: u64::MAX,
            rbx: u64::MAX,
            r9: u64::MAX,
            ..Default::default()
        };
        assert!(write(&mut regs, Register::EAX, 5));
        assert_eq!(regs.rax, 5);
        assert!(write(&mut regs, Register::BX, 7));
        assert_eq!(regs.rbx, 0xffff_ffff_ffff_0007);
        assert!(write(&mut regs, Register::R9, 1 << 40));
        assert_eq!(regs.r9, 1 << 40);
        assert!(!write(&mut regs, Register::AL, 1));
        assert!(!write(&mut regs, Register::XMM0, 1));
    }

    #[test]
    fn values_of_sub_registers_and_segments() {
        let regs = kvm_regs {
            rax: 0x1122_3344_5566_7788,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.ds.base = 0x1000;
        sregs.gs.base = 0xffff_8880_0000_0000;
        let m = long();
        assert_eq!(value(&regs, &sregs, m, Register::AH), Some(0x77));
        assert_eq!(value(&regs, &sregs, m, Register::AX), Some(0x7788));
        assert_eq!(value(&regs, &sregs, m, Register::EAX), Some(0x5566_7788));
        assert_eq!(value(&regs, &sregs, m, Register::DS), Some(0));
        assert_eq!(
            value(&regs, &sregs, m, Register::GS),
            Some(0xffff_8880_0000_0000)
        );
        let m32 = Mode { bitness: 32, ..m };
        assert_eq!(value(&regs, &sregs, m32, Register::DS), Some(0x1000));
        assert_eq!(value(&regs, &sregs, m, Register::XMM1), None);
    }
}
