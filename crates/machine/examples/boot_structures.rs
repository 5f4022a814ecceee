//! The boot structures kvmkit writes for a 256 MiB, 2-vCPU PC, without booting anything: the e820
//! memory map, the MP table, the ACPI tables (RSDP to DSDT) with a UART and one virtio-mmio
//! device, and the identity page tables for a 64-bit entry. Prints where each went and checks their
//! signatures in guest memory.
//!
//! `cargo run -p kvmkit-machine --example boot_structures` (no /dev/kvm needed).

use kvmkit_machine::acpi::{self, AcpiConfig, IsaDevice, IsaKind, MmioDevice, PowerPorts};
use kvmkit_machine::{e820, mptable, paging};
use memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    const RAM: u64 = 256 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)])?;

    for entry in e820::memory_map(&[(0, RAM)]) {
        println!(
            "e820: {:#010x} + {:#010x} type {}",
            entry.addr, entry.size, entry.kind
        );
    }

    mptable::write(&mem, 2)?;
    println!("MP table for 2 vCPUs written");

    let mut config = AcpiConfig::new(
        2,
        PowerPorts {
            sleep_control: 0x600,
            sleep_status: 0x601,
            reset: 0x602,
            reset_value: 1,
            s5_sleep_type: 5,
        },
    );
    config.isa.push(IsaDevice {
        kind: IsaKind::Serial,
        ports: vec![(0x3f8, 8)],
        irq: Some(4),
    });
    config.virtio_mmio.push(MmioDevice {
        base: 0xd000_0000,
        size: 0x1000,
        irq: 5,
    });
    let rsdp = acpi::write(&mem, &config)?;
    let mut sig = [0u8; 8];
    mem.read_slice(&mut sig, GuestAddress(rsdp))?;
    println!("ACPI: {} at {rsdp:#x}", String::from_utf8_lossy(&sig));
    assert_eq!(&sig, b"RSD PTR ");

    let pml4 = paging::write_identity_map(&mem)?;
    println!("identity page tables: PML4 at {pml4:#x}");
    Ok(())
}
