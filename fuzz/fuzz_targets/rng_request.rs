//! Fuzzes what a guest controls in a virtio-rng queue: the descriptor table, the available ring and
//! the buffers, through the same path as the device's worker (`virtio::drain`, which walks the
//! available ring and each chain with virtio-queue, and the device's chain handler, which fills the
//! chain's buffers with random bytes). Any panic, an answer longer than the per-request cap, or a
//! used ring that does not grow by the chains answered, is a finding.
//!
//! Input: 2 bytes of queue size (rounded down to a power of two, 1..=256), 2 bytes of available
//! index, 1 byte of flags (bit 0: event index), 2 bytes of cap (the device's `max_request`, at least
//! 1), then up to 64 KiB of guest memory. The descriptor table is at 0, the available ring at 0x1000,
//! the used ring at 0x2000.

#![no_main]

mod common;

use kvmkit_memory::GuestMemoryMmap;
use kvmkit_virtio::{ChainHandler, Interrupt, drain};
use kvmkit_virtio_devices::rng::{Rng, RngConfig};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The device's handler, with checks on each answer.
struct Checked<H> {
    inner: H,
    cap: u32,
    answered: u32,
}

impl<H: ChainHandler> ChainHandler for Checked<H> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        // (The answer is not checked against the chain's writable bytes as read beforehand: a
        // guest may point a buffer at its own descriptor table, and the random bytes written into
        // it then change the descriptors the device reads next. The fuzzer found such a chain.)
        let len = self.inner.handle(mem, chain);
        assert!(
            len <= self.cap,
            "answered {len} bytes, the cap is {}",
            self.cap
        );
        self.answered += 1;
        len
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 7 {
        return;
    }
    let size = common::queue_size([data[0], data[1]]);
    let avail_idx = u16::from_le_bytes([data[2], data[3]]);
    let event_idx = data[4] & 1 != 0;
    let cap = u32::from(u16::from_le_bytes([data[5], data[6]])).max(1);
    let mem = common::guest_memory(&data[7..]);
    mem.write_obj(avail_idx, GuestAddress(0x1002)).unwrap();

    let Some(mut queue) = common::queue(size, 0, event_idx, &mem) else {
        return;
    };
    let rng = Rng::new("rng-fuzz", &RngConfig::with_max_request(cap));
    let mut handler = Checked {
        inner: rng.handler(),
        cap,
        answered: 0,
    };
    let interrupt = Interrupt::new(EventFd::new(libc_nonblock()).unwrap());
    let before = queue.next_used();
    if drain("rng-fuzz", &mem, &mut queue, &interrupt, &mut handler).is_ok() {
        // Each chain the handler answered went into the used ring (dropped heads are not answered).
        let used = queue.next_used().wrapping_sub(before);
        assert_eq!(u32::from(used), handler.answered);
    }
});

fn libc_nonblock() -> i32 {
    vmm_sys_util::eventfd::EFD_NONBLOCK
}
