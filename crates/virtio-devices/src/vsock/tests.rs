//! The vsock device behind the virtio-mmio transport, driven by a fake guest driver against real
//! Unix sockets: connections either way, data and credit, shutdowns and resets, refused connects,
//! bad host clients, and packets a hostile guest makes up.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio::testing::{FakeDriver, R, W};

use super::packet::{
    HEADER_SIZE, HOST_CID, Header, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
    OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{RX_QUEUE, TX_QUEUE, Vsock, VsockStats};

const FEATURES: u64 = virtio::VIRTIO_F_VERSION_1 | virtio::VIRTIO_RING_F_EVENT_IDX;
const CID: u64 = 42;
const TX_AREA: u64 = 0x10_0000;
const RX_AREA: u64 = 0x20_0000;
const RX_DATA: u32 = 4096;
const GUEST_BUF: u32 = 256 << 10;

fn encode(h: &Header) -> Vec<u8> {
    let mut b = Vec::with_capacity(44);
    b.extend_from_slice(&h.src_cid.to_le_bytes());
    b.extend_from_slice(&h.dst_cid.to_le_bytes());
    b.extend_from_slice(&h.src_port.to_le_bytes());
    b.extend_from_slice(&h.dst_port.to_le_bytes());
    b.extend_from_slice(&h.len.to_le_bytes());
    b.extend_from_slice(&h.type_.to_le_bytes());
    b.extend_from_slice(&h.op.to_le_bytes());
    b.extend_from_slice(&h.flags.to_le_bytes());
    b.extend_from_slice(&h.buf_alloc.to_le_bytes());
    b.extend_from_slice(&h.fwd_cnt.to_le_bytes());
    b
}

fn decode(b: &[u8]) -> Header {
    let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
    let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
    let u16_at = |i: usize| u16::from_le_bytes(b[i..i + 2].try_into().unwrap());
    Header {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    }
}

/// A packet from the guest's port `src` to the host's port `dst`.
fn packet(src: u32, dst: u32, op: u16) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port: src,
        dst_port: dst,
        len: 0,
        type_: TYPE_STREAM,
        op,
        flags: 0,
        buf_alloc: GUEST_BUF,
        fwd_cnt: 0,
    }
}

/// A directory of its own for each test's sockets, removed at the end.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kvmkit-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    fn path(&self) -> PathBuf {
        self.0.join("v.sock")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest's side: a fake driver of the device, its receive buffers and its packets.
struct Guest {
    d: FakeDriver,
    stats: std::sync::Arc<VsockStats>,
    rx_heads: HashMap<u32, u64>,
    rx_slot: u64,
    tx_slot: u64,
}

impl Guest {
    fn new(dir: &Dir) -> Self {
        let listener = UnixListener::bind(dir.path()).unwrap();
        let vsock = Vsock::new("vsock-test", CID, listener, &dir.path()).unwrap();
        let stats = vsock.stats();
        let mut d = FakeDriver::new(Box::new(vsock), 8 << 20, 64);
        d.start(FEATURES);
        Self {
            d,
            stats,
            rx_heads: HashMap::new(),
            rx_slot: 0,
            tx_slot: 0,
        }
    }

    /// Posts `n` receive buffers (at most 32 outstanding: two descriptors each).
    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let base = RX_AREA + (self.rx_slot % 32) * 0x2000;
            self.rx_slot += 1;
            let head = self.d.add(
                RX_QUEUE,
                &[(base, HEADER_SIZE, W), (base + 0x1000, RX_DATA, W)],
            );
            self.rx_heads.insert(u32::from(head), base);
        }
        self.d.kick(RX_QUEUE);
    }

    /// Sends `h` with `payload` (its length set) and waits for the device to take it.
    fn send(&mut self, mut h: Header, payload: &[u8]) {
        h.len = payload.len() as u32;
        let base = TX_AREA + (self.tx_slot % 16) * 0x1_2000;
        self.tx_slot += 1;
        self.d.write(base, &encode(&h));
        if payload.is_empty() {
            self.d.add(TX_QUEUE, &[(base, HEADER_SIZE, R)]);
        } else {
            self.d.write(base + 0x1000, payload);
            self.d.add(
                TX_QUEUE,
                &[(base, HEADER_SIZE, R), (base + 0x1000, h.len, R)],
            );
        }
        self.d.kick(TX_QUEUE);
        self.d.wait_used(TX_QUEUE, 1);
    }

    /// The next packet the device put in a receive buffer.
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let (head, len) = self.d.wait_used(RX_QUEUE, 1)[0];
        let base = self.rx_heads[&head];
        let h = decode(&self.d.read(base, HEADER_SIZE as usize));
        assert_eq!(len, HEADER_SIZE + h.len, "used length");
        (h, self.d.read(base + 0x1000, h.len as usize))
    }

    /// True if the device has used no receive buffer since the last `recv`, after a while.
    fn nothing_received(&mut self) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        let before = self.d.used_idx(RX_QUEUE);
        std::thread::sleep(Duration::from_millis(100));
        self.d.used_idx(RX_QUEUE) == before
    }
}

fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

fn accept(l: &UnixListener) -> UnixStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    l.set_nonblocking(true).unwrap();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("no connection: {e}"),
        }
    }
}

#[test]
fn the_configuration_space_holds_the_guest_cid() {
    let dir = Dir::new("config");
    let mut g = Guest::new(&dir);
    assert_eq!(g.d.r(0x08), 19, "device ID");
    assert_eq!(g.d.config(0, 8), CID.to_le_bytes());
    assert_eq!(g.d.config(8, 4), [0; 4], "past the end reads zero");
}

#[test]
fn a_guest_connects_to_a_host_listener_and_they_talk_both_ways() {
    let dir = Dir::new("g2h");
    let host = UnixListener::bind(format!("{}_52", dir.path().display())).unwrap();
    let mut g = Guest::new(&dir);
    g.post_rx(8);
    g.send(packet(1000, 52, OP_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!(
        (h.op, h.src_cid, h.dst_cid, h.src_port, h.dst_port),
        (OP_RESPONSE, HOST_CID, CID, 52, 1000)
    );
    assert_eq!(h.buf_alloc, super::TO_HOST_BUF);
    let mut s = accept(&host);

    g.send(packet(1000, 52, OP_RW), b"ping from the guest");
    let mut got = [0u8; 19];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping from the guest");

    s.write_all(b"pong from the host").unwrap();
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"pong from the host"[..]));
    assert_eq!(h.fwd_cnt, 19, "the guest's bytes passed on are counted");

    // The guest closes: the host sees the end, the guest gets its reset.
    let mut shut = packet(1000, 52, OP_SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    let (h, _) = g.recv();
    assert_eq!(h.op, OP_RST);
    assert_eq!(s.read(&mut got).unwrap(), 0);
    assert_eq!(g.stats.closed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_connect_to_a_port_nobody_listens_on_is_reset() {
    let dir = Dir::new("refused");
    let mut g = Guest::new(&dir);
    g.post_rx(4);
    g.send(packet(1000, 77, OP_REQUEST), &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 77, 1000));
    // Data for a connection that does not exist: reset; a reset for one: nothing.
    g.send(packet(1001, 77, OP_RW), b"x");
    assert_eq!(g.recv().0.op, OP_RST);
    g.send(packet(1002, 77, OP_RST), &[]);
    assert!(g.nothing_received());
}

#[test]
fn a_host_client_connects_to_a_guest_port() {
    let dir = Dir::new("h2g");
    let mut g = Guest::new(&dir);
    g.post_rx(8);
    let mut client = UnixStream::connect(dir.path()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 1234\nearly bytes").unwrap();
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port, h.dst_cid), (OP_REQUEST, 1234, CID));
    let host_port = h.src_port;
    assert!(host_port >= 1 << 30);
    let mut resp = packet(1234, host_port, OP_RESPONSE);
    resp.buf_alloc = GUEST_BUF;
    g.send(resp, &[]);
    assert_eq!(read_line(&mut client), format!("OK {host_port}"));
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"early bytes"[..]));
    g.send(packet(1234, host_port, OP_RW), b"hello host");
    let mut got = [0u8; 10];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello host");
    // The client leaves: the guest is told it will get no more.
    drop(client);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
}

#[test]
fn a_guest_that_refuses_a_host_client_closes_it() {
    let dir = Dir::new("h2g-refused");
    let mut g = Guest::new(&dir);
    g.post_rx(4);
    let mut client = UnixStream::connect(dir.path()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    let (h, _) = g.recv();
    g.send(packet(9, h.src_port, OP_RST), &[]);
    let mut b = [0u8; 1];
    assert_eq!(client.read(&mut b).unwrap(), 0, "closed without OK");
}

#[test]
fn host_clients_with_bad_lines_are_closed_and_the_device_goes_on() {
    let dir = Dir::new("bad-lines");
    let mut g = Guest::new(&dir);
    g.post_rx(4);
    for line in [
        &b"CONNECT\n"[..],
        b"CONNECT x\n",
        b"HELLO 5\n",
        &[b'9'; 64],
        b"CONNECT 5",
    ] {
        let mut c = UnixStream::connect(dir.path()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(line).unwrap();
        if !line.ends_with(b"\n") && line.len() < super::muxer::LINE_MAX {
            // An unfinished line waits; leaving ends it.
            c.shutdown(std::net::Shutdown::Write).unwrap();
        }
        let mut b = [0u8; 1];
        assert_eq!(c.read(&mut b).unwrap_or(0), 0, "{line:?} is closed");
    }
    assert!(g.nothing_received(), "the guest was asked nothing");
    let mut c = UnixStream::connect(dir.path()).unwrap();
    c.write_all(b"CONNECT 5\n").unwrap();
    assert_eq!(g.recv().0.op, OP_REQUEST);
}

#[test]
fn a_guest_that_never_reads_makes_the_host_writer_wait() {
    let dir = Dir::new("no-reader");
    let host = UnixListener::bind(format!("{}_52", dir.path().display())).unwrap();
    let mut g = Guest::new(&dir);
    g.post_rx(1);
    let mut req = packet(1000, 52, OP_REQUEST);
    req.buf_alloc = 16 << 10;
    g.send(req, &[]);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    let mut s = accept(&host);
    s.set_nonblocking(true).unwrap();
    // The guest posts buffers but never consumes: it has 16 KiB of credit.
    g.post_rx(30);
    let chunk = [0x5au8; 4096];
    let mut written = 0usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut blocked = 0;
    while blocked < 50 {
        match s.write(&chunk) {
            Ok(n) => written += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                blocked += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the host writer never had to wait"
        );
    }
    assert!(written > 16 << 10);
    std::thread::sleep(Duration::from_millis(300));
    let (mut delivered, mut asked) = (0, false);
    for _ in 1..g.d.used_idx(RX_QUEUE) {
        let (h, data) = g.recv();
        match h.op {
            OP_RW => delivered += data.len(),
            super::packet::OP_CREDIT_REQUEST => asked = true,
            op => panic!("unexpected op {op}"),
        }
    }
    assert_eq!(delivered, 16 << 10, "the guest got exactly its credit");
    assert!(asked, "and the device asked for more");
    assert!(g.nothing_received());
    // The guest frees 8 KiB: 8 KiB more come.
    let mut upd = packet(1000, 52, OP_CREDIT_UPDATE);
    upd.buf_alloc = 16 << 10;
    upd.fwd_cnt = 8 << 10;
    g.send(upd, &[]);
    let mut more = 0;
    while more < 8 << 10 {
        let (h, data) = g.recv();
        assert_eq!(h.op, OP_RW);
        more += data.len();
    }
    assert_eq!(more, 8 << 10);
    assert!(g.nothing_received());
}

#[test]
fn packets_a_hostile_guest_makes_up_are_dropped_or_reset_and_counted() {
    let dir = Dir::new("hostile");
    let mut g = Guest::new(&dir);
    g.post_rx(8);
    // From another CID, or to one that is not the host: dropped.
    let mut spoofed = packet(1, 52, OP_REQUEST);
    spoofed.src_cid = 7;
    g.send(spoofed, &[]);
    let mut elsewhere = packet(1, 52, OP_REQUEST);
    elsewhere.dst_cid = 99;
    g.send(elsewhere, &[]);
    // A header that does not fit its descriptor; a length past the payload descriptor.
    g.d.add(TX_QUEUE, &[(TX_AREA, 20, R)]);
    let mut long = packet(1, 52, OP_RW);
    long.len = 100;
    g.d.write(TX_AREA + 0x1000, &encode(&long));
    g.d.add(
        TX_QUEUE,
        &[
            (TX_AREA + 0x1000, HEADER_SIZE, R),
            (TX_AREA + 0x2000, 10, R),
        ],
    );
    // A write-only transmit descriptor, a payload past the end of guest memory.
    g.d.add(TX_QUEUE, &[(TX_AREA + 0x1000, HEADER_SIZE, W)]);
    g.d.add(
        TX_QUEUE,
        &[(TX_AREA + 0x1000, HEADER_SIZE, R), (u64::MAX - 50, 100, R)],
    );
    g.d.kick(TX_QUEUE);
    g.d.wait_used(TX_QUEUE, 4);
    assert!(g.nothing_received());
    assert_eq!(g.stats.bad_packets.load(Ordering::Relaxed), 6);
    // A type that is not a stream, an unknown operation: reset.
    let mut dgram = packet(1, 52, OP_REQUEST);
    dgram.type_ = 2;
    g.send(dgram, &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.type_), (OP_RST, 2));
}

#[test]
fn a_receive_buffer_too_small_for_a_header_is_used_empty() {
    let dir = Dir::new("tiny-rx");
    let mut g = Guest::new(&dir);
    let tiny = g.d.add(RX_QUEUE, &[(RX_AREA + 0x4_0000, 8, W)]);
    g.rx_slot = 1;
    g.post_rx(1);
    // An unknown operation for no connection: a reset, in the second buffer.
    g.send(packet(2, 53, 99), &[]);
    assert_eq!(g.d.wait_used(RX_QUEUE, 1)[0], (u32::from(tiny), 0));
    assert_eq!(g.recv().0.op, OP_RST);
    assert_eq!(g.d.status() & 64, 0, "the device is fine");
}

#[test]
fn more_host_clients_than_the_device_reads_lines_of_wait_their_turn() {
    let dir = Dir::new("many-clients");
    let mut g = Guest::new(&dir);
    let n = super::muxer::MAX_CLIENTS + 22;
    let mut clients: Vec<UnixStream> = (0..n)
        .map(|_| UnixStream::connect(dir.path()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    for c in &mut clients {
        c.write_all(b"CONNECT 7\n").unwrap();
    }
    let mut ports = std::collections::HashSet::new();
    while ports.len() < n {
        g.post_rx(16);
        for _ in 0..16 {
            let (h, _) = g.recv();
            assert_eq!((h.op, h.dst_port), (OP_REQUEST, 7));
            ports.insert(h.src_port);
        }
        if n - ports.len() < 16 {
            break;
        }
    }
    g.post_rx(16);
    while ports.len() < n {
        ports.insert(g.recv().0.src_port);
    }
    assert_eq!(
        ports.len(),
        n,
        "every client was asked for, each from a port of its own"
    );
}

/// A guest with a connection to the host's port 52, and the host's end of it.
fn connected(dir: &Dir) -> (Guest, UnixStream, UnixListener) {
    let host = UnixListener::bind(format!("{}_52", dir.path().display())).unwrap();
    let mut g = Guest::new(dir);
    g.post_rx(8);
    g.send(packet(1000, 52, OP_REQUEST), &[]);
    assert_eq!(g.recv().0.op, OP_RESPONSE);
    let s = accept(&host);
    (g, s, host)
}

#[test]
fn a_pause_keeps_the_connections_and_a_reset_ends_them() {
    let dir = Dir::new("pause");
    let (mut g, mut s, _host) = connected(&dir);
    g.d.transport.suspend();
    s.write_all(b"while paused").unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(g.d.used_idx(RX_QUEUE), 1, "nothing moves while paused");
    g.d.transport.resume();
    let (h, data) = g.recv();
    assert_eq!((h.op, data.as_slice()), (OP_RW, &b"while paused"[..]));
    g.send(packet(1000, 52, OP_RW), b"after");
    let mut got = [0u8; 5];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"after");
    // The driver resets the device: the host's end sees the connection close.
    g.d.start(FEATURES);
    assert_eq!(s.read(&mut got).unwrap(), 0);
    assert_eq!(g.stats.closed.load(Ordering::Relaxed), 1);
}

#[test]
fn a_restored_device_tells_the_driver_its_connections_are_gone() {
    let dir = Dir::new("restored");
    let (mut g, _s, _host) = connected(&dir);
    let event = g.d.add(super::EVENT_QUEUE, &[(0x7_0000, 8, W)]);
    g.d.write(0x7_0000, &[0xff; 8]);
    g.d.transport.suspend();
    let state = g.d.transport.state();
    // A new process: a new device on a new socket, over the same guest memory.
    let listener = UnixListener::bind(dir.0.join("w.sock")).unwrap();
    let vsock = Vsock::new("vsock-test", CID, listener, &dir.0.join("w.sock")).unwrap();
    let irq = g.d.irq.try_clone().unwrap();
    let mut t = virtio::MmioTransport::new(Box::new(vsock), g.d.mem.clone(), irq).unwrap();
    t.restore(&state).unwrap();
    t.resume();
    g.d.transport = t;
    assert_eq!(
        g.d.wait_used(super::EVENT_QUEUE, 1)[0],
        (u32::from(event), 4)
    );
    assert_eq!(
        g.d.read(0x7_0000, 4),
        [0, 0, 0, 0],
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    // The guest's next packet on its old connection is answered with a reset.
    g.send(packet(1000, 52, OP_RW), b"stale");
    assert_eq!(g.recv().0.op, OP_RST);
}

#[test]
fn a_host_client_the_guest_does_not_accept_in_time_is_given_up() {
    let dir = Dir::new("h2g-timeout");
    let mut g = Guest::new(&dir);
    g.post_rx(8);
    let connect = |port: u32| {
        let mut c = UnixStream::connect(dir.path()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
        c
    };
    // One connection the guest accepts, one it leaves unanswered.
    let mut accepted = connect(7);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (OP_REQUEST, 7));
    let mut resp = packet(7, h.src_port, OP_RESPONSE);
    resp.buf_alloc = GUEST_BUF;
    g.send(resp, &[]);
    assert_eq!(read_line(&mut accepted), format!("OK {}", h.src_port));
    let mut ignored = connect(8);
    let (asked, _) = g.recv();
    assert_eq!((asked.op, asked.dst_port), (OP_REQUEST, 8));

    // After CONNECT_TIMEOUT the unanswered one is reset for the guest and closed for its client.
    let (h, _) = g.recv();
    assert_eq!(
        (h.op, h.src_port, h.dst_port),
        (OP_RST, asked.src_port, 8),
        "the guest hears the connect is off"
    );
    let mut b = [0u8; 1];
    assert_eq!(ignored.read(&mut b).unwrap(), 0, "closed without OK");
    assert_eq!(g.stats.connect_timeouts.load(Ordering::Relaxed), 1);
    // The guest's late answer is refused; the accepted connection goes on.
    let mut late = packet(8, asked.src_port, OP_RESPONSE);
    late.buf_alloc = GUEST_BUF;
    g.send(late, &[]);
    let (h, _) = g.recv();
    assert_eq!((h.op, h.dst_port), (OP_RST, 8));
    g.send(packet(7, resp.dst_port, OP_RW), b"still here");
    let mut got = [0u8; 10];
    accepted.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"still here");
}

#[test]
fn a_closed_connection_whose_host_end_does_not_drain_in_time_is_reset() {
    let dir = Dir::new("drain");
    let (mut g, mut s, _host) = connected(&dir);
    // More than the host socket's buffer holds, within the guest's credit: some bytes stay held.
    let chunk = vec![0x77u8; 64 << 10];
    for _ in 0..4 {
        g.send(packet(1000, 52, OP_RW), &chunk);
    }
    let mut shut = packet(1000, 52, OP_SHUTDOWN);
    shut.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    g.send(shut, &[]);
    // The host never reads: after SHUTDOWN_TIMEOUT the guest gets its reset (after the credit
    // updates for what the host socket took).
    let mut h = g.recv().0;
    while h.op == OP_CREDIT_UPDATE {
        h = g.recv().0;
    }
    assert_eq!((h.op, h.src_port, h.dst_port), (OP_RST, 52, 1000));
    assert_eq!(g.stats.drain_timeouts.load(Ordering::Relaxed), 1);
    // The host end finds what its socket took, then the end (or a reset): not all of it.
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.len() < 4 * chunk.len(), "{} bytes", got.len());
    assert!(got.iter().all(|&b| b == 0x77));
}
