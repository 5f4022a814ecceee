//! The virtio-mmio transport driven the way a driver (or a hostile guest) drives it.

use std::sync::{Arc, Mutex};

use bus::BusDevice;
use memory::GuestMemoryMmap;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::device::{ActivateError, Activation, DeviceModel, VirtioDevice};
use crate::mmio::MmioTransport;
use crate::{VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX};

const ACK: u32 = 1;
const DRIVER: u32 = 2;
const DRIVER_OK: u32 = 4;
const FEATURES_OK: u32 = 8;
const NEEDS_RESET: u32 = 64;
const FEATURE_X: u64 = 1 << 3;

/// (index, size, event index enabled) of each queue a device got.
type QueueSummary = Vec<(u16, u16, bool)>;

#[derive(Default)]
struct Record {
    activations: Vec<(u64, QueueSummary)>,
    resets: usize,
    config: [u8; 8],
}

struct Dummy(Arc<Mutex<Record>>);

impl DeviceModel for Dummy {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 8]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | FEATURE_X
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.0.lock().unwrap().config;
        for (i, b) in data.iter_mut().enumerate() {
            *b = cfg.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let mut r = self.0.lock().unwrap();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = r.config.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
    }
    fn reset(&mut self) {
        self.0.lock().unwrap().resets += 1;
    }
}

impl VirtioDevice for Dummy {
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        let queues = a
            .queues
            .iter()
            .map(|q| (q.index, q.queue.size(), q.queue.event_idx_enabled()))
            .collect();
        self.0
            .lock()
            .unwrap()
            .activations
            .push((a.features, queues));
        Ok(())
    }
}

struct Fixture {
    t: MmioTransport,
    record: Arc<Mutex<Record>>,
    irq: EventFd,
}

fn fixture() -> Fixture {
    let record = Arc::new(Mutex::new(Record::default()));
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let t = MmioTransport::new(
        Box::new(Dummy(record.clone())),
        mem,
        irq.try_clone().unwrap(),
    )
    .unwrap();
    Fixture { t, record, irq }
}

impl Fixture {
    fn r(&mut self, offset: u64) -> u32 {
        let mut d = [0u8; 4];
        self.t.read(0, offset, &mut d);
        u32::from_le_bytes(d)
    }
    fn w(&mut self, offset: u64, v: u32) {
        self.t.write(0, offset, &v.to_le_bytes());
    }
    /// ACKNOWLEDGE, DRIVER, the features, FEATURES_OK: returns the status read back.
    fn negotiate(&mut self, features: u64) -> u32 {
        self.w(0x70, ACK);
        self.w(0x70, ACK | DRIVER);
        self.w(0x24, 0);
        self.w(0x20, features as u32);
        self.w(0x24, 1);
        self.w(0x20, (features >> 32) as u32);
        self.w(0x70, ACK | DRIVER | FEATURES_OK);
        self.r(0x70)
    }
    fn setup_queue(&mut self, index: u32, size: u32, desc: u64, avail: u64, used: u64) {
        self.w(0x30, index);
        self.w(0x38, size);
        self.w(0x80, desc as u32);
        self.w(0x84, (desc >> 32) as u32);
        self.w(0x90, avail as u32);
        self.w(0x94, (avail >> 32) as u32);
        self.w(0xa0, used as u32);
        self.w(0xa4, (used >> 32) as u32);
        self.w(0x44, 1);
    }
}

#[test]
fn identity_registers() {
    let mut f = fixture();
    assert_eq!(f.r(0x00), 0x7472_6976);
    assert_eq!(f.r(0x04), 2);
    assert_eq!(f.r(0x08), 42);
    assert_eq!(f.r(0x0c), u32::from_le_bytes(*b"KVMK"));
    assert_eq!(f.r(0xb0), u32::MAX, "no shared memory regions");
    f.w(0x30, 0);
    assert_eq!(f.r(0x34), 16);
    f.w(0x30, 1);
    assert_eq!(f.r(0x34), 8);
    f.w(0x30, 2);
    assert_eq!(f.r(0x34), 0, "no queue 2");
}

#[test]
fn features_are_offered_in_two_words_and_negotiated() {
    let mut f = fixture();
    f.w(0x14, 0);
    assert_eq!(f.r(0x10), (VIRTIO_RING_F_EVENT_IDX | FEATURE_X) as u32);
    f.w(0x14, 1);
    assert_eq!(f.r(0x10), 1, "VERSION_1 is bit 32");
    f.w(0x14, 7);
    assert_eq!(f.r(0x10), 0);
    let status = f.negotiate(VIRTIO_F_VERSION_1 | FEATURE_X);
    assert_eq!(status, ACK | DRIVER | FEATURES_OK);
}

#[test]
fn features_ok_is_refused_for_unoffered_bits_or_a_legacy_driver() {
    let mut f = fixture();
    assert_eq!(f.negotiate(VIRTIO_F_VERSION_1 | 1 << 40), ACK | DRIVER);
    let mut f = fixture();
    assert_eq!(f.negotiate(FEATURE_X), ACK | DRIVER, "no VERSION_1");
}

#[test]
fn driver_ok_activates_the_device_with_its_ready_queues() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
    f.setup_queue(0, 8, 0x1000, 0x2000, 0x3000);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(f.t.is_active());
    assert_eq!(f.r(0x70), ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    let rec = f.record.lock().unwrap();
    assert_eq!(
        rec.activations,
        vec![(
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
            vec![(0, 8, true)]
        )]
    );
}

#[test]
fn rings_outside_guest_memory_make_the_device_need_a_reset() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    // The used ring runs past the end of the 1 MiB of guest memory.
    f.setup_queue(0, 16, 0x1000, 0x2000, (1 << 20) - 8);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(!f.t.is_active());
    assert_ne!(f.r(0x70) & NEEDS_RESET, 0);
    assert_eq!(f.r(0x60) & 2, 2, "configuration-change interrupt");
    assert!(f.irq.read().is_ok());
    assert!(f.record.lock().unwrap().activations.is_empty());
    // The driver resets the device and can start over.
    f.w(0x70, 0);
    assert_eq!(f.r(0x70), 0);
    assert_eq!(f.r(0x60), 0);
}

#[test]
fn misaligned_rings_and_bad_sizes_are_not_taken() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    f.w(0x30, 0);
    f.w(0x38, 12); // not a power of two
    f.w(0x38, 32); // above the maximum of 16
    f.w(0x80, 0x1001); // descriptor table must be 16-byte aligned
    f.w(0x90, 0x2001); // available ring: 2-byte aligned
    f.w(0xa0, 0x3002); // used ring: 4-byte aligned
    // Nothing was taken: the queue keeps its maximum size (and its reset ring addresses, 0, which
    // are in guest memory and so a valid if odd choice).
    f.w(0x44, 1);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(f.t.is_active());
    assert_eq!(
        f.record.lock().unwrap().activations[0].1,
        vec![(0, 16, false)]
    );
}

#[test]
fn reset_stops_the_device_and_clears_everything() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    f.setup_queue(0, 8, 0x1000, 0x2000, 0x3000);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    f.t.interrupt().signal_used_queue();
    f.w(0x70, 0);
    assert!(!f.t.is_active());
    assert_eq!(f.record.lock().unwrap().resets, 1);
    assert_eq!((f.r(0x70), f.r(0x60)), (0, 0));
    f.w(0x30, 0);
    assert_eq!(f.r(0x44), 0, "queue no longer ready");
    // And it comes back up.
    f.negotiate(VIRTIO_F_VERSION_1);
    f.setup_queue(0, 4, 0x1000, 0x2000, 0x3000);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert_eq!(f.record.lock().unwrap().activations.len(), 2);
}

#[test]
fn status_bits_cannot_be_cleared_without_a_reset() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    f.w(0x70, ACK);
    assert_eq!(f.r(0x70), ACK | DRIVER | FEATURES_OK);
    f.w(0x70, DRIVER_OK); // skipping the earlier steps is not allowed either
    assert_eq!(f.r(0x70), ACK | DRIVER | FEATURES_OK);
    let mut f = fixture();
    f.w(0x70, ACK | DRIVER | DRIVER_OK);
    assert_eq!(f.r(0x70) & DRIVER_OK, 0, "DRIVER_OK before FEATURES_OK");
    assert!(!f.t.is_active());
}

#[test]
fn queues_cannot_change_after_driver_ok() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    f.setup_queue(0, 8, 0x1000, 0x2000, 0x3000);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    f.w(0x30, 0);
    f.w(0x38, 2);
    f.w(0x44, 0);
    f.w(0x30, 1);
    f.w(0x44, 1);
    assert_eq!(f.r(0x44), 0, "queue 1 was not made ready after DRIVER_OK");
    f.w(0x30, 0);
    assert_eq!(f.r(0x44), 1);
}

#[test]
fn hostile_accesses_are_ignored() {
    let mut f = fixture();
    // Wrong widths and misaligned registers.
    let mut b = [0xaau8; 2];
    f.t.read(0, 0x00, &mut b);
    assert_eq!(b, [0, 0]);
    f.t.write(0, 0x70, &[1, 0]);
    f.t.write(0, 0x71, &[1, 0, 0, 0]);
    f.t.write(0, 0x70, &[]);
    assert_eq!(f.r(0x70), 0);
    // A queue index out of range, before and after negotiation.
    f.w(0x30, u32::MAX);
    f.w(0x38, 8);
    f.w(0x44, 1);
    assert_eq!(f.r(0x44), 0);
    f.negotiate(VIRTIO_F_VERSION_1);
    f.w(0x30, 9);
    f.w(0x44, 1);
    f.w(0x50, 9); // notify a queue that does not exist
    f.w(0x50, u32::MAX);
    // Writes to read-only registers and to nothing at all.
    f.w(0x00, 0);
    f.w(0x08, 7);
    f.w(0xffc, 1);
    assert_eq!(f.r(0x08), 42);
    // Driver features outside negotiation.
    f.w(0x20, 0xffff_ffff);
    f.w(0x70, ACK | DRIVER | FEATURES_OK | DRIVER_OK);
    assert!(f.t.is_active(), "no queue ready is still a valid start");
    assert_eq!(
        f.record.lock().unwrap().activations[0].0,
        VIRTIO_F_VERSION_1
    );
}

#[test]
fn a_notify_that_reaches_the_transport_signals_the_queue() {
    let mut f = fixture();
    f.w(0x50, 1);
    assert_eq!(f.t.queue_events()[1].read().unwrap(), 1);
    assert!(f.t.queue_events()[0].read().is_err());
}

#[test]
fn interrupt_status_and_ack() {
    let mut f = fixture();
    f.t.interrupt().signal_used_queue();
    assert_eq!(f.r(0x60), 1);
    f.w(0x64, 1);
    assert_eq!(f.r(0x60), 0);
}

#[test]
fn config_space_passes_through_and_writes_bump_the_generation() {
    let mut f = fixture();
    f.record.lock().unwrap().config = [1, 2, 3, 4, 5, 6, 7, 8];
    let mut b = [0u8; 2];
    f.t.read(0, 0x102, &mut b);
    assert_eq!(b, [3, 4]);
    let mut b = [0xffu8; 4];
    f.t.read(0, 0x106, &mut b);
    assert_eq!(b, [7, 8, 0, 0], "past the end reads zero");
    let generation = f.r(0xfc);
    f.t.write(0, 0x100, &[9]);
    assert_eq!(f.record.lock().unwrap().config[0], 9);
    assert_ne!(f.r(0xfc), generation);
}

#[test]
fn a_state_restores_only_into_the_same_kind_of_device() {
    let mut f = fixture();
    f.negotiate(VIRTIO_F_VERSION_1);
    f.setup_queue(0, 16, 0x1000, 0x2000, 0x3000);
    let state = f.t.state();
    assert_eq!(state.queues[0].size, 16);
    assert_eq!(state.queues[0].desc_table, 0x1000);
    let mut g = fixture();
    g.t.restore(&state).unwrap();
    assert_eq!(g.t.state(), state);
    assert_eq!(g.r(0x70), ACK | DRIVER | FEATURES_OK);
    let mut other = state.clone();
    other.device_type = 7;
    assert_eq!(
        g.t.restore(&other).unwrap_err(),
        crate::mmio::RestoreError::DeviceType {
            expected: 42,
            found: 7
        }
    );
    let mut fewer = state.clone();
    fewer.queues.pop();
    assert!(g.t.restore(&fewer).is_err());
    let mut odd = state;
    odd.queues[0].size = 3; // not a power of two
    assert!(g.t.restore(&odd).is_err());
}
