//! Fuzzes what a guest controls in a virtio-vsock device: the descriptor tables, available rings and
//! packets of the transmit and receive queues, through the same paths as the device's worker. Each
//! transmit chain is read as a packet; the packets that read are fed, in order, to one connection
//! (opened by the first) whose host end is a socket pair the harness has written to and never
//! reads, and after each the connection's packets for the guest are taken. Each receive chain is
//! filled with a packet as large as it takes. Any panic, a payload that does not match its header's
//! length, more held for the host than the credit given, or a used length past the header and room,
//! is a finding.
//!
//! Input: 2 bytes of queue size (rounded down to a power of two, 1..=256), 2 bytes each of the two
//! available indexes, then up to 64 KiB of guest memory. Transmit queue: descriptors at 0, available
//! ring at 0x1000, used ring at 0x2000; receive queue: 0x3000, 0x4000, 0x5000.

#![no_main]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;

use kvmkit_virtio_devices::vsock::TO_HOST_BUF;
use kvmkit_virtio_devices::vsock::connection::{Connection, Key};
use kvmkit_virtio_devices::vsock::packet::{HEADER_SIZE, Header, MAX_PAYLOAD, RxBuffer, read_tx};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Takes every packet the connection has for the guest, checking each.
fn drain(conn: &mut Connection, buf: &mut Vec<u8>) {
    for room in [0usize, 100, 4096, MAX_PAYLOAD as usize] {
        if let Some(h) = conn.next_packet(room, buf) {
            assert_eq!(h.len as usize, buf.len());
            assert!(buf.len() <= room);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 6 {
        return;
    }
    let size = common::queue_size([data[0], data[1]]);
    let tx_avail = u16::from_le_bytes([data[2], data[3]]);
    let rx_avail = u16::from_le_bytes([data[4], data[5]]);
    let mem = common::guest_memory(&data[6..]);
    mem.write_obj(tx_avail, GuestAddress(0x1002)).unwrap();
    mem.write_obj(rx_avail, GuestAddress(0x4002)).unwrap();

    if let Some(mut txq) = common::queue(size, 0, false, &mem) {
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let _ = host.write(&[0x42; 10000]);
        let mut conn: Option<Connection> = None;
        let (mut payload, mut out) = (Vec::new(), Vec::new());
        if let Ok(iter) = txq.iter(&mem) {
            let chains: Vec<_> = iter.collect();
            for chain in chains {
                let Ok(h) = read_tx(&mem, chain, &mut payload) else {
                    continue;
                };
                assert_eq!(payload.len(), h.len as usize);
                assert!(h.len <= MAX_PAYLOAD);
                match conn.as_mut() {
                    None => {
                        let key = Key {
                            local: h.dst_port,
                            peer: h.src_port,
                        };
                        let stream = ours.try_clone().unwrap();
                        conn = Some(Connection::from_guest(key, &h, stream));
                    }
                    Some(c) => c.guest_packet(&h, &payload),
                }
                if let Some(c) = conn.as_mut() {
                    c.host_readable(false);
                    drain(c, &mut out);
                    assert!(c.held() <= TO_HOST_BUF as usize);
                }
            }
        }
    }

    if let Some(mut rxq) = common::queue(size, 0x3000, false, &mem) {
        let fill = vec![0x5a; MAX_PAYLOAD as usize];
        while let Some(mut chain) = rxq.pop_descriptor_chain(&mem) {
            if let Ok(mut buf) = RxBuffer::new(&mem, &mut chain) {
                let room = buf.room();
                assert!(room <= MAX_PAYLOAD as usize);
                let used = buf.fill(&Header::default(), &fill);
                assert_eq!(used, HEADER_SIZE + room as u32);
            }
        }
    }
});
