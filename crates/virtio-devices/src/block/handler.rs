//! The block device's requests: what the device's [`virtio::QueueHandler`] does with each descriptor
//! chain, on the device's worker thread, off the vCPU threads: parse it, carry it out on the image,
//! write the status byte.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio::{ChainHandler, DeviceCounters};
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend};

use super::disk::DiskImage;
use super::execute::{STATUS_IOERR, STATUS_OK, execute};
use super::request::{RequestType, parse};

/// What a disk served, for metrics. Counters only grow.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BlockStats {
    /// Read requests done.
    pub reads: AtomicU64,
    /// Bytes read.
    pub read_bytes: AtomicU64,
    /// Write requests done.
    pub writes: AtomicU64,
    /// Bytes written.
    pub write_bytes: AtomicU64,
    /// Flushes done.
    pub flushes: AtomicU64,
    /// Requests that failed on the image (I/O errors, out of range, read-only).
    pub failed: AtomicU64,
    /// Requests too malformed to carry out.
    pub invalid: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl DeviceCounters for BlockStats {
    fn kind(&self) -> &'static str {
        "block"
    }

    /// Named as Firecracker's `block` metrics.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("read_count", get(&self.reads)),
            ("read_bytes", get(&self.read_bytes)),
            ("write_count", get(&self.writes)),
            ("write_bytes", get(&self.write_bytes)),
            ("flush_count", get(&self.flushes)),
            ("execute_fails", get(&self.failed)),
            ("invalid_reqs_count", get(&self.invalid)),
        ]
    }
}

/// Answers virtio-blk requests on one disk image.
#[derive(Debug)]
pub struct Requests {
    name: String,
    disk: Arc<DiskImage>,
    serial: Vec<u8>,
    stats: Arc<BlockStats>,
    write_through: bool,
}

impl Requests {
    /// Requests to `disk`, whose GET_ID answer is `serial`; `name` prefixes log lines.
    pub fn new(name: &str, disk: Arc<DiskImage>, serial: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            disk,
            serial,
            stats: Arc::default(),
            write_through: false,
        }
    }

    /// The same, with every write made durable before it completes: what a driver that did not
    /// negotiate `VIRTIO_BLK_F_FLUSH` assumes (it never asks for a flush).
    pub fn write_through(self, on: bool) -> Self {
        Self {
            write_through: on,
            ..self
        }
    }

    /// The same, counting into `stats`.
    pub fn counting(self, stats: Arc<BlockStats>) -> Self {
        Self { stats, ..self }
    }

    fn count(&self, kind: RequestType, bytes: u64) {
        let s = &self.stats;
        match kind {
            RequestType::In => {
                BlockStats::add(&s.reads, 1);
                BlockStats::add(&s.read_bytes, bytes);
            }
            RequestType::Out => {
                BlockStats::add(&s.writes, 1);
                BlockStats::add(&s.write_bytes, bytes);
            }
            RequestType::Flush => BlockStats::add(&s.flushes, 1),
            _ => {}
        }
    }
}

impl<M: GuestMemoryBackend> ChainHandler<M> for Requests {
    /// Answers one request; returns the used length (bytes written into the chain, status included).
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        match parse(chain, mem) {
            Ok(req) => {
                let done = execute(&req, mem, &self.disk, &self.serial).and_then(|n| {
                    if self.write_through && req.kind.writes() {
                        self.disk.flush()?;
                    }
                    Ok(n)
                });
                let (status, written) = match done {
                    Ok(n) => {
                        self.count(req.kind, req.data_len);
                        (STATUS_OK, n)
                    }
                    Err(e) => {
                        BlockStats::add(&self.stats.failed, 1);
                        log::warn!(
                            "{}: {:?} request at sector {}: {e}",
                            self.name,
                            req.kind,
                            req.sector
                        );
                        (e.status(), 0)
                    }
                };
                self.write_status(mem, req.status, status);
                written.saturating_add(1)
            }
            Err((e, Some(status))) => {
                BlockStats::add(&self.stats.invalid, 1);
                log::warn!("{}: malformed request: {e}", self.name);
                self.write_status(mem, status, STATUS_IOERR);
                1
            }
            Err((e, None)) => {
                BlockStats::add(&self.stats.invalid, 1);
                log::warn!("{}: malformed request dropped: {e}", self.name);
                0
            }
        }
    }
}

impl Requests {
    fn write_status<M: GuestMemoryBackend>(
        &self,
        mem: &M,
        at: vm_memory::GuestAddress,
        status: u8,
    ) {
        // The parser checked the status byte is in guest memory.
        if let Err(e) = mem.write_obj(status, at) {
            log::warn!("{}: cannot write the request status: {e}", self.name);
        }
    }
}
