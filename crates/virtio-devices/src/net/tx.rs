//! The transmit path: one descriptor chain from the guest becomes one frame written to the tap.
//!
//! A chain's buffers (device-readable, in guest memory) are gathered in order into one frame of at
//! most [`MAX_FRAME`] bytes, its 12-byte virtio-net header first, and written to the backend as is:
//! the tap reads the header's checksum and segmentation fields itself. The chain is returned with a
//! used length of 0. A chain the device cannot send is dropped and counted, never retried.

use vm_memory::{Bytes, GuestMemoryBackend};

use virtio::ChainHandler;
use virtio_queue::DescriptorChain;

use super::{Backend, HDR_LEN, MAX_FRAME, NetStats};

/// Why a transmit chain was not sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// A buffer the device would have to write to.
    #[error("transmit chain has a device-writable buffer")]
    WritableBuffer,
    /// A buffer outside guest memory.
    #[error("transmit buffer at {addr:#x} ({len} bytes) is not in guest memory")]
    OutOfMemory {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
    /// More than [`MAX_FRAME`] bytes.
    #[error("transmit frame of more than {MAX_FRAME} bytes")]
    TooBig,
    /// Not even the virtio-net header.
    #[error("transmit frame of {0} bytes is shorter than its {HDR_LEN}-byte header")]
    TooShort(usize),
}

/// Gathers `chain` into `frame` (cleared first): the frame the guest sent, header first.
pub fn gather<M: GuestMemoryBackend>(
    mem: &M,
    chain: DescriptorChain<&M>,
    frame: &mut Vec<u8>,
) -> Result<(), Dropped> {
    frame.clear();
    for desc in chain {
        if desc.is_write_only() {
            return Err(Dropped::WritableBuffer);
        }
        let len = desc.len() as usize;
        let start = frame.len();
        if start + len > MAX_FRAME {
            return Err(Dropped::TooBig);
        }
        frame.resize(start + len, 0);
        mem.read_slice(&mut frame[start..], desc.addr())
            .map_err(|_| Dropped::OutOfMemory {
                addr: desc.addr().0,
                len: desc.len(),
            })?;
    }
    if frame.len() < HDR_LEN {
        return Err(Dropped::TooShort(frame.len()));
    }
    Ok(())
}

/// Sends the chains of a transmit queue to a backend: the [`ChainHandler`] the net device's
/// worker drains its transmit queue with.
pub struct Transmit<'a> {
    /// The device's name, for log lines.
    pub name: &'a str,
    /// Where frames go.
    pub backend: &'a mut dyn Backend,
    /// The frame being sent (kept between chains to save allocations).
    pub frame: &'a mut Vec<u8>,
    /// The device's counters.
    pub stats: &'a NetStats,
}

impl<M: GuestMemoryBackend> ChainHandler<M> for Transmit<'_> {
    fn handle(&mut self, mem: &M, chain: DescriptorChain<&M>) -> u32 {
        let sent = gather(mem, chain, self.frame)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                self.backend
                    .write_frame(self.frame)
                    .map_err(|e| format!("the tap refused a {}-byte frame: {e}", self.frame.len()))
            });
        match sent {
            Ok(n) => {
                NetStats::add(&self.stats.tx_frames, 1);
                NetStats::add(&self.stats.tx_bytes, n as u64);
            }
            Err(why) => {
                NetStats::add(&self.stats.tx_dropped, 1);
                log::warn!("{}: transmit frame dropped: {why}", self.name);
            }
        }
        0
    }
}
