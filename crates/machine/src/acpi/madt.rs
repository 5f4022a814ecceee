//! The MADT: one local APIC per vCPU, the IOAPIC, the ISA interrupt routing and the NMI line.
//!
//! It says what the MP table says (see [`crate::mptable`]): APIC ids `0..cpus`, the IOAPIC with the id
//! after them at its default base, ISA IRQs on the IOAPIC pins of the same number, and LINT1 as NMI.

use acpi_tables::Aml;
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::sdt::Sdt;

use super::{Error, OEM_ID, OEM_REVISION, OEM_TABLE_ID};
use crate::mptable::{APIC_DEFAULT_BASE, IOAPIC_DEFAULT_BASE, MAX_CPUS};

/// MADT revision 5 (ACPI 6.2 and later).
const MADT_REVISION: u8 = 5;
/// The table header plus the local APIC address and the flags.
const MADT_FIXED_LEN: u32 = 44;
/// MADT flag: the machine also has dual 8259 PICs (KVM's in-kernel irqchip has them).
const PCAT_COMPAT: u32 = 1;
/// Interrupt Source Override structure type and length.
const ISO_TYPE: u8 = 2;
const ISO_LEN: u8 = 10;
/// Local APIC NMI structure type and length.
const LAPIC_NMI_TYPE: u8 = 4;
const LAPIC_NMI_LEN: u8 = 6;
/// MPS INTI flags: polarity and trigger mode both active high / edge (01b each).
const INTI_EDGE_ACTIVE_HIGH: u16 = 0b0101;
/// "All processors" in a local APIC NMI structure.
const ALL_PROCESSORS: u8 = 0xff;
/// The PIT's ISA interrupt.
const PIT_IRQ: u8 = 0;

/// The MADT for `cpus` vCPUs.
pub fn build(cpus: u32) -> Result<Vec<u8>, Error> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(Error::Cpus(cpus));
    }
    let mut madt = Sdt::new(
        *b"APIC",
        MADT_FIXED_LEN,
        MADT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    madt.write_u32(36, APIC_DEFAULT_BASE);
    madt.write_u32(40, PCAT_COMPAT);
    let mut body = Vec::new();
    // cpus <= MAX_CPUS < 255, so every id fits in a byte and the IOAPIC's id (= cpus) does too.
    for id in 0..cpus as u8 {
        ProcessorLocalApic::new(id, id, EnabledStatus::Enabled).to_aml_bytes(&mut body);
    }
    IoApic::new(cpus as u8, IOAPIC_DEFAULT_BASE, 0).to_aml_bytes(&mut body);
    // KVM's default routing puts ISA IRQ 0 on IOAPIC pin 0, not on pin 2 as PC firmware does: say so
    // rather than leave a guest to guess. The other ISA IRQs are the identity default.
    body.extend_from_slice(&[ISO_TYPE, ISO_LEN, 0 /* ISA */, PIT_IRQ]);
    body.extend_from_slice(&u32::from(PIT_IRQ).to_le_bytes());
    body.extend_from_slice(&INTI_EDGE_ACTIVE_HIGH.to_le_bytes());
    // LINT1 of every local APIC is the NMI line (as the LAPICs are programmed: crate::lapic).
    body.extend_from_slice(&[LAPIC_NMI_TYPE, LAPIC_NMI_LEN, ALL_PROCESSORS]);
    body.extend_from_slice(&0u16.to_le_bytes());
    body.push(1);
    madt.append_slice(&body);
    Ok(madt.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (type, bytes) of each interrupt controller structure.
    fn structures(t: &[u8]) -> Vec<(u8, &[u8])> {
        let mut out = Vec::new();
        let mut at = MADT_FIXED_LEN as usize;
        while at < t.len() {
            let len = t[at + 1] as usize;
            out.push((t[at], &t[at..at + len]));
            at += len;
        }
        assert_eq!(at, t.len(), "structures fill the table exactly");
        out
    }

    #[test]
    fn one_enabled_lapic_per_cpu_then_the_ioapic() {
        let t = build(4).unwrap();
        assert_eq!(&t[..4], b"APIC");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(
            u32::from_le_bytes(t[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let s = structures(&t);
        let lapics: Vec<_> = s.iter().filter(|(k, _)| *k == 0).collect();
        assert_eq!(lapics.len(), 4);
        for (i, (_, b)) in lapics.iter().enumerate() {
            assert_eq!((b[2], b[3], b[4] & 1), (i as u8, i as u8, 1));
        }
        let ioapic = s.iter().find(|(k, _)| *k == 1).unwrap().1;
        assert_eq!(
            ioapic[2], 4,
            "IOAPIC id follows the CPUs, as in the MP table"
        );
        assert_eq!(
            u32::from_le_bytes(ioapic[4..8].try_into().unwrap()),
            0xfec0_0000
        );
        let iso = s.iter().find(|(k, _)| *k == 2).unwrap().1;
        assert_eq!(iso, &[2, 10, 0, 0, 0, 0, 0, 0, 5, 0]);
        let nmi = s.iter().find(|(k, _)| *k == 4).unwrap().1;
        assert_eq!(nmi, &[4, 6, 0xff, 0, 0, 1]);
    }

    #[test]
    fn cpu_counts_an_madt_cannot_hold_are_errors() {
        assert!(matches!(build(0), Err(Error::Cpus(0))));
        assert!(matches!(build(255), Err(Error::Cpus(255))));
        assert_eq!(
            structures(&build(254).unwrap())
                .iter()
                .filter(|(k, _)| *k == 0)
                .count(),
            254
        );
    }
}
