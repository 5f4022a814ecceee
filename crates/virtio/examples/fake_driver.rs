//! A virtio device of twenty lines behind the virtio-mmio transport, driven by the fake driver the
//! device crates test with (the `test-utils` feature): the driver negotiates, sets up the queue and
//! posts a buffer; the device's worker fills it with the bytes `0, 1, 2, ...` and the driver reads
//! them back.
//!
//! `cargo run -p kvmkit-virtio --features test-utils --example fake_driver` (no /dev/kvm needed).

use kvmkit_virtio::testing::{FakeDriver, W};
use kvmkit_virtio::{
    ActivateError, Activation, ChainHandler, DeviceModel, VIRTIO_F_VERSION_1, VirtioDevice, Worker,
    start_worker,
};
use memory::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::Bytes;

/// Fills each device-writable buffer with a counting pattern.
struct Pattern;

impl ChainHandler for Pattern {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let mut written = 0;
        for desc in chain.writable() {
            let bytes: Vec<u8> = (0..desc.len()).map(|i| i as u8).collect();
            if mem.write_slice(&bytes, desc.addr()).is_ok() {
                written += desc.len();
            }
        }
        written
    }
}

/// The device: one queue, no configuration space.
struct PatternDevice(Option<Worker>);

impl DeviceModel for PatternDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn reset(&mut self) {
        self.0 = None;
    }
}

impl VirtioDevice for PatternDevice {
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.0 = Some(start_worker("pattern", a, Pattern)?);
        Ok(())
    }
}

fn main() {
    let mut driver = FakeDriver::new(Box::new(PatternDevice(None)), 1 << 20, 16);
    driver.start(VIRTIO_F_VERSION_1);
    driver.add(0, &[(0x4_0000, 8, W)]);
    driver.kick(0);
    let used = driver.wait_used(0, 1);
    println!(
        "the device used chain {} with {} bytes",
        used[0].0, used[0].1
    );
    let bytes = driver.read(0x4_0000, 8);
    println!("the buffer holds {bytes:?}");
    assert_eq!(bytes, [0, 1, 2, 3, 4, 5, 6, 7]);
}
