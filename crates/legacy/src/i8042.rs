//! Just enough of the i8042 keyboard controller for a guest to find it and to reset the machine.

use bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited (no "keylock").
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_PORT_TEST: u8 = 0xab;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
/// AUX test result: "clock line stuck low", i.e. no auxiliary (mouse) port.
const AUX_TEST_NO_PORT: u8 = 0x01;
const CMD_PULSE_RESET: u8 = 0xfe;

/// The i8042 at ports 0x60 (data) and 0x64 (status/command), with no keyboard behind it.
///
/// Writing command `0xFE` (pulse the CPU reset line) to port 0x64 — what Linux's `reboot=k` does —
/// writes to the reset eventfd; the VMM ends the VM when it sees that.
///
/// The controller has no auxiliary (mouse) port and says so at once: the AUX loopback command echoes
/// its byte without the AUX-data flag and the AUX test reports a stuck clock line, so a guest driver
/// does not wait for timeouts (about two seconds of emulated polling on software KVM).
#[derive(Debug)]
pub struct I8042 {
    reset: EventFd,
    status: u8,
    control: u8,
    output: Option<u8>,
    pending: Option<u8>,
    resets: u64,
}

impl I8042 {
    /// A controller that signals `reset` when the guest pulses the CPU reset line.
    pub fn new(reset: EventFd) -> Self {
        Self {
            reset,
            status: STATUS_SYSTEM_FLAG | STATUS_UNLOCKED,
            control: 0,
            output: None,
            pending: None,
            resets: 0,
        }
    }

    /// How many times the guest asked for a CPU reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    fn push_output(&mut self, byte: u8) {
        self.output = Some(byte);
    }

    fn command(&mut self, cmd: u8) {
        self.status |= STATUS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push_output(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OUTPUT | CMD_WRITE_AUX_OUTPUT => {
                self.pending = Some(cmd)
            }
            CMD_SELF_TEST => self.push_output(0x55),
            CMD_PORT_TEST => self.push_output(0x00),
            CMD_AUX_TEST => self.push_output(AUX_TEST_NO_PORT),
            CMD_READ_OUTPUT => self.push_output(0x01), // reset line deasserted
            CMD_PULSE_RESET => {
                self.resets += 1;
                // A failed eventfd write can only mean the counter is saturated: a reset is pending.
                let _ = self.reset.write(1);
            }
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.status &= !STATUS_COMMAND;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.control = byte,
            // Both echo as keyboard data: there is no AUX port to flag the byte as its own.
            Some(CMD_WRITE_KBD_OUTPUT | CMD_WRITE_AUX_OUTPUT) => self.push_output(byte),
            Some(CMD_WRITE_OUTPUT) if byte & 1 == 0 => {
                // Bit 0 of the output port is the CPU reset line, active low.
                self.command(CMD_PULSE_RESET);
            }
            _ => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = if base == u64::from(crate::I8042_COMMAND.base) {
            self.status
                | if self.output.is_some() {
                    STATUS_OUTPUT_FULL
                } else {
                    0
                }
        } else {
            self.output.take().unwrap_or(0)
        };
    }

    fn write(&mut self, base: u64, _offset: u64, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        if base == u64::from(crate::I8042_COMMAND.base) {
            self.command(byte);
        } else {
            self.data(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMD: u64 = 0x64;
    const DATA: u64 = 0x60;

    fn dev() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    fn read(d: &mut I8042, port: u64) -> u8 {
        let mut b = [0u8];
        d.read(port, 0, &mut b);
        b[0]
    }

    #[test]
    fn pulse_reset_signals_the_vmm() {
        let (mut d, evt) = dev();
        assert!(evt.read().is_err(), "nothing pending yet");
        assert_eq!(
            read(&mut d, CMD) & 0x02,
            0,
            "input buffer empty: the guest may write"
        );
        d.write(CMD, 0, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(d.resets(), 1);
    }

    #[test]
    fn output_port_reset_bit_also_resets() {
        let (mut d, evt) = dev();
        d.write(CMD, 0, &[CMD_WRITE_OUTPUT]);
        d.write(DATA, 0, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn self_test_and_control_byte_round_trip() {
        let (mut d, evt) = dev();
        d.write(CMD, 0, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut d, CMD) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(read(&mut d, DATA), 0x55);
        assert_eq!(read(&mut d, CMD) & STATUS_OUTPUT_FULL, 0);
        d.write(CMD, 0, &[CMD_WRITE_CTR]);
        d.write(DATA, 0, &[0x47]);
        d.write(CMD, 0, &[CMD_READ_CTR]);
        assert_eq!(read(&mut d, DATA), 0x47);
        assert!(evt.read().is_err());
    }

    #[test]
    fn no_aux_port_is_reported_without_timeouts() {
        let (mut d, _evt) = dev();
        assert_ne!(read(&mut d, CMD) & STATUS_UNLOCKED, 0);
        d.write(CMD, 0, &[CMD_WRITE_AUX_OUTPUT]);
        d.write(DATA, 0, &[0x5a]);
        let status = read(&mut d, CMD);
        assert_eq!(
            status & STATUS_OUTPUT_FULL,
            1,
            "the loopback byte is there at once"
        );
        assert_eq!(status & 0x20, 0, "but not flagged as AUX data");
        assert_eq!(read(&mut d, DATA), 0x5a);
        d.write(CMD, 0, &[CMD_AUX_TEST]);
        assert_eq!(read(&mut d, DATA), AUX_TEST_NO_PORT);
    }

    #[test]
    fn empty_and_wide_accesses_do_not_panic() {
        let (mut d, _evt) = dev();
        d.write(CMD, 0, &[]);
        d.read(CMD, 0, &mut []);
        let mut wide = [0xffu8; 4];
        d.read(DATA, 0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
