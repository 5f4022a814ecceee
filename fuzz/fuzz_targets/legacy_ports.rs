//! Fuzzes port I/O as a guest does it, through the bus to the legacy devices kvmkit puts on it: the
//! 16550 UART, the i8042 (both ports), the CMOS RTC (index and data), the ACPI power registers, the
//! OSPM probe and the boot-timer port, plus ports nothing claims. Any port, any width, any value, in
//! any order. A panic is a finding (the bus hands every access to the device that claims it, and
//! every device must take any offset and width).
//!
//! Input: a list of 7-byte operations: 1 byte kind (even: read, odd: write), 1 byte width (1, 2 or 4
//! by its low bits), 2 bytes port (folded onto the claimed ports half of the time), 3 bytes value.

#![no_main]

use std::sync::{Arc, Mutex};

use bus::{Bus, SharedDevice};
use libfuzzer_sys::fuzz_target;
use legacy::{
    ACPI_POWER, BOOT_TIMER, BootTimer, CMOS, COM1, I8042, I8042_COMMAND, I8042_DATA, OSPM_PROBE,
    OspmProbe, PortRange, PowerRegisters, Rtc, Serial,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).unwrap()
}

fn bus() -> Bus {
    let bus = Bus::new();
    let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(eventfd(), eventfd())));
    let devices: Vec<(SharedDevice, PortRange)> = vec![
        (
            Arc::new(Mutex::new(Serial::new(eventfd(), Box::new(std::io::sink())))),
            COM1,
        ),
        (i8042.clone(), I8042_DATA),
        (i8042, I8042_COMMAND),
        (Arc::new(Mutex::new(Rtc::new())), CMOS),
        (
            Arc::new(Mutex::new(PowerRegisters::new(eventfd(), eventfd()))),
            ACPI_POWER,
        ),
        (Arc::new(Mutex::new(OspmProbe::new())), OSPM_PROBE),
        (Arc::new(Mutex::new(BootTimer::new(Box::new(|_| {})))), BOOT_TIMER),
    ];
    for (device, range) in devices {
        bus.insert(device, u64::from(range.base), u64::from(range.len))
            .unwrap();
    }
    bus
}

const CLAIMED: [u16; 7] = [0x3f8, 0x60, 0x64, 0x70, 0x600, 0x603, 0x440];

fuzz_target!(|data: &[u8]| {
    let bus = bus();
    for op in data.chunks_exact(7) {
        let width = [1usize, 2, 4, 1][usize::from(op[1] & 3)];
        let raw = u16::from_le_bytes([op[2], op[3]]);
        let port = if raw & 0x8000 != 0 {
            CLAIMED[usize::from(raw) % CLAIMED.len()] + (raw >> 8 & 7)
        } else {
            raw
        };
        let value = [op[4], op[5], op[6], 0];
        if op[0] & 1 == 0 {
            let mut buf = [0u8; 4];
            let _ = bus.read(u64::from(port), &mut buf[..width]);
        } else {
            let _ = bus.write(u64::from(port), &value[..width]);
        }
    }
});
