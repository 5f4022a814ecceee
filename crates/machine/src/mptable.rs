//! The Intel MultiProcessor Specification 1.4 table: how a kernel without ACPI finds the vCPUs, the
//! IOAPIC and the ISA interrupt routing.
//!
//! The floating pointer and the configuration table go at the start of the BIOS area (0xf0000, reserved
//! in the e820 map), where Linux's MP-table scan looks and where there is room for 254 CPUs.

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result};

/// Where the MP floating pointer structure is written; the configuration table follows it.
pub const MPTABLE_START: u64 = 0xf0000;
/// The local APICs' MMIO base.
pub const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
/// The IOAPIC's MMIO base.
pub const IOAPIC_DEFAULT_BASE: u32 = 0xfec0_0000;
/// The most vCPUs an MP table can describe: APIC ids are 8 bits and one id goes to the IOAPIC.
pub const MAX_CPUS: u32 = 254;
/// Interrupts routed 1:1 to IOAPIC pins: every pin of the IOAPIC, so devices given lines above the
/// 16 ISA ones (virtio-mmio, announced on the command line) reach the guest too.
const ROUTED_IRQS: u8 = 24;

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const BUS_ISA: u8 = 0;
const IRQ_INT: u8 = 0;
const IRQ_NMI: u8 = 1;
const IRQ_EXTINT: u8 = 3;

/// Little-endian byte writer for the table's fixed layouts.
#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.0.extend_from_slice(v);
        self
    }
}

/// The byte that makes `bytes` sum to zero (mod 256).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The MP floating pointer followed by the configuration table for `cpus` vCPUs (APIC ids 0..cpus),
/// as they sit at `base`.
pub fn build(base: u64, cpus: u32) -> Result<Vec<u8>> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::BootStructure("MP table (vCPU count out of range)"));
    }
    let ioapic_id = cpus as u8;
    let mut entries = Writer::default();
    let mut count: u16 = 0;
    for id in 0..cpus as u8 {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries
            .u8(0) // processor entry
            .u8(id)
            .u8(APIC_VERSION)
            .u8(flags)
            .u32(CPU_STEPPING)
            .u32(CPU_FEATURE_APIC | CPU_FEATURE_FPU)
            .u32(0)
            .u32(0);
        count += 1;
    }
    entries.u8(1).u8(BUS_ISA).bytes(b"ISA   "); // bus entry
    count += 1;
    entries
        .u8(2) // IOAPIC entry
        .u8(ioapic_id)
        .u8(IOAPIC_VERSION)
        .u8(1) // usable
        .u32(IOAPIC_DEFAULT_BASE);
    count += 1;
    for irq in 0..ROUTED_IRQS {
        // I/O interrupt entry: ISA IRQ n -> IOAPIC pin n, bus-default polarity and trigger.
        entries
            .u8(3)
            .u8(IRQ_INT)
            .u16(0)
            .u8(BUS_ISA)
            .u8(irq)
            .u8(ioapic_id)
            .u8(irq);
        count += 1;
    }
    // Local interrupts: LINT0 of every LAPIC is ExtINT (the PIC), LINT1 is NMI.
    for (kind, lint) in [(IRQ_EXTINT, 0u8), (IRQ_NMI, 1)] {
        entries
            .u8(4)
            .u8(kind)
            .u16(0)
            .u8(BUS_ISA)
            .u8(0)
            .u8(0xff)
            .u8(lint);
        count += 1;
    }

    const FLOATING_LEN: usize = 16;
    const HEADER_LEN: usize = 44;
    let table_len = HEADER_LEN + entries.0.len();
    let table_addr = base + FLOATING_LEN as u64;
    let mut header = Writer::default();
    header
        .bytes(b"PCMP")
        .u16(table_len as u16)
        .u8(4) // spec revision 1.4
        .u8(0) // checksum, patched below
        .bytes(b"KVMKIT  ")
        .bytes(b"000000000000")
        .u32(0)
        .u16(0)
        .u16(count)
        .u32(APIC_DEFAULT_BASE)
        .u16(0)
        .u8(0)
        .u8(0);
    let mut table = header.0;
    table.extend_from_slice(&entries.0);
    table[7] = checksum(&table);

    let mut floating = Writer::default();
    floating
        .bytes(b"_MP_")
        .u32(table_addr as u32)
        .u8(1) // length in 16-byte units
        .u8(4)
        .u8(0) // checksum, patched below
        .bytes(&[0; 5]);
    let mut out = floating.0;
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` vCPUs at [`MPTABLE_START`].
pub fn write<M: GuestMemoryBackend>(mem: &M, cpus: u32) -> Result<()> {
    let bytes = build(MPTABLE_START, cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|_| Error::BootStructure("MP table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_pointers_are_valid() {
        for cpus in [1, 2, 4, MAX_CPUS] {
            let t = build(MPTABLE_START, cpus).unwrap();
            assert_eq!(&t[..4], b"_MP_");
            assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64;
            let table = &t[(ptr - MPTABLE_START) as usize..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let entries = u16::from_le_bytes([table[34], table[35]]) as u32;
            assert_eq!(entries, cpus + 1 + 1 + 24 + 2);
            // Processor entries: ids 0..cpus, only the first is the BSP.
            let cpu1 = &table[44..64];
            assert_eq!(
                (cpu1[0], cpu1[1], cpu1[3]),
                (0, 0, CPU_ENABLED | CPU_BOOTPROCESSOR)
            );
            let last = &table[44 + 20 * (cpus as usize - 1)..44 + 20 * cpus as usize];
            assert_eq!(
                (last[1] as u32, last[3]),
                (cpus - 1, if cpus == 1 { 3 } else { CPU_ENABLED })
            );
        }
    }

    #[test]
    fn the_largest_table_fits_in_the_bios_area() {
        let t = build(MPTABLE_START, MAX_CPUS).unwrap();
        assert!(MPTABLE_START + t.len() as u64 <= 0x10_0000);
    }

    #[test]
    fn bad_cpu_counts_are_errors() {
        assert!(build(MPTABLE_START, 0).is_err());
        assert!(build(MPTABLE_START, MAX_CPUS + 1).is_err());
    }
}
