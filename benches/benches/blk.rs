//! virtio-blk request handling without a guest: parsing one request out of a descriptor chain, and a
//! whole queue of 4 KiB reads answered by the device's handler (walk, parse, pread into guest
//! memory, used ring), on a 1 MiB image in the temp directory.

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use memory::GuestMemoryMmap;
use virtio::{ActiveQueue, Interrupt, QueueHandler};
use virtio_bindings::virtio_blk::VIRTIO_BLK_T_IN;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_devices::block::{DiskImage, Requests, request};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x20000;
const USED: u64 = 0x30000;
const QUEUE_SIZE: u16 = 256;
const DATA: u64 = 0x100000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

/// `n` read requests of 4 KiB (header, data, status: three descriptors each) in the available ring.
fn fill_queue(mem: &GuestMemoryMmap, n: u16) {
    for i in 0..n {
        let hdr = 0x40000 + 16 * u64::from(i);
        mem.write_obj(VIRTIO_BLK_T_IN, GuestAddress(hdr)).unwrap();
        mem.write_obj(u64::from(i % 32) * 8, GuestAddress(hdr + 8))
            .unwrap();
        let descs = [
            (hdr, 16u32, 0u16),
            (
                DATA + 4096 * u64::from(i % 64),
                4096,
                VRING_DESC_F_WRITE as u16,
            ),
            (0x50000 + u64::from(i), 1, VRING_DESC_F_WRITE as u16),
        ];
        for (j, (addr, len, flags)) in descs.into_iter().enumerate() {
            let idx = 3 * i + j as u16;
            let at = DESC + 16 * u64::from(idx);
            let flags = if j < 2 {
                flags | VRING_DESC_F_NEXT as u16
            } else {
                flags
            };
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(idx + 1, GuestAddress(at + 14)).unwrap();
        }
        mem.write_obj(3 * i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
}

fn queue() -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

fn parse_one(c: &mut Criterion) {
    let mem = memory();
    fill_queue(&mem, 1);
    c.bench_function("blk/parse_read_request", |b| {
        b.iter_batched(
            queue,
            |mut q| {
                let chain = q.iter(&mem).unwrap().next().unwrap();
                black_box(request::parse(chain, &mem).unwrap());
            },
            BatchSize::SmallInput,
        )
    });
}

fn process_queue(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("kvmkit-bench-blk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk.img");
    std::fs::write(&path, vec![0x5au8; 1 << 20]).unwrap();
    let disk = Arc::new(DiskImage::open(&path, false).unwrap());
    let mem = memory();
    let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
    const N: u16 = 64;
    let mut group = c.benchmark_group("blk");
    group.throughput(criterion::Throughput::Elements(u64::from(N)));
    group.bench_function("process_64_reads_of_4k", |b| {
        b.iter_batched(
            || {
                fill_queue(&mem, N);
                QueueHandler::new(
                    "bench",
                    mem.clone(),
                    ActiveQueue {
                        index: 0,
                        queue: queue(),
                        kick: EventFd::new(EFD_NONBLOCK).unwrap(),
                    },
                    interrupt.clone(),
                    Requests::new("bench", disk.clone(), Vec::new()),
                )
            },
            |mut h| h.process_queue().unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, parse_one, process_queue);
criterion_main!(benches);
