//! The block device behind the virtio-mmio transport, driven through its registers and a split queue
//! in guest memory as a driver drives it, including drivers that lie.

use std::time::{Duration, Instant};

use bus::BusDevice;
use virtio::MmioTransport;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::disk::tests_support::{Dir, image};
use super::{Block, BlockConfig};

const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x20000;
const USED: u64 = 0x30000;
const SIZE: u16 = 64;
const R: u16 = 0;
const W: u16 = VRING_DESC_F_WRITE as u16;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;

/// A driver: the transport, guest memory with one split queue, and the device's interrupt.
struct Driver {
    t: MmioTransport,
    mem: GuestMemoryMmap,
    irq: EventFd,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
    _dir: Dir,
    path: std::path::PathBuf,
}

fn driver(bytes: usize, read_only: bool, features: u64) -> Driver {
    let (dir, path) = image(bytes);
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let block = Block::new(
        "blk-test",
        &BlockConfig {
            path: path.clone(),
            read_only,
            serial: Some("serial-123".into()),
        },
    )
    .unwrap();
    let t = MmioTransport::new(Box::new(block), mem.clone(), irq.try_clone().unwrap()).unwrap();
    let mut d = Driver {
        t,
        mem,
        irq,
        next_desc: 0,
        avail_idx: 0,
        used_seen: 0,
        _dir: dir,
        path,
    };
    d.start(features);
    d
}

impl Driver {
    fn r(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.t.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn w(&mut self, off: u64, v: u32) {
        self.t.write(0, off, &v.to_le_bytes());
    }
    fn start(&mut self, features: u64) {
        self.w(0x70, 1);
        self.w(0x70, 3);
        self.w(0x24, 0);
        self.w(0x20, features as u32);
        self.w(0x24, 1);
        self.w(0x20, (features >> 32) as u32);
        self.w(0x70, 11);
        assert_eq!(self.r(0x70), 11, "features accepted");
        self.w(0x30, 0);
        self.w(0x38, u32::from(SIZE));
        for (reg, addr) in [(0x80, DESC), (0x90, AVAIL), (0xa0, USED)] {
            self.w(reg, addr as u32);
            self.w(reg + 4, 0);
        }
        self.w(0x44, 1);
        self.w(0x70, 15);
        assert!(self.t.is_active());
    }
    /// Adds a chain of `(addr, len, flags)` and makes it available; returns its head.
    fn add(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let idx = (self.next_desc + i as u16) % SIZE;
            let next = (idx + 1) % SIZE;
            let flags = if i + 1 < descs.len() {
                flags | NEXT
            } else {
                flags
            };
            self.write_desc(idx, addr, len, flags, next);
        }
        self.next_desc = (self.next_desc + descs.len() as u16) % SIZE;
        self.push_avail(head);
        head
    }
    fn write_desc(&self, idx: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC + 16 * u64::from(idx));
        self.mem.write_obj(addr, at).unwrap();
        self.mem.write_obj(len, GuestAddress(at.0 + 8)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at.0 + 12)).unwrap();
        self.mem.write_obj(next, GuestAddress(at.0 + 14)).unwrap();
    }
    fn push_avail(&mut self, head: u16) {
        let slot = GuestAddress(AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE));
        self.mem.write_obj(head, slot).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }
    fn kick(&mut self) {
        self.w(0x50, 0);
    }
    /// Waits until the device has used `n` more chains; returns their (head, len).
    fn wait_used(&mut self, n: u16) -> Vec<(u32, u32)> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
            if idx.wrapping_sub(self.used_seen) >= n {
                break;
            }
            assert!(Instant::now() < deadline, "the device never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        let used = (0..n)
            .map(|i| {
                let slot = USED + 4 + 8 * u64::from(self.used_seen.wrapping_add(i) % SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(slot)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(slot + 4)).unwrap();
                (id, len)
            })
            .collect();
        self.used_seen = self.used_seen.wrapping_add(n);
        used
    }
    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }
    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }
    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

const FEATURES: u64 = virtio::VIRTIO_F_VERSION_1;

#[test]
fn config_space_has_capacity_and_read_only_is_offered() {
    let mut d = driver(1 << 20, true, FEATURES);
    let mut cap = [0u8; 8];
    d.t.read(0, 0x100, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 2048);
    d.w(0x14, 0);
    assert_ne!(d.r(0x10) & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    assert_eq!(d.r(0x08), 2, "block device");
}

#[test]
fn a_write_reaches_the_image_and_reads_back() {
    let mut d = driver(64 << 10, false, FEATURES);
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    d.mem.write_slice(&data, GuestAddress(0x40000)).unwrap();
    d.header(0x1000, VIRTIO_BLK_T_OUT, 2);
    let head = d.add(&[(0x1000, 16, R), (0x40000, 1024, R), (0x2000, 1, W)]);
    d.kick();
    assert_eq!(d.wait_used(1), vec![(u32::from(head), 1)]);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&d.image()[1024..2048], &data[..]);
    assert_ne!(d.r(0x60) & 1, 0, "used-buffer interrupt");
    assert!(d.irq.read().is_ok());

    d.header(0x1000, VIRTIO_BLK_T_IN, 2);
    d.add(&[
        (0x1000, 16, R),
        (0x50000, 512, W),
        (0x50200, 512, W),
        (0x2000, 1, W),
    ]);
    d.kick();
    assert_eq!(d.wait_used(1)[0].1, 1025);
    let mut back = vec![0u8; 1024];
    d.mem.read_slice(&mut back, GuestAddress(0x50000)).unwrap();
    assert_eq!(back, data);
}

#[test]
fn get_id_returns_the_serial() {
    let mut d = driver(4096, true, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_GET_ID, 0);
    d.add(&[(0x1000, 16, R), (0x3000, 20, W), (0x2000, 1, W)]);
    d.kick();
    d.wait_used(1);
    let mut id = [0u8; 20];
    d.mem.read_slice(&mut id, GuestAddress(0x3000)).unwrap();
    assert_eq!(&id[..10], b"serial-123");
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_read_only_disk_answers_writes_with_ioerr() {
    let mut d = driver(4096, true, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_OUT, 0);
    d.add(&[(0x1000, 16, R), (0x40000, 512, R), (0x2000, 1, W)]);
    d.kick();
    d.wait_used(1);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_IOERR as u8);
    assert!(d.image().iter().all(|&b| b == 0x5a));
}

#[test]
fn hostile_chains_get_errors_and_the_device_keeps_working() {
    let mut d = driver(64 << 10, false, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_IN, 0);
    // 1. A chain that loops: descriptors 0 -> 1 -> 0 ...
    d.write_desc(0, 0x1000, 16, NEXT, 1);
    d.write_desc(1, 0x40000, 512, W | NEXT, 0);
    d.push_avail(0);
    // 2. A head index outside the descriptor table.
    d.push_avail(SIZE + 3);
    d.next_desc = 2;
    // 3. A data buffer outside guest memory (4 MiB) and one whose address + length overflows.
    d.add(&[(0x1000, 16, R), (0x3f_ff00, 0x1000, W), (0x2000, 1, W)]);
    d.add(&[(0x1000, 16, R), (u64::MAX - 100, 0x1000, W), (0x2001, 1, W)]);
    // 4. The header in a write-only descriptor; a read past the end of the disk.
    d.add(&[(0x1000, 16, W), (0x40000, 512, W), (0x2002, 1, W)]);
    d.header(0x1100, VIRTIO_BLK_T_IN, 128);
    d.add(&[(0x1100, 16, R), (0x40000, 512, W), (0x2003, 1, W)]);
    // 5. Finally a good request.
    d.header(0x1200, VIRTIO_BLK_T_IN, 0);
    d.add(&[(0x1200, 16, R), (0x40000, 512, W), (0x2004, 1, W)]);
    d.kick();
    // The head outside the table cannot be returned (the used ring has no id for it): 6 answers.
    let used = d.wait_used(6);
    assert_eq!(used[0], (0, 0), "looping chain returned unanswered");
    for at in 0x2000..0x2004 {
        assert_eq!(d.status(at), VIRTIO_BLK_S_IOERR as u8, "status at {at:#x}");
    }
    assert_eq!(d.status(0x2004), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used[5].1, 513);
    assert_eq!(d.r(0x70) & 64, 0, "no reset needed for bad requests");
}

#[test]
fn a_lying_available_index_makes_the_device_need_a_reset() {
    let mut d = driver(4096, false, FEATURES);
    // The driver claims 1000 new chains in a queue of 64.
    d.mem.write_obj(1000u16, GuestAddress(AVAIL + 2)).unwrap();
    d.kick();
    let deadline = Instant::now() + Duration::from_secs(10);
    while d.r(0x70) & 64 == 0 {
        assert!(Instant::now() < deadline, "DEVICE_NEEDS_RESET never set");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_ne!(d.r(0x60) & 2, 0, "configuration interrupt");
    // A reset brings the device back.
    d.w(0x70, 0);
    d.avail_idx = 0;
    d.used_seen = 0;
    d.next_desc = 0;
    d.mem.write_obj(0u16, GuestAddress(AVAIL + 2)).unwrap();
    d.mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
    d.start(FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_IN, 0);
    d.add(&[(0x1000, 16, R), (0x40000, 512, W), (0x2000, 1, W)]);
    d.kick();
    d.wait_used(1);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn with_event_idx_requests_are_still_all_answered() {
    let mut d = driver(64 << 10, false, FEATURES | virtio::VIRTIO_RING_F_EVENT_IDX);
    for i in 0..5u64 {
        d.header(0x1000 + 0x100 * i, VIRTIO_BLK_T_IN, i);
        d.add(&[
            (0x1000 + 0x100 * i, 16, R),
            (0x40000 + 0x200 * i, 512, W),
            (0x2000 + i, 1, W),
        ]);
    }
    d.kick();
    assert_eq!(d.wait_used(5).len(), 5);
    assert!((0..5).all(|i| d.status(0x2000 + i) == VIRTIO_BLK_S_OK as u8));
}
