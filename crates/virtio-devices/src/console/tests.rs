//! The console behind the virtio-mmio transport, driven by a fake driver: what the guest writes
//! reaches the output, what the host types reaches the guest's buffers (and waits for them), the
//! terminal size and its changes, the emergency write, and outputs and inputs that fail.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use virtio::testing::{FakeDriver, R, W};

use super::{Console, RX_QUEUE, TX_QUEUE, VIRTIO_CONSOLE_F_EMERG_WRITE, VIRTIO_CONSOLE_F_SIZE};

const FEATURES: u64 = virtio::VIRTIO_F_VERSION_1 | virtio::VIRTIO_RING_F_EVENT_IDX;
const SIZE_FEATURES: u64 = FEATURES | 1 << VIRTIO_CONSOLE_F_SIZE;

/// An output that keeps what it is given (or refuses everything).
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>, bool);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.1 {
            return Err(std::io::Error::from(std::io::ErrorKind::WouldBlock));
        }
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A console with `size`, its output captured and its input the other end of the returned socket.
fn console(size: Option<(u16, u16)>, refuse: bool) -> (Console, Capture, UnixStream) {
    let (host, device) = UnixStream::pair().unwrap();
    device.set_nonblocking(true).unwrap();
    let out = Capture(Arc::default(), refuse);
    let console = Console::new(
        "hvc-test",
        Box::new(out.clone()),
        Some(Box::new(device)),
        size,
    );
    (console, out, host)
}

fn driver(console: Console, features: u64) -> FakeDriver {
    let mut d = FakeDriver::new(Box::new(console), 4 << 20, 64);
    d.start(features);
    d
}

#[test]
fn a_console_with_one_port_and_the_terminal_size() {
    let (c, _, _host) = console(Some((80, 24)), false);
    let mut d = driver(c, SIZE_FEATURES);
    assert_eq!(d.r(0x08), 3, "device type: console");
    let features = d.device_features();
    assert_ne!(features & 1 << VIRTIO_CONSOLE_F_SIZE, 0);
    assert_ne!(features & 1 << VIRTIO_CONSOLE_F_EMERG_WRITE, 0);
    assert_eq!(d.config(0, 8), [80, 0, 24, 0, 1, 0, 0, 0]);

    let (c, _, _host) = console(None, false);
    let mut d = driver(c, FEATURES);
    assert_eq!(
        d.device_features() & 1 << VIRTIO_CONSOLE_F_SIZE,
        0,
        "no size to give"
    );
}

#[test]
fn what_the_guest_writes_reaches_the_output() {
    let (c, out, _host) = console(None, false);
    let stats = c.stats();
    let mut d = driver(c, FEATURES);
    d.write(0x40000, b"hello, ");
    d.write(0x41000, b"wor");
    d.write(0x42000, b"ld\n");
    let first = d.add(TX_QUEUE, &[(0x40000, 7, R)]);
    let second = d.add(TX_QUEUE, &[(0x41000, 3, R), (0x42000, 3, R)]);
    d.kick(TX_QUEUE);
    assert_eq!(
        d.wait_used(TX_QUEUE, 2),
        vec![(u32::from(first), 0), (u32::from(second), 0)]
    );
    assert_eq!(out.text(), "hello, world\n");
    assert_ne!(d.r(0x60) & 1, 0, "used-buffer interrupt");
    assert_eq!(stats.counters_now(), (13, 0, 0));
}

#[test]
fn what_the_host_types_waits_for_the_guest_s_buffers() {
    let (c, _, mut host) = console(None, false);
    let stats = c.stats();
    let mut d = driver(c, FEATURES);
    // No receive buffers yet: the bytes wait.
    host.write_all(b"ls -l\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(d.used_idx(RX_QUEUE), 0);
    // A buffer smaller than the input: filled, and the rest goes into the next one.
    let first = d.add(RX_QUEUE, &[(0x50000, 4, W)]);
    d.kick(RX_QUEUE);
    assert_eq!(d.wait_used(RX_QUEUE, 1), vec![(u32::from(first), 4)]);
    assert_eq!(d.read(0x50000, 4), b"ls -");
    let second = d.add(RX_QUEUE, &[(0x51000, 64, W)]);
    d.kick(RX_QUEUE);
    assert_eq!(d.wait_used(RX_QUEUE, 1), vec![(u32::from(second), 2)]);
    assert_eq!(d.read(0x51000, 2), b"l\n");
    // A buffer waiting for input gets it as soon as it comes.
    let third = d.add(RX_QUEUE, &[(0x52000, 64, W)]);
    d.kick(RX_QUEUE);
    host.write_all(b"q").unwrap();
    assert_eq!(d.wait_used(RX_QUEUE, 1), vec![(u32::from(third), 1)]);
    assert_eq!(d.read(0x52000, 1), b"q");
    assert_eq!(stats.counters_now(), (0, 0, 7));
}

#[test]
fn a_resize_reaches_a_driver_that_took_the_size_feature() {
    let (c, _, _host) = console(Some((80, 24)), false);
    let resizer = c.resizer();
    let mut d = driver(c, SIZE_FEATURES);
    // The first size comes with a configuration interrupt at the start (Linux reads it then).
    assert_ne!(d.r(0x60) & 2, 0, "configuration interrupt at the start");
    d.w(0x64, 2);
    assert_eq!(d.r(0x60) & 2, 0);
    resizer.resize(132, 43);
    assert_eq!(d.config(0, 4), [132, 0, 43, 0]);
    assert_ne!(d.r(0x60) & 2, 0, "configuration-change interrupt");

    let (c, _, _host) = console(Some((80, 24)), false);
    let resizer = c.resizer();
    let mut d = driver(c, FEATURES);
    resizer.resize(100, 30);
    assert_eq!(
        d.r(0x60) & 2,
        0,
        "no interrupt for a driver without the feature"
    );
}

#[test]
fn an_emergency_write_goes_out_at_once() {
    let (c, out, _host) = console(None, false);
    let mut d = driver(c, FEATURES | 1 << VIRTIO_CONSOLE_F_EMERG_WRITE);
    d.w(0x100 + 8, u32::from(b'!'));
    assert_eq!(out.text(), "!");
}

#[test]
fn an_output_that_refuses_drops_and_counts_and_the_guest_goes_on() {
    let (c, out, _host) = console(None, true);
    let stats = c.stats();
    let mut d = driver(c, FEATURES);
    d.write(0x40000, b"lost");
    for _ in 0..3 {
        d.add(TX_QUEUE, &[(0x40000, 4, R)]);
        d.kick(TX_QUEUE);
        d.wait_used(TX_QUEUE, 1);
    }
    assert_eq!(out.text(), "");
    assert_eq!(stats.counters_now(), (0, 12, 0));
}

#[test]
fn bad_buffers_and_a_closed_input_leave_the_device_working() {
    let (c, out, mut host) = console(None, false);
    let mut d = driver(c, FEATURES);
    // A receive chain outside guest memory gets nothing, and the input waits for the next one.
    let bad = d.add(RX_QUEUE, &[(1 << 40, 64, W)]);
    d.kick(RX_QUEUE);
    host.write_all(b"x").unwrap();
    assert_eq!(d.wait_used(RX_QUEUE, 1), vec![(u32::from(bad), 0)]);
    let good = d.add(RX_QUEUE, &[(0x50000, 64, W)]);
    d.kick(RX_QUEUE);
    assert_eq!(d.wait_used(RX_QUEUE, 1), vec![(u32::from(good), 1)]);
    assert_eq!(d.read(0x50000, 1), b"x");
    // A transmit chain partly outside guest memory: what could be read goes out.
    d.write(0x40000, b"ok");
    d.add(TX_QUEUE, &[(0x40000, 2, R), (1 << 40, 8, R)]);
    d.kick(TX_QUEUE);
    d.wait_used(TX_QUEUE, 1);
    assert_eq!(out.text(), "ok");
    // The host closes its end: no more input, and output still flows.
    drop(host);
    d.add(RX_QUEUE, &[(0x51000, 64, W)]);
    d.kick(RX_QUEUE);
    std::thread::sleep(std::time::Duration::from_millis(50));
    d.add(TX_QUEUE, &[(0x40000, 2, R)]);
    d.kick(TX_QUEUE);
    d.wait_used(TX_QUEUE, 1);
    assert_eq!(out.text(), "okok");
    assert_eq!(d.used_idx(RX_QUEUE), 2, "nothing more came in");
    assert_eq!(d.status() & 64, 0, "no reset needed");
}

impl super::ConsoleStats {
    /// (tx bytes, tx dropped, rx bytes).
    fn counters_now(&self) -> (u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.tx_bytes.load(Relaxed),
            self.tx_dropped.load(Relaxed),
            self.rx_bytes.load(Relaxed),
        )
    }
}

/// The queue paths fuzzing drives without a worker: `transmit_handler` through `virtio::drain`,
/// and `fill_receive_chain`, over a queue set up by hand.
#[test]
fn the_transmit_handler_and_the_receive_filler_work_without_a_worker() {
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    let mem = memory::GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // A queue with its descriptor table at `base`, available ring at +0x1000, used at +0x2000,
    // holding one chain of `descs` (address, length, device-writable).
    let queue = |base: u64, descs: &[(u64, u32, bool)]| {
        for (i, &(addr, len, writable)) in descs.iter().enumerate() {
            let at = base + 16 * i as u64;
            let next = i + 1 < descs.len();
            let flags = u16::from(next) | if writable { 2 } else { 0 };
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj((i + 1) as u16, GuestAddress(at + 14))
                .unwrap();
        }
        mem.write_obj(1u16, GuestAddress(base + 0x1002)).unwrap();
        mem.write_obj(0u16, GuestAddress(base + 0x1004)).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_desc_table_address(Some(base as u32), Some(0));
        q.set_avail_ring_address(Some(base as u32 + 0x1000), Some(0));
        q.set_used_ring_address(Some(base as u32 + 0x2000), Some(0));
        q.set_ready(true);
        assert!(q.is_valid(&mem));
        q
    };

    let (console, out, _input) = console(None, false);
    mem.write_slice(b"hello, ", GuestAddress(0x8000)).unwrap();
    mem.write_slice(b"host", GuestAddress(0x9000)).unwrap();
    let mut tx = queue(0x10000, &[(0x8000, 7, false), (0x9000, 4, false)]);
    let interrupt = virtio::Interrupt::new(
        vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap(),
    );
    let mut handler = console.transmit_handler();
    virtio::drain("hvc-test", &mem, &mut tx, &interrupt, &mut handler).unwrap();
    assert_eq!(out.text(), "hello, host");
    assert_eq!(tx.next_used(), 1);
    drop(handler);
    assert_eq!(
        console
            .stats()
            .tx_bytes
            .load(std::sync::atomic::Ordering::Relaxed),
        11
    );

    let mut rx = queue(0x20000, &[(0xa000, 3, true), (0xb000, 8, true)]);
    let chain = rx.pop_descriptor_chain(&mem).unwrap();
    assert_eq!(
        super::fill_receive_chain(&mem, chain, b"typed by the host"),
        11
    );
    let mut got = [0u8; 11];
    mem.read_slice(&mut got[..3], GuestAddress(0xa000)).unwrap();
    mem.read_slice(&mut got[3..], GuestAddress(0xb000)).unwrap();
    assert_eq!(&got, b"typed by th");
}
