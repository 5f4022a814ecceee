//! virtio-blk backed by a raw image file.
//!
//! Reads, writes, flush (`fdatasync`), get-id (the serial), discard and write-zeroes; capacity from the
//! file size; read-only disks (the image opened `O_RDONLY`, `VIRTIO_BLK_F_RO` offered, any write
//! answered `VIRTIO_BLK_S_IOERR`); event-index notification suppression; indirect descriptors. Requests
//! are handled on the device's [`virtio::Worker`] thread ([`Requests`] under a
//! [`virtio::QueueHandler`]), never on a vCPU thread.

pub mod disk;
pub mod execute;
mod handler;
pub mod request;

pub use handler::{BlockStats, Requests};

use std::path::PathBuf;
use std::sync::Arc;

use virtio::{
    ActivateError, Activation, DeviceMemory, DeviceModel, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, Worker,
};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

pub use disk::{DiskImage, SECTOR_SIZE};

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The size of the configuration space (`struct virtio_blk_config` up to write_zeroes_may_unmap).
const CONFIG_SIZE: usize = 60;

/// How to make a disk.
///
/// ```
/// use kvmkit_virtio_devices::BlockConfig;
/// let c = BlockConfig::new("rootfs.ext4").read_only(true).serial(Some("root".into()));
/// assert!(c.read_only);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct BlockConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// Open it read-only and refuse writes.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes are used).
    pub serial: Option<String>,
}

impl BlockConfig {
    /// A writable disk on the image at `path`, without a serial.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            read_only: false,
            serial: None,
        }
    }

    /// The same disk, read-only (or not).
    #[must_use]
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// The same disk, with `serial` for GET_ID.
    #[must_use]
    pub fn serial(mut self, serial: Option<String>) -> Self {
        self.serial = serial;
        self
    }
}

/// A virtio-blk device.
pub struct Block {
    name: String,
    disk: Arc<DiskImage>,
    serial: Vec<u8>,
    features: u64,
    config: [u8; CONFIG_SIZE],
    stats: Arc<BlockStats>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("name", &self.name)
            .field("sectors", &self.disk.sectors())
            .field("read_only", &self.disk.read_only())
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Block {
    /// Opens the image of `config`. `name` names the worker thread (`kvmkit-<name>`) and log lines.
    pub fn new(name: &str, config: &BlockConfig) -> Result<Self, disk::Error> {
        let disk = DiskImage::open(&config.path, config.read_only)?;
        let bit = |b: u32| 1u64 << b;
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | bit(VIRTIO_BLK_F_SEG_MAX)
            | bit(VIRTIO_BLK_F_BLK_SIZE)
            | bit(VIRTIO_BLK_F_FLUSH)
            | bit(VIRTIO_BLK_F_DISCARD)
            | bit(VIRTIO_BLK_F_WRITE_ZEROES);
        if config.read_only {
            features |= bit(VIRTIO_BLK_F_RO);
        }
        let serial = config
            .serial
            .as_deref()
            .unwrap_or("")
            .bytes()
            .take(VIRTIO_BLK_ID_BYTES as usize)
            .collect();
        let mut cfg = [0u8; CONFIG_SIZE];
        let mut put = |at: usize, bytes: &[u8]| cfg[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &disk.sectors().to_le_bytes()); // capacity
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes()); // seg_max: header and status take two
        put(20, &(SECTOR_SIZE as u32).to_le_bytes()); // blk_size
        put(36, &execute::MAX_RANGE_SECTORS.to_le_bytes()); // max_discard_sectors
        put(40, &execute::MAX_RANGES.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &execute::MAX_RANGE_SECTORS.to_le_bytes()); // max_write_zeroes_sectors
        put(52, &execute::MAX_RANGES.to_le_bytes()); // max_write_zeroes_seg
        put(56, &[1]); // write_zeroes_may_unmap
        Ok(Self {
            name: name.to_owned(),
            disk: Arc::new(disk),
            serial,
            features,
            config: cfg,
            stats: Arc::default(),
            worker: None,
        })
    }

    /// The capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }
}

impl DeviceModel for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio::read_config_bytes(&self.config, offset, data);
    }

    fn reset(&mut self) {
        // Dropping the worker stops its thread and waits for it.
        self.worker = None;
    }

    fn counters(&self) -> Option<Arc<dyn virtio::DeviceCounters>> {
        Some(self.stats.clone())
    }
}

impl<M: DeviceMemory> VirtioDevice<M> for Block {
    fn activate(&mut self, a: Activation<M>) -> Result<(), ActivateError> {
        let flush = a.features & (1 << VIRTIO_BLK_F_FLUSH) != 0;
        let requests = Requests::new(&self.name, self.disk.clone(), self.serial.clone())
            .counting(self.stats.clone())
            .write_through(!flush);
        self.worker = Some(virtio::start_worker(&self.name, a, requests)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
