//! KVM's dirty-page log: which pages the guest wrote, read and cleared (needs /dev/kvm).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use kvmkit_accel::{IrqChip, Kvm, VcpuExit};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// Real mode at 0x1000: `inc byte [0x5000]; inc byte [0x9000]; out 0x80, al; jmp 0x1000`.
const WRITE_TWO_PAGES: [u8; 12] = [
    0xfe, 0x06, 0x00, 0x50, 0xfe, 0x06, 0x00, 0x90, 0xe6, 0x80, 0xeb, 0xf2,
];

fn run_to_out(vcpu: &mut kvmkit_accel::Vcpu) {
    loop {
        match vcpu.run().unwrap() {
            VcpuExit::IoOut { port: 0x80, .. } => return,
            VcpuExit::Interrupted => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

fn set_pages(log: &[u64]) -> Vec<usize> {
    (0..log.len() * 64)
        .filter(|&p| log[p / 64] & (1 << (p % 64)) != 0)
        .collect()
}

#[test]
fn the_log_names_the_pages_the_guest_wrote_and_reading_it_clears_it() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    mem.write_slice(&WRITE_TWO_PAGES, GuestAddress(0x1000))
        .unwrap();
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.create_irqchip(IrqChip::Full).unwrap();
    vm.add_guest_memory(&mem, true).unwrap();
    let mut vcpu = vm.create_vcpu(0).unwrap();
    let mut sregs = vcpu.sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();

    run_to_out(&mut vcpu);
    let log = vm.take_dirty_log().unwrap();
    assert_eq!(log.len(), 1, "one logged slot");
    // The code page was only read; the VMM's write of the code before the slot existed is not
    // the guest's.
    assert_eq!(set_pages(&log[0]), vec![5, 9]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(0x5000)).unwrap(), 1);

    // Read: cleared. The guest writes both pages again and the log has them again.
    assert_eq!(
        set_pages(&vm.take_dirty_log().unwrap()[0]),
        Vec::<usize>::new()
    );
    run_to_out(&mut vcpu);
    // The log may name more than the guest wrote (the software backend here also names page 0,
    // which stays all zeros, the second time): a diff snapshot then holds a page too many, never
    // one too few. The pages written must be there, and the code page, only read, must not.
    let again = set_pages(&vm.take_dirty_log().unwrap()[0]);
    assert!(again.contains(&5) && again.contains(&9), "{again:?}");
    assert!(!again.contains(&1), "{again:?}");
}

#[test]
fn slots_added_without_logging_have_no_log() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
    let kvm = Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    vm.add_guest_memory(&mem, false).unwrap();
    assert!(vm.take_dirty_log().unwrap().is_empty());
}
