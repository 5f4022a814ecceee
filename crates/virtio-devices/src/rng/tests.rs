//! The entropy device behind the virtio-mmio transport, driven by a fake driver: what a guest's
//! buffers hold after a request, the per-request cap, and drivers that hand it bad buffers.

use virtio::testing::{FakeDriver, R, W};

use super::{Rng, RngConfig};

const FEATURES: u64 = virtio::VIRTIO_F_VERSION_1 | virtio::VIRTIO_RING_F_EVENT_IDX;
const FILL: u8 = 0xaa;

fn driver(max_request: u32) -> FakeDriver {
    let rng = Rng::new("rng-test", &RngConfig { max_request });
    let mut d = FakeDriver::new(Box::new(rng), 4 << 20, 64);
    d.start(FEATURES);
    d
}

/// `len` bytes of [`FILL`] at `addr`, so the test sees which bytes the device wrote.
fn prefill(d: &FakeDriver, addr: u64, len: usize) {
    d.write(addr, &vec![FILL; len]);
}

#[test]
fn the_device_is_an_entropy_source_with_no_configuration() {
    let mut d = driver(4096);
    assert_eq!(d.r(0x08), 4, "device type: entropy source");
    assert_eq!(d.config(0, 8), vec![0; 8]);
}

#[test]
fn a_request_is_filled_with_random_bytes_and_two_differ() {
    let mut d = driver(4096);
    prefill(&d, 0x40000, 128);
    let first = d.add(0, &[(0x40000, 64, W)]);
    let second = d.add(0, &[(0x40040, 32, W), (0x40060, 32, W)]);
    d.kick(0);
    assert_eq!(
        d.wait_used(0, 2),
        vec![(u32::from(first), 64), (u32::from(second), 64)]
    );
    let (a, b) = (d.read(0x40000, 64), d.read(0x40040, 64));
    // 64 random bytes equal to a fixed pattern, or to each other, is a 2^-512 event.
    assert_ne!(a, vec![FILL; 64]);
    assert_ne!(b, vec![FILL; 64]);
    assert_ne!(a, b);
    assert_ne!(d.r(0x60) & 1, 0, "used-buffer interrupt");
}

#[test]
fn a_request_gets_at_most_the_cap_however_large_its_buffers() {
    let mut d = driver(1000);
    prefill(&d, 0x40000, 2048);
    let head = d.add(0, &[(0x40000, 600, W), (0x40258, 1448, W)]);
    d.kick(0);
    assert_eq!(d.wait_used(0, 1), vec![(u32::from(head), 1000)]);
    // The bytes past the cap are untouched.
    assert_eq!(d.read(0x40000 + 1000, 1048), vec![FILL; 1048]);
    assert_ne!(d.read(0x40000 + 400, 600), vec![FILL; 600]);
}

#[test]
fn bad_buffers_are_answered_with_what_fits_and_the_device_goes_on() {
    let mut d = driver(4096);
    prefill(&d, 0x40000, 64);
    // A device-readable buffer; one outside guest memory (4 MiB); one whose end wraps.
    d.add(0, &[(0x40000, 64, R)]);
    d.add(0, &[(0x3f_fff0, 64, W)]);
    d.add(0, &[(u64::MAX - 8, 64, W)]);
    // A good one after them.
    d.add(0, &[(0x40000, 16, W)]);
    d.kick(0);
    let used = d.wait_used(0, 4);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, 0, 16]
    );
    assert_ne!(d.read(0x40000, 16), vec![FILL; 16]);
    assert_eq!(d.status() & 64, 0, "bad buffers need no reset");
}

#[test]
fn a_lying_available_index_needs_a_reset_and_a_reset_recovers() {
    let mut d = driver(4096);
    d.set_avail_idx(0, 500);
    d.kick(0);
    d.wait_for("DEVICE_NEEDS_RESET", |d| d.status() & 64 != 0);
    d.start(FEATURES);
    d.add(0, &[(0x40000, 8, W)]);
    d.kick(0);
    assert_eq!(d.wait_used(0, 1)[0].1, 8);
}
