//! Guest RAM for a 4 GiB guest around the 32-bit MMIO hole, and windows and interrupt lines for
//! three devices from the allocator. The RAM is mapped (untouched pages cost nothing) and written
//! to on both sides of the hole.
//!
//! `cargo run -p kvmkit-memory --example layout` (no /dev/kvm needed).

use kvmkit_memory::{Allocator, GuestRam, MMIO_HOLE_END, MMIO_HOLE_START};
use vm_memory::{Bytes, GuestAddress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ram = GuestRam::new(4 << 30)?;
    println!("MMIO hole: {MMIO_HOLE_START:#x}..{MMIO_HOLE_END:#x}");
    for (start, len) in ram.ranges() {
        println!("RAM: {start:#012x}, {} MiB", len >> 20);
    }
    for at in [0x1000, MMIO_HOLE_END] {
        ram.memory().write_obj(0xfeed_u16, GuestAddress(at))?;
        let back: u16 = ram.memory().read_obj(GuestAddress(at))?;
        assert_eq!(back, 0xfeed);
    }

    let mut alloc = Allocator::new();
    for name in ["vda", "eth0", "vsock0"] {
        let base = alloc.mmio(0x1000, 0x1000)?;
        let irq = alloc.irq()?;
        println!("{name}: window at {base:#x}, IRQ {irq}");
    }
    Ok(())
}
