//! A vCPU's and a VM's KVM state, saved mid-run and restored into a second VM, which goes on where
//! the first was (needs /dev/kvm).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use kvmkit_accel::{IrqChip, Kvm, Vcpu, VcpuExit, VcpuState, Vm, VmState};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// Real mode at 0x1000: `inc ax; out 0x80, ax; jmp 0x1000`. Each exit shows the count in AX.
const COUNT: [u8; 5] = [0x40, 0xe7, 0x80, 0xeb, 0xfb];

fn machine(mem: &GuestMemoryMmap) -> (Kvm, Vm, Vcpu) {
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irqchip(IrqChip::Full).unwrap();
    vm.create_pit().unwrap();
    vm.add_guest_memory(mem, false).unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    (kvm, vm, vcpu)
}

/// Runs until the guest's next `out 0x80`, and returns AX.
fn next_count(vcpu: &mut Vcpu) -> u16 {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut { port: 0x80, data } => {
                return u16::from_le_bytes([data[0], data[1]]);
            }
            VcpuExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

#[test]
fn a_vcpu_restored_in_another_vm_goes_on_counting() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&COUNT, GuestAddress(0x1000)).unwrap();
    let (kvm, vm, mut vcpu) = machine(&mem);
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    (regs.rip, regs.rflags, regs.rax) = (0x1000, 2, 0);
    vcpu.set_regs(&regs).unwrap();
    for expect in 1..=5 {
        assert_eq!(next_count(&mut vcpu), expect);
    }

    let msrs = kvm.msr_index_list().unwrap();
    let state = vcpu.save_state(msrs.as_slice()).unwrap();
    // Every MSR KVM reads back on its own is in the state, and no other.
    let readable = msrs
        .as_slice()
        .iter()
        .filter(|&&i| vcpu.msrs(&[i]).is_ok())
        .count();
    assert!(readable > 0);
    assert_eq!(state.msrs.len(), readable, "the MSRs saved");
    // A list longer than one KVM_GET_MSRS batch (64) loses none at the batches' seams.
    let long: Vec<u32> = msrs.as_slice().repeat(4);
    assert_eq!(vcpu.save_state(&long).unwrap().msrs.len(), 4 * readable);
    let vm_state = vm.save_state().unwrap();
    assert_eq!(vm_state.irqchips.len(), 3);
    // Both go through a serializer, as in a snapshot file.
    let state: VcpuState = serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    let vm_state: VmState =
        serde_json::from_str(&serde_json::to_string(&vm_state).unwrap()).unwrap();

    // A second VM, its memory a copy of the first's.
    let copy = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let mut bytes = vec![0u8; 0x10000];
    mem.read_slice(&mut bytes, GuestAddress(0)).unwrap();
    copy.write_slice(&bytes, GuestAddress(0)).unwrap();
    assert_eq!(copy.iter().count(), 1);
    let (_kvm2, vm2, mut vcpu2) = machine(&copy);
    vm2.restore_state(&vm_state).unwrap();
    vcpu2.restore_state(&state).unwrap();
    for expect in 6..=8 {
        assert_eq!(next_count(&mut vcpu2), expect, "the restored vCPU");
    }
    // The original goes on too, independently.
    assert_eq!(next_count(&mut vcpu), 6, "the original vCPU");
    assert_eq!(vcpu2.regs().unwrap().rip, vcpu.regs().unwrap().rip);
}
