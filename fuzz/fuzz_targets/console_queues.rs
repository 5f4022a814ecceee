//! Fuzzes what a guest controls in a virtio-console device's queues: the descriptor tables,
//! available rings and buffers of the transmit and receive queues, through the same paths as the
//! device's worker: `virtio::drain` with the console's transmit handler (each chain's readable
//! bytes written out), and the receive path filling each chain with the host's input. Any panic, a
//! transmit chain that writes out more than `MAX_TX` bytes, output that the counters do not match,
//! or a receive chain given more bytes than there were, is a finding.
//!
//! Input: 2 bytes of queue size (rounded down to a power of two, 1..=256), 2 bytes each of the two
//! available indexes, 1 byte of flags (bit 0: event index), 2 bytes of host input length, then up
//! to 64 KiB of guest memory. Transmit queue: descriptors at 0, available ring at 0x1000, used ring
//! at 0x2000; receive queue: 0x3000, 0x4000, 0x5000. The host input is a pattern of the given
//! length.

#![no_main]

mod common;

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use kvmkit_memory::GuestMemoryMmap;
use kvmkit_virtio::{ChainHandler, Interrupt, drain};
use kvmkit_virtio_devices::console::{Console, MAX_TX, fill_receive_chain};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// The console's output: every byte, kept for the checks.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The console's transmit handler, checking what each chain writes out.
struct Checked<'a, H> {
    inner: H,
    sink: &'a Sink,
    chains: u64,
}

impl<H: ChainHandler> ChainHandler for Checked<'_, H> {
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        let before = self.sink.0.lock().unwrap().len();
        let used = self.inner.handle(mem, chain);
        let out = self.sink.0.lock().unwrap().len() - before;
        assert!(out <= MAX_TX as usize, "one chain wrote out {out} bytes");
        assert_eq!(used, 0, "the device writes nothing into a transmit chain");
        self.chains += 1;
        used
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let size = common::queue_size([data[0], data[1]]);
    let tx_avail = u16::from_le_bytes([data[2], data[3]]);
    let rx_avail = u16::from_le_bytes([data[4], data[5]]);
    let event_idx = data[6] & 1 != 0;
    let input_len = usize::from(u16::from_le_bytes([data[7], data[8]]));
    let mem = common::guest_memory(&data[9..]);
    mem.write_obj(tx_avail, GuestAddress(0x1002)).unwrap();
    mem.write_obj(rx_avail, GuestAddress(0x4002)).unwrap();

    let sink = Sink::default();
    let console = Console::new("hvc-fuzz", Box::new(sink.clone()), None, None);
    let stats = console.stats();
    if let Some(mut txq) = common::queue(size, 0, event_idx, &mem) {
        let interrupt = Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap());
        let mut handler = Checked {
            inner: console.transmit_handler(),
            sink: &sink,
            chains: 0,
        };
        let before = txq.next_used();
        if drain("hvc-fuzz", &mem, &mut txq, &interrupt, &mut handler).is_ok() {
            let answered = txq.next_used().wrapping_sub(before);
            assert!(
                u64::from(answered) <= handler.chains,
                "used entries without chains"
            );
        }
        let written = sink.0.lock().unwrap().len() as u64;
        assert_eq!(stats.tx_bytes.load(Ordering::Relaxed), written);
        assert!(written <= handler.chains * u64::from(MAX_TX));
    }

    let input: Vec<u8> = (0..input_len).map(|i| (i * 7 + 3) as u8).collect();
    if let Some(mut rxq) = common::queue(size, 0x3000, event_idx, &mem) {
        let mut at = 0usize;
        for _ in 0..usize::from(size) {
            let Some(chain) = rxq.pop_descriptor_chain(&mem) else {
                break;
            };
            let head = chain.head_index();
            let n = fill_receive_chain(&mem, chain, &input[at..]) as usize;
            assert!(
                n <= input.len() - at,
                "given {n} bytes of {}",
                input.len() - at
            );
            at += n;
            if head < size && rxq.add_used(&mem, head, n as u32).is_err() {
                break;
            }
        }
    }
});
