//! What a VMM does when a software KVM backend gives up on an instruction: here POPCNT, which some
//! backends' emulators lack. The assist decodes it at the guest's RIP, computes it, writes the
//! result register and moves RIP past it; the VMM then runs the vCPU again. A fake vCPU (the
//! `testing` feature) stands in for KVM's.
//!
//! `cargo run -p kvmkit-assist --features testing --example popcnt` (no /dev/kvm needed).

use kvmkit_assist::Resolution;
use kvmkit_assist::testing::{CODE, long_mode};

fn main() -> Result<(), kvmkit_assist::Error> {
    // popcnt rax, rbx
    let (cpu, assist) = long_mode(&[0xf3, 0x48, 0x0f, 0xb8, 0xc3]);
    cpu.regs.borrow_mut().rbx = 0xf0f0_0000_0000_00ff;
    match assist.handle(&cpu)? {
        Resolution::Resumed(kind) => println!("assisted {}", kind.name()),
        other => println!("not assisted: {other:?}"),
    }
    let regs = *cpu.regs.borrow();
    println!(
        "rax = {} (the bits set in rbx), rip moved {} bytes",
        regs.rax,
        regs.rip - CODE
    );
    assert_eq!((regs.rax, regs.rip), (16, CODE + 5));
    println!("assists so far: {}", assist.counts());
    Ok(())
}
