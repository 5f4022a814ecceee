//! The virtio-net frame paths without a guest or a tap: the receive path putting frames into a
//! queue of the guest's buffers (one 1514-byte frame per 2 KiB buffer; one 64 KiB segmentation
//! offload frame across 1536-byte mergeable buffers), and the transmit path gathering a chain (header
//! and payload descriptors) into the frame it writes to the tap.

#![allow(clippy::unwrap_used)] // benchmark setup: a failed unwrap is a broken benchmark

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use memory::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_devices::net::rx::{Delivery, Scratch, deliver};
use virtio_devices::net::{HDR_LEN, tx};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

const DESC: u64 = 0x10000;
const AVAIL: u64 = 0x20000;
const USED: u64 = 0x30000;
const SIZE: u16 = 256;
const BUFFERS: u64 = 0x100000;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap()
}

fn queue() -> Queue {
    let mut q = Queue::new(SIZE).unwrap();
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    q
}

fn desc(mem: &GuestMemoryMmap, i: u16, addr: u64, len: u32, flags: u16) {
    let at = DESC + 16 * u64::from(i);
    mem.write_obj(addr, GuestAddress(at)).unwrap();
    mem.write_obj(len, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(i + 1, GuestAddress(at + 14)).unwrap();
}

/// `n` available chains, each one device-writable buffer of `len` bytes.
fn receive_buffers(mem: &GuestMemoryMmap, n: u16, len: u32) {
    for i in 0..n {
        desc(
            mem,
            i,
            BUFFERS + u64::from(i) * u64::from(len),
            len,
            VRING_DESC_F_WRITE as u16,
        );
        mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(0u16, GuestAddress(USED + 2)).unwrap();
}

fn receive(c: &mut Criterion) {
    let mem = memory();
    let mut group = c.benchmark_group("net rx");
    for (name, frame_len, buffer, frames) in [
        (
            "64 frames of 1514 B, a 2 KiB buffer each",
            1514 + HDR_LEN,
            2048u32,
            64u16,
        ),
        (
            "one 64 KiB frame across 1536 B buffers",
            65536 + HDR_LEN,
            1536,
            1,
        ),
    ] {
        let mut frame = vec![0x5au8; frame_len];
        let mut scratch = Scratch::default();
        group.throughput(Throughput::Bytes(frame_len as u64 * u64::from(frames)));
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    receive_buffers(&mem, SIZE, buffer);
                    queue()
                },
                |mut q| {
                    for _ in 0..frames {
                        let d = deliver(&mut q, &mem, &mut frame, true, &mut scratch).unwrap();
                        assert!(matches!(d, Delivery::Delivered { .. }));
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn transmit(c: &mut Criterion) {
    let mem = memory();
    let mut group = c.benchmark_group("net tx");
    for (name, payload) in [
        ("gather a 1514 B frame", 1514u32),
        ("gather a 64 KiB frame", 65536),
    ] {
        // A header descriptor, then the payload.
        desc(&mem, 0, BUFFERS, HDR_LEN as u32, VRING_DESC_F_NEXT as u16);
        desc(&mem, 1, BUFFERS + 0x1000, payload, 0);
        mem.write_obj(0u16, GuestAddress(AVAIL + 4)).unwrap();
        mem.write_obj(1u16, GuestAddress(AVAIL + 2)).unwrap();
        let mut frame = Vec::new();
        group.throughput(Throughput::Bytes(u64::from(payload) + HDR_LEN as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                queue,
                |mut q| {
                    let chain = q.iter(&mem).unwrap().next().unwrap();
                    tx::gather(&mem, chain, &mut frame).unwrap();
                    black_box(frame.len());
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, receive, transmit);
criterion_main!(benches);
