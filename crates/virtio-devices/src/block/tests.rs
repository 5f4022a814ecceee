//! The block device behind the virtio-mmio transport, driven through its registers and a split queue
//! in guest memory as a driver drives it, including drivers that lie.

use virtio::testing::{FakeDriver, NEXT, R, W};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use vm_memory::{Bytes, GuestAddress};

use super::disk::tests_support::{Dir, image};
use super::{Block, BlockConfig};

/// A driver of a block device on a fresh image of `bytes` bytes, its queue of [`SIZE`] entries.
struct Driver {
    d: FakeDriver,
    _dir: Dir,
    path: std::path::PathBuf,
    disk: std::sync::Arc<super::DiskImage>,
}

const SIZE: u16 = 64;

fn driver(bytes: usize, read_only: bool, features: u64) -> Driver {
    let (dir, path) = image(bytes);
    let block = Block::new(
        "blk-test",
        &BlockConfig {
            path: path.clone(),
            read_only,
            serial: Some("serial-123".into()),
        },
    )
    .unwrap();
    let disk = block.disk.clone();
    let mut d = FakeDriver::new(Box::new(block), 4 << 20, SIZE);
    d.start(features);
    Driver {
        d,
        _dir: dir,
        path,
        disk,
    }
}

impl Driver {
    fn header(&self, at: u64, kind: u32, sector: u64) {
        self.d.mem.write_obj(kind, GuestAddress(at)).unwrap();
        self.d.mem.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        self.d.mem.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }
    fn status(&self, at: u64) -> u8 {
        self.d.mem.read_obj(GuestAddress(at)).unwrap()
    }
    /// Sends one request with a 512-byte data buffer (none for a flush); returns its status.
    fn request(&mut self, kind: u32, sector: u64) -> u8 {
        self.header(0x1000, kind, sector);
        self.d.mem.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
        let data = if kind == VIRTIO_BLK_T_IN { W } else { R };
        let chain: &[(u64, u32, u16)] = if kind == VIRTIO_BLK_T_FLUSH {
            &[(0x1000, 16, R), (0x2000, 1, W)]
        } else {
            &[(0x1000, 16, R), (0x40000, 512, data), (0x2000, 1, W)]
        };
        self.d.add(0, chain);
        self.d.kick(0);
        self.d.wait_used(0, 1);
        self.status(0x2000)
    }
    fn image(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

const FEATURES: u64 = virtio::VIRTIO_F_VERSION_1;

#[test]
fn config_space_has_capacity_and_read_only_is_offered() {
    let mut d = driver(1 << 20, true, FEATURES);
    let cap: [u8; 8] = d.d.config(0, 8).try_into().unwrap();
    assert_eq!(u64::from_le_bytes(cap), 2048);
    assert_ne!(d.d.device_features() & (1 << 5), 0, "VIRTIO_BLK_F_RO");
    assert_eq!(d.d.r(0x08), 2, "block device");
}

#[test]
fn a_write_reaches_the_image_and_reads_back() {
    let mut d = driver(64 << 10, false, FEATURES);
    let data: Vec<u8> = (0..1024).map(|i| (i % 251) as u8).collect();
    d.d.write(0x40000, &data);
    d.header(0x1000, VIRTIO_BLK_T_OUT, 2);
    let head =
        d.d.add(0, &[(0x1000, 16, R), (0x40000, 1024, R), (0x2000, 1, W)]);
    d.d.kick(0);
    assert_eq!(d.d.wait_used(0, 1), vec![(u32::from(head), 1)]);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
    assert_eq!(&d.image()[1024..2048], &data[..]);
    assert_ne!(d.d.r(0x60) & 1, 0, "used-buffer interrupt");
    assert!(d.d.irq.read().is_ok());

    d.header(0x1000, VIRTIO_BLK_T_IN, 2);
    d.d.add(
        0,
        &[
            (0x1000, 16, R),
            (0x50000, 512, W),
            (0x50200, 512, W),
            (0x2000, 1, W),
        ],
    );
    d.d.kick(0);
    assert_eq!(d.d.wait_used(0, 1)[0].1, 1025);
    assert_eq!(d.d.read(0x50000, 1024), data);
}

#[test]
fn get_id_returns_the_serial() {
    let mut d = driver(4096, true, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_GET_ID, 0);
    d.d.add(0, &[(0x1000, 16, R), (0x3000, 20, W), (0x2000, 1, W)]);
    d.d.kick(0);
    d.d.wait_used(0, 1);
    assert_eq!(&d.d.read(0x3000, 20)[..10], b"serial-123");
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_read_only_disk_answers_writes_with_ioerr() {
    let mut d = driver(4096, true, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_OUT, 0);
    d.d.add(0, &[(0x1000, 16, R), (0x40000, 512, R), (0x2000, 1, W)]);
    d.d.kick(0);
    d.d.wait_used(0, 1);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_IOERR as u8);
    assert!(d.image().iter().all(|&b| b == 0x5a));
}

#[test]
fn hostile_chains_get_errors_and_the_device_keeps_working() {
    let mut d = driver(64 << 10, false, FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_IN, 0);
    // 1. A chain that loops: descriptors 0 -> 1 -> 0 ...
    d.d.write_desc(0, 0, 0x1000, 16, NEXT, 1);
    d.d.write_desc(0, 1, 0x40000, 512, W | NEXT, 0);
    d.d.push_avail(0, 0);
    // 2. A head index outside the descriptor table.
    d.d.push_avail(0, SIZE + 3);
    d.d.set_next_desc(0, 2);
    // 3. A data buffer outside guest memory (4 MiB) and one whose address + length overflows.
    d.d.add(
        0,
        &[(0x1000, 16, R), (0x3f_ff00, 0x1000, W), (0x2000, 1, W)],
    );
    d.d.add(
        0,
        &[(0x1000, 16, R), (u64::MAX - 100, 0x1000, W), (0x2001, 1, W)],
    );
    // 4. The header in a write-only descriptor; a read past the end of the disk.
    d.d.add(0, &[(0x1000, 16, W), (0x40000, 512, W), (0x2002, 1, W)]);
    d.header(0x1100, VIRTIO_BLK_T_IN, 128);
    d.d.add(0, &[(0x1100, 16, R), (0x40000, 512, W), (0x2003, 1, W)]);
    // 5. Finally a good request.
    d.header(0x1200, VIRTIO_BLK_T_IN, 0);
    d.d.add(0, &[(0x1200, 16, R), (0x40000, 512, W), (0x2004, 1, W)]);
    d.d.kick(0);
    // The head outside the table cannot be returned (the used ring has no id for it): 6 answers.
    let used = d.d.wait_used(0, 6);
    assert_eq!(used[0], (0, 0), "looping chain returned unanswered");
    for at in 0x2000..0x2004 {
        assert_eq!(d.status(at), VIRTIO_BLK_S_IOERR as u8, "status at {at:#x}");
    }
    assert_eq!(d.status(0x2004), VIRTIO_BLK_S_OK as u8);
    assert_eq!(used[5].1, 513);
    assert_eq!(d.d.status() & 64, 0, "no reset needed for bad requests");
}

#[test]
fn a_lying_available_index_makes_the_device_need_a_reset() {
    let mut d = driver(4096, false, FEATURES);
    // The driver claims 1000 new chains in a queue of 64.
    d.d.set_avail_idx(0, 1000);
    d.d.kick(0);
    d.d.wait_for("DEVICE_NEEDS_RESET", |d| d.status() & 64 != 0);
    assert_ne!(d.d.r(0x60) & 2, 0, "configuration interrupt");
    // A reset brings the device back.
    d.d.start(FEATURES);
    d.header(0x1000, VIRTIO_BLK_T_IN, 0);
    d.d.add(0, &[(0x1000, 16, R), (0x40000, 512, W), (0x2000, 1, W)]);
    d.d.kick(0);
    d.d.wait_used(0, 1);
    assert_eq!(d.status(0x2000), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn with_event_idx_requests_are_still_all_answered() {
    let mut d = driver(64 << 10, false, FEATURES | virtio::VIRTIO_RING_F_EVENT_IDX);
    for i in 0..5u64 {
        d.header(0x1000 + 0x100 * i, VIRTIO_BLK_T_IN, i);
        d.d.add(
            0,
            &[
                (0x1000 + 0x100 * i, 16, R),
                (0x40000 + 0x200 * i, 512, W),
                (0x2000 + i, 1, W),
            ],
        );
    }
    d.d.kick(0);
    assert_eq!(d.d.wait_used(0, 5).len(), 5);
    assert!((0..5).all(|i| d.status(0x2000 + i) == VIRTIO_BLK_S_OK as u8));
}

#[test]
fn without_flush_negotiated_every_write_is_synced_and_a_sync_error_fails_it() {
    // The driver did not take VIRTIO_BLK_F_FLUSH, so it treats the disk as write-through: a write
    // that cannot be made durable must fail.
    let mut d = driver(64 << 10, false, FEATURES);
    assert_eq!(d.request(VIRTIO_BLK_T_OUT, 0), VIRTIO_BLK_S_OK as u8);
    d.disk.poison_flush(libc::EIO);
    assert_eq!(d.request(VIRTIO_BLK_T_OUT, 1), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.request(VIRTIO_BLK_T_IN, 1), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn with_flush_negotiated_writes_are_cached_and_a_failed_flush_stays_failed() {
    let mut d = driver(64 << 10, false, FEATURES | 1 << VIRTIO_BLK_F_FLUSH);
    assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_OK as u8);
    d.disk.poison_flush(libc::EIO);
    // The write goes to the page cache; only the flush reports the loss, every time.
    assert_eq!(d.request(VIRTIO_BLK_T_OUT, 1), VIRTIO_BLK_S_OK as u8);
    for _ in 0..2 {
        assert_eq!(d.request(VIRTIO_BLK_T_FLUSH, 0), VIRTIO_BLK_S_IOERR as u8);
    }
}

/// Set in the child of [`a_full_filesystem_gives_the_guest_ioerr_and_the_device_goes_on`]: the
/// directory where a 64 KiB tmpfs is mounted (in the child's own mount namespace).
const FULL_FS: &str = "KVMKIT_BLOCK_TEST_FULL_FS";

/// The child's side: a 1 MiB sparse image on the 64 KiB file system, written a page at a time
/// until the file system is full.
fn fill_the_filesystem(dir: &std::path::Path) {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(1 << 20))
        .unwrap();
    let block = Block::new(
        "blk-full",
        &BlockConfig {
            path: path.clone(),
            read_only: false,
            serial: None,
        },
    )
    .unwrap();
    let disk = block.disk.clone();
    let mut d = FakeDriver::new(Box::new(block), 4 << 20, SIZE);
    d.start(FEATURES);
    let mut driver = Driver {
        d,
        _dir: Dir(dir.to_owned()),
        path,
        disk,
    };
    let mut statuses = Vec::new();
    for page in 0..64u64 {
        driver.d.write(0x40000, &[page as u8 + 1; 512]);
        statuses.push(driver.request(VIRTIO_BLK_T_OUT, page * 8));
    }
    let ok = VIRTIO_BLK_S_OK as u8;
    let ioerr = VIRTIO_BLK_S_IOERR as u8;
    let first_error = statuses.iter().position(|&s| s != ok);
    eprintln!("statuses: {statuses:?}");
    eprintln!(
        "ok then ioerr: {}",
        first_error.is_some_and(|i| i > 0 && statuses[i..].iter().all(|&s| s == ioerr))
    );
    // The device goes on: what was written reads back, and a page that exists can be rewritten.
    driver.d.write(0x40000, &[0u8; 512]);
    eprintln!("read: {}", driver.request(VIRTIO_BLK_T_IN, 0) == ok);
    eprintln!(
        "read back: {}",
        driver.d.read(0x40000, 512) == vec![1u8; 512]
    );
    driver.d.write(0x40000, &[0x77; 512]);
    eprintln!("rewrite: {}", driver.request(VIRTIO_BLK_T_OUT, 0) == ok);
}

#[test]
fn a_full_filesystem_gives_the_guest_ioerr_and_the_device_goes_on() {
    if let Ok(dir) = std::env::var(FULL_FS) {
        fill_the_filesystem(std::path::Path::new(&dir));
        return;
    }
    // This test again, in a mount namespace of its own with a 64 KiB tmpfs (`unshare` from
    // util-linux; as a user other than root, in a user namespace of its own too).
    let dir = std::env::temp_dir().join(format!("kvmkit-blk-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let me = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=64k kvmkit-full '{}' && exec '{}' --exact \
         block::tests::a_full_filesystem_gives_the_guest_ioerr_and_the_device_goes_on \
         --nocapture --test-threads=1",
        dir.display(),
        me.display()
    );
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let mut unshare = std::process::Command::new("unshare");
    unshare.arg("--mount");
    if !root {
        unshare.arg("--map-root-user");
    }
    let out = unshare
        .args(["sh", "-c", &script])
        .env(FULL_FS, &dir)
        .output()
        .expect("run unshare (util-linux)");
    let _ = std::fs::remove_dir(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    for line in [
        "ok then ioerr: true",
        "read: true",
        "read back: true",
        "rewrite: true",
    ] {
        assert!(stderr.contains(line), "{line:?} not in {stderr}");
    }
}

/// The device is generic over guest memory: behind a memory without kvmkit's dirty-page bitmap
/// (`vm_memory::GuestMemoryMmap<()>`, what a downstream VMM may use) it reads and writes the image
/// as it does behind kvmkit's.
#[test]
fn a_guest_memory_without_a_dirty_bitmap_serves_reads_and_writes() {
    let (_dir, path) = image(1 << 20);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3 * 512..4 * 512].fill(0x5a);
    std::fs::write(&path, &bytes).unwrap();
    let block = Block::new("blk-plain", &BlockConfig::new(&path)).unwrap();
    let mem: vm_memory::GuestMemoryMmap<()> =
        vm_memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mut d = FakeDriver::with_memory(Box::new(block), mem, SIZE);
    d.start(FEATURES);
    let header = |d: &FakeDriver<vm_memory::GuestMemoryMmap<()>>, kind: u32, sector: u64| {
        d.mem.write_obj(kind, GuestAddress(0x1000)).unwrap();
        d.mem.write_obj(0u32, GuestAddress(0x1004)).unwrap();
        d.mem.write_obj(sector, GuestAddress(0x1008)).unwrap();
        d.mem.write_obj(0xffu8, GuestAddress(0x2000)).unwrap();
    };

    header(&d, VIRTIO_BLK_T_IN, 3);
    d.add(0, &[(0x1000, 16, R), (0x40000, 512, W), (0x2000, 1, W)]);
    d.kick(0);
    assert_eq!(d.wait_used(0, 1)[0].1, 513, "512 data bytes and the status");
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0);
    assert_eq!(d.read(0x40000, 512), vec![0x5a; 512]);

    d.write(0x50000, &[0xc3; 512]);
    header(&d, VIRTIO_BLK_T_OUT, 5);
    d.add(0, &[(0x1000, 16, R), (0x50000, 512, R), (0x2000, 1, W)]);
    d.kick(0);
    assert_eq!(d.wait_used(0, 1)[0].1, 1, "the status only");
    assert_eq!(d.mem.read_obj::<u8>(GuestAddress(0x2000)).unwrap(), 0);
    assert_eq!(std::fs::read(&path).unwrap()[5 * 512..6 * 512], [0xc3; 512]);
}
