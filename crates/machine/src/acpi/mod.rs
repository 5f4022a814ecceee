//! ACPI tables for a hardware-reduced x86 machine, built with the `acpi_tables` crate.
//!
//! ```text
//! 0xe0000  RSDP ──> XSDT ──> FADT ──> DSDT   (devices, \_S5)
//!                       └──> MADT            (LAPICs, IOAPIC, overrides, NMI)
//! ```
//!
//! The tables sit in the reserved BIOS area below the MP table (`0xe0000..0xf0000`), where a kernel
//! that is not told the RSDP's address finds it by scanning. The FADT is hardware-reduced (no PM1
//! blocks, no SCI, no PM timer): power-off goes through its sleep control register and reboot through
//! its reset register, both port I/O that the VMM handles.

mod dsdt;
mod madt;

use acpi_tables::Aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::xsdt::XSDT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::{ACPI_END, ACPI_START};

pub use dsdt::MAX_VIRTIO_MMIO;

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"KVMKIT";
/// OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"KVMKITVM";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// FADT IA-PC boot architecture flags: legacy devices (bit 0) and an 8042 (bit 1) are present; there
/// is no VGA (bit 2) and no MSI (bit 3, there is no PCI).
const IAPC_BOOT_ARCH: u16 = 0b1111;
/// Tables are placed at this alignment.
const TABLE_ALIGN: u64 = 16;

/// Errors from building or placing the ACPI tables.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A vCPU count the MADT cannot describe.
    #[error("ACPI: cannot describe {0} vCPUs (1 to 254)")]
    Cpus(u32),
    /// A virtio-mmio window not below 4 GiB.
    #[error("ACPI: virtio-mmio window at {0:#x} is not below 4 GiB")]
    MmioAbove4G(u64),
    /// More devices of one kind than the DSDT's names can tell apart.
    #[error("ACPI: too many devices of one kind ({0})")]
    TooManyDevices(usize),
    /// The tables do not fit in their area.
    #[error("ACPI tables of {size} bytes do not fit in the {room} bytes at {ACPI_START:#x}")]
    TooLarge {
        /// Their size.
        size: u64,
        /// The room there is.
        room: u64,
    },
    /// Guest memory could not be written.
    #[error("cannot write the ACPI tables to guest memory: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// What a legacy ISA device is, for its ACPI hardware id and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsaKind {
    /// A 16550A-compatible UART (`PNP0501`), named `COM1`..`COM9` in order.
    Serial,
    /// An i8042 keyboard controller (`PNP0303`), named `PS2_`.
    Keyboard,
    /// An MC146818 CMOS RTC (`PNP0B00`), named `RTC_`.
    Rtc,
}

impl IsaKind {
    fn hid(self) -> &'static str {
        match self {
            Self::Serial => "PNP0501",
            Self::Keyboard => "PNP0303",
            Self::Rtc => "PNP0B00",
        }
    }
}

/// A legacy device on the ISA port space, as the DSDT announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsaDevice {
    /// What it is.
    pub kind: IsaKind,
    /// Its port ranges: `(first port, number of ports)`.
    pub ports: Vec<(u16, u8)>,
    /// Its interrupt (GSI), if it raises one.
    pub irq: Option<u32>,
}

/// A virtio-mmio device, as the DSDT announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDevice {
    /// Base of its register window (below 4 GiB).
    pub base: u64,
    /// Size of the window.
    pub size: u32,
    /// Its interrupt (GSI).
    pub irq: u32,
}

/// Where the hardware-reduced power registers are (port I/O, one byte each) and what they expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerPorts {
    /// The sleep control register.
    pub sleep_control: u16,
    /// The sleep status register.
    pub sleep_status: u16,
    /// The reset register.
    pub reset: u16,
    /// The value that, written to the reset register, resets the machine.
    pub reset_value: u8,
    /// The `SLP_TYP` value that enters S5 (soft-off); goes into the DSDT's `\_S5`.
    pub s5_sleep_type: u8,
}

/// What the ACPI tables describe: [`AcpiConfig::new`], then the devices.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AcpiConfig {
    /// Number of vCPUs (APIC ids `0..cpus`).
    pub cpus: u32,
    /// Legacy devices.
    pub isa: Vec<IsaDevice>,
    /// virtio-mmio devices.
    pub virtio_mmio: Vec<MmioDevice>,
    /// The power registers.
    pub power: PowerPorts,
    /// A port the DSDT's `\_SB._INI` method writes 1 to, so that the VMM learns the guest's ACPI
    /// interpreter reads these tables (before it enumerates their devices); `None` for no such
    /// method.
    pub ospm_probe: Option<u16>,
    /// The GSI of the power button's Generic Event Device, if the machine has a power button.
    pub power_button: Option<u32>,
}

impl AcpiConfig {
    /// A machine with `cpus` vCPUs and the power registers `power`, and no devices, OSPM probe or
    /// power button yet (set the fields).
    pub fn new(cpus: u32, power: PowerPorts) -> Self {
        Self {
            cpus,
            isa: Vec::new(),
            virtio_mmio: Vec::new(),
            power,
            ospm_probe: None,
            power_button: None,
        }
    }
}

/// Builds the tables for `config`, writes them to guest memory at [`ACPI_START`], and returns the
/// RSDP's address.
pub fn write<M: GuestMemoryBackend>(mem: &M, config: &AcpiConfig) -> Result<u64, Error> {
    let dsdt = dsdt::build(
        &config.isa,
        &config.virtio_mmio,
        config.power.s5_sleep_type,
        config.ospm_probe,
        config.power_button,
    )?;
    let madt = madt::build(config.cpus)?;

    // RSDP first (where a scan finds it), then the tables, each aligned.
    let align = |a: u64| a.next_multiple_of(TABLE_ALIGN);
    let rsdp_at = ACPI_START;
    let xsdt_at = align(rsdp_at + Rsdp::len() as u64);
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = align(xsdt_at + xsdt_len);
    let madt_at = align(fadt_at + acpi_tables::fadt::FADT::len() as u64);
    let dsdt_at = align(madt_at + madt.len() as u64);
    let end = dsdt_at + dsdt.len() as u64;
    if end > ACPI_END {
        return Err(Error::TooLarge {
            size: end - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }

    let fadt = fadt(dsdt_at, &config.power);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let rsdp = Rsdp::new(OEM_ID, xsdt_at);

    for (at, table) in [
        (rsdp_at, bytes(&rsdp)),
        (xsdt_at, bytes(&xsdt)),
        (fadt_at, bytes(&fadt)),
        (madt_at, madt),
        (dsdt_at, dsdt),
    ] {
        mem.write_slice(&table, GuestAddress(at))?;
    }
    Ok(rsdp_at)
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// A hardware-reduced FADT pointing at the DSDT, with the sleep control/status and reset registers.
fn fadt(dsdt_at: u64, power: &PowerPorts) -> acpi_tables::fadt::FADT {
    let port = |p: u16| {
        GAS::new(
            AddressSpace::SystemIo,
            8,
            0,
            AccessSize::ByteAccess,
            p.into(),
        )
    };
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_at)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.iapc_boot_arch = IAPC_BOOT_ARCH.into();
    fadt.reset_reg = port(power.reset);
    fadt.reset_value = power.reset_value;
    fadt.sleep_control_reg = port(power.sleep_control);
    fadt.sleep_status_reg = port(power.sleep_status);
    fadt.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory::GuestMemoryMmap;

    fn config(cpus: u32, virtio: usize) -> AcpiConfig {
        AcpiConfig {
            cpus,
            isa: vec![IsaDevice {
                kind: IsaKind::Serial,
                ports: vec![(0x3f8, 8)],
                irq: Some(4),
            }],
            virtio_mmio: (0..virtio)
                .map(|i| MmioDevice {
                    base: 0xd000_0000 + 0x1000 * i as u64,
                    size: 0x1000,
                    irq: 5 + (i % 16) as u32,
                })
                .collect(),
            power: PowerPorts {
                sleep_control: 0x600,
                sleep_status: 0x601,
                reset: 0x602,
                reset_value: 1,
                s5_sleep_type: 5,
            },
            ospm_probe: None,
            power_button: None,
        }
    }

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(m: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn table(m: &GuestMemoryMmap, at: u64, sig: &[u8; 4]) -> Vec<u8> {
        let head = read(m, at, 8);
        assert_eq!(&head[..4], sig);
        let t = read(m, at, u32_at(&head, 4) as usize);
        assert_eq!(
            t.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
            0,
            "{sig:?} checksum"
        );
        t
    }

    /// Follows the pointers a guest follows: RSDP -> XSDT -> FADT -> DSDT, XSDT -> MADT.
    #[test]
    fn a_guest_finds_every_table_from_the_rsdp() {
        let m = mem();
        let at = write(&m, &config(2, 3)).unwrap();
        assert_eq!(at, 0xe0000, "in the range a guest scans");
        let rsdp = read(&m, at, 36);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(rsdp[..20].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(rsdp[15], 2, "ACPI 2.0+ RSDP");
        let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&m, entries[0], b"FACP");
        table(&m, entries[1], b"APIC");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        assert_ne!(flags & (1 << 10), 0, "reset register supported");
        // RESET_REG: system I/O, 8 bits, at 0x602; RESET_VALUE 1.
        assert_eq!(&fadt[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(&fadt, 120), 0x602);
        assert_eq!(fadt[128], 1);
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG.
        assert_eq!((fadt[244], u64_at(&fadt, 248)), (1, 0x600));
        assert_eq!((fadt[256], u64_at(&fadt, 260)), (1, 0x601));
        let dsdt = table(&m, u64_at(&fadt, 140), b"DSDT");
        assert!(dsdt.windows(4).any(|w| w == b"V002"));
    }

    #[test]
    fn tables_too_large_for_their_area_are_an_error() {
        let m = mem();
        assert!(matches!(
            write(&m, &config(254, MAX_VIRTIO_MMIO)),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn a_full_machine_fits() {
        let m = mem();
        write(&m, &config(254, 64)).unwrap();
    }
}
