//! What the queue-driving fuzz targets share: a split queue over guest memory the fuzzer wrote.

use kvmkit_memory::GuestMemoryMmap;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The guest memory of the queue targets: 64 KiB at 0.
pub const MEM_SIZE: usize = 64 << 10;

/// [`MEM_SIZE`] bytes of guest memory at 0 holding `body` (its first [`MEM_SIZE`] bytes) from 0 on.
pub fn guest_memory(body: &[u8]) -> GuestMemoryMmap {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    mem.write_slice(&body[..body.len().min(MEM_SIZE)], GuestAddress(0))
        .unwrap();
    mem
}

/// The queue size two input bytes give: their little-endian value clamped to 1..=256 and rounded
/// down to a power of two (what a transport accepts).
pub fn queue_size(bytes: [u8; 2]) -> u16 {
    let raw = u16::from_le_bytes(bytes).clamp(1, 256);
    1 << (15 - raw.leading_zeros())
}

/// A ready queue of `size` entries (a power of two, at most 256) whose descriptor table is at
/// `base`, its available ring at `base + 0x1000` and its used ring at `base + 0x2000`, in
/// event-index mode if `event_idx`; `None` if the rings do not fit `mem` (the transport would not
/// have accepted them either).
pub fn queue(size: u16, base: u32, event_idx: bool, mem: &GuestMemoryMmap) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(base), Some(0));
    q.set_avail_ring_address(Some(base + 0x1000), Some(0));
    q.set_used_ring_address(Some(base + 0x2000), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}
