//! Why `KVM_RUN` returned, in the few shapes the vCPU loop cares about.

use std::fmt;

/// A decoded `KVM_RUN` exit. Port and MMIO accesses borrow the vCPU's shared `kvm_run` page: a read's
/// `data` must be filled before the next [`Vcpu::run`](crate::Vcpu::run), which completes the access.
#[derive(Debug)]
pub enum VcpuExit<'a> {
    /// The guest read an I/O port.
    IoIn {
        /// Port number.
        port: u16,
        /// Where the value read goes (1, 2 or 4 bytes).
        data: &'a mut [u8],
    },
    /// The guest wrote an I/O port.
    IoOut {
        /// Port number.
        port: u16,
        /// The value written.
        data: &'a [u8],
    },
    /// The guest read guest-physical memory that no memory slot backs.
    MmioRead {
        /// Guest-physical address.
        addr: u64,
        /// Where the value read goes.
        data: &'a mut [u8],
    },
    /// The guest wrote guest-physical memory that no memory slot backs.
    MmioWrite {
        /// Guest-physical address.
        addr: u64,
        /// The value written.
        data: &'a [u8],
    },
    /// The guest executed HLT with interrupts that the in-kernel irqchip cannot wake (a halted guest
    /// with interrupts disabled, or no in-kernel LAPIC).
    Hlt,
    /// The guest triple-faulted (x86 shutdown).
    Shutdown,
    /// KVM reports a system event: the guest asked for power-off, reset, or crashed.
    SystemEvent(SystemEvent),
    /// KVM could not run the guest further (`KVM_EXIT_INTERNAL_ERROR`), e.g. an instruction its
    /// emulator cannot handle. [`Vcpu::internal_error`](crate::Vcpu::internal_error) has the details.
    InternalError,
    /// The guest wrote an MSR that [`Vm::trap_msr_writes`](crate::Vm::trap_msr_writes) traps. KVM
    /// did not write it: the VMM does, or sets `error` to 1 to give the guest a #GP instead.
    WriteMsr {
        /// The MSR.
        index: u32,
        /// The value the guest wrote.
        data: u64,
        /// Set to 1 to fail the write with #GP.
        error: &'a mut u8,
    },
    /// A debug exception for a breakpoint the VMM set ([`Vcpu::set_hw_breakpoint`](crate::Vcpu::set_hw_breakpoint)):
    /// the guest is stopped before the instruction at `pc`.
    Debug {
        /// The guest RIP.
        pc: u64,
        /// DR6 at the exception: which breakpoint fired.
        dr6: u64,
        /// The exception vector (1 for #DB).
        exception: u32,
    },
    /// The hardware refused to enter the guest.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
    },
    /// `KVM_RUN` was interrupted by a signal or `immediate_exit` before or while running the guest.
    Interrupted,
    /// An exit reason the vCPU loop does not handle.
    Other(&'static str),
}

/// The kind of a `KVM_EXIT_SYSTEM_EVENT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemEvent {
    /// The guest powered off (e.g. ACPI S5, PSCI SYSTEM_OFF).
    Shutdown,
    /// The guest asked for a reset.
    Reset,
    /// The guest reported a crash.
    Crash,
    /// Another event type.
    Other(u32),
}

impl From<u32> for SystemEvent {
    fn from(kind: u32) -> Self {
        match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Self::Shutdown,
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => Self::Reset,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Self::Crash,
            other => Self::Other(other),
        }
    }
}

/// Details of a `KVM_EXIT_INTERNAL_ERROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InternalError {
    /// `suberror`: 1 is an emulation failure, 2 a simultaneous exception, 3 a delivery event error.
    pub suberror: u32,
    /// The `data` words KVM supplied (`ndata` of them).
    pub data: Vec<u64>,
    /// The instruction bytes KVM supplied with an emulation failure, if it did.
    pub insn_bytes: Vec<u8>,
}

impl InternalError {
    /// A short name for the suberror.
    pub fn kind(&self) -> &'static str {
        match self.suberror {
            kvm_bindings::KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "exception during event delivery",
            4 => "unexpected exit reason",
            _ => "unknown internal error",
        }
    }
}

impl fmt::Display for InternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (suberror {})", self.kind(), self.suberror)?;
        if !self.insn_bytes.is_empty() {
            write!(f, ", instruction bytes")?;
            for b in &self.insn_bytes {
                write!(f, " {b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Parses the `internal` member of `kvm_run`.
pub(crate) fn internal_error(suberror: u32, ndata: u32, data: &[u64; 16]) -> InternalError {
    let words = &data[..(ndata as usize).min(data.len())];
    let mut insn_bytes = Vec::new();
    // Emulation failures with KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: data[0] = flags,
    // data[1] = instruction length, data[2..4] = up to 15 bytes.
    if suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION
        && words.len() >= 4
        && words[0] & u64::from(kvm_bindings::KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
            != 0
    {
        let len = (words[1] as usize).min(15);
        let bytes: Vec<u8> = words[2..4].iter().flat_map(|w| w.to_le_bytes()).collect();
        insn_bytes.extend_from_slice(&bytes[..len]);
    }
    InternalError {
        suberror,
        data: words.to_vec(),
        insn_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_with_instruction_bytes() {
        let mut data = [0u64; 16];
        data[0] = 1;
        data[1] = 3;
        data[2] = 0x00c3_01ccu64 | (0xaa << 32);
        let e = internal_error(1, 5, &data);
        assert_eq!(e.insn_bytes, vec![0xcc, 0x01, 0xc3]);
        assert_eq!(
            e.to_string(),
            "emulation failure (suberror 1), instruction bytes cc 01 c3"
        );
    }

    #[test]
    fn hostile_ndata_is_clamped() {
        let e = internal_error(3, 1000, &[7; 16]);
        assert_eq!(e.data.len(), 16);
        assert!(e.insn_bytes.is_empty());
        assert_eq!(e.kind(), "exception during event delivery");
    }
}
