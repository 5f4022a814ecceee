//! A PC's port devices on a bus, driven the way a guest driver would: text written to the UART's
//! transmit register comes out on stdout, the RTC gives the date, and a write of 0xfe to the i8042's
//! command port pulses the reset line a VMM watches.
//!
//! `cargo run -p kvmkit-legacy --example uart` (no /dev/kvm needed).

use std::sync::{Arc, Mutex};

use bus::Bus;
use kvmkit_legacy::{CMOS, COM1, I8042, I8042_COMMAND, Rtc, Serial};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pio = Bus::new();
    let serial_irq = EventFd::new(EFD_NONBLOCK)?;
    let serial = Serial::new(serial_irq, Box::new(std::io::stdout()));
    pio.insert(
        Arc::new(Mutex::new(serial)),
        COM1.base.into(),
        COM1.len.into(),
    )?;
    let (reset, kbd_irq) = (EventFd::new(EFD_NONBLOCK)?, EventFd::new(EFD_NONBLOCK)?);
    let i8042 = Arc::new(Mutex::new(I8042::new(reset.try_clone()?, kbd_irq)));
    pio.insert(i8042.clone(), I8042_COMMAND.base.into(), 1)?;
    pio.insert(i8042, 0x60, 1)?;
    pio.insert(
        Arc::new(Mutex::new(Rtc::new())),
        CMOS.base.into(),
        CMOS.len.into(),
    )?;

    for b in b"hello from the UART\n" {
        pio.write(COM1.base.into(), &[*b]);
    }

    // The RTC's year, month and day (BCD), as a guest reads them: select, then read.
    let mut date = [0u8; 3];
    for (i, reg) in [0x09u8, 0x08, 0x07].into_iter().enumerate() {
        pio.write(0x70, &[reg]);
        pio.read(0x71, &mut date[i..=i]);
    }
    println!(
        "RTC date: 20{:02x}-{:02x}-{:02x}",
        date[0], date[1], date[2]
    );

    pio.write(0x64, &[0xfe]);
    println!("reset line pulsed: {}", reset.read()? == 1);
    Ok(())
}
