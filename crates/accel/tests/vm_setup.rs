//! KVM itself: the interrupt-controller step and kicks (these need /dev/kvm, and fail without it).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use kvmkit_accel::{IrqChip, Kvm, VcpuExit, kick_current_thread};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// A VM whose vCPU 0 spins in real mode at 0x1000 (`jmp $`).
fn spinning_vcpu(chip: IrqChip) -> (kvmkit_accel::Vm, kvmkit_accel::Vcpu) {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irqchip(chip).unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&[0xeb, 0xfe], GuestAddress(0x1000))
        .unwrap();
    vm.add_guest_memory(&mem, false).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    (vm, vcpu)
}

#[test]
fn a_split_irqchip_vm_runs_a_vcpu() {
    let (_vm, mut vcpu) = spinning_vcpu(IrqChip::Split { ioapic_pins: 24 });
    let mut bound = vcpu.bind_kick();
    kick_current_thread();
    assert!(matches!(bound.run().unwrap(), VcpuExit::Interrupted));
}

#[test]
fn the_irqchip_comes_before_the_vcpus() {
    let (vm, _vcpu) = spinning_vcpu(IrqChip::Full);
    vm.create_pit().unwrap();
    let err = vm.create_irqchip(IrqChip::Full).unwrap_err().to_string();
    assert!(err.starts_with("KVM_CREATE_IRQCHIP failed"), "{err}");
}

#[test]
fn a_kick_makes_the_bound_vcpu_return_and_an_unbound_one_is_left_alone() {
    let (_vm, mut vcpu) = spinning_vcpu(IrqChip::Full);
    {
        let mut bound = vcpu.bind_kick();
        // A kick that lands before KVM_RUN: immediate_exit makes it return at once.
        kick_current_thread();
        assert!(matches!(bound.run().unwrap(), VcpuExit::Interrupted));
    }
    // Unbound: a kick does nothing (the guest would spin on, so no KVM_RUN here).
    kick_current_thread();
    // A binding that is leaked keeps the kvm_run page mapped after the vCPU is dropped, so a later
    // kick on this thread writes to live memory.
    std::mem::forget(vcpu.bind_kick());
    drop(vcpu);
    kick_current_thread();
}
