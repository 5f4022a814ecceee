//! The DSDT: the AML namespace that names the machine's devices and its S5 (soft-off) sleep state.
//!
//! ```text
//! Scope (\_SB) {
//!     OperationRegion (KVMK, SystemIO, port, 1)  Field (KVMK) { OSPM, 8 }   // with an OSPM probe port
//!     Method (_INI) { OSPM = One }                                          // run by OSPM at ACPI init
//!     Device (COM1) { _HID PNP0501, _UID 0, _CRS { IO 0x3f8/8, IRQ 4 } }
//!     Device (PS2_) { _HID PNP0303, _CRS { IO 0x60/1, IO 0x64/1 } }
//!     Device (RTC_) { _HID PNP0B00, _CRS { IO 0x70/2 } }
//!     Device (V000) { _HID "LNRO0005", _UID 0, _CCA 1, _CRS { Memory32Fixed, Interrupt } }  // virtio-mmio
//!     Device (PWRB) { _HID PNP0C0C, _UID 0 }                                 // with a power button:
//!     Device (GED_) { _HID "ACPI0013", _UID 0, _CRS { Interrupt (edge) { gsi } },
//!                     Method (_EVT, 1) { Notify (PWRB, 0x80) } }
//! }
//! Name (\_S5, Package { 5 })
//! ```
//!
//! `LNRO0005` is the ACPI id Linux's virtio-mmio driver matches, so a kernel finds the virtio devices
//! without `virtio_mmio.device=` on its command line.
//!
//! With an OSPM probe port, `\_SB._INI` writes 1 to it: ACPICA runs `\_SB._INI` while it initializes
//! the namespace, before it enumerates any device, so the VMM learns that the guest takes its devices
//! from these tables (and can then hide the command-line descriptions of the same devices).
//!
//! With a power button, the VMM presses it by raising the GED's interrupt: Linux's GED driver runs
//! `_EVT`, whose `Notify (PWRB, 0x80)` makes the ACPI button driver report KEY_POWER to user space,
//! which shuts the guest down in order (systemd-logind, acpid, or an init that reads the key).

use acpi_tables::Aml;
use acpi_tables::aml::{
    self, Device, EISAName, Field, FieldAccessType, FieldEntry, FieldLockRule, FieldUpdateRule, IO,
    Interrupt, Memory32Fixed, Method, Name, Notify, OpRegion, OpRegionSpace, Package, Path,
    ResourceTemplate, Scope, Store,
};
use acpi_tables::sdt::Sdt;

use super::{Error, IsaDevice, IsaKind, MmioDevice, OEM_ID, OEM_REVISION, OEM_TABLE_ID};

/// ACPI 6.x DSDT revision 2: integers are 64 bits wide.
const DSDT_REVISION: u8 = 2;
/// The virtio-mmio transport's ACPI hardware id (Linux `virtio_mmio_acpi_match`).
const VIRTIO_MMIO_HID: &str = "LNRO0005";
/// The most virtio-mmio devices the `Vxxx` names can tell apart.
pub const MAX_VIRTIO_MMIO: usize = 0x1000;

/// The ACPI hardware id of the Generic Event Device.
const GED_HID: &str = "ACPI0013";
/// `Notify` value of a power button press (ACPI "status change").
const NOTIFY_BUTTON_PRESSED: u8 = 0x80;

/// The DSDT for `isa` and `virtio_mmio` devices, with `\_S5` giving `s5_sleep_type`; with
/// `ospm_probe`, a `\_SB._INI` that writes 1 to that port; with `power_button`, a power button
/// whose presses arrive on that GSI.
pub fn build(
    isa: &[IsaDevice],
    virtio_mmio: &[MmioDevice],
    s5_sleep_type: u8,
    ospm_probe: Option<u16>,
    power_button: Option<u32>,
) -> Result<Vec<u8>, Error> {
    if virtio_mmio.len() > MAX_VIRTIO_MMIO {
        return Err(Error::TooManyDevices(virtio_mmio.len()));
    }
    let mut devices = Vec::new();
    if let Some(port) = ospm_probe {
        ospm_probe_method(port, &mut devices);
    }
    let mut serial_ports = 0u8;
    for dev in isa {
        let (name, uid) = match dev.kind {
            IsaKind::Serial => {
                serial_ports += 1;
                if serial_ports > 9 {
                    return Err(Error::TooManyDevices(usize::from(serial_ports)));
                }
                (format!("COM{serial_ports}"), u32::from(serial_ports - 1))
            }
            IsaKind::Keyboard => ("PS2_".to_owned(), 0),
            IsaKind::Rtc => ("RTC_".to_owned(), 0),
        };
        isa_device(&name, dev, uid, &mut devices);
    }
    for (i, dev) in virtio_mmio.iter().enumerate() {
        mmio_device(i, dev, &mut devices)?;
    }
    if let Some(gsi) = power_button {
        power_button_devices(gsi, &mut devices);
    }

    let mut dsdt = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    dsdt.append_slice(&Scope::raw(Path::new("\\_SB_"), devices));
    let mut s5 = Vec::new();
    Name::new(
        Path::new("\\_S5_"),
        &Package::new(vec![&s5_sleep_type as &dyn Aml]),
    )
    .to_aml_bytes(&mut s5);
    dsdt.append_slice(&s5);
    Ok(dsdt.as_slice().to_vec())
}

/// Appends the one-byte `KVMK` port region and a `_INI` method (of the enclosing `\_SB` scope) that
/// writes 1 to it, to `out`.
fn ospm_probe_method(port: u16, out: &mut Vec<u8>) {
    let (offset, length) = (u64::from(port), 1u64);
    OpRegion::new(Path::new("KVMK"), OpRegionSpace::SystemIO, &offset, &length).to_aml_bytes(out);
    Field::new(
        Path::new("KVMK"),
        FieldAccessType::Byte,
        FieldLockRule::NoLock,
        FieldUpdateRule::Preserve,
        vec![FieldEntry::Named(*b"OSPM", 8)],
    )
    .to_aml_bytes(out);
    let ospm = Path::new("OSPM");
    Method::new(
        Path::new("_INI"),
        0,
        false,
        vec![&Store::new(&ospm, &aml::ONE)],
    )
    .to_aml_bytes(out);
}

/// Appends `Device (name) { _HID, _UID, _CRS }` for a legacy ISA device to `out`.
fn isa_device(name: &str, dev: &IsaDevice, uid: u32, out: &mut Vec<u8>) {
    let hid = EISAName::new(dev.kind.hid());
    let ports: Vec<IO> = dev
        .ports
        .iter()
        .map(|&(base, len)| IO::new(base, base, 1, len))
        .collect();
    let irq = dev
        .irq
        .map(|gsi| Interrupt::new(true, true, false, false, gsi));
    let mut resources: Vec<&dyn Aml> = ports.iter().map(|p| p as &dyn Aml).collect();
    if let Some(irq) = &irq {
        resources.push(irq);
    }
    let crs = ResourceTemplate::new(resources);
    let hid = Name::new(Path::new("_HID"), &hid);
    let uid = Name::new(Path::new("_UID"), &uid);
    let crs = Name::new(Path::new("_CRS"), &crs);
    Device::new(Path::new(name), vec![&hid, &uid, &crs]).to_aml_bytes(out);
}

/// Appends the power button (`PWRB`) and the Generic Event Device whose interrupt, `gsi`, presses
/// it, to `out`.
fn power_button_devices(gsi: u32, out: &mut Vec<u8>) {
    let hid = EISAName::new("PNP0C0C");
    let hid = Name::new(Path::new("_HID"), &hid);
    let uid = Name::new(Path::new("_UID"), &aml::ZERO);
    Device::new(Path::new("PWRB"), vec![&hid, &uid]).to_aml_bytes(out);

    let hid: &dyn Aml = &GED_HID;
    let hid = Name::new(Path::new("_HID"), hid);
    let irq = Interrupt::new(true, true, false, false, gsi);
    let crs = ResourceTemplate::new(vec![&irq]);
    let crs = Name::new(Path::new("_CRS"), &crs);
    let pwrb = Path::new("PWRB");
    let notify = Notify::new(&pwrb, &NOTIFY_BUTTON_PRESSED);
    let evt = Method::new(Path::new("_EVT"), 1, true, vec![&notify]);
    Device::new(Path::new("GED_"), vec![&hid, &uid, &crs, &evt]).to_aml_bytes(out);
}

/// Appends `Device (Vxxx)` for virtio-mmio device `index` to `out`.
fn mmio_device(index: usize, dev: &MmioDevice, out: &mut Vec<u8>) -> Result<(), Error> {
    let base = u32::try_from(dev.base)
        .ok()
        .filter(|&b| u64::from(b) + u64::from(dev.size) <= 1 << 32)
        .ok_or(Error::MmioAbove4G(dev.base))?;
    let name = format!("V{index:03X}");
    let hid: &dyn Aml = &VIRTIO_MMIO_HID;
    let hid = Name::new(Path::new("_HID"), hid);
    let uid = Name::new(Path::new("_UID"), &(index as u64));
    let cca = Name::new(Path::new("_CCA"), &aml::ONE);
    let mem = Memory32Fixed::new(true, base, dev.size);
    let irq = Interrupt::new(true, true, false, false, dev.irq);
    let crs = ResourceTemplate::new(vec![&mem, &irq]);
    let crs = Name::new(Path::new("_CRS"), &crs);
    Device::new(Path::new(&name), vec![&hid, &uid, &cca, &crs]).to_aml_bytes(out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    fn serial() -> IsaDevice {
        IsaDevice {
            kind: IsaKind::Serial,
            ports: vec![(0x3f8, 8)],
            irq: Some(4),
        }
    }

    #[test]
    fn table_header_length_and_checksum_are_right() {
        let t = build(&[serial()], &[], 5, None, None).unwrap();
        assert_eq!(&t[..4], b"DSDT");
        assert_eq!(
            u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
            t.len()
        );
        assert_eq!(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
    }

    #[test]
    fn serial_port_has_its_id_ports_and_irq() {
        let t = build(&[serial()], &[], 5, None, None).unwrap();
        assert!(contains(&t, b"COM1"));
        // EISA id PNP0501, compressed: 0x41d0_0501.
        assert!(contains(&t, &[0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // IO descriptor: decode16, 0x3f8..0x3f8, align 1, length 8.
        assert!(contains(
            &t,
            &[0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08]
        ));
        // Extended interrupt descriptor: consumer, edge, active high, exclusive, one interrupt: 4.
        assert!(contains(&t, &[0x89, 0x06, 0x00, 0x03, 0x01, 4, 0, 0, 0]));
    }

    #[test]
    fn virtio_devices_are_announced_with_their_window_and_irq() {
        let devs = [
            MmioDevice {
                base: 0xd000_0000,
                size: 0x1000,
                irq: 5,
            },
            MmioDevice {
                base: 0xd000_1000,
                size: 0x1000,
                irq: 6,
            },
        ];
        let t = build(&[], &devs, 5, None, None).unwrap();
        assert!(contains(&t, b"V000") && contains(&t, b"V001"));
        assert!(contains(&t, b"LNRO0005\0"));
        // Memory32Fixed: read-write, base 0xd0001000, length 0x1000.
        assert!(contains(
            &t,
            &[
                0x86, 0x09, 0x00, 0x01, 0x00, 0x10, 0x00, 0xd0, 0x00, 0x10, 0x00, 0x00
            ]
        ));
        assert!(contains(&t, &[0x89, 0x06, 0x00, 0x03, 0x01, 6, 0, 0, 0]));
    }

    #[test]
    fn s5_package_carries_the_sleep_type() {
        let t = build(&[], &[], 5, None, None).unwrap();
        // NameOp '\' "_S5_" PackageOp len=4 count=1 BytePrefix 5
        assert!(contains(
            &t,
            &[
                0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x04, 0x01, 0x0a, 0x05
            ]
        ));
    }

    #[test]
    fn the_ospm_probe_writes_one_to_its_port_from_sb_ini() {
        let t = build(&[], &[], 5, Some(0x603), None).unwrap();
        // OperationRegion (KVMK, SystemIO, 0x603, One): ExtOp RegionOp "KVMK" space 1, WordConst.
        assert!(contains(
            &t,
            &[0x5b, 0x80, b'K', b'V', b'M', b'K', 0x01, 0x0b, 0x03, 0x06]
        ));
        // Field (KVMK, ByteAcc, NoLock, Preserve) { OSPM, 8 }
        assert!(contains(&t, b"OSPM") && contains(&t, &[0x5b, 0x81]));
        // Method (_INI, 0) { Store (One, OSPM) }: StoreOp One "OSPM".
        assert!(contains(&t, b"_INI"));
        assert!(contains(&t, &[0x70, 0x01, b'O', b'S', b'P', b'M']));
        assert!(!contains(&build(&[], &[], 5, None, None).unwrap(), b"_INI"));
    }

    #[test]
    fn a_power_button_is_a_ged_interrupt_that_notifies_pwrb() {
        let t = build(&[], &[], 5, None, Some(9)).unwrap();
        assert!(contains(&t, b"PWRB") && contains(&t, b"GED_"));
        assert!(contains(&t, b"ACPI0013\0"));
        // EISA id PNP0C0C, compressed: 0x41d0_0c0c.
        assert!(contains(&t, &[0x0c, 0x41, 0xd0, 0x0c, 0x0c]));
        // Its interrupt: consumer, edge, active high, exclusive, GSI 9.
        assert!(contains(&t, &[0x89, 0x06, 0x00, 0x03, 0x01, 9, 0, 0, 0]));
        // Method (_EVT, 1, Serialized) { Notify (PWRB, 0x80) }: flags 0x09, NotifyOp "PWRB" 0x80.
        assert!(contains(&t, b"_EVT\x09"));
        assert!(contains(&t, &[0x86, b'P', b'W', b'R', b'B', 0x0a, 0x80]));
        assert!(!contains(&build(&[], &[], 5, None, None).unwrap(), b"GED_"));
    }

    #[test]
    fn devices_that_do_not_fit_are_errors_not_panics() {
        let high = MmioDevice {
            base: 0x1_0000_0000,
            size: 0x1000,
            irq: 5,
        };
        assert!(matches!(
            build(&[], &[high], 5, None, None),
            Err(Error::MmioAbove4G(_))
        ));
        let wrap = MmioDevice {
            base: 0xffff_f000,
            size: 0x2000,
            irq: 5,
        };
        assert!(matches!(
            build(&[], &[wrap], 5, None, None),
            Err(Error::MmioAbove4G(_))
        ));
        let many: Vec<IsaDevice> = (0..10).map(|_| serial()).collect();
        assert!(matches!(
            build(&many, &[], 5, None, None),
            Err(Error::TooManyDevices(10))
        ));
    }
}
