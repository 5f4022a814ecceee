//! Fuzzes what a guest controls in a virtio-blk queue: the descriptor table, the available ring and
//! the request headers and buffers, through the same path as the device worker: virtio-queue's walk of
//! the available ring and each descriptor chain, then kvmkit's request parser, then execution on a
//! small disk image. Any panic, or a parsed request that breaks the parser's promises, is a finding.
//!
//! Input: 2 bytes of queue size (rounded down to a power of two, 1..=256), 2 bytes of available index,
//! then up to 64 KiB of guest memory. The descriptor table is at 0, the available ring at 0x1000, the
//! used ring at 0x2000 (all inside that memory).

#![no_main]

mod common;

use std::sync::OnceLock;

use kvmkit_virtio_devices::block::{DiskImage, execute::execute, request::parse};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

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
    let size = common::queue_size([data[0], data[1]]);
    let avail_idx = u16::from_le_bytes([data[2], data[3]]);
    let mem = common::guest_memory(&data[4..]);
    mem.write_obj(avail_idx, GuestAddress(0x1002)).unwrap();

    let Some(mut q) = common::queue(size, 0, false, &mem) else {
        return;
    };
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
