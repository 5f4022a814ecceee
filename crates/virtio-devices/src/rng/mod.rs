//! virtio-rng (virtio 1.2, section 5.4): an entropy source for the guest, backed by the host kernel's
//! getrandom(2).
//!
//! One queue. The driver posts device-writable buffers; the device fills them with random bytes, at
//! most [`RngConfig::max_request`] per chain however large the chain is, and returns how many it
//! wrote. A chain with a device-readable buffer, or buffers outside guest memory, is returned with
//! what could be written (a log line says why). Linux shows the device as `virtio_rng.0` in
//! `/sys/class/misc/hw_random/rng_current` and feeds it to its entropy pool.
//!
//! This file is also the smallest complete device model in kvmkit: the pattern to copy for a new
//! one (docs/architecture.md, "Adding a device").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio::{
    ActivateError, Activation, ChainHandler, DeviceCounters, DeviceMemory, DeviceModel,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, Worker,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryBackend};

/// The size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The default cap on the bytes one request gets.
pub const DEFAULT_MAX_REQUEST: u32 = 64 << 10;

/// How to make an entropy device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct RngConfig {
    /// The most bytes one request gets, whatever the size of its buffers (at least 1).
    pub max_request: u32,
}

impl RngConfig {
    /// At most `max_request` bytes per request (at least 1 is used).
    pub fn with_max_request(max_request: u32) -> Self {
        Self { max_request }
    }
}

impl Default for RngConfig {
    fn default() -> Self {
        Self {
            max_request: DEFAULT_MAX_REQUEST,
        }
    }
}

/// What the device served, for metrics. Counters only grow.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct RngStats {
    /// Requests (descriptor chains) answered.
    pub requests: AtomicU64,
    /// Random bytes written to the guest.
    pub bytes: AtomicU64,
}

impl DeviceCounters for RngStats {
    fn kind(&self) -> &'static str {
        "entropy"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("entropy_rq_count", self.requests.load(Ordering::Relaxed)),
            ("entropy_bytes", self.bytes.load(Ordering::Relaxed)),
        ]
    }
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    name: String,
    max_request: u32,
    stats: Arc<RngStats>,
    worker: Option<Worker>,
}

impl Rng {
    /// A device named `name` (its worker thread is `kvmkit-<name>`).
    pub fn new(name: &str, config: &RngConfig) -> Self {
        Self {
            name: name.to_owned(),
            max_request: config.max_request.max(1),
            stats: Arc::default(),
            worker: None,
        }
    }

    /// What the device's worker runs for each chain of its queue (with [`virtio::drain`]): for
    /// fuzzing and benchmarks, which drive the queue path without a thread. Its counts go to this
    /// device's statistics. `M` is the guest memory the chains are in.
    pub fn handler<M: GuestMemoryBackend>(&self) -> impl ChainHandler<M> + use<M> {
        self.entropy()
    }

    fn entropy(&self) -> Entropy {
        Entropy {
            name: self.name.clone(),
            max_request: self.max_request,
            stats: self.stats.clone(),
            buf: Vec::new(),
        }
    }
}

impl DeviceModel for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn counters(&self) -> Option<Arc<dyn DeviceCounters>> {
        Some(self.stats.clone())
    }
}

impl<M: DeviceMemory> VirtioDevice<M> for Rng {
    fn activate(&mut self, a: Activation<M>) -> Result<(), ActivateError> {
        self.worker = Some(virtio::start_worker(&self.name, a, self.entropy())?);
        Ok(())
    }
}

/// Answers entropy requests: fills each chain's buffers with random bytes.
#[derive(Debug)]
struct Entropy {
    name: String,
    max_request: u32,
    stats: Arc<RngStats>,
    /// The random bytes of the buffer being filled.
    buf: Vec<u8>,
}

impl<M: GuestMemoryBackend> ChainHandler<M> for Entropy {
    /// Fills the chain's buffers with up to `max_request` random bytes; returns how many it wrote.
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        let mut written = 0u32;
        for desc in chain {
            if !desc.is_write_only() {
                log::warn!(
                    "{}: request has a device-readable buffer at {:#x}; answered with {written} bytes",
                    self.name,
                    desc.addr().0
                );
                break;
            }
            let want = desc.len().min(self.max_request - written);
            if want == 0 {
                break;
            }
            self.buf.resize(want as usize, 0);
            if let Err(e) = getrandom::fill(&mut self.buf) {
                log::error!("{}: getrandom failed: {e}", self.name);
                break;
            }
            if let Err(e) = mem.write_slice(&self.buf, desc.addr()) {
                log::warn!(
                    "{}: buffer at {:#x} ({want} bytes) is not in guest memory: {e}",
                    self.name,
                    desc.addr().0
                );
                break;
            }
            written += want;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        self.stats
            .bytes
            .fetch_add(u64::from(written), Ordering::Relaxed);
        written
    }
}

#[cfg(test)]
mod tests;
