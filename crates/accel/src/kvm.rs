//! The KVM system handle: opening `/dev/kvm`, capability checks, host-wide queries.

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES, MsrList};
use kvm_ioctls::Cap;

use crate::{Error, Result, Vm};

/// The sysfs entry of kvm_pvm, the software backend whose presence [`Kvm::is_software_backend`]
/// reports.
const SOFTWARE_BACKEND_MODULE: &str = "/sys/module/kvm_pvm";

/// Capabilities every kvmkit VM needs, with the names used in error messages.
pub const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// An open `/dev/kvm` whose API version and capabilities have been checked.
#[derive(Debug)]
pub struct Kvm {
    kvm: kvm_ioctls::Kvm,
    /// Decided once, when `/dev/kvm` is opened: see [`Kvm::is_software_backend`].
    software: bool,
}

impl Kvm {
    /// Opens `/dev/kvm` and checks the API version and every capability in [`REQUIRED_CAPS`].
    pub fn new() -> Result<Self> {
        let kvm = kvm_ioctls::Kvm::new().map_err(Error::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(Error::ApiVersion(version));
        }
        check_caps(|cap| kvm.check_extension(cap))?;
        Ok(Self {
            kvm,
            software: std::path::Path::new(SOFTWARE_BACKEND_MODULE).exists(),
        })
    }

    /// The largest number of vCPUs one VM may have (`KVM_CAP_MAX_VCPUS`).
    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    /// The number of memory slots one VM may have (`KVM_CAP_NR_MEMSLOTS`).
    pub fn max_memslots(&self) -> usize {
        self.kvm.get_nr_memslots()
    }

    /// True if `/dev/kvm` is a software backend (kvm_pvm) rather than hardware virtualization: guest
    /// ring-0 code is emulated there, and some instructions and all hypercalls fail. Decided once,
    /// when this handle was opened.
    pub fn is_software_backend(&self) -> bool {
        self.software
    }

    /// The CPUID entries KVM can expose to a guest (`KVM_GET_SUPPORTED_CPUID`).
    pub fn supported_cpuid(&self) -> Result<CpuId> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::ioctl("KVM_GET_SUPPORTED_CPUID"))
    }

    /// The MSRs KVM can save and restore (`KVM_GET_MSR_INDEX_LIST`).
    pub fn msr_index_list(&self) -> Result<MsrList> {
        self.kvm
            .get_msr_index_list()
            .map_err(Error::ioctl("KVM_GET_MSR_INDEX_LIST"))
    }

    /// Creates a VM with its TSS placed and no interrupt controller yet: call
    /// [`Vm::create_irqchip`] (and [`Vm::create_pit`]) before creating vCPUs.
    pub fn create_vm(&self) -> Result<Vm> {
        let fd = self
            .kvm
            .create_vm()
            .map_err(Error::ioctl("KVM_CREATE_VM"))?;
        Vm::new(fd, self.max_vcpus(), self.max_memslots())
    }
}

/// Fails with the name of the first capability in [`REQUIRED_CAPS`] that `has` denies.
pub(crate) fn check_caps(has: impl Fn(Cap) -> bool) -> Result<()> {
    match REQUIRED_CAPS.iter().find(|(cap, _)| !has(*cap)) {
        Some((_, name)) => Err(Error::MissingCap(name)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_capability_is_named() {
        let err = check_caps(|cap| cap != Cap::Pit2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "KVM lacks the capability kvmkit needs: KVM_CAP_PIT2"
        );
        assert!(check_caps(|_| true).is_ok());
    }
}
