//! How a VM ended, what kvmkit says about it, and the process exit code.

use std::fmt;

use accel::InternalError;

/// Exit code: the guest shut down or rebooted, or the user quit.
pub const EXIT_OK: i32 = 0;
/// Exit code: the guest crashed or KVM could not run it.
pub const EXIT_GUEST_ERROR: i32 = 1;
/// Exit code: bad arguments or unusable input files.
pub const EXIT_BAD_INPUT: i32 = 2;

/// Why a VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reset the machine (i8042 reset line, or a KVM reset event).
    Reset,
    /// The guest powered off (ACPI S5 through the power registers, or a KVM shutdown event).
    PowerOff,
    /// The guest halted with nothing left to wake it.
    Halted {
        /// vCPU index.
        vcpu: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// The user typed the console's quit sequence.
    Quit,
    /// The guest kernel panicked (seen on its console) and then reset.
    GuestPanic,
    /// The guest reported a crash through KVM.
    Crash {
        /// vCPU index.
        vcpu: u64,
    },
    /// Triple fault: KVM_EXIT_SHUTDOWN.
    TripleFault {
        /// vCPU index.
        vcpu: u64,
        /// Guest RIP.
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR.
    InternalError {
        /// vCPU index.
        vcpu: u64,
        /// Guest RIP.
        rip: u64,
        /// What KVM said.
        error: InternalError,
        /// Why the instruction assist could not finish the instruction, when it tried.
        assist: Option<String>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// vCPU index.
        vcpu: u64,
        /// Hardware entry-failure reason.
        reason: u64,
    },
    /// The VMM was asked to stop the VM (`RunningVm::stop`).
    Stopped,
    /// kvmkit received a stop signal (SIGTERM, SIGINT...).
    Signal(i32),
    /// A vCPU ioctl failed, or its thread panicked.
    VcpuError {
        /// vCPU index.
        vcpu: u64,
        /// The error.
        error: String,
    },
}

impl Outcome {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Reset | Self::PowerOff | Self::Quit | Self::Stopped | Self::Halted { .. } => {
                EXIT_OK
            }
            Self::Signal(sig) => 128 + sig,
            _ => EXIT_GUEST_ERROR,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reset => write!(f, "guest rebooted"),
            Self::PowerOff => write!(f, "guest powered off"),
            Self::Halted { vcpu, rip } => write!(f, "guest halted (vCPU {vcpu}, RIP {rip:#x})"),
            Self::Quit => write!(f, "quit from the console"),
            Self::GuestPanic => write!(f, "guest kernel panicked and reset the machine"),
            Self::Crash { vcpu } => write!(f, "guest reported a crash (vCPU {vcpu})"),
            Self::TripleFault { vcpu, rip } => {
                write!(
                    f,
                    "guest triple-faulted: KVM_EXIT_SHUTDOWN on vCPU {vcpu} at RIP {rip:#x}"
                )
            }
            Self::InternalError {
                vcpu,
                rip,
                error,
                assist: None,
            } => write!(
                f,
                "KVM internal error on vCPU {vcpu} at RIP {rip:#x}: {error}"
            ),
            Self::InternalError {
                vcpu,
                rip,
                error,
                assist: Some(assist),
            } => write!(
                f,
                "KVM internal error on vCPU {vcpu} at RIP {rip:#x}: {}; {assist}",
                error.kind()
            ),
            Self::FailEntry { vcpu, reason } => write!(
                f,
                "KVM could not enter the guest on vCPU {vcpu}: hardware entry failure reason {reason:#x}"
            ),
            Self::VcpuError { vcpu, error } => write!(f, "vCPU {vcpu} failed: {error}"),
            Self::Signal(sig) => write!(f, "stopped by signal {sig}"),
            Self::Stopped => write!(f, "VM stopped"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(Outcome::Reset.exit_code(), 0);
        assert_eq!(Outcome::GuestPanic.exit_code(), 1);
        let t = Outcome::TripleFault {
            vcpu: 0,
            rip: 0xffff_ffff_8100_0000,
        };
        assert_eq!(t.exit_code(), 1);
        assert_eq!(
            t.to_string(),
            "guest triple-faulted: KVM_EXIT_SHUTDOWN on vCPU 0 at RIP 0xffffffff81000000"
        );
    }
}
