//! Why an assist could not finish an instruction: the VM then ends with this description.

use std::fmt;

use crate::access::AccessError;

/// Instruction bytes, shown as hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, " ")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Errors from [`Assist::handle`](crate::Assist::handle).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The vCPU's registers could not be read or written.
    #[error("instruction assist: {0}")]
    Cpu(#[from] accel::Error),
    /// The faulting instruction's bytes could not be read.
    #[error("instruction assist: cannot read the instruction at rip {rip:#x}: {source}")]
    Fetch {
        /// Guest RIP.
        rip: u64,
        /// What failed.
        source: AccessError,
    },
    /// The bytes at RIP are not a valid instruction in the vCPU's mode.
    #[error(
        "instruction assist: no valid {bitness}-bit instruction at rip {rip:#x} (bytes {bytes})"
    )]
    Decode {
        /// Guest RIP.
        rip: u64,
        /// 16, 32 or 64.
        bitness: u32,
        /// The bytes read at RIP.
        bytes: Bytes,
    },
    /// A valid instruction that kvmkit does not finish for the backend.
    #[error(
        "instruction assist: the backend cannot run `{text}` at rip {rip:#x} (bytes {bytes}) and kvmkit does not assist it; {hint}"
    )]
    Unsupported {
        /// Guest RIP.
        rip: u64,
        /// The instruction, Intel syntax.
        text: String,
        /// Its bytes.
        bytes: Bytes,
        /// What may help.
        hint: String,
    },
}
