//! virtio-net (virtio 1.2, section 5.1) on a host tap device.
//!
//! Two queues, receive (0) and transmit (1), with the 12-byte `virtio_net_hdr_v1` on every frame,
//! which the tap carries as its vnet header, so frames are copied through without translation. The
//! device offers the MAC address, link status, mergeable receive buffers, event index, indirect
//! descriptors, and the checksum and segmentation offloads the tap supports in each direction: what
//! the guest accepts (`GUEST_CSUM`, `GUEST_TSO4/6`, `GUEST_UFO`) becomes the tap's `TUNSETOFFLOAD`,
//! so the host kernel hands the guest large segments; what the guest may send (`CSUM`,
//! `HOST_TSO4/6`, `HOST_UFO`) the tap accepts as is.
//!
//! Receiving ([`rx`]) is driven by the tap: each frame goes into the guest's receive buffers (across
//! several with `MRG_RXBUF`). When the guest has no buffers the frame waits, the tap is no longer
//! watched, and the guest's next receive-queue notification resumes it: the device neither drops
//! frames in a loop nor spins. Transmitting ([`tx`]) gathers each chain into one frame and writes it
//! to the tap. Frames the device cannot take (bigger than the buffers, shorter than a header, a chain
//! that breaks the rules) are dropped, counted in [`NetStats`] and logged; a queue the driver breaks
//! shows DEVICE_NEEDS_RESET while the other queue keeps working.

mod handler;
pub mod mac;
pub mod rx;
pub mod tap;
pub mod tx;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use virtio::{
    ActivateError, Activation, DeviceMemory, DeviceModel, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice, Worker,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};

pub use mac::MacAddr;
pub use tap::{Tap, exists as tap_exists};

/// The receive queue's index.
pub const RX_QUEUE: u16 = 0;
/// The transmit queue's index.
pub const TX_QUEUE: u16 = 1;
/// The size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// The virtio-net header on every frame: `struct virtio_net_hdr_v1`.
pub const HDR_LEN: usize = tap::VNET_HDR_LEN;
/// The largest frame the device moves, header included: a 64 KiB segmentation-offload frame with its
/// Ethernet and VLAN headers.
pub const MAX_FRAME: usize = HDR_LEN + 65550;
/// The size of the configuration space: mac, status, max_virtqueue_pairs.
const CONFIG_SIZE: usize = 10;

/// What the device sends and receives frames through: a [`Tap`], or a fake one in tests. Frames
/// carry the 12-byte virtio-net header first. The descriptor must be non-blocking; it is exposed
/// (`AsRawFd`) only for the device's worker to watch it with epoll.
pub trait Backend: AsRawFd + Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize>;
    /// Sets which offloaded frames the host may hand the device (`TUN_F_*` flags).
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()>;
    /// Another handle on the same backend (a duplicated descriptor), for the device's worker: the
    /// device keeps the original across resets.
    fn try_clone(&self) -> std::io::Result<Box<dyn Backend>>;
}

/// How to make a network device.
///
/// ```
/// use kvmkit_virtio_devices::NetConfig;
/// let c = NetConfig::new("tap0").id(Some("eth0".into()));
/// assert_eq!((c.tap.as_str(), c.mac), ("tap0", None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct NetConfig {
    /// The host tap device to open (it must exist).
    pub tap: String,
    /// The guest's MAC address; `None` for one generated from the tap's name.
    pub mac: Option<MacAddr>,
    /// The device's name in log lines and its worker thread (`kvmkit-<id>`); `None` for the VMM
    /// to choose (`net0`, `net1`, ...).
    pub id: Option<String>,
}

impl NetConfig {
    /// A card on the tap `tap`, its MAC made from the tap's name, its name chosen by the VMM.
    pub fn new(tap: impl Into<String>) -> Self {
        Self {
            tap: tap.into(),
            mac: None,
            id: None,
        }
    }

    /// The same card with the MAC `mac` (`None`: made from the tap's name).
    #[must_use]
    pub fn mac(mut self, mac: Option<MacAddr>) -> Self {
        self.mac = mac;
        self
    }

    /// The same card named `id` (`None`: chosen by the VMM).
    #[must_use]
    pub fn id(mut self, id: Option<String>) -> Self {
        self.id = id;
        self
    }
}

/// What the device did, for metrics and tests. Counters only grow.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Their bytes, headers included.
    pub rx_bytes: AtomicU64,
    /// Frames from the tap the guest could not take (too big for its buffers, bad buffers).
    pub rx_dropped: AtomicU64,
    /// Frames the guest sent that reached the tap.
    pub tx_frames: AtomicU64,
    /// Their bytes, headers included.
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that were malformed or that the tap refused.
    pub tx_dropped: AtomicU64,
}

impl NetStats {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// A counter's value now.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Why a network device could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] tap::Error),
}

/// A virtio-net device.
pub struct Net {
    name: String,
    mac: MacAddr,
    backend: Box<dyn Backend>,
    /// The `TUN_F_*` offloads the backend accepted when probed.
    backend_offloads: u32,
    features: u64,
    stats: Arc<NetStats>,
    worker: Option<Worker>,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("name", &self.name)
            .field("mac", &self.mac.to_string())
            .field("features", &format_args!("{:#x}", self.features))
            .field("active", &self.worker.is_some())
            .finish()
    }
}

const fn bit(b: u32) -> u64 {
    1 << b
}

impl Net {
    /// Opens the tap of `config`; `name` names the device's worker thread and log lines.
    pub fn new(name: &str, config: &NetConfig) -> Result<Self, Error> {
        let tap = Tap::open(&config.tap)?;
        let mac = config
            .mac
            .unwrap_or_else(|| MacAddr::local_from(&config.tap));
        Ok(Self::with_backend(name, mac, Box::new(tap)))
    }

    /// A device on any backend (tests use a fake tap). Probes which offloads the backend takes and
    /// offers the guest only those.
    pub fn with_backend(name: &str, mac: MacAddr, mut backend: Box<dyn Backend>) -> Self {
        let backend_offloads = probe_offloads(backend.as_mut());
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC
            | bit(VIRTIO_NET_F_MAC)
            | bit(VIRTIO_NET_F_STATUS)
            | bit(VIRTIO_NET_F_MRG_RXBUF)
            | bit(VIRTIO_NET_F_CSUM)
            | bit(VIRTIO_NET_F_HOST_TSO4)
            | bit(VIRTIO_NET_F_HOST_TSO6);
        if backend_offloads & tap::TUN_F_UFO != 0 {
            features |= bit(VIRTIO_NET_F_HOST_UFO);
        }
        for (tun, feature) in [
            (tap::TUN_F_CSUM, VIRTIO_NET_F_GUEST_CSUM),
            (tap::TUN_F_TSO4, VIRTIO_NET_F_GUEST_TSO4),
            (tap::TUN_F_TSO6, VIRTIO_NET_F_GUEST_TSO6),
            (tap::TUN_F_UFO, VIRTIO_NET_F_GUEST_UFO),
        ] {
            if backend_offloads & tun != 0 {
                features |= bit(feature);
            }
        }
        Self {
            name: name.to_owned(),
            mac,
            backend,
            backend_offloads,
            features,
            stats: Arc::default(),
            worker: None,
        }
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// The device's counters (shared: they keep counting while the device runs).
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }
}

/// The `TUN_F_*` offloads `backend` accepts: all of them, or all but UFO (kernels that dropped it),
/// or none. Leaves the backend with none set.
fn probe_offloads(backend: &mut dyn Backend) -> u32 {
    let all = tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6 | tap::TUN_F_UFO;
    let found = [all, all & !tap::TUN_F_UFO]
        .into_iter()
        .find(|&flags| backend.set_offload(flags).is_ok())
        .unwrap_or(0);
    if let Err(e) = backend.set_offload(0) {
        log::warn!("virtio-net: cannot clear the tap's offloads: {e}");
    }
    found
}

/// The tap offloads for what the guest accepts: a TSO or UFO offload needs the checksum offload.
fn offloads_for(features: u64, supported: u32) -> u32 {
    if features & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    let mut flags = tap::TUN_F_CSUM;
    for (feature, tun) in [
        (VIRTIO_NET_F_GUEST_TSO4, tap::TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, tap::TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, tap::TUN_F_UFO),
    ] {
        if features & bit(feature) != 0 {
            flags |= tun;
        }
    }
    flags & supported
}

impl DeviceModel for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut config = [0u8; CONFIG_SIZE];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        virtio::read_config_bytes(&config, offset, data);
    }

    fn reset(&mut self) {
        self.worker = None;
    }

    fn counters(&self) -> Option<Arc<dyn virtio::DeviceCounters>> {
        Some(self.stats.clone())
    }
}

impl<M: DeviceMemory> VirtioDevice<M> for Net {
    fn activate(&mut self, a: Activation<M>) -> Result<(), ActivateError> {
        let mut backend = self.backend.try_clone().map_err(ActivateError::Worker)?;
        let offloads = offloads_for(a.features, self.backend_offloads);
        log::info!(
            "{}: driver features {:#x}, tap offloads {offloads:#x}",
            self.name,
            a.features
        );
        if let Err(e) = backend.set_offload(offloads) {
            log::warn!(
                "{}: the tap refused offloads {offloads:#x} ({e}); the guest gets plain frames",
                self.name
            );
            let _ = backend.set_offload(0);
        }
        let handler = handler::NetHandler::new(&self.name, a, backend, self.stats.clone())?;
        let interrupt = handler.interrupt();
        self.worker =
            Some(Worker::spawn(&self.name, handler, interrupt).map_err(ActivateError::Worker)?);
        Ok(())
    }
}

impl virtio::DeviceCounters for NetStats {
    fn kind(&self) -> &'static str {
        "net"
    }

    /// Named as Firecracker's `net` metrics where it has the same counter.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("rx_packets_count", Self::get(&self.rx_frames)),
            ("rx_bytes_count", Self::get(&self.rx_bytes)),
            ("rx_fails", Self::get(&self.rx_dropped)),
            ("tx_packets_count", Self::get(&self.tx_frames)),
            ("tx_bytes_count", Self::get(&self.tx_bytes)),
            ("tx_fails", Self::get(&self.tx_dropped)),
        ]
    }
}

#[cfg(test)]
mod tests;
