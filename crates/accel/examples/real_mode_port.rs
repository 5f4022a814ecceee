//! The smallest guest: 16 bytes of real-mode code that write "KVM\n" to port 0x3f8, one byte at a
//! time, then a NUL to say it is done. Each `out` is an exit to this program, which keeps the byte,
//! as a VMM's serial port would.
//!
//! Needs /dev/kvm (read and write): `cargo run -p kvmkit-accel --example real_mode_port`.

use kvmkit_accel::{IrqChip, Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// mov si, 0x1010 ; mov dx, 0x3f8 ; next: lodsb ; out dx, al ; test al, al ; jnz next ; hlt — and at
/// 0x1010, the string. The string's final NUL goes out too: it tells this program the guest is done
/// (with KVM's in-kernel interrupt controller, HLT does not exit to the VMM).
const CODE: [u8; 16] = [
    0xbe, 0x10, 0x10, // mov si, 0x1010
    0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xac, // lodsb
    0xee, // out dx, al
    0x84, 0xc0, // test al, al
    0x75, 0xfa, // jnz -6
    0xf4, // hlt
    0x90, 0x90, 0x90, // padding
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let kvm = Kvm::new()?;
    let vm = kvm.create_vm()?;
    vm.create_irqchip(IrqChip::Full)?;
    // vm-memory's plain mmap-backed memory (no dirty-page bitmap): accel needs no other crate of
    // kvmkit's.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)])?;
    mem.write_slice(&CODE, GuestAddress(0x1000))?;
    mem.write_slice(b"KVM\n\0", GuestAddress(0x1010))?;
    vm.add_guest_memory(&mem, false)?;

    let mut vcpu = vm.create_vcpu(0)?;
    let mut sregs = vcpu.sregs()?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs)?;
    let mut regs = vcpu.regs()?;
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs)?;

    let mut out = Vec::new();
    loop {
        match vcpu.run()? {
            VcpuExit::IoOut {
                port: 0x3f8,
                data: [0],
            } => break,
            VcpuExit::IoOut { port: 0x3f8, data } => out.extend_from_slice(data),
            other => return Err(format!("unexpected exit: {other:?}").into()),
        }
    }
    print!("the guest wrote: {}", String::from_utf8_lossy(&out));
    assert_eq!(out, b"KVM\n");
    Ok(())
}
