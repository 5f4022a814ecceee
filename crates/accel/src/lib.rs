#![doc = include_str!("../README.md")]

mod exit;
mod kick;
mod kvm;
mod state;
mod vcpu;
mod vm;
pub mod x86;

pub use exit::{InternalError, SystemEvent, VcpuExit};
pub use kick::{KickBinding, kick_current_thread};
pub use kvm::{Kvm, REQUIRED_CAPS};
pub use state::{VcpuState, VmState};
pub use vcpu::Vcpu;
pub use vm::{IrqChip, Vm};

/// The guest memory registered with a VM, held by the VM and each of its vCPUs so the mappings KVM
/// uses outlive all of them.
type KeepAlive = std::sync::Arc<std::sync::Mutex<Vec<Box<dyn std::any::Any + Send + Sync>>>>;

/// Errors from the KVM accelerator. Each names the ioctl or capability that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user use it?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The kernel's KVM API version is not the stable one (12).
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    /// A capability kvmkit needs is missing.
    #[error("KVM lacks the capability kvmkit needs: {0}")]
    MissingCap(&'static str),
    /// An ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        /// The ioctl or operation that failed.
        op: &'static str,
        /// The errno it returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// More memory regions than KVM has slots for.
    #[error("guest memory needs more than the {0} memory slots KVM offers")]
    TooManySlots(usize),
    /// A vCPU id at or above the maximum KVM supports.
    #[error("vCPU id {id} is out of range: KVM supports at most {max} vCPUs")]
    VcpuId {
        /// The id asked for.
        id: u64,
        /// KVM_CAP_MAX_VCPUS.
        max: usize,
    },
}

impl Error {
    /// Wraps a kvm-ioctls error with the name of the operation that failed.
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Ioctl { op, source }
    }
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;
