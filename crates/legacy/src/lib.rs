#![doc = include_str!("../README.md")]

mod boot_timer;
mod date;
mod i8042;
mod ospm;
pub mod power;
mod rtc;
mod serial;

pub use boot_timer::BootTimer;
pub use date::{CivilTime, civil_from_unix};
pub use i8042::{I8042, I8042State, KeyError};
pub use ospm::OspmProbe;
pub use power::PowerRegisters;
pub use rtc::{Rtc, RtcState};
pub use serial::{EventFdTrigger, Serial, SerialState};

/// Where a legacy PC device lives: its first port and how many ports it decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u16,
}

/// COM1: the 8250 UART's ports.
pub const COM1: PortRange = PortRange {
    base: 0x3f8,
    len: 8,
};
/// COM1's interrupt line on the PIC/IOAPIC.
pub const COM1_IRQ: u32 = 4;
/// The i8042 keyboard's interrupt line.
pub const I8042_IRQ: u32 = 1;
/// The i8042 data port.
pub const I8042_DATA: PortRange = PortRange { base: 0x60, len: 1 };
/// The i8042 status/command port.
pub const I8042_COMMAND: PortRange = PortRange { base: 0x64, len: 1 };
/// The CMOS/RTC index and data ports.
pub const CMOS: PortRange = PortRange { base: 0x70, len: 2 };
/// The ACPI power registers ([`PowerRegisters`]): sleep control, sleep status and reset, one byte each.
pub const ACPI_POWER: PortRange = PortRange {
    base: 0x600,
    len: 3,
};
/// The OSPM presence port ([`OspmProbe`]), next to the power registers.
pub const OSPM_PROBE: PortRange = PortRange {
    base: 0x603,
    len: 1,
};
/// The boot timer's port ([`BootTimer`]).
pub const BOOT_TIMER: PortRange = PortRange {
    base: 0x440,
    len: 1,
};
