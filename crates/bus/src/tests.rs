use super::*;

/// Records accesses and answers reads with the offset, so tests can see what the device was given.
#[derive(Default)]
struct Probe {
    writes: Vec<(u64, u64, Vec<u8>)>,
}

impl BusDevice for Probe {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        self.writes.push((base, offset, data.to_vec()));
    }
}

fn probe() -> Arc<Mutex<Probe>> {
    Arc::new(Mutex::new(Probe::default()))
}

#[test]
fn lookup_hits_first_and_last_address_only() {
    let bus = Bus::new();
    bus.insert(probe(), 0x3f8, 8).unwrap();
    assert!(bus.get(0x3f7).is_none());
    assert_eq!(bus.get(0x3f8).unwrap().0, BusRange::new(0x3f8, 8).unwrap());
    assert!(bus.get(0x3ff).is_some());
    assert!(bus.get(0x400).is_none());
}

#[test]
fn read_passes_offset_and_unclaimed_reads_all_ones() {
    let bus = Bus::new();
    bus.insert(probe(), 0x1000, 0x10).unwrap();
    let mut data = [0u8; 2];
    assert_eq!(bus.read(0x1005, &mut data), Access::Handled);
    assert_eq!(data, [5, 5]);
    assert_eq!(bus.read(0x2000, &mut data), Access::Unclaimed);
    assert_eq!(data, [0xff, 0xff]);
}

#[test]
fn write_reaches_device_with_base_and_offset() {
    let bus = Bus::new();
    let p = probe();
    bus.insert(p.clone(), 0x60, 1).unwrap();
    bus.insert(probe(), 0x64, 1).unwrap();
    assert_eq!(bus.write(0x60, &[0xab]), Access::Handled);
    assert_eq!(bus.write(0x61, &[0xab]), Access::Unclaimed);
    assert_eq!(p.lock().unwrap().writes, vec![(0x60, 0, vec![0xab])]);
}

#[test]
fn overlaps_are_rejected_on_either_side_and_inside() {
    let bus = Bus::new();
    bus.insert(probe(), 0x100, 0x10).unwrap();
    for (base, len) in [
        (0xf8, 0x9),
        (0x10f, 1),
        (0x104, 2),
        (0xf0, 0x100),
        (0x100, 0x10),
    ] {
        let err = bus.insert(probe(), base, len).unwrap_err();
        assert!(
            matches!(err, Error::Overlap { .. }),
            "{base:#x}+{len:#x}: {err}"
        );
    }
    // Adjacent ranges are fine.
    bus.insert(probe(), 0xf0, 0x10).unwrap();
    bus.insert(probe(), 0x110, 0x10).unwrap();
    assert_eq!(bus.len(), 3);
}

#[test]
fn empty_and_wrapping_ranges_are_rejected() {
    let bus = Bus::new();
    assert_eq!(
        bus.insert(probe(), 0x10, 0),
        Err(Error::InvalidRange { base: 0x10, len: 0 })
    );
    assert!(bus.insert(probe(), u64::MAX, 2).is_err());
    bus.insert(probe(), u64::MAX, 1).unwrap();
    assert!(bus.get(u64::MAX).is_some());
}

#[test]
fn remove_frees_the_range() {
    let bus = Bus::new();
    bus.insert(probe(), 0x100, 4).unwrap();
    assert!(bus.remove(0x100).is_some());
    assert!(bus.get(0x100).is_none());
    bus.insert(probe(), 0x102, 4).unwrap();
}

#[test]
fn poisoned_device_still_answers() {
    let bus = Bus::new();
    let p = probe();
    bus.insert(p.clone(), 0, 4).unwrap();
    let p2 = p.clone();
    let _ = std::thread::spawn(move || {
        let _g = p2.lock().unwrap();
        panic!("poison");
    })
    .join();
    assert_eq!(bus.write(1, &[1]), Access::Handled);
}

#[test]
fn devices_come_and_go_while_another_thread_dispatches() {
    let bus = Arc::new(Bus::new());
    let first = probe();
    bus.insert(first.clone(), 0x10, 1).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b, s) = (bus.clone(), stop.clone());
    let vcpu = std::thread::spawn(move || {
        let mut writes = 0u64;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(b.write(0x10, &[1]), Access::Handled);
            writes += 1;
        }
        writes
    });
    // Hot-plug and unplug a second device meanwhile; the first never stops answering.
    for _ in 0..1000 {
        bus.insert(probe(), 0x20, 4).unwrap();
        let mut data = [0u8; 1];
        assert_eq!(bus.read(0x22, &mut data), Access::Handled);
        assert_eq!(data, [2]);
        assert!(bus.remove(0x20).is_some());
        assert_eq!(bus.read(0x22, &mut data), Access::Unclaimed);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = vcpu.join().unwrap();
    assert_eq!(first.lock().unwrap().writes.len() as u64, writes);
}

/// A device that, when written, puts another device on the bus it sits on.
struct Plugger(Arc<Bus>);

impl BusDevice for Plugger {
    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        self.0.insert(probe(), u64::from(data[0]), 1).unwrap();
    }
}

#[test]
fn a_device_may_change_its_own_bus_from_its_handler() {
    let bus = Arc::new(Bus::new());
    bus.insert(Arc::new(Mutex::new(Plugger(bus.clone()))), 0, 1)
        .unwrap();
    assert_eq!(bus.write(0, &[0x40]), Access::Handled);
    assert!(bus.get(0x40).is_some());
}
