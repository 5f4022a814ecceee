//! The receive path: one frame from the tap goes into the guest's receive buffers.
//!
//! Without `VIRTIO_NET_F_MRG_RXBUF` a frame must fit one descriptor chain; with it, it may span
//! several, and the header's `num_buffers` tells the driver how many. Every buffer must be
//! device-writable and inside guest memory; a chain that is not is returned unused (length 0) when
//! it comes first, and otherwise ends the frame's search for room.
//!
//! [`deliver`] never consumes buffers it cannot fill: when the frame does not fit the buffers there
//! are, they go back to the ring and the answer is [`Delivery::NoBuffers`] (wait for the driver to
//! add some), or [`Delivery::Dropped`] when waiting cannot help (the frame is larger than a buffer
//! without mergeable buffers, or than the whole ring).

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

use super::HDR_LEN;

/// What became of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// In the used ring, in this many chains.
    Delivered {
        /// How many chains (`num_buffers`).
        chains: u16,
    },
    /// Not enough room now; nothing was consumed. Try again when the driver adds buffers.
    NoBuffers,
    /// The frame cannot be delivered into these buffers; it is gone, the buffers are not.
    Dropped(Why),
}

/// Why a frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Larger than the buffer (without mergeable buffers), or than every buffer of a full ring.
    TooBig {
        /// The frame's size, header included.
        frame: usize,
        /// The room there was.
        room: usize,
    },
    /// The frame needs more than one chain and the next one breaks the rules.
    BadBuffer,
    /// Shorter than the virtio-net header: no frame at all.
    TooShort(usize),
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::TooBig { frame, room } => {
                write!(
                    f,
                    "a {frame}-byte frame does not fit the guest's {room}-byte buffers"
                )
            }
            Why::BadBuffer => write!(f, "the guest's next receive buffer is not usable"),
            Why::TooShort(n) => write!(f, "a {n}-byte frame is shorter than its header"),
        }
    }
}

/// Reusable room for [`deliver`]'s bookkeeping (no allocation per frame once warmed up).
#[derive(Debug, Default)]
pub struct Scratch {
    /// Per chain taken for the frame: its head and its range in `segments`.
    chains: Vec<(u16, usize, usize)>,
    /// The device-writable buffers of those chains.
    segments: Vec<(GuestAddress, usize)>,
    /// Chains put in the used ring unused (bad buffers).
    rejected: u32,
}

impl Scratch {
    /// How many chains with unusable buffers the last [`deliver`] returned unused.
    pub fn rejected(&self) -> u32 {
        self.rejected
    }
}

/// The device-writable buffers of `chain`, appended to `segments`; their total size, or `None` if a
/// buffer is device-readable or not in guest memory.
fn writable<M: GuestMemory>(
    mem: &M,
    chain: DescriptorChain<&M>,
    segments: &mut Vec<(GuestAddress, usize)>,
) -> Option<usize> {
    let mut room = 0usize;
    for desc in chain {
        let len = desc.len() as usize;
        if !desc.is_write_only() || !mem.check_range(desc.addr(), len, Permissions::Write) {
            return None;
        }
        segments.push((desc.addr(), len));
        room += len;
    }
    Some(room)
}

/// Puts `frame` (virtio-net header first) into the receive queue, setting the header's
/// `num_buffers`. An error means the queue itself is broken (the device needs a reset).
pub fn deliver<M: GuestMemory>(
    queue: &mut Queue,
    mem: &M,
    frame: &mut [u8],
    mergeable: bool,
    scratch: &mut Scratch,
) -> Result<Delivery, virtio_queue::Error> {
    if frame.len() < HDR_LEN {
        return Ok(Delivery::Dropped(Why::TooShort(frame.len())));
    }
    scratch.chains.clear();
    scratch.segments.clear();
    scratch.rejected = 0;
    let size = queue.size();
    let mut room = 0usize;
    let mut ring_empty = false;
    let mut blocked = false;
    while room < frame.len() {
        let Some(chain) = queue.iter(mem)?.next() else {
            ring_empty = true;
            break;
        };
        let head = chain.head_index();
        let first = scratch.segments.len();
        match writable(mem, chain, &mut scratch.segments) {
            Some(n) if n > 0 && head < size => {
                scratch.chains.push((head, first, scratch.segments.len()));
                room += n;
                if !mergeable {
                    break;
                }
            }
            _ => {
                scratch.segments.truncate(first);
                if !scratch.chains.is_empty() {
                    // Keep the frame's chains together in the used ring: this one waits.
                    queue.go_to_previous_position();
                    blocked = true;
                    break;
                }
                // Nothing of this frame is taken yet: give the bad chain back unused (a head
                // outside the table has no used-ring entry to give back).
                if head < size {
                    queue.add_used(mem, head, 0)?;
                    scratch.rejected += 1;
                }
            }
        }
    }
    if room < frame.len() {
        let taken = scratch.chains.len();
        for _ in 0..taken {
            queue.go_to_previous_position();
        }
        let full_ring = ring_empty && taken >= usize::from(size);
        return Ok(if blocked {
            Delivery::Dropped(Why::BadBuffer)
        } else if (!mergeable && taken > 0) || full_ring {
            Delivery::Dropped(Why::TooBig {
                frame: frame.len(),
                room,
            })
        } else {
            Delivery::NoBuffers
        });
    }
    let chains = scratch.chains.len() as u16;
    frame[HDR_LEN - 2..HDR_LEN].copy_from_slice(&chains.to_le_bytes());
    let mut at = 0usize;
    for &(head, first, end) in &scratch.chains {
        let mut used = 0usize;
        for &(addr, len) in &scratch.segments[first..end] {
            if at == frame.len() {
                break;
            }
            let n = len.min(frame.len() - at);
            // The range was checked above; a failure here is guest memory changing under us.
            if mem.write_slice(&frame[at..at + n], addr).is_err() {
                log::warn!("virtio-net: receive buffer at {:#x} vanished", addr.0);
            }
            at += n;
            used += n;
        }
        queue.add_used(mem, head, used as u32)?;
    }
    Ok(Delivery::Delivered { chains })
}
