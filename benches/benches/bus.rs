//! Bus dispatch cost: a PIO write to the last of 1 and of 64 devices.

use std::hint::black_box;
use std::sync::{Arc, Mutex};

use bus::{Bus, BusDevice};
use criterion::{Criterion, criterion_group, criterion_main};

struct Nop;
impl BusDevice for Nop {}

fn bus_with(devices: u64) -> Bus {
    let bus = Bus::new();
    for i in 0..devices {
        bus.insert(Arc::new(Mutex::new(Nop)), 0x1000 + i * 8, 8)
            .expect("non-overlapping ranges");
    }
    bus
}

fn dispatch(c: &mut Criterion) {
    for n in [1u64, 64] {
        let bus = bus_with(n);
        let last = 0x1000 + (n - 1) * 8 + 4;
        c.bench_function(&format!("bus write, {n} devices"), |b| {
            b.iter(|| bus.write(black_box(last), black_box(&[1u8])))
        });
    }
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
