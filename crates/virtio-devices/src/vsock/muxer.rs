//! The host side of the device: "hybrid vsock" over Unix sockets, as Firecracker and Cloud
//! Hypervisor do it.
//!
//! - A host client connects to the device's socket (`PATH`) and writes `CONNECT <port>\n`; the
//!   device asks the guest's listener on that port (a REQUEST from a host port of its own, counted
//!   up from 2^30), and once the guest accepts, writes `OK <host port>\n` to the client and the
//!   stream flows. A client that does not finish its line in [`LINE_MAX`] bytes, or names no port,
//!   is closed; so is one whose connection the guest has not accepted within [`CONNECT_TIMEOUT`]
//!   of being asked (the guest then gets a reset), as in Firecracker.
//! - A connection the guest closed both ways whose host end does not take the guest's last bytes
//!   within [`SHUTDOWN_TIMEOUT`] is reset, as in Firecracker.
//! - A guest connecting to the host (CID 2) on port P reaches a host listener on `PATH_P`; if there
//!   is none, the guest's connect is refused with a reset.
//!
//! The muxer owns every connection and decides which one sends to the guest next (round robin over
//! those with something to send). Changes to what the event loop watches are made in
//! `Muxer::settle`, with the event loop's ops at hand.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events};
use vmm_sys_util::timerfd::TimerFd;

use super::VsockStats;
use super::connection::{Connection, Key};
use super::packet::{HOST_CID, Header, OP_REQUEST, OP_RST};

/// The most connections at once; more are refused with a reset.
pub const MAX_CONNECTIONS: usize = 1024;
/// The most host clients still sending their `CONNECT` line; more wait in the socket's backlog
/// (the socket is not watched until one finishes).
pub const MAX_CLIENTS: usize = 128;
/// The longest `CONNECT` line, with its newline.
pub const LINE_MAX: usize = 32;
/// The most resets for packets of no connection waiting for the guest; more are dropped.
const MAX_RESETS: usize = 256;
/// How long a connection a host client opens waits for the guest to accept it, once asked.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a connection the guest closed waits for its host end to take the bytes still held.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// The first host port given to a connection a host client opens.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Event data: what an event is about.
pub(super) const LISTENER: u32 = 3;
pub(super) const CLIENT: u32 = 4;
pub(super) const CONNECTION: u32 = 5;
pub(super) const TIMER: u32 = 6;

/// What a connection with a deadline waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// The guest to accept a host client's connection.
    Accept,
    /// The host end to take the bytes of a connection the guest closed.
    Drain,
}

/// A host client that has not finished its `CONNECT` line.
#[derive(Debug)]
struct Client {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connections, the host socket and its clients.
#[derive(Debug)]
pub(super) struct Muxer {
    name: String,
    guest_cid: u64,
    listener: UnixListener,
    base: PathBuf,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    clients: HashMap<RawFd, Client>,
    /// Connections with something for the guest, in turn.
    rxq: VecDeque<Key>,
    /// Resets for packets of no connection.
    resets: VecDeque<Header>,
    /// Connections whose watching may have to change.
    dirty: Vec<Key>,
    next_local_port: u32,
    /// The socket is not watched: [`MAX_CLIENTS`] clients have not finished their line.
    listener_paused: bool,
    /// Connections waiting for the guest to accept them or for their host end to drain, with
    /// when they are given up, soonest first; `timer` fires at the first.
    deadlines: VecDeque<(Instant, Key, Wait)>,
    timer: TimerFd,
    stats: Arc<VsockStats>,
}

impl Muxer {
    pub(super) fn new(
        name: &str,
        guest_cid: u64,
        listener: UnixListener,
        base: &Path,
        stats: Arc<VsockStats>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            guest_cid,
            listener,
            base: base.to_owned(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            clients: HashMap::new(),
            rxq: VecDeque::new(),
            resets: VecDeque::new(),
            dirty: Vec::new(),
            next_local_port: FIRST_LOCAL_PORT,
            listener_paused: false,
            deadlines: VecDeque::new(),
            timer: TimerFd::new()?,
            stats,
        })
    }

    /// Watches everything again on a new worker's event loop (after a pause): the socket, the
    /// clients, the connections.
    pub(super) fn attach(&mut self, ops: &mut EventOps<'_>) -> Result<(), event_manager::Error> {
        if !self.listener_paused {
            ops.add(Events::with_data_raw(
                self.listener.as_raw_fd(),
                LISTENER,
                EventSet::IN,
            ))?;
        }
        ops.add(Events::with_data(&self.timer, TIMER, EventSet::IN))?;
        for &fd in self.clients.keys() {
            ops.add(Events::with_data_raw(fd, CLIENT, EventSet::IN))?;
        }
        for (key, conn) in &mut self.conns {
            conn.watched = EventSet::empty();
            self.dirty.push(*key);
        }
        self.settle(ops);
        Ok(())
    }

    /// Ends every connection and client (a device reset): their host ends see their sockets close.
    pub(super) fn clear(&mut self) {
        self.stats
            .closed
            .fetch_add(self.conns.len() as u64, Ordering::Relaxed);
        self.conns.clear();
        self.by_fd.clear();
        self.clients.clear();
        self.rxq.clear();
        self.resets.clear();
        self.dirty.clear();
        self.listener_paused = false;
        self.deadlines.clear();
        let _ = self.timer.clear();
    }

    /// True if something waits for the guest's receive buffers.
    pub(super) fn has_rx(&self) -> bool {
        !self.resets.is_empty() || !self.rxq.is_empty()
    }

    /// Takes the host clients waiting on the socket.
    pub(super) fn accept(&mut self, ops: &mut EventOps<'_>) {
        loop {
            if self.clients.len() >= MAX_CLIENTS {
                // The rest wait in the backlog until a client finishes its line.
                if !self.listener_paused {
                    let _ = ops.remove(Events::empty_raw(self.listener.as_raw_fd()));
                    self.listener_paused = true;
                }
                return;
            }
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("{}: cannot take a host connection: {e}", self.name);
                    return;
                }
            };
            if let Err(e) = stream.set_nonblocking(true) {
                log::warn!("{}: a host client is closed: {e}", self.name);
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops
                .add(Events::with_data_raw(fd, CLIENT, EventSet::IN))
                .is_ok()
            {
                self.clients.insert(
                    fd,
                    Client {
                        stream,
                        line: Vec::with_capacity(LINE_MAX),
                    },
                );
            }
        }
    }

    /// Reads a host client's `CONNECT` line; once it is whole, the guest is asked.
    pub(super) fn client_readable(&mut self, fd: RawFd, ops: &mut EventOps<'_>) {
        let Some(client) = self.clients.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; LINE_MAX];
        let room = LINE_MAX - client.line.len();
        let n = match client.stream.read(&mut buf[..room]) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                return;
            }
            Err(_) => 0,
        };
        client.line.extend_from_slice(&buf[..n]);
        let newline = client.line.iter().position(|&b| b == b'\n');
        if newline.is_none() && n > 0 && client.line.len() < LINE_MAX {
            return;
        }
        let _ = ops.remove(Events::empty_raw(fd));
        let Some(client) = self.clients.remove(&fd) else {
            return;
        };
        if self.listener_paused {
            let listener = Events::with_data_raw(self.listener.as_raw_fd(), LISTENER, EventSet::IN);
            if ops.add(listener).is_ok() {
                self.listener_paused = false;
                // Clients that waited in the backlog meanwhile.
                self.accept(ops);
            }
        }
        let Some(end) = newline else {
            log::debug!("{}: a host client sent no CONNECT line; closed", self.name);
            return;
        };
        let Some(port) = parse_connect(&client.line[..end]) else {
            log::debug!(
                "{}: a host client's line is not CONNECT <port>; closed",
                self.name
            );
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!(
                "{}: {MAX_CONNECTIONS} connections are open; a host client is closed",
                self.name
            );
            return;
        }
        let Some(local) = self.free_local_port(port) else {
            return;
        };
        let key = Key { local, peer: port };
        let prefix = client.line[end + 1..].to_vec();
        self.insert(Connection::from_host(
            key,
            self.guest_cid,
            client.stream,
            prefix,
        ));
    }

    /// Gives the connection `key` until `wait`'s timeout from now.
    fn add_deadline(&mut self, key: Key, wait: Wait) {
        let at = Instant::now()
            + match wait {
                Wait::Accept => CONNECT_TIMEOUT,
                Wait::Drain => SHUTDOWN_TIMEOUT,
            };
        let pos = self.deadlines.partition_point(|&(t, ..)| t <= at);
        self.deadlines.insert(pos, (at, key, wait));
        if pos == 0 {
            self.arm_timer();
        }
    }

    /// Sets the timer for the first deadline, if there is one.
    fn arm_timer(&mut self) {
        let Some(&(at, ..)) = self.deadlines.front() else {
            return;
        };
        // A zero duration would disarm the timer: the first nanosecond is soon enough.
        let wait = at
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        if let Err(e) = self.timer.reset(wait, None) {
            log::error!("{}: cannot set the connect timer: {e}", self.name);
        }
    }

    /// The timer fired: host clients' connections the guest has not accepted in time, and closed
    /// connections whose host end has not drained in time, are reset (the guest gets a reset,
    /// the host end sees its socket close).
    pub(super) fn timer_fired(&mut self) {
        // A one-shot timer that fired is disarmed, and its expiry is read here (the count is not
        // needed: the deadlines say what is due). One armed again since (by a connect handled
        // in the same batch of events) has no expiry to read, and a read would wait for it.
        if self.timer.is_armed().unwrap_or(true) {
            return;
        }
        let _ = self.timer.wait();
        let now = Instant::now();
        while let Some(&(at, key, wait)) = self.deadlines.front() {
            if at > now {
                break;
            }
            self.deadlines.pop_front();
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            match wait {
                Wait::Accept if conn.is_connecting() => {
                    log::debug!(
                        "{}: the guest did not accept host port {} on its port {} in {CONNECT_TIMEOUT:?}; reset",
                        self.name,
                        key.local,
                        key.peer
                    );
                    self.stats.connect_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Wait::Drain if conn.is_closing() => {
                    log::debug!(
                        "{}: host port {}'s socket did not take the guest's last {} bytes in {SHUTDOWN_TIMEOUT:?}; reset",
                        self.name,
                        key.local,
                        conn.held()
                    );
                    self.stats.drain_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                _ => continue,
            }
            conn.give_up();
            self.dirty.push(key);
        }
        self.arm_timer();
    }

    fn free_local_port(&mut self, peer: u32) -> Option<u32> {
        for _ in 0..=MAX_CONNECTIONS {
            let local = self.next_local_port;
            self.next_local_port = if local == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                local + 1
            };
            if !self.conns.contains_key(&Key { local, peer }) {
                return Some(local);
            }
        }
        None
    }

    fn insert(&mut self, conn: Connection) {
        let key = conn.key();
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        self.by_fd.insert(conn.stream().as_raw_fd(), key);
        self.conns.insert(key, conn);
        self.dirty.push(key);
    }

    /// Handles a packet the guest sent.
    pub(super) fn guest_packet(&mut self, h: &Header, payload: &[u8]) {
        if h.src_cid != self.guest_cid || h.dst_cid != HOST_CID {
            self.stats.bad_packets.fetch_add(1, Ordering::Relaxed);
            log::debug!(
                "{}: a packet from CID {} to CID {} dropped",
                self.name,
                h.src_cid,
                h.dst_cid
            );
            return;
        }
        let key = Key {
            local: h.dst_port,
            peer: h.src_port,
        };
        if h.type_ != super::packet::TYPE_STREAM {
            self.refuse(h);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let was_closing = conn.is_closing();
            conn.guest_packet(h, payload);
            let closing = conn.is_closing();
            self.dirty.push(key);
            if closing && !was_closing {
                self.add_deadline(key, Wait::Drain);
            }
        } else if h.op == OP_REQUEST {
            self.connect_to_host(key, h);
        } else {
            self.refuse(h);
        }
    }

    /// Answers a packet of no connection with a reset (but not a reset).
    fn refuse(&mut self, h: &Header) {
        if h.op == OP_RST {
            return;
        }
        if self.resets.len() >= MAX_RESETS {
            self.stats.dropped_resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.resets.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: h.dst_port,
            dst_port: h.src_port,
            len: 0,
            type_: h.type_,
            op: OP_RST,
            flags: 0,
            buf_alloc: 0,
            fwd_cnt: 0,
        });
    }

    fn connect_to_host(&mut self, key: Key, h: &Header) {
        if self.conns.len() >= MAX_CONNECTIONS {
            log::warn!(
                "{}: {MAX_CONNECTIONS} connections are open; the guest's connect to port {} is refused",
                self.name,
                key.local
            );
            self.refuse(h);
            return;
        }
        let mut path = OsString::from(self.base.as_os_str());
        path.push(format!("_{}", key.local));
        match connect(Path::new(&path)) {
            Ok(stream) => self.insert(Connection::from_guest(key, h, stream)),
            Err(e) => {
                log::debug!(
                    "{}: the guest's connect to port {}: {}: {e}",
                    self.name,
                    key.local,
                    Path::new(&path).display()
                );
                self.refuse(h);
            }
        }
    }

    /// Handles an event on a connection's host socket.
    pub(super) fn connection_event(&mut self, fd: RawFd, set: EventSet) {
        let Some(&key) = self.by_fd.get(&fd) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set.contains(EventSet::OUT) {
            conn.host_writable();
        }
        if set.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::ERROR) {
            conn.host_readable(set.intersects(EventSet::HANG_UP | EventSet::ERROR));
        }
        self.dirty.push(key);
    }

    /// The next packet for the guest, with at most `room` payload bytes in `buf`.
    pub(super) fn next_rx(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        if let Some(h) = self.resets.pop_front() {
            buf.clear();
            return Some(h);
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.queued = false;
            self.dirty.push(key);
            if let Some(h) = conn.next_packet(room, buf) {
                if conn.wants_rx() {
                    conn.queued = true;
                    self.rxq.push_back(key);
                }
                if h.op == OP_REQUEST {
                    // The guest is asked now: its answer is due within the timeout.
                    self.add_deadline(key, Wait::Accept);
                }
                return Some(h);
            }
        }
        None
    }

    /// Brings what the event loop watches up to date with the connections that changed, queues
    /// those with something for the guest, and drops those that ended.
    pub(super) fn settle(&mut self, ops: &mut EventOps<'_>) {
        while let Some(key) = self.dirty.pop() {
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            let fd = conn.stream().as_raw_fd();
            if conn.is_done() {
                if !conn.watched.is_empty() {
                    let _ = ops.remove(Events::empty_raw(fd));
                }
                self.by_fd.remove(&fd);
                self.conns.remove(&key);
                self.stats.closed.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let want = conn.interest();
            if want != conn.watched {
                let events = Events::with_data_raw(fd, CONNECTION, want);
                let changed = if conn.watched.is_empty() {
                    ops.add(events)
                } else if want.is_empty() {
                    ops.remove(Events::empty_raw(fd))
                } else {
                    ops.modify(events)
                };
                match changed {
                    Ok(()) => conn.watched = want,
                    Err(e) => log::error!(
                        "{}: cannot watch host port {}'s socket: {e}",
                        self.name,
                        key.local
                    ),
                }
            }
            if conn.wants_rx() && !conn.queued {
                conn.queued = true;
                self.rxq.push_back(key);
            }
        }
    }
}

/// The port of a `CONNECT <port>` line (without its newline).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = std::str::from_utf8(line).ok()?;
    let port = line.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    port.parse().ok()
}

/// Connects to the Unix socket at `path` without waiting: a listener whose backlog is full
/// refuses, rather than stopping the device.
fn connect(path: &Path) -> std::io::Result<UnixStream> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    socket.connect(&socket2::SockAddr::unix(path)?)?;
    Ok(UnixStream::from(OwnedFd::from(socket)))
}

#[cfg(test)]
mod tests {
    use super::parse_connect;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect(b"CONNECT 4294967295\r"), Some(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"CONNECT -1",
            b"CONNECT +1",
            b"CONNECT 4294967296",
            b"connect 52",
            b"CONNECT 5 2",
            b"\xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }
}
