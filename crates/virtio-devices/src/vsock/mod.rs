//! virtio-vsock (virtio 1.2, section 5.10): stream sockets between the guest and host processes,
//! without a network, emulated in the VMM as "hybrid vsock" over Unix sockets (see [`muxer`] for
//! the protocol; the same as Firecracker's and Cloud Hypervisor's, so their clients work).
//!
//! Three queues: the driver posts device-writable buffers on the receive queue (0) for packets to
//! the guest, device-readable packets on the transmit queue (1), and buffers on the event queue
//! (2) for transport events (kvmkit sends none). The configuration space holds the guest's
//! context ID.
//!
//! Nothing a guest sends makes kvmkit hold more than a bounded amount: each connection holds at
//! most [`TO_HOST_BUF`] bytes for a slow host reader (the credit the guest was given), there are at
//! most [`MAX_CONNECTIONS`] connections, and host sockets are read only as far as the guest has
//! room. A packet that makes no sense is answered with a reset or dropped, and counted.

pub mod connection;
mod handler;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio::{
    ActivateError, Activation, DeviceCounters, DeviceMemory, DeviceModel, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, Worker, WorkerRole,
};

pub use connection::TO_HOST_BUF;
pub use muxer::{CONNECT_TIMEOUT, MAX_CONNECTIONS, SHUTDOWN_TIMEOUT};

/// The virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The receive queue (host to guest).
pub const RX_QUEUE: u16 = 0;
/// The transmit queue (guest to host).
pub const TX_QUEUE: u16 = 1;
/// The event queue.
pub const EVENT_QUEUE: u16 = 2;
/// The lowest context ID a guest can have (0 to 2 are the hypervisor, reserved, and the host).
pub const MIN_GUEST_CID: u64 = 3;

/// What the device moved and refused, for metrics. Counters only grow.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct VsockStats {
    /// Packets from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes from the guest.
    pub tx_bytes: AtomicU64,
    /// Packets to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes to the guest.
    pub rx_bytes: AtomicU64,
    /// Connections made (either way).
    pub connections: AtomicU64,
    /// Connections ended.
    pub closed: AtomicU64,
    /// Chains that held no packet, and packets with the wrong addresses.
    pub bad_packets: AtomicU64,
    /// Resets for packets of no connection dropped because too many waited.
    pub dropped_resets: AtomicU64,
    /// Host clients' connections the guest did not accept in time.
    pub connect_timeouts: AtomicU64,
    /// Connections the guest closed whose host end did not take their last bytes in time.
    pub drain_timeouts: AtomicU64,
}

impl DeviceCounters for VsockStats {
    fn kind(&self) -> &'static str {
        "vsock"
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            ("tx_packets", c(&self.tx_packets)),
            ("tx_bytes", c(&self.tx_bytes)),
            ("rx_packets", c(&self.rx_packets)),
            ("rx_bytes", c(&self.rx_bytes)),
            ("connections", c(&self.connections)),
            ("closed", c(&self.closed)),
            ("bad_packets", c(&self.bad_packets)),
            ("dropped_resets", c(&self.dropped_resets)),
            ("connect_timeouts", c(&self.connect_timeouts)),
            ("drain_timeouts", c(&self.drain_timeouts)),
        ]
    }
}

/// A vsock device as the user asks for it: the guest's context ID and the host socket's path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u64,
    /// The Unix socket host clients connect to; the guest's connections to host port P go to
    /// `<socket>_P`.
    pub socket: PathBuf,
}

impl VsockConfig {
    /// A device for the guest with context ID `cid`, its host socket at `socket`.
    pub fn new(cid: u64, socket: impl Into<PathBuf>) -> Self {
        Self {
            cid,
            socket: socket.into(),
        }
    }

    /// Checks the context ID.
    pub fn validate(&self) -> Result<(), VsockError> {
        if (MIN_GUEST_CID..u64::from(u32::MAX)).contains(&self.cid) {
            Ok(())
        } else {
            Err(VsockError::Cid(self.cid))
        }
    }
}

/// Why a vsock device could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VsockError {
    /// The context ID is one of the reserved ones, or does not fit 32 bits.
    #[error("vsock: guest CID {0} is not usable: it must be from 3 to 4294967294")]
    Cid(u64),
    /// The host socket cannot be made non-blocking.
    #[error("vsock: the host socket {path}: {source}", path = .path.display())]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The timer for host clients' connects cannot be made.
    #[error("vsock: cannot create the connect timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// The connections, shared by the device (which keeps them while it is paused) and its worker.
type SharedMuxer = Arc<Mutex<muxer::Muxer>>;

fn lock(m: &Mutex<muxer::Muxer>) -> MutexGuard<'_, muxer::Muxer> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A virtio socket device.
pub struct Vsock {
    name: String,
    cid: u64,
    path: PathBuf,
    muxer: SharedMuxer,
    stats: Arc<VsockStats>,
    worker: Option<Worker>,
    /// Restored from a snapshot: the guest is told its connections are gone when it next starts.
    announce_reset: bool,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("name", &self.name)
            .field("cid", &self.cid)
            .field("path", &self.path)
            .field("active", &self.worker.is_some())
            .finish()
    }
}

impl Vsock {
    /// A device named `name` (its worker thread is `kvmkit-<name>`) giving the guest context ID
    /// `cid`. Host clients connect to `listener`, bound at `path`; the guest's connections to the
    /// host's port P go to the Unix socket `<path>_P`.
    pub fn new(
        name: &str,
        cid: u64,
        listener: UnixListener,
        path: &Path,
    ) -> Result<Self, VsockError> {
        VsockConfig::new(cid, path).validate()?;
        listener
            .set_nonblocking(true)
            .map_err(|source| VsockError::Socket {
                path: path.to_owned(),
                source,
            })?;
        let stats = Arc::<VsockStats>::default();
        let muxer = muxer::Muxer::new(name, cid, listener, path, stats.clone())
            .map_err(VsockError::Timer)?;
        Ok(Self {
            name: name.to_owned(),
            cid,
            path: path.to_owned(),
            muxer: Arc::new(Mutex::new(muxer)),
            stats,
            worker: None,
            announce_reset: false,
        })
    }

    /// The guest's context ID.
    pub fn cid(&self) -> u64 {
        self.cid
    }

    /// The device's counters (shared: they keep counting while the device runs).
    pub fn stats(&self) -> Arc<VsockStats> {
        self.stats.clone()
    }
}

impl DeviceModel for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn reset(&mut self) {
        self.worker = None;
        // The connections end: their host clients see their sockets close.
        lock(&self.muxer).clear();
    }

    fn pause(&mut self) {
        // The connections stay (their host clients wait); the next worker watches them again.
        self.worker = None;
    }

    fn restored(&mut self) {
        self.announce_reset = true;
    }

    fn counters(&self) -> Option<Arc<dyn DeviceCounters>> {
        Some(self.stats.clone())
    }
}

impl<M: DeviceMemory> VirtioDevice<M> for Vsock {
    fn activate(&mut self, a: Activation<M>) -> Result<(), ActivateError> {
        let handler = handler::VsockHandler::new(
            &self.name,
            a,
            self.muxer.clone(),
            self.stats.clone(),
            std::mem::take(&mut self.announce_reset),
        )?;
        let interrupt = handler.interrupt();
        self.worker = Some(
            Worker::spawn_as(&self.name, WorkerRole::HostSockets, handler, interrupt)
                .map_err(ActivateError::Worker)?,
        );
        Ok(())
    }
}
