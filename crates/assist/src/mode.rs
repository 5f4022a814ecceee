//! The CPU mode a stopped vCPU is in: what its code bytes mean and what privilege it runs at.

use kvm_bindings::{kvm_segment, kvm_sregs};

use accel::x86::{cr0, efer};

/// How the vCPU executes code right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    /// 16, 32 or 64: the default operand and address size of the code segment.
    pub bitness: u32,
    /// Current privilege level (0 kernel ... 3 user).
    pub cpl: u8,
    /// Protected mode (CR0.PE): descriptor tables have 8- or 16-byte gates, not 4-byte vectors.
    pub protected: bool,
}

impl Mode {
    /// The mode described by the special registers.
    pub fn of(sregs: &kvm_sregs) -> Self {
        let protected = sregs.cr0 & cr0::PE != 0;
        let bitness = if !protected {
            16
        } else if sregs.efer & efer::LMA != 0 && sregs.cs.l != 0 {
            64
        } else if sregs.cs.db != 0 {
            32
        } else {
            16
        };
        Self {
            bitness,
            cpl: if protected { sregs.cs.dpl & 3 } else { 0 },
            protected,
        }
    }

    /// The linear address of `offset` in segment `base`: segment bases apply outside 64-bit mode
    /// (and for FS/GS in it), and outside 64-bit mode addresses wrap at 4 GiB.
    pub fn linear(self, base: u64, offset: u64) -> u64 {
        let addr = base.wrapping_add(offset);
        if self.bitness == 64 {
            addr
        } else {
            addr & 0xffff_ffff
        }
    }

    /// Bytes per IDT gate: 16 in long mode, 8 in 32-bit protected mode, 4 in the real-mode IVT.
    pub fn gate_size(self, long_mode: bool) -> u64 {
        match (self.protected, long_mode) {
            (false, _) => 4,
            (true, true) => 16,
            (true, false) => 8,
        }
    }
}

/// True if the vCPU is in long mode (EFER.LMA), whatever its code segment.
pub fn long_mode(sregs: &kvm_sregs) -> bool {
    sregs.efer & efer::LMA != 0
}

/// A flat ring-0 segment, as SYSCALL loads them: 64-bit code, or writable data.
pub fn flat_segment(selector: u16, code: bool) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: if code { 0xb } else { 0x3 },
        present: 1,
        dpl: 0,
        db: u8::from(!code),
        s: 1,
        l: u8::from(code),
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}
