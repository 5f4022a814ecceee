//! The vCPU state an assist reads and changes, behind a trait so the instruction handlers can be tested
//! without KVM.

use kvm_bindings::{kvm_regs, kvm_sregs};

/// What the assist needs from a stopped vCPU. [`accel::Vcpu`] implements it with KVM ioctls.
pub trait GuestCpu {
    /// General-purpose registers, RIP and RFLAGS.
    fn regs(&self) -> Result<kvm_regs, accel::Error>;
    /// Sets the general-purpose registers, RIP and RFLAGS.
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), accel::Error>;
    /// Segment, control and descriptor-table registers.
    fn sregs(&self) -> Result<kvm_sregs, accel::Error>;
    /// Sets the segment, control and descriptor-table registers (the assist only changes CR2).
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), accel::Error>;
    /// The SSE control/status register.
    fn mxcsr(&self) -> Result<u32, accel::Error>;
    /// Sets the SSE control/status register.
    fn set_mxcsr(&self, mxcsr: u32) -> Result<(), accel::Error>;
    /// The guest-physical address of linear address `gva` through the guest's page tables, or `None`
    /// if it is not mapped.
    fn translate(&self, gva: u64) -> Result<Option<u64>, accel::Error>;
    /// Makes the guest take exception `vector` when it next runs.
    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<(), accel::Error>;
    /// Reads MSR `index`.
    fn msr(&self, index: u32) -> Result<u64, accel::Error>;
    /// Writes MSR `index`.
    fn set_msr(&self, index: u32, value: u64) -> Result<(), accel::Error>;
    /// Sets (or clears) the VMM's execution breakpoint at a guest linear address.
    fn set_hw_breakpoint(&self, addr: Option<u64>) -> Result<(), accel::Error>;
}

impl GuestCpu for accel::Vcpu {
    fn regs(&self) -> Result<kvm_regs, accel::Error> {
        accel::Vcpu::regs(self)
    }
    fn set_regs(&self, regs: &kvm_regs) -> Result<(), accel::Error> {
        accel::Vcpu::set_regs(self, regs)
    }
    fn sregs(&self) -> Result<kvm_sregs, accel::Error> {
        accel::Vcpu::sregs(self)
    }
    fn set_sregs(&self, sregs: &kvm_sregs) -> Result<(), accel::Error> {
        accel::Vcpu::set_sregs(self, sregs)
    }
    fn mxcsr(&self) -> Result<u32, accel::Error> {
        accel::Vcpu::mxcsr(self)
    }
    fn set_mxcsr(&self, mxcsr: u32) -> Result<(), accel::Error> {
        accel::Vcpu::set_mxcsr(self, mxcsr)
    }
    fn translate(&self, gva: u64) -> Result<Option<u64>, accel::Error> {
        let t = accel::Vcpu::translate(self, gva)?;
        Ok((t.valid != 0).then_some(t.physical_address))
    }
    fn inject_exception(&self, vector: u8, error_code: Option<u32>) -> Result<(), accel::Error> {
        accel::Vcpu::inject_exception(self, vector, error_code)
    }
    fn msr(&self, index: u32) -> Result<u64, accel::Error> {
        Ok(self.msrs(&[index])?[0])
    }
    fn set_msr(&self, index: u32, value: u64) -> Result<(), accel::Error> {
        self.set_msrs(&[kvm_bindings::kvm_msr_entry {
            index,
            data: value,
            ..Default::default()
        }])
    }
    fn set_hw_breakpoint(&self, addr: Option<u64>) -> Result<(), accel::Error> {
        accel::Vcpu::set_hw_breakpoint(self, addr)
    }
}
