//! The network device behind the virtio-mmio transport, driven by a fake driver on one side and a
//! fake tap (a datagram socket pair: one frame per datagram, like a tap) on the other.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio::testing::{FakeDriver, R, W};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_UFO,
    VIRTIO_NET_F_HOST_UFO, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
};

use super::tap::{TUN_F_CSUM, TUN_F_TSO4, TUN_F_UFO};
use super::{Backend, HDR_LEN, MAX_FRAME, MacAddr, Net, NetStats, RX_QUEUE, TX_QUEUE};

const MAC: MacAddr = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
const VERSION_1: u64 = virtio::VIRTIO_F_VERSION_1;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;

/// The device's end of a fake tap; the offloads it was asked for are recorded.
struct FakeTap {
    sock: UnixDatagram,
    offloads: Arc<Mutex<Vec<u32>>>,
    refuse_ufo: bool,
}

impl AsRawFd for FakeTap {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl Backend for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.sock.recv(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.sock.send(frame)
    }
    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        if self.refuse_ufo && flags & TUN_F_UFO != 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.offloads.lock().unwrap().push(flags);
        Ok(())
    }
    fn try_clone(&self) -> std::io::Result<Box<dyn Backend>> {
        Ok(Box::new(FakeTap {
            sock: self.sock.try_clone()?,
            offloads: self.offloads.clone(),
            refuse_ufo: self.refuse_ufo,
        }))
    }
}

/// A fake driver of a net device, the host's end of its fake tap, and what the device counted.
struct Setup {
    d: FakeDriver,
    host: UnixDatagram,
    offloads: Arc<Mutex<Vec<u32>>>,
    stats: Arc<NetStats>,
}

fn setup_named(name: &str, refuse_ufo: bool, features: u64) -> Setup {
    let (device_end, host) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    host.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let offloads = Arc::new(Mutex::new(Vec::new()));
    let tap = FakeTap {
        sock: device_end,
        offloads: offloads.clone(),
        refuse_ufo,
    };
    let net = Net::with_backend(name, MAC, Box::new(tap));
    let stats = net.stats();
    let mut d = FakeDriver::new(Box::new(net), 4 << 20, 16);
    if features != 0 {
        d.start(features);
    }
    Setup {
        d,
        host,
        offloads,
        stats,
    }
}

fn setup(features: u64) -> Setup {
    setup_named("net-test", false, features)
}

/// A frame as the tap carries it: a zeroed 12-byte header, then `len` bytes of a pattern.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; HDR_LEN];
    f.extend((0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)));
    f
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    NetStats::get(c)
}

#[test]
fn the_guest_sees_its_mac_a_link_and_the_offloads_the_tap_can_do() {
    let mut s = setup(0);
    assert_eq!(s.d.r(0x08), 1, "network device");
    assert_eq!(s.d.config(0, 6), MAC.0);
    assert_eq!(s.d.config(6, 2), vec![1, 0], "VIRTIO_NET_S_LINK_UP");
    let f = s.d.device_features();
    for bit in [
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_UFO,
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit}");
    }
    // A tap that refuses UFO: neither direction offers it.
    let mut s = setup_named("net-test", true, 0);
    let f = s.d.device_features();
    assert_eq!(
        f & (1 << VIRTIO_NET_F_GUEST_UFO | 1 << VIRTIO_NET_F_HOST_UFO),
        0
    );
    assert_ne!(f & (1 << VIRTIO_NET_F_GUEST_TSO4), 0);
}

#[test]
fn what_the_guest_accepts_becomes_the_taps_offloads() {
    let s = setup(VERSION_1 | 1 << VIRTIO_NET_F_GUEST_CSUM | 1 << VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(
        s.offloads.lock().unwrap().last(),
        Some(&(TUN_F_CSUM | TUN_F_TSO4))
    );
    // TSO without the checksum offload is meaningless to the tap: nothing is offloaded.
    let s = setup(VERSION_1 | 1 << VIRTIO_NET_F_GUEST_TSO4);
    assert_eq!(s.offloads.lock().unwrap().last(), Some(&0));
}

#[test]
fn a_transmitted_chain_reaches_the_tap_as_one_frame() {
    let mut s = setup(VERSION_1);
    let f = frame(1000, 3);
    s.d.write(0x40000, &f[..HDR_LEN]);
    s.d.write(0x50000, &f[HDR_LEN..]);
    let head = s.d.add(
        TX_QUEUE,
        &[(0x40000, HDR_LEN as u32, R), (0x50000, 1000, R)],
    );
    s.d.kick(TX_QUEUE);
    assert_eq!(s.d.wait_used(TX_QUEUE, 1), vec![(u32::from(head), 0)]);
    let mut got = vec![0u8; MAX_FRAME];
    let n = s.host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &f[..]);
    assert_eq!(counter(&s.stats.tx_frames), 1);
    assert_eq!(counter(&s.stats.tx_bytes), f.len() as u64);
    assert_ne!(s.d.r(0x60) & 1, 0, "used-buffer interrupt");
}

#[test]
fn a_received_frame_spans_mergeable_buffers_and_says_how_many() {
    let mut s = setup(VERSION_1 | MRG);
    let f = frame(2500, 9);
    for i in 0..3u64 {
        s.d.add(RX_QUEUE, &[(0x100000 + 0x1000 * i, 1500, W)]);
    }
    s.d.kick(RX_QUEUE);
    s.host.send(&f).unwrap();
    let used = s.d.wait_used(RX_QUEUE, 2);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![1500, 1012]
    );
    let mut got = s.d.read(0x100000, 1500);
    got.extend(s.d.read(0x101000, 1012));
    // The header's num_buffers (bytes 10..12) says 2; the rest is the frame as sent.
    assert_eq!(&got[10..12], &[2, 0]);
    assert_eq!(&got[..10], &f[..10]);
    assert_eq!(&got[HDR_LEN..], &f[HDR_LEN..]);
    assert_eq!(counter(&s.stats.rx_frames), 1);
}

/// CPU time (user + system, in clock ticks) the worker thread `kvmkit-<name>` has used so far. The
/// thread names itself once it runs, so a worker just activated is waited for (up to 10 s).
fn worker_cpu_ticks(name: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(ticks) = find_worker_cpu_ticks(name) {
            return ticks;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no kvmkit-{name} worker thread"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn find_worker_cpu_ticks(name: &str) -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == format!("kvmkit-{name}") {
            let stat = std::fs::read_to_string(task.join("stat")).unwrap();
            // Fields after the command (which ends with ')'): utime and stime are the 12th and 13th.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            return Some(f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap());
        }
    }
    None
}

#[test]
fn without_receive_buffers_frames_wait_and_the_worker_sleeps() {
    let mut s = setup_named("net-idle", false, VERSION_1 | MRG);
    for seed in 0..3 {
        s.host.send(&frame(100, seed)).unwrap();
    }
    // No buffers: nothing is delivered or dropped, and the worker does not spin meanwhile.
    let before = worker_cpu_ticks("net-idle");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        worker_cpu_ticks("net-idle") - before <= 5,
        "the worker used CPU while the guest had no buffers"
    );
    assert_eq!(s.d.used_idx(RX_QUEUE), 0);
    assert_eq!(counter(&s.stats.rx_dropped), 0);
    // Buffers and a notification: all three arrive, in order.
    for i in 0..3u64 {
        s.d.add(RX_QUEUE, &[(0x100000 + 0x1000 * i, 2048, W)]);
    }
    s.d.kick(RX_QUEUE);
    let used = s.d.wait_used(RX_QUEUE, 3);
    for (i, (_, len)) in used.iter().enumerate() {
        assert_eq!(*len as usize, HDR_LEN + 100);
        let got = s.d.read(0x100000 + 0x1000 * i as u64, HDR_LEN + 100);
        assert_eq!(&got[HDR_LEN..], &frame(100, i as u8)[HDR_LEN..]);
    }
    assert_eq!(counter(&s.stats.rx_frames), 3);
}

#[test]
fn without_mergeable_buffers_a_frame_too_big_is_dropped_and_the_buffer_kept() {
    let mut s = setup(VERSION_1);
    s.d.add(RX_QUEUE, &[(0x100000, 1000, W)]);
    s.d.kick(RX_QUEUE);
    s.host.send(&frame(1500, 1)).unwrap();
    s.d.wait_for("the drop", |_| counter(&s.stats.rx_dropped) == 1);
    assert_eq!(s.d.used_idx(RX_QUEUE), 0, "the buffer was not consumed");
    s.host.send(&frame(500, 2)).unwrap();
    assert_eq!(s.d.wait_used(RX_QUEUE, 1)[0].1 as usize, HDR_LEN + 500);
    assert_eq!(
        &s.d.read(0x100000, HDR_LEN + 2)[10..12],
        &[1, 0],
        "num_buffers is 1"
    );
}

#[test]
fn hostile_transmit_chains_are_dropped_and_transmit_goes_on() {
    let mut s = setup(VERSION_1);
    s.d.write(0x40000, &frame(64, 5));
    // A device-writable buffer; a buffer outside guest memory; a frame shorter than its header;
    // a frame larger than any the device sends (a descriptor of 128 KiB).
    s.d.add(TX_QUEUE, &[(0x40000, 76, W)]);
    s.d.add(TX_QUEUE, &[(0x3f_fff0, 76, R)]);
    s.d.add(TX_QUEUE, &[(0x40000, 8, R)]);
    s.d.add(TX_QUEUE, &[(0x40000, 128 << 10, R)]);
    // Then a good one.
    s.d.add(TX_QUEUE, &[(0x40000, 76, R)]);
    s.d.kick(TX_QUEUE);
    assert_eq!(s.d.wait_used(TX_QUEUE, 5).len(), 5);
    let mut got = vec![0u8; MAX_FRAME];
    let n = s.host.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &frame(64, 5)[..]);
    assert_eq!(counter(&s.stats.tx_dropped), 4);
    assert_eq!(counter(&s.stats.tx_frames), 1);
    assert_eq!(s.d.status() & 64, 0, "bad frames need no reset");
}

#[test]
fn receive_buffers_the_device_cannot_write_are_returned_unused() {
    let mut s = setup(VERSION_1 | MRG);
    // A device-readable buffer, then one outside guest memory, then a good one.
    s.d.add(RX_QUEUE, &[(0x100000, 2048, R)]);
    s.d.add(RX_QUEUE, &[(0x3f_ff00, 2048, W)]);
    s.d.add(RX_QUEUE, &[(0x102000, 2048, W)]);
    s.d.kick(RX_QUEUE);
    s.host.send(&frame(300, 4)).unwrap();
    let used = s.d.wait_used(RX_QUEUE, 3);
    assert_eq!(
        used.iter().map(|u| u.1).collect::<Vec<_>>(),
        vec![0, 0, (HDR_LEN + 300) as u32]
    );
    assert_eq!(
        &s.d.read(0x102000 + HDR_LEN as u64, 300)[..],
        &frame(300, 4)[HDR_LEN..]
    );
}

#[test]
fn a_broken_transmit_queue_needs_a_reset_and_receive_keeps_working() {
    let mut s = setup(VERSION_1 | MRG);
    s.d.set_avail_idx(TX_QUEUE, 900);
    s.d.kick(TX_QUEUE);
    s.d.wait_for("DEVICE_NEEDS_RESET", |d| d.status() & 64 != 0);
    s.d.add(RX_QUEUE, &[(0x100000, 2048, W)]);
    s.d.kick(RX_QUEUE);
    s.host.send(&frame(42, 6)).unwrap();
    assert_eq!(s.d.wait_used(RX_QUEUE, 1)[0].1 as usize, HDR_LEN + 42);
}

#[test]
fn a_broken_receive_queue_needs_a_reset_and_transmit_keeps_working() {
    let mut s = setup(VERSION_1 | MRG);
    s.d.set_avail_idx(RX_QUEUE, 900);
    s.host.send(&frame(42, 6)).unwrap();
    s.d.kick(RX_QUEUE);
    s.d.wait_for("DEVICE_NEEDS_RESET", |d| d.status() & 64 != 0);
    s.d.write(0x40000, &frame(20, 1));
    s.d.add(TX_QUEUE, &[(0x40000, (HDR_LEN + 20) as u32, R)]);
    s.d.kick(TX_QUEUE);
    s.d.wait_used(TX_QUEUE, 1);
    let mut got = vec![0u8; MAX_FRAME];
    assert_eq!(s.host.recv(&mut got).unwrap(), HDR_LEN + 20);
    // A reset brings receive back.
    s.d.start(VERSION_1 | MRG);
    s.d.add(RX_QUEUE, &[(0x100000, 2048, W)]);
    s.d.kick(RX_QUEUE);
    s.host.send(&frame(10, 2)).unwrap();
    assert_eq!(s.d.wait_used(RX_QUEUE, 1)[0].1 as usize, HDR_LEN + 10);
}
