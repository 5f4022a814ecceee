//! A port bus with two devices: a one-byte scratch register at 0x80 and a four-byte counter at
//! 0x100. Accesses go to the device whose range holds them, with the offset inside it; an address
//! nobody claims reads as all ones, as on a PC.
//!
//! `cargo run -p kvmkit-bus --example two_devices` (no /dev/kvm needed).

use std::sync::{Arc, Mutex};

use kvmkit_bus::{Access, Bus, BusDevice};

/// A register that keeps the last byte written.
#[derive(Default)]
struct Scratch(u8);

impl BusDevice for Scratch {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(self.0);
    }
    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(&b) = data.first() {
            self.0 = b;
        }
    }
}

/// A counter that counts its reads; each byte of its four is one byte of the count.
#[derive(Default)]
struct Counter(u32);

impl BusDevice for Counter {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        self.0 += 1;
        let bytes = self.0.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {
        self.0 = 0;
    }
}

fn main() -> Result<(), kvmkit_bus::Error> {
    let pio = Bus::new();
    pio.insert(Arc::new(Mutex::new(Scratch::default())), 0x80, 1)?;
    pio.insert(Arc::new(Mutex::new(Counter::default())), 0x100, 4)?;
    if let Err(e) = pio.insert(Arc::new(Mutex::new(Scratch::default())), 0x102, 4) {
        println!("a third device over the counter is refused: {e}");
    }

    pio.write(0x80, &[0x42]);
    let mut byte = [0u8];
    assert_eq!(pio.read(0x80, &mut byte), Access::Handled);
    println!("scratch at 0x80 reads {:#04x}", byte[0]);

    let mut word = [0u8; 4];
    for _ in 0..3 {
        pio.read(0x100, &mut word);
    }
    println!("counter at 0x100 reads {}", u32::from_le_bytes(word));
    assert_eq!(u32::from_le_bytes(word), 3);

    assert_eq!(pio.read(0x200, &mut byte), Access::Unclaimed);
    println!("nobody at 0x200: reads {:#04x}", byte[0]);
    Ok(())
}
