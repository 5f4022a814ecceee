//! The ACPI hardware-reduced power registers: sleep control, sleep status and reset.
//!
//! A hardware-reduced ACPI machine has no PM1 blocks. Its FADT instead names a *sleep control*
//! register, a *sleep status* register and a *reset* register (ACPI 6.5, 4.8.3.7 and 4.8.3.6). To power
//! off, the guest's OSPM writes `SLP_TYPx << 2 | SLP_EN` to the sleep control register, with `SLP_TYPx`
//! taken from the DSDT's `\_S5` package; to reboot, it writes the FADT's reset value to the reset
//! register. This device decodes both and tells the VMM through an `EventFd` each.

use bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Offset of the sleep control register in the device's port range.
pub const SLEEP_CONTROL: u16 = 0;
/// Offset of the sleep status register.
pub const SLEEP_STATUS: u16 = 1;
/// Offset of the reset register.
pub const RESET: u16 = 2;
/// The `SLP_TYPx` value the DSDT's `\_S5` package must give for a power-off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// The value the FADT tells the guest to write to the reset register.
pub const RESET_VALUE: u8 = 1;
/// `SLP_EN`: bit 5 of the sleep control register starts the transition.
const SLEEP_ENABLE: u8 = 1 << 5;
/// `SLP_TYPx` is bits 2..=4 of the sleep control register.
const SLEEP_TYPE_SHIFT: u8 = 2;
const SLEEP_TYPE_MASK: u8 = 0b111;

/// The sleep control, sleep status and reset registers, one byte each at offsets
/// [`SLEEP_CONTROL`], [`SLEEP_STATUS`] and [`RESET`] of the device's port range.
///
/// Entering S5 writes `power_off`; the reset value written to the reset register writes `reset`. Other
/// sleep states are not supported and are ignored (the guest sees the transition never happen), and
/// every other write is ignored. Reads return 0: the wake status bit never sets, there is no wake.
#[derive(Debug)]
pub struct PowerRegisters {
    power_off: EventFd,
    reset: EventFd,
    power_offs: u64,
    resets: u64,
}

impl PowerRegisters {
    /// Registers that signal `power_off` on an S5 request and `reset` on a reset request.
    pub fn new(power_off: EventFd, reset: EventFd) -> Self {
        Self {
            power_off,
            reset,
            power_offs: 0,
            resets: 0,
        }
    }

    /// How many times the guest asked to enter S5.
    pub fn power_offs(&self) -> u64 {
        self.power_offs
    }

    /// How many times the guest asked for a reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }
}

impl BusDevice for PowerRegisters {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        // The registers are a byte wide: a wider access writes its low byte to the first register.
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            o if o == u64::from(SLEEP_CONTROL) => {
                let sleep_type = (value >> SLEEP_TYPE_SHIFT) & SLEEP_TYPE_MASK;
                if value & SLEEP_ENABLE != 0 && sleep_type == S5_SLEEP_TYPE {
                    self.power_offs += 1;
                    // A failed eventfd write means the counter is saturated: a power-off is pending.
                    let _ = self.power_off.write(1);
                }
            }
            o if o == u64::from(RESET) && value == RESET_VALUE => {
                self.resets += 1;
                let _ = self.reset.write(1);
            }
            // The sleep status register: writing WAK_STS clears it, and it is never set.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> (PowerRegisters, EventFd, EventFd) {
        let off = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            PowerRegisters::new(off.try_clone().unwrap(), reset.try_clone().unwrap()),
            off,
            reset,
        )
    }

    #[test]
    fn s5_with_sleep_enable_powers_off() {
        let (mut d, off, reset) = dev();
        // What Linux's acpi_hw_extended_sleep() writes: clear WAK_STS, then SLP_TYP | SLP_EN.
        d.write(0x600, u64::from(SLEEP_STATUS), &[0x80]);
        assert!(off.read().is_err());
        d.write(0x600, u64::from(SLEEP_CONTROL), &[(5 << 2) | 0x20]);
        assert_eq!(off.read().unwrap(), 1);
        assert!(reset.read().is_err());
        assert_eq!(d.power_offs(), 1);
    }

    #[test]
    fn other_sleep_states_and_missing_enable_do_nothing() {
        let (mut d, off, reset) = dev();
        d.write(0x600, u64::from(SLEEP_CONTROL), &[5 << 2]); // no SLP_EN
        d.write(0x600, u64::from(SLEEP_CONTROL), &[(3 << 2) | 0x20]); // S3
        d.write(0x600, u64::from(SLEEP_CONTROL), &[]);
        assert!(off.read().is_err());
        assert!(reset.read().is_err());
    }

    #[test]
    fn reset_value_resets_and_nothing_else_does() {
        let (mut d, off, reset) = dev();
        d.write(0x600, u64::from(RESET), &[0x02]);
        assert!(reset.read().is_err());
        d.write(0x600, u64::from(RESET), &[RESET_VALUE]);
        assert_eq!(reset.read().unwrap(), 1);
        assert!(off.read().is_err());
        assert_eq!(d.resets(), 1);
    }

    #[test]
    fn reads_are_zero_whatever_the_width() {
        let (mut d, _, _) = dev();
        let mut data = [0xffu8; 4];
        d.read(0x600, u64::from(SLEEP_STATUS), &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn hostile_offsets_and_widths_are_ignored() {
        let (mut d, off, reset) = dev();
        d.write(0x600, u64::MAX, &[0x34]);
        d.write(0x600, 3, &[0x34, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01]);
        assert!(off.read().is_err());
        assert!(reset.read().is_err());
    }
}
