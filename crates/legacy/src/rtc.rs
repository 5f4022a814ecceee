//! The MC146818 CMOS real-time clock, reading the host's clock.

use std::time::{SystemTime, UNIX_EPOCH};

use bus::BusDevice;

use crate::date::civil_from_unix;

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;

/// Register B: 24-hour mode.
const B_24H: u8 = 0x02;
/// Register B: binary (not BCD) values.
const B_BINARY: u8 = 0x04;
/// Register B: hold updates (SET bit).
const B_SET: u8 = 0x80;
/// Register D: valid RAM and time.
const D_VRT: u8 = 0x80;

/// A source of Unix time in seconds.
pub type Clock = Box<dyn Fn() -> i64 + Send>;

/// The RTC's index register and CMOS RAM, for snapshots (the time is the host's at any moment).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtcState {
    /// The selected register.
    pub index: u8,
    /// The 128 bytes of CMOS RAM and clock registers.
    pub cmem: Vec<u8>,
}

/// The CMOS RTC at ports 0x70 (index) and 0x71 (data). The time registers show the host's UTC time;
/// the other 114 bytes are CMOS RAM the guest may use. Guest writes to the clock are accepted and
/// ignored (the guest cannot set the host's clock), as with other VMMs.
pub struct Rtc {
    index: u8,
    cmem: [u8; 128],
    clock: Clock,
}

impl std::fmt::Debug for Rtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtc").field("index", &self.index).finish()
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtc {
    /// An RTC that reads the host's clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }))
    }

    /// An RTC that reads `clock` (for tests, or a guest clock offset).
    pub fn with_clock(clock: Clock) -> Self {
        let mut cmem = [0u8; 128];
        cmem[usize::from(REG_A)] = 0x26; // 32.768 kHz time base, 1024 Hz rate; UIP clear
        cmem[usize::from(REG_B)] = B_24H;
        cmem[usize::from(REG_D)] = D_VRT;
        Self {
            index: 0,
            cmem,
            clock,
        }
    }

    /// The index register and CMOS RAM.
    pub fn state(&self) -> RtcState {
        RtcState {
            index: self.index,
            cmem: self.cmem.to_vec(),
        }
    }

    /// Puts `state` back (a CMOS image of another size is cut or padded to 128 bytes).
    pub fn restore(&mut self, state: &RtcState) {
        self.index = state.index & 0x7f;
        let n = state.cmem.len().min(self.cmem.len());
        self.cmem[..n].copy_from_slice(&state.cmem[..n]);
    }

    fn encode(&self, value: u8) -> u8 {
        if self.cmem[usize::from(REG_B)] & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let now = || civil_from_unix((self.clock)());
        match reg {
            REG_SECONDS => self.encode(now().second),
            REG_MINUTES => self.encode(now().minute),
            REG_HOURS => self.encode(now().hour),
            REG_WEEKDAY => self.encode(now().weekday),
            REG_DAY => self.encode(now().day),
            REG_MONTH => self.encode(now().month),
            REG_YEAR => self.encode(now().year.rem_euclid(100) as u8),
            REG_CENTURY => self.encode(now().year.div_euclid(100).clamp(0, 99) as u8),
            REG_C => 0, // no interrupt flags: the RTC raises no interrupts
            _ => self.cmem[usize::from(reg)],
        }
    }

    fn write_reg(&mut self, reg: u8, value: u8) {
        match reg {
            REG_SECONDS | REG_MINUTES | REG_HOURS | REG_WEEKDAY | REG_DAY | REG_MONTH
            | REG_YEAR | REG_CENTURY | REG_C | REG_D => {}
            REG_A => self.cmem[usize::from(REG_A)] = value & 0x7f, // UIP is read-only
            REG_B => self.cmem[usize::from(REG_B)] = (value & !B_SET) | B_24H,
            _ => self.cmem[usize::from(reg)] = value,
        }
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 1
            && let Some(first) = data.first_mut()
        {
            *first = self.read_reg(self.index);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            // Bit 7 of the index port masks NMIs on a real PC; the register index is the low 7 bits.
            0 => self.index = value & 0x7f,
            1 => self.write_reg(self.index, value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(rtc: &mut Rtc, r: u8) -> u8 {
        rtc.write(0x70, 0, &[r]);
        let mut b = [0u8];
        rtc.read(0x70, 1, &mut b);
        b[0]
    }

    #[test]
    fn guest_reads_the_clock_in_bcd_and_binary() {
        // 2026-11-30T12:34:56Z, a Monday.
        let mut rtc = Rtc::with_clock(Box::new(|| 1_796_042_096));
        assert_eq!(reg(&mut rtc, REG_SECONDS), 0x56);
        assert_eq!(reg(&mut rtc, REG_MINUTES), 0x34);
        assert_eq!(reg(&mut rtc, REG_HOURS), 0x12);
        assert_eq!(reg(&mut rtc, REG_DAY), 0x30);
        assert_eq!(reg(&mut rtc, REG_MONTH), 0x11);
        assert_eq!(reg(&mut rtc, REG_YEAR), 0x26);
        assert_eq!(reg(&mut rtc, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut rtc, REG_WEEKDAY), 0x02);
        assert_eq!(reg(&mut rtc, REG_D), D_VRT);
        assert_eq!(reg(&mut rtc, REG_A) & 0x80, 0, "no update in progress");

        rtc.write(0x70, 0, &[REG_B]);
        rtc.write(0x70, 1, &[B_BINARY]);
        assert_eq!(reg(&mut rtc, REG_B) & (B_BINARY | B_24H), B_BINARY | B_24H);
        assert_eq!(reg(&mut rtc, REG_SECONDS), 56);
        assert_eq!(reg(&mut rtc, REG_YEAR), 26);
    }

    #[test]
    fn a_restored_rtc_has_the_guests_cmos_bytes_and_binary_mode() {
        let mut a = Rtc::with_clock(Box::new(|| 1_796_042_096));
        a.write(0x70, 0, &[0x40]);
        a.write(0x70, 1, &[0xab]);
        a.write(0x70, 0, &[REG_B]);
        a.write(0x70, 1, &[B_BINARY]);
        let state: RtcState =
            serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        let mut b = Rtc::with_clock(Box::new(|| 1_796_042_096));
        b.restore(&state);
        assert_eq!(b.state(), state);
        assert_eq!(reg(&mut b, 0x40), 0xab);
        assert_eq!(reg(&mut b, REG_SECONDS), 56, "binary, as the guest set it");
        b.restore(&RtcState {
            index: 0xff,
            cmem: vec![1; 300],
        });
        assert_eq!(b.state().cmem.len(), 128, "a bad image is cut to size");
    }

    #[test]
    fn cmos_ram_keeps_guest_bytes_and_clock_ignores_writes() {
        let mut rtc = Rtc::with_clock(Box::new(|| 0));
        rtc.write(0x70, 0, &[0x80 | 0x40]); // NMI mask bit set: index is still 0x40
        rtc.write(0x70, 1, &[0xab]);
        assert_eq!(reg(&mut rtc, 0x40), 0xab);
        rtc.write(0x70, 0, &[REG_YEAR]);
        rtc.write(0x70, 1, &[0x99]);
        assert_eq!(reg(&mut rtc, REG_YEAR), 0x70);
    }

    #[test]
    fn odd_accesses_do_not_panic() {
        let mut rtc = Rtc::new();
        rtc.write(0x70, 7, &[1]);
        rtc.write(0x70, 0, &[]);
        rtc.read(0x70, 1, &mut []);
        let mut wide = [0xffu8; 8];
        rtc.read(0x70, 0, &mut wide);
        assert_eq!(wide, [0; 8]);
    }
}
