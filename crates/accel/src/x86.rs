//! x86 architectural numbers the layers above KVM share: control-register and EFER bits, RFLAGS
//! bits, exception vectors and MSR indices. One copy, named as the Intel SDM names them.

/// CR0 bits.
pub mod cr0 {
    /// Protection enable.
    pub const PE: u64 = 1;
    /// Monitor coprocessor: WAIT/FWAIT honours TS.
    pub const MP: u64 = 1 << 1;
    /// x87 emulation: x87 and SSE instructions raise #NM/#UD.
    pub const EM: u64 = 1 << 2;
    /// Task switched: the next x87/SSE instruction raises #NM.
    pub const TS: u64 = 1 << 3;
    /// Extension type (always 1 on modern CPUs).
    pub const ET: u64 = 1 << 4;
    /// Write protect: supervisor writes honour read-only pages.
    pub const WP: u64 = 1 << 16;
    /// Paging.
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    /// Page size extension: 4 MiB pages in 32-bit paging.
    pub const PSE: u64 = 1 << 4;
    /// Physical address extension (required for long mode).
    pub const PAE: u64 = 1 << 5;
    /// The OS supports FXSAVE/FXRSTOR and SSE.
    pub const OSFXSR: u64 = 1 << 9;
    /// 5-level paging (57-bit linear addresses).
    pub const LA57: u64 = 1 << 12;
    /// Supervisor-mode execution prevention.
    pub const SMEP: u64 = 1 << 20;
    /// Supervisor-mode access prevention (what CLAC/STAC control).
    pub const SMAP: u64 = 1 << 21;
}

/// IA32_EFER bits.
pub mod efer {
    /// Long mode enable.
    pub const LME: u64 = 1 << 8;
    /// Long mode active.
    pub const LMA: u64 = 1 << 10;
    /// No-execute enable: the XD bit of page-table entries is honoured.
    pub const NXE: u64 = 1 << 11;
}

/// RFLAGS bits.
pub mod rflags {
    /// Carry.
    pub const CF: u64 = 1;
    /// Parity.
    pub const PF: u64 = 1 << 2;
    /// Auxiliary carry.
    pub const AF: u64 = 1 << 4;
    /// Zero.
    pub const ZF: u64 = 1 << 6;
    /// Sign.
    pub const SF: u64 = 1 << 7;
    /// Interrupt enable.
    pub const IF: u64 = 1 << 9;
    /// Overflow.
    pub const OF: u64 = 1 << 11;
    /// Resume: suppresses instruction breakpoints for one instruction.
    pub const RF: u64 = 1 << 16;
    /// Alignment check / SMAP override.
    pub const AC: u64 = 1 << 18;
}

/// Exception vectors.
pub mod vector {
    /// #DB, debug.
    pub const DB: u8 = 1;
    /// #BP, breakpoint (INT3).
    pub const BP: u8 = 3;
    /// #UD, invalid opcode.
    pub const UD: u8 = 6;
    /// #NM, device not available.
    pub const NM: u8 = 7;
    /// #SS, stack-segment fault.
    pub const SS: u8 = 12;
    /// #GP, general protection.
    pub const GP: u8 = 13;
    /// #PF, page fault.
    pub const PF: u8 = 14;
}

/// The page-fault error code's bits.
pub mod pf_error {
    /// The page was present: the fault is a protection violation.
    pub const PRESENT: u64 = 1;
    /// The access was a write.
    pub const WRITE: u64 = 1 << 1;
    /// The access was made in user mode (CPL 3).
    pub const USER: u64 = 1 << 2;
    /// The fault was an instruction fetch.
    pub const INSTRUCTION_FETCH: u64 = 1 << 4;
}

/// Model-specific register indices.
pub mod msr {
    /// SYSENTER's code segment.
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    /// SYSENTER's stack pointer.
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    /// SYSENTER's entry point.
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    /// Miscellaneous feature enables (fast strings, ...).
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    /// SYSCALL's target code segment selector (bits 47:32) and SYSRET's (bits 63:48).
    pub const STAR: u32 = 0xc000_0081;
    /// SYSCALL's 64-bit entry point.
    pub const LSTAR: u32 = 0xc000_0082;
    /// SYSCALL's compatibility-mode entry point.
    pub const CSTAR: u32 = 0xc000_0083;
    /// The RFLAGS bits SYSCALL clears (SFMASK).
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    /// The GS base SWAPGS exchanges with.
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;

    /// True if a CPU refuses writing `value` to MSR `index` with #GP: a non-canonical address
    /// (48-bit) in an MSR that holds one. MSRs not listed here are left to KVM.
    pub fn write_faults(index: u32, value: u64) -> bool {
        let holds_address = matches!(
            index,
            IA32_SYSENTER_ESP | IA32_SYSENTER_EIP | LSTAR | CSTAR | KERNEL_GS_BASE
        );
        holds_address && !super::is_canonical(value)
    }
}

/// True if `address` is canonical for 48-bit linear addresses: bits 63:47 all equal.
pub fn is_canonical(address: u64) -> bool {
    let top = address >> 47;
    top == 0 || top == (1 << 17) - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_addresses_and_msr_writes_that_fault() {
        for a in [0, 0x7fff_ffff_ffff, 0xffff_8000_0000_0000, u64::MAX] {
            assert!(is_canonical(a), "{a:#x}");
        }
        for a in [
            0x8000_0000_0000,
            0x8000_0000_0000_0000,
            0x7fff_8000_0000_0000,
        ] {
            assert!(!is_canonical(a), "{a:#x}");
        }
        assert!(msr::write_faults(msr::LSTAR, 1 << 63));
        assert!(!msr::write_faults(msr::LSTAR, 0xffff_ffff_8100_0000));
        assert!(!msr::write_faults(msr::STAR, 1 << 63), "not an address");
    }
}
