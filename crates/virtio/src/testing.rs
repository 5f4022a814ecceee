//! A fake virtio driver, for testing device models without a guest (feature `test-utils`).
//!
//! [`FakeDriver`] puts a device behind a real [`MmioTransport`] over a small guest memory and drives
//! it through its registers the way Linux's virtio-mmio driver does: status handshake, feature
//! negotiation, split queues, descriptor chains, kicks, and reading the used rings. It can also lie
//! as a hostile guest does (loops, bad heads, a runaway available index), through the raw
//! [`FakeDriver::write_desc`], [`FakeDriver::push_avail`] and [`FakeDriver::set_avail_idx`].
//!
//! Queue `q`'s rings sit at `0x10000 + 0x3000 * q` (descriptor table, then the available and used
//! rings 4 KiB apart), so buffers below 0x10000 or from 0x40000 up never collide with them for up to
//! 16 queues of up to 256 entries.

use std::time::{Duration, Instant};

use bus::BusDevice;
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::{DeviceMemory, MmioTransport, VirtioDevice};

/// Descriptor flag: the device reads this buffer.
pub const R: u16 = 0;
/// Descriptor flag: the device writes this buffer.
pub const W: u16 = VRING_DESC_F_WRITE as u16;
/// Descriptor flag: the chain goes on.
pub const NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// How long [`FakeDriver::wait_used`] waits for a device before failing the test.
pub const TIMEOUT: Duration = Duration::from_secs(10);

const RINGS: u64 = 0x10000;
const RING_STRIDE: u64 = 0x3000;

/// Where queue `q`'s descriptor table, available ring and used ring are.
fn rings(q: u16) -> (u64, u64, u64) {
    let desc = RINGS + RING_STRIDE * u64::from(q);
    (desc, desc + 0x1000, desc + 0x2000)
}

#[derive(Debug, Default, Clone, Copy)]
struct DriverQueue {
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

/// A driver of one device: the transport, its guest memory, its interrupt, and the driver's view of
/// each queue. `M` is the guest memory type (kvmkit's by default; see
/// [`FakeDriver::with_memory`]).
pub struct FakeDriver<M: DeviceMemory = GuestMemoryMmap> {
    /// The device behind its register window.
    pub transport: MmioTransport<M>,
    /// Guest memory (rings and buffers).
    pub mem: M,
    /// The device's interrupt eventfd (what KVM's irqfd would be).
    pub irq: EventFd,
    queues: Vec<DriverQueue>,
}

impl<M: DeviceMemory> std::fmt::Debug for FakeDriver<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDriver")
            .field("transport", &self.transport)
            .finish()
    }
}

/// Panics with `what`: test-support code has no caller to hand an error to.
fn must<T, E: std::fmt::Debug>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("fake driver: {what}: {e:?}"),
    }
}

impl FakeDriver {
    /// `device` behind a transport over `mem_size` bytes of guest memory at 0, its queues `size`
    /// entries each (capped at each queue's maximum). Call [`FakeDriver::start`] next.
    pub fn new(device: Box<dyn VirtioDevice>, mem_size: usize, size: u16) -> Self {
        let mem = must(
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), mem_size)]),
            "guest memory",
        );
        Self::with_memory(device, mem, size)
    }
}

impl<M: DeviceMemory> FakeDriver<M> {
    /// `device` behind a transport over `mem` (another guest memory type than kvmkit's, say one
    /// without a dirty-page bitmap), which must hold the rings at 0x10000 and the test's buffers.
    pub fn with_memory(device: Box<dyn VirtioDevice<M>>, mem: M, size: u16) -> Self {
        let irq = must(EventFd::new(EFD_NONBLOCK), "eventfd");
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| DriverQueue {
                size: size.min(max),
                ..Default::default()
            })
            .collect();
        let transport = must(
            MmioTransport::new(device, mem.clone(), must(irq.try_clone(), "eventfd")),
            "transport",
        );
        Self {
            transport,
            mem,
            irq,
            queues,
        }
    }

    /// Reads the 32-bit register at `offset`.
    pub fn r(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.transport.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Writes the 32-bit register at `offset`.
    pub fn w(&mut self, offset: u64, value: u32) {
        self.transport.write(0, offset, &value.to_le_bytes());
    }

    /// Reads `len` bytes of the device configuration space at `offset`.
    pub fn config(&mut self, offset: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.transport.read(0, 0x100 + offset, &mut b);
        b
    }

    /// The features the device offers.
    pub fn device_features(&mut self) -> u64 {
        self.w(0x14, 0);
        let low = u64::from(self.r(0x10));
        self.w(0x14, 1);
        low | u64::from(self.r(0x10)) << 32
    }

    /// Resets the device and brings it up again with `features`: every queue set up with fresh,
    /// empty rings, then DRIVER_OK. Panics if the device refuses the features or does not start.
    pub fn start(&mut self, features: u64) {
        self.w(0x70, 0);
        self.w(0x70, 1);
        self.w(0x70, 3);
        self.w(0x24, 0);
        self.w(0x20, features as u32);
        self.w(0x24, 1);
        self.w(0x20, (features >> 32) as u32);
        self.w(0x70, 11);
        assert_eq!(
            self.r(0x70),
            11,
            "the device refused features {features:#x}"
        );
        for q in 0..self.queues.len() as u16 {
            let (desc, avail, used) = rings(q);
            for at in [avail, used] {
                must(self.mem.write_slice(&[0u8; 4], GuestAddress(at)), "rings");
            }
            self.queues[q as usize] = DriverQueue {
                size: self.queues[q as usize].size,
                ..Default::default()
            };
            self.w(0x30, u32::from(q));
            self.w(0x38, u32::from(self.queues[q as usize].size));
            for (reg, addr) in [(0x80, desc), (0x90, avail), (0xa0, used)] {
                self.w(reg, addr as u32);
                self.w(reg + 4, 0);
            }
            self.w(0x44, 1);
        }
        self.w(0x70, 15);
        assert!(self.transport.is_active(), "the device did not start");
    }

    /// The device status register (64: DEVICE_NEEDS_RESET).
    pub fn status(&mut self) -> u32 {
        self.r(0x70)
    }

    /// Writes descriptor `idx` of queue `q`.
    pub fn write_desc(&self, q: u16, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = rings(q).0 + 16 * u64::from(idx);
        must(self.mem.write_obj(addr, GuestAddress(at)), "descriptor");
        must(self.mem.write_obj(len, GuestAddress(at + 8)), "descriptor");
        must(
            self.mem.write_obj(flags, GuestAddress(at + 12)),
            "descriptor",
        );
        must(
            self.mem.write_obj(next, GuestAddress(at + 14)),
            "descriptor",
        );
    }

    /// Adds a chain of `(addr, len, flags)` to queue `q` and makes it available; returns its head.
    pub fn add(&mut self, q: u16, descs: &[(u64, u32, u16)]) -> u16 {
        let queue = self.queues[q as usize];
        let head = queue.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % queue.size;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | NEXT };
            self.write_desc(q, idx, addr, len, flags, (idx + 1) % queue.size);
        }
        self.queues[q as usize].next_desc = (head + descs.len() as u16) % queue.size;
        self.push_avail(q, head);
        head
    }

    /// Skips descriptors so that the next [`FakeDriver::add`] on queue `q` starts at `next`.
    pub fn set_next_desc(&mut self, q: u16, next: u16) {
        self.queues[q as usize].next_desc = next;
    }

    /// Puts `head` in queue `q`'s available ring and publishes it.
    pub fn push_avail(&mut self, q: u16, head: u16) {
        let queue = &mut self.queues[q as usize];
        let (_, avail, _) = rings(q);
        let slot = avail + 4 + 2 * u64::from(queue.avail_idx % queue.size);
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        let idx = queue.avail_idx;
        must(self.mem.write_obj(head, GuestAddress(slot)), "avail ring");
        must(
            self.mem.write_obj(idx, GuestAddress(avail + 2)),
            "avail idx",
        );
    }

    /// Writes queue `q`'s available index as a driver that lies would.
    pub fn set_avail_idx(&self, q: u16, idx: u16) {
        must(
            self.mem.write_obj(idx, GuestAddress(rings(q).1 + 2)),
            "avail idx",
        );
    }

    /// Notifies queue `q` (the QueueNotify write KVM's ioeventfd would absorb).
    pub fn kick(&mut self, q: u16) {
        self.w(0x50, u32::from(q));
    }

    /// How many chains the device has used in queue `q` so far.
    pub fn used_idx(&self, q: u16) -> u16 {
        must(self.mem.read_obj(GuestAddress(rings(q).2 + 2)), "used idx")
    }

    /// Waits until the device has used `n` more chains of queue `q`; returns their (head, len).
    pub fn wait_used(&mut self, q: u16, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + TIMEOUT;
        let seen = self.queues[q as usize].used_seen;
        while self.used_idx(q).wrapping_sub(seen) < n {
            assert!(
                Instant::now() < deadline,
                "queue {q}: the device used {} of {n} chains",
                self.used_idx(q).wrapping_sub(seen)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let (size, used) = (self.queues[q as usize].size, rings(q).2);
        let entries = (0..n)
            .map(|i| {
                let slot = used + 4 + 8 * u64::from(seen.wrapping_add(i) % size);
                let id: u32 = must(self.mem.read_obj(GuestAddress(slot)), "used ring");
                let len: u32 = must(self.mem.read_obj(GuestAddress(slot + 4)), "used ring");
                (id, len)
            })
            .collect();
        self.queues[q as usize].used_seen = seen.wrapping_add(n);
        entries
    }

    /// Waits until `cond` holds of the driver (the device works on its own thread).
    pub fn wait_for(&mut self, what: &str, mut cond: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + TIMEOUT;
        while !cond(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Reads `len` bytes of guest memory at `addr`.
    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        must(
            self.mem.read_slice(&mut b, GuestAddress(addr)),
            "guest read",
        );
        b
    }

    /// Writes `bytes` to guest memory at `addr`.
    pub fn write(&self, addr: u64, bytes: &[u8]) {
        must(
            self.mem.write_slice(bytes, GuestAddress(addr)),
            "guest write",
        );
    }
}
