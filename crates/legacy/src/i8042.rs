//! The i8042 keyboard controller with a PS/2 keyboard behind it: enough for a guest to find both, to
//! reset the machine, and to receive keystrokes the VMM types (Ctrl-Alt-Del).

use std::collections::VecDeque;

use bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM_FLAG: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
/// The keyboard is not inhibited (no "keylock").
const STATUS_UNLOCKED: u8 = 0x10;

/// Controller configuration byte: keyboard interrupt enabled.
const CTR_KBD_INT: u8 = 0x01;
/// Controller configuration byte: the system passed its power-on self test.
const CTR_SYSTEM_FLAG: u8 = 0x04;
/// Controller configuration byte: keyboard clock disabled.
const CTR_KBD_DISABLED: u8 = 0x10;
/// Controller configuration byte: AUX clock disabled (there is no AUX port).
const CTR_AUX_DISABLED: u8 = 0x20;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_PORT_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT: u8 = 0xd0;
const CMD_WRITE_OUTPUT: u8 = 0xd1;
const CMD_WRITE_KBD_OUTPUT: u8 = 0xd2;
const CMD_WRITE_AUX_OUTPUT: u8 = 0xd3;
const CMD_PULSE_RESET: u8 = 0xfe;
/// AUX test result: "clock line stuck low", i.e. no auxiliary (mouse) port.
const AUX_TEST_NO_PORT: u8 = 0x01;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_RESEND: u8 = 0xfe;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_ECHO: u8 = 0xee;
/// What an MF2 keyboard answers to "identify" (untranslated).
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Keyboard commands with one argument byte after them: set LEDs, typematic rate, scan-code set.
const KBD_SET_LEDS: u8 = 0xed;
const KBD_SCAN_CODE_SET: u8 = 0xf0;
const KBD_SET_TYPEMATIC: u8 = 0xf3;
const KBD_IDENTIFY: u8 = 0xf2;
const KBD_ENABLE: u8 = 0xf4;
const KBD_DISABLE: u8 = 0xf5;
const KBD_RESET: u8 = 0xff;

/// Bytes the controller holds for the guest at most; a key sequence that does not fit is refused.
pub const OUTPUT_CAPACITY: usize = 16;

/// Ctrl-Alt-Del in scan-code set 2: the three make codes, then their break codes (Del, Alt, Ctrl),
/// so that no key stays held.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // Ctrl, Alt, Delete down
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // Delete, Alt, Ctrl up
];

/// Why keys could not be typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The guest has not read what was typed before.
    #[error("the i8042's output buffer is full: the guest has not read earlier keystrokes")]
    BufferFull,
}

/// The controller's and its keyboard's state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    /// The configuration byte.
    pub control: u8,
    /// Whether the last write was to the command port.
    pub last_was_command: bool,
    /// Bytes waiting for the guest, and whether each came from the keyboard.
    pub output: Vec<(u8, bool)>,
    /// A controller command waiting for its data byte.
    pub pending: Option<u8>,
    /// A keyboard command waiting for its argument.
    pub keyboard_pending: Option<u8>,
}

/// Who put a byte in the output buffer: the controller answering a command (no interrupt, the
/// driver polls for it) or the keyboard (raises IRQ 1 when the guest enabled it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Controller,
    Keyboard,
}

/// The i8042 at ports 0x60 (data) and 0x64 (status/command), with an MF2 keyboard on its first port
/// and no auxiliary (mouse) port.
///
/// - Writing command `0xFE` (pulse the CPU reset line) to port 0x64 — what Linux's `reboot=k` does —
///   writes to the reset eventfd; the VMM ends the VM when it sees that.
/// - The keyboard answers the commands a driver probes it with (reset, identify, LEDs, typematic
///   rate, scan-code set 2, enable) and the VMM can type on it ([`I8042::ctrl_alt_del`]). Each byte
///   the keyboard sends raises IRQ 1 (the `irq` eventfd, an irqfd) while the guest has the keyboard
///   interrupt enabled; a byte read while more wait raises it again.
/// - The controller has no AUX port and says so at once: the AUX loopback command echoes its byte
///   without the AUX-data flag and the AUX test reports a stuck clock line, so a guest driver does
///   not wait for timeouts (about two seconds of emulated polling on software KVM).
#[derive(Debug)]
pub struct I8042 {
    reset: EventFd,
    irq: EventFd,
    control: u8,
    last_was_command: bool,
    output: VecDeque<(u8, Source)>,
    pending: Option<u8>,
    kbd_pending: Option<u8>,
    resets: u64,
}

impl I8042 {
    /// A controller that signals `reset` when the guest pulses the CPU reset line, and `irq` (IRQ 1)
    /// when its keyboard has a byte for the guest.
    pub fn new(reset: EventFd, irq: EventFd) -> Self {
        Self {
            reset,
            irq,
            control: CTR_KBD_INT | CTR_SYSTEM_FLAG | CTR_AUX_DISABLED,
            last_was_command: false,
            output: VecDeque::with_capacity(OUTPUT_CAPACITY),
            pending: None,
            kbd_pending: None,
            resets: 0,
        }
    }

    /// How many times the guest asked for a CPU reset.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// The state as the guest left it.
    pub fn state(&self) -> I8042State {
        I8042State {
            control: self.control,
            last_was_command: self.last_was_command,
            output: self
                .output
                .iter()
                .map(|&(b, s)| (b, s == Source::Keyboard))
                .collect(),
            pending: self.pending,
            keyboard_pending: self.kbd_pending,
        }
    }

    /// Puts `state` back (at most `OUTPUT_CAPACITY` waiting bytes are kept).
    pub fn restore(&mut self, state: &I8042State) {
        self.control = state.control;
        self.last_was_command = state.last_was_command;
        self.output = state
            .output
            .iter()
            .take(OUTPUT_CAPACITY)
            .map(|&(b, k)| {
                (
                    b,
                    if k {
                        Source::Keyboard
                    } else {
                        Source::Controller
                    },
                )
            })
            .collect();
        self.pending = state.pending;
        self.kbd_pending = state.keyboard_pending;
    }

    /// Types Ctrl-Alt-Del: the keys go down, then up, in scan-code set 2 (untranslated, what a
    /// Linux guest that found this controller expects). The guest's keyboard driver decides what
    /// follows (Linux reboots, or signals init).
    pub fn ctrl_alt_del(&mut self) -> Result<(), KeyError> {
        self.type_bytes(&CTRL_ALT_DEL)
    }

    /// Puts `bytes` from the keyboard in the output buffer, all or none.
    fn type_bytes(&mut self, bytes: &[u8]) -> Result<(), KeyError> {
        if self.output.len() + bytes.len() > OUTPUT_CAPACITY {
            return Err(KeyError::BufferFull);
        }
        for &b in bytes {
            self.push(b, Source::Keyboard);
        }
        Ok(())
    }

    /// Queues `byte`; if it is now the one the guest reads next, signals it.
    fn push(&mut self, byte: u8, source: Source) {
        if self.output.len() >= OUTPUT_CAPACITY {
            // A guest that never reads: the oldest byte is the one to lose.
            self.output.pop_front();
        }
        self.output.push_back((byte, source));
        if self.output.len() == 1 {
            self.signal_head();
        }
    }

    /// Raises IRQ 1 if the byte the guest reads next is the keyboard's and the guest wants
    /// keyboard interrupts.
    fn signal_head(&self) {
        let wanted = self.control & CTR_KBD_INT != 0 && self.control & CTR_KBD_DISABLED == 0;
        if wanted && matches!(self.output.front(), Some((_, Source::Keyboard))) {
            // A failed eventfd write can only mean the counter is saturated: an interrupt is pending.
            let _ = self.irq.write(1);
        }
    }

    /// The controller's answer to a command: the driver polls for it and reads the next byte, so
    /// whatever the keyboard sent before is dropped (as a real controller's single output register
    /// would be overwritten).
    fn reply(&mut self, byte: u8) {
        self.output.clear();
        self.push(byte, Source::Controller);
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.control & CTR_SYSTEM_FLAG != 0 {
            status |= STATUS_SYSTEM_FLAG;
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        status
    }

    fn command(&mut self, cmd: u8) {
        self.last_was_command = true;
        self.pending = None;
        match cmd {
            CMD_READ_CTR => self.reply(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT | CMD_WRITE_KBD_OUTPUT | CMD_WRITE_AUX_OUTPUT => {
                self.pending = Some(cmd)
            }
            CMD_DISABLE_AUX => self.control |= CTR_AUX_DISABLED,
            CMD_ENABLE_AUX => {} // there is no AUX port to enable
            CMD_SELF_TEST => self.reply(0x55),
            CMD_PORT_TEST => self.reply(0x00),
            CMD_AUX_TEST => self.reply(AUX_TEST_NO_PORT),
            CMD_DISABLE_KBD => self.control |= CTR_KBD_DISABLED,
            CMD_ENABLE_KBD => {
                self.control &= !CTR_KBD_DISABLED;
                self.signal_head();
            }
            CMD_READ_OUTPUT => self.reply(0x01), // reset line deasserted
            CMD_PULSE_RESET => {
                self.resets += 1;
                // A failed eventfd write can only mean the counter is saturated: a reset is pending.
                let _ = self.reset.write(1);
            }
            _ => {}
        }
    }

    fn data(&mut self, byte: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => {
                self.control = byte;
                self.signal_head();
            }
            // Both echo as keyboard data: there is no AUX port to flag the byte as its own.
            Some(CMD_WRITE_KBD_OUTPUT) => self.push(byte, Source::Keyboard),
            Some(CMD_WRITE_AUX_OUTPUT) => self.reply(byte),
            Some(CMD_WRITE_OUTPUT) if byte & 1 == 0 => {
                // Bit 0 of the output port is the CPU reset line, active low.
                self.command(CMD_PULSE_RESET);
            }
            Some(_) => {}
            None => self.keyboard(byte),
        }
    }

    /// A byte for the keyboard: a command, or the argument of the previous one.
    fn keyboard(&mut self, byte: u8) {
        let ack = |k: &mut Self| k.push(KBD_ACK, Source::Keyboard);
        if let Some(cmd) = self.kbd_pending.take() {
            ack(self);
            if cmd == KBD_SCAN_CODE_SET && byte == 0 {
                // "Which set?": only set 2 is spoken.
                self.push(2, Source::Keyboard);
            }
            return;
        }
        match byte {
            KBD_SET_LEDS | KBD_SET_TYPEMATIC | KBD_SCAN_CODE_SET => {
                self.kbd_pending = Some(byte);
                ack(self);
            }
            KBD_IDENTIFY => {
                ack(self);
                for b in KBD_ID {
                    self.push(b, Source::Keyboard);
                }
            }
            KBD_RESET => {
                self.output.clear();
                ack(self);
                self.push(KBD_SELF_TEST_OK, Source::Keyboard);
            }
            KBD_ECHO => self.push(KBD_ECHO, Source::Keyboard),
            KBD_ENABLE | KBD_DISABLE | 0xf6..=0xfd => ack(self),
            _ => self.push(KBD_RESEND, Source::Keyboard),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        if base == u64::from(crate::I8042_COMMAND.base) {
            *first = self.status();
            return;
        }
        *first = self.output.pop_front().map_or(0, |(b, _)| b);
        self.signal_head();
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

    struct Dev {
        d: I8042,
        reset: EventFd,
        irq: EventFd,
    }

    fn dev() -> Dev {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        Dev {
            d: I8042::new(reset.try_clone().unwrap(), irq.try_clone().unwrap()),
            reset,
            irq,
        }
    }

    impl Dev {
        fn read(&mut self, port: u64) -> u8 {
            let mut b = [0u8];
            self.d.read(port, 0, &mut b);
            b[0]
        }
        fn write(&mut self, port: u64, byte: u8) {
            self.d.write(port, 0, &[byte]);
        }
        /// Interrupts raised since the last call.
        fn irqs(&self) -> u64 {
            self.irq.read().unwrap_or(0)
        }
        /// Reads the data port for as long as the status says there is output.
        fn drain(&mut self) -> Vec<u8> {
            let mut out = Vec::new();
            while self.read(CMD) & STATUS_OUTPUT_FULL != 0 {
                out.push(self.read(DATA));
            }
            out
        }
    }

    #[test]
    fn pulse_reset_signals_the_vmm() {
        let mut d = dev();
        assert!(d.reset.read().is_err(), "nothing pending yet");
        assert_eq!(
            d.read(CMD) & 0x02,
            0,
            "input buffer empty: the guest may write"
        );
        d.write(CMD, 0xfe);
        assert_eq!(d.reset.read().unwrap(), 1);
        assert_eq!(d.d.resets(), 1);
    }

    #[test]
    fn output_port_reset_bit_also_resets() {
        let mut d = dev();
        d.write(CMD, CMD_WRITE_OUTPUT);
        d.write(DATA, 0xfe);
        assert_eq!(d.reset.read().unwrap(), 1);
    }

    #[test]
    fn self_test_and_control_byte_round_trip_without_interrupts() {
        let mut d = dev();
        d.write(CMD, CMD_SELF_TEST);
        assert_eq!(d.read(CMD) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(d.read(DATA), 0x55);
        assert_eq!(d.read(CMD) & STATUS_OUTPUT_FULL, 0);
        d.write(CMD, CMD_WRITE_CTR);
        d.write(DATA, 0x47);
        d.write(CMD, CMD_READ_CTR);
        assert_eq!(d.read(DATA), 0x47);
        assert!(d.reset.read().is_err());
        assert_eq!(d.irqs(), 0, "controller replies are polled, not interrupts");
    }

    #[test]
    fn no_aux_port_is_reported_without_timeouts() {
        let mut d = dev();
        assert_ne!(d.read(CMD) & STATUS_UNLOCKED, 0);
        d.write(CMD, CMD_WRITE_AUX_OUTPUT);
        d.write(DATA, 0x5a);
        let status = d.read(CMD);
        assert_eq!(
            status & STATUS_OUTPUT_FULL,
            1,
            "the loopback byte is there at once"
        );
        assert_eq!(status & 0x20, 0, "but not flagged as AUX data");
        assert_eq!(d.read(DATA), 0x5a);
        d.write(CMD, CMD_AUX_TEST);
        assert_eq!(d.read(DATA), AUX_TEST_NO_PORT);
    }

    #[test]
    fn the_keyboard_answers_a_drivers_probe() {
        let mut d = dev();
        d.write(DATA, KBD_RESET);
        assert_eq!(d.drain(), [KBD_ACK, KBD_SELF_TEST_OK]);
        d.write(DATA, KBD_IDENTIFY);
        assert_eq!(d.drain(), [KBD_ACK, 0xab, 0x83]);
        d.write(DATA, KBD_SCAN_CODE_SET);
        d.write(DATA, 0);
        assert_eq!(d.drain(), [KBD_ACK, KBD_ACK, 2]);
        d.write(DATA, KBD_SET_LEDS);
        d.write(DATA, 0x07);
        d.write(DATA, KBD_ENABLE);
        assert_eq!(d.drain(), [KBD_ACK, KBD_ACK, KBD_ACK]);
        d.write(DATA, KBD_ECHO);
        d.write(DATA, 0x42);
        assert_eq!(d.drain(), [KBD_ECHO, KBD_RESEND]);
        assert!(d.irqs() > 0, "keyboard bytes raise IRQ 1");
    }

    #[test]
    fn ctrl_alt_del_is_typed_with_an_interrupt_per_byte_read() {
        let mut d = dev();
        d.d.ctrl_alt_del().unwrap();
        assert_eq!(d.irqs(), 1, "the first byte interrupts");
        let first = d.read(DATA);
        assert_eq!(first, 0x14);
        assert_eq!(d.irqs(), 1, "reading it interrupts again for the next");
        let mut rest = d.drain();
        rest.insert(0, first);
        assert_eq!(rest, CTRL_ALT_DEL);
    }

    #[test]
    fn keys_wait_while_the_guest_masks_the_keyboard_interrupt() {
        let mut d = dev();
        d.write(CMD, CMD_WRITE_CTR);
        d.write(DATA, CTR_SYSTEM_FLAG); // keyboard interrupt off
        d.d.ctrl_alt_del().unwrap();
        assert_eq!(d.irqs(), 0);
        d.write(CMD, CMD_WRITE_CTR);
        d.write(DATA, CTR_SYSTEM_FLAG | CTR_KBD_INT);
        assert_eq!(d.irqs(), 1, "enabling it delivers what waits");
    }

    #[test]
    fn a_guest_that_never_reads_fills_the_buffer_and_typing_is_refused() {
        let mut d = dev();
        d.d.ctrl_alt_del().unwrap();
        assert_eq!(d.d.ctrl_alt_del(), Err(KeyError::BufferFull));
        for _ in 0..100 {
            d.write(DATA, KBD_IDENTIFY);
        }
        assert_eq!(d.drain().len(), OUTPUT_CAPACITY);
    }

    #[test]
    fn a_restored_controller_has_the_saved_ones_bytes_and_configuration() {
        let mut a = dev();
        a.write(CMD, CMD_WRITE_CTR);
        a.write(DATA, CTR_SYSTEM_FLAG | CTR_KBD_INT | 0x40);
        a.write(DATA, KBD_SET_LEDS); // an argument is now pending
        a.d.ctrl_alt_del().unwrap(); // after the ACK, keys the guest has not read
        let state: I8042State =
            serde_json::from_str(&serde_json::to_string(&a.d.state()).unwrap()).unwrap();
        let mut b = dev();
        b.d.restore(&state);
        assert_eq!(b.d.state(), state);
        assert_eq!(b.read(DATA), KBD_ACK);
        assert_eq!(b.read(DATA), 0x14, "Ctrl, the first key not read yet");
        b.write(CMD, CMD_READ_CTR);
        assert_eq!(b.read(DATA), CTR_SYSTEM_FLAG | CTR_KBD_INT | 0x40);
        b.write(DATA, 0x07); // the LEDs' argument: acknowledged
        assert_eq!(b.drain(), [KBD_ACK]);
    }

    #[test]
    fn empty_and_wide_accesses_do_not_panic() {
        let mut d = dev();
        d.d.write(CMD, 0, &[]);
        d.d.read(CMD, 0, &mut []);
        let mut wide = [0xffu8; 4];
        d.d.read(DATA, 0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
