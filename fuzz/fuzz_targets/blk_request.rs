//! Fuzzes what a guest controls in a virtio-blk queue: the descriptor table, the available ring and
//! the request headers and buffers, through the same path as the device worker: virtio-queue's walk of
//! the available ring and each descriptor chain, then kvmkit's request parser, then execution on a
//! small disk image. Any panic, or a parsed request that breaks the parser's promises, is a finding.
//!
//! Input: 2 bytes of queue size (rounded down to a power of two, 1..=256), 2 bytes of available index,
//! then up to 64 KiB of guest memory. The descriptor table is at 0, the available ring at 0x1000, the
//! used ring at 0x2000 (all inside that memory).

#![no_main]

use std::sync::OnceLock;

use kvmkit_virtio_devices::block::{DiskImage, execute::execute, request::parse};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use kvmkit_memory::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

const MEM_SIZE: usize = 64 << 10;

fn disk() -> &'static DiskImage {
    static DISK: OnceLock<DiskImage> = OnceLock::new();
    DISK.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("kvmkit-fuzz-disk-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 64 << 10]).expect("create the fuzz disk image");
        let disk = DiskImage::open(&path, false).expect("open the fuzz disk image");
        // The open file lives on; the name goes now, so no run leaves it behind.
        let _ = std::fs::remove_file(&path);
        disk
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size_raw = u16::from_le_bytes([data[0], data[1]]).clamp(1, 256);
    let size = 1u16 << (15 - size_raw.leading_zeros());
    let avail_idx = u16::from_le_bytes([data[2], data[3]]);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let body = &data[4..data.len().min(4 + MEM_SIZE)];
    mem.write_slice(body, GuestAddress(0)).unwrap();
    mem.write_obj(avail_idx, GuestAddress(0x1002)).unwrap();

    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let Ok(iter) = q.iter(&mem) else { return };
    let chains: Vec<_> = iter.collect();
    for chain in chains {
        let head = chain.head_index();
        let len = match parse(chain, &mem) {
            Ok(req) => {
                // The parser's promises: every buffer and the status byte are in guest memory.
                for seg in &req.data {
                    assert!(mem.check_range(seg.addr, seg.len as usize, Permissions::Read));
                }
                assert!(mem.check_range(req.status, 1, Permissions::Write));
                execute(&req, &mem, disk(), b"fuzz").map_or(1, |n| n.saturating_add(1))
            }
            Err((_, status)) => u32::from(status.is_some()),
        };
        if head < size {
            q.add_used(&mem, head, len).unwrap();
        }
    }
});
