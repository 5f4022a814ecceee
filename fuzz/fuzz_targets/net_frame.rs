//! Fuzzes what a guest controls in a virtio-net device's queues: the descriptor tables, available
//! rings and buffers of the receive and transmit queues, through the same paths as the device's
//! worker: the receive path putting a frame into the guest's buffers (with and without mergeable
//! buffers), and the transmit path gathering each chain into a frame. Any panic, a delivery that
//! uses more or fewer chains than it reports, or buffers consumed for a frame that was not
//! delivered, is a finding.
//!
//! Input: 1 byte of flags (bit 0: mergeable buffers), 2 bytes of queue size (rounded down to a power
//! of two, 1..=256), 2 bytes each of the two available indexes, 2 bytes of frame length, then up to
//! 64 KiB of guest memory. Receive queue: descriptors at 0, available ring at 0x1000, used ring at
//! 0x2000; transmit queue: 0x3000, 0x4000, 0x5000. The frame is a pattern of the given length.

#![no_main]

mod common;

use kvmkit_virtio_devices::net::rx::{Delivery, Scratch, deliver};
use kvmkit_virtio_devices::net::{HDR_LEN, MAX_FRAME, tx};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let mergeable = data[0] & 1 != 0;
    let size = common::queue_size([data[1], data[2]]);
    let rx_avail = u16::from_le_bytes([data[3], data[4]]);
    let tx_avail = u16::from_le_bytes([data[5], data[6]]);
    let frame_len = usize::from(u16::from_le_bytes([data[7], data[8]])).min(MAX_FRAME);
    let mem = common::guest_memory(&data[9..]);
    mem.write_obj(rx_avail, GuestAddress(0x1002)).unwrap();
    mem.write_obj(tx_avail, GuestAddress(0x4002)).unwrap();

    if let Some(mut rx) = common::queue(size, 0, false, &mem) {
        let mut frame: Vec<u8> = (0..frame_len).map(|i| i as u8).collect();
        let mut scratch = Scratch::default();
        let before = rx.next_used();
        if let Ok(delivery) = deliver(&mut rx, &mem, &mut frame, mergeable, &mut scratch) {
            let used = rx.next_used().wrapping_sub(before);
            match delivery {
                Delivery::Delivered { chains } => {
                    assert!(frame_len >= HDR_LEN);
                    assert!(mergeable || chains == 1);
                    // (The used entries' lengths cannot be read back: a guest may point its
                    // buffers at its own used ring.)
                    assert_eq!(u32::from(used), u32::from(chains) + scratch.rejected());
                }
                Delivery::NoBuffers | Delivery::Dropped(_) => {
                    // Only chains with bad buffers are used, with length 0.
                    assert_eq!(u32::from(used), scratch.rejected());
                }
            }
        }
    }

    if let Some(mut txq) = common::queue(size, 0x3000, false, &mem) {
        let mut frame = Vec::new();
        if let Ok(iter) = txq.iter(&mem) {
            let chains: Vec<_> = iter.collect();
            for chain in chains {
                if tx::gather(&mem, chain, &mut frame).is_ok() {
                    assert!((HDR_LEN..=MAX_FRAME).contains(&frame.len()));
                }
            }
        }
    }
});
