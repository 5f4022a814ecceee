//! The MSRs a vCPU starts with.

use accel::x86::msr;
use kvm_bindings::kvm_msr_entry;

const MISC_ENABLE_FAST_STRING: u64 = 1;

/// The boot MSRs: SYSENTER/SYSCALL state cleared, fast strings enabled. The TSC is left as KVM set
/// it at vCPU creation, so all vCPUs of a VM start in sync.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (msr::IA32_SYSENTER_CS, 0),
        (msr::IA32_SYSENTER_ESP, 0),
        (msr::IA32_SYSENTER_EIP, 0),
        (msr::STAR, 0),
        (msr::CSTAR, 0),
        (msr::KERNEL_GS_BASE, 0),
        (msr::SYSCALL_MASK, 0),
        (msr::LSTAR, 0),
        (msr::IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}
