//! One stream between a guest socket and a host Unix socket: its state, the bytes in flight each
//! way, and credit-based flow control (virtio 1.2, section 5.10.6.3).
//!
//! - Guest to host: the device tells the guest it can hold [`TO_HOST_BUF`] bytes (`buf_alloc`) and
//!   how many it has passed on (`fwd_cnt`). What the host socket does not take at once waits here,
//!   never more than that: a guest that sends past its credit gets a reset. The guest hears of new
//!   credit in every packet the device sends it, and in a credit update when it runs low.
//! - Host to guest: the host socket is read only while the guest has credit (its `buf_alloc` less
//!   what it has not consumed) and only as much as that; when it has none the device asks for a
//!   credit update once and stops reading, so a guest that never reads makes the host's writer wait.
//! - Shutdown: the host closing its end becomes a SHUTDOWN(SEND) to the guest (it reads to the end
//!   and can still write); the guest's SHUTDOWN(SEND) shuts the host socket's write side once the
//!   bytes before it are through; the guest closing both ways is answered with a reset once those
//!   bytes are through, and the connection ends.

use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use event_manager::EventSet;

use super::packet::{
    HOST_CID, Header, MAX_PAYLOAD, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE,
    OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM,
};

/// The bytes from the guest the device holds for one connection at most (its `buf_alloc`).
pub const TO_HOST_BUF: u32 = 256 << 10;

/// A connection's ports: the host's end (`local`) and the guest's (`peer`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    /// The host end's port.
    pub local: u32,
    /// The guest end's port.
    pub peer: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Opened from the host: the guest was (or will be) asked and has not answered.
    Connecting,
    /// Both ends can talk.
    Established,
    /// The guest closed both ways; the bytes it sent before are still going to the host.
    Closing,
}

/// Control packets owed to the guest, as bits.
const OWE_RST: u8 = 1;
const OWE_REQUEST: u8 = 2;
const OWE_RESPONSE: u8 = 4;
const OWE_SHUTDOWN: u8 = 8;
const OWE_CREDIT_UPDATE: u8 = 16;
const OWE_CREDIT_REQUEST: u8 = 32;

/// One connection.
#[derive(Debug)]
pub struct Connection {
    key: Key,
    guest_cid: u64,
    stream: UnixStream,
    state: State,
    /// Guest bytes the host socket has not taken, from `to_host_at` on.
    to_host: Vec<u8>,
    to_host_at: usize,
    /// Guest bytes passed to the host (wrapping), and the count the guest last heard.
    fwd_cnt: u32,
    advertised_fwd_cnt: u32,
    /// Host bytes read before the connection was made (after the `CONNECT` line).
    prefix: Vec<u8>,
    /// Host bytes sent to the guest (wrapping), and the guest's buffer and its consumption.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// The host socket may have bytes not yet read.
    readable: bool,
    /// The host socket ended (read gave 0) or hung up: nothing more comes from it.
    host_eof: bool,
    /// The host socket hung up or failed: it is no longer watched.
    hung_up: bool,
    /// SHUTDOWN flags the guest sent.
    guest_shut: u32,
    /// The host socket's write side is shut.
    host_write_shut: bool,
    /// Control packets owed to the guest (`OWE_*`).
    owe: u8,
    /// A credit request was sent and not yet answered.
    asked_credit: bool,
    /// The connection ended (a reset either way): the device drops it.
    done: bool,
    /// In the device's list of connections with something to send.
    pub queued: bool,
    /// What the device's event loop watches the host socket for.
    pub watched: EventSet,
}

impl Connection {
    fn new(key: Key, guest_cid: u64, stream: UnixStream, state: State, owe: u8) -> Self {
        Self {
            key,
            guest_cid,
            stream,
            state,
            to_host: Vec::new(),
            to_host_at: 0,
            fwd_cnt: 0,
            advertised_fwd_cnt: 0,
            prefix: Vec::new(),
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            readable: false,
            host_eof: false,
            hung_up: false,
            guest_shut: 0,
            host_write_shut: false,
            owe,
            asked_credit: false,
            done: false,
            queued: false,
            watched: EventSet::empty(),
        }
    }

    /// A connection the guest asked for (its REQUEST in `request`), made to the host's `stream`:
    /// the guest is owed a RESPONSE.
    pub fn from_guest(key: Key, request: &Header, stream: UnixStream) -> Self {
        let mut c = Self::new(
            key,
            request.src_cid,
            stream,
            State::Established,
            OWE_RESPONSE,
        );
        c.peer_buf_alloc = request.buf_alloc;
        c.peer_fwd_cnt = request.fwd_cnt;
        c
    }

    /// A connection a host client asked for on `stream` (`prefix`: bytes it sent after its
    /// `CONNECT` line): the guest with `guest_cid` is owed a REQUEST.
    pub fn from_host(key: Key, guest_cid: u64, stream: UnixStream, prefix: Vec<u8>) -> Self {
        let mut c = Self::new(key, guest_cid, stream, State::Connecting, OWE_REQUEST);
        c.prefix = prefix;
        c
    }

    /// The connection's ports.
    pub fn key(&self) -> Key {
        self.key
    }

    /// The host socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Guest bytes held for the host socket (never more than [`TO_HOST_BUF`]).
    pub fn held(&self) -> usize {
        self.to_host.len() - self.to_host_at
    }

    /// True while a connection a host client opened waits for the guest to accept it.
    pub fn is_connecting(&self) -> bool {
        self.state == State::Connecting && !self.done
    }

    /// True while a connection the guest closed both ways still holds bytes for its host end.
    pub fn is_closing(&self) -> bool {
        self.state == State::Closing && !self.done && self.owe & OWE_RST == 0
    }

    /// Gives up on a connection that waited too long (for the guest to accept it, or for its
    /// host end to take the guest's last bytes): the guest gets a reset, the host end sees its
    /// socket close, held bytes are dropped.
    pub fn give_up(&mut self) {
        self.reset();
    }

    /// True once the connection has ended: the device drops it.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// True if the connection has a packet for the guest.
    pub fn wants_rx(&self) -> bool {
        !self.done
            && (self.owe != 0
                || (self.may_send_data() && self.has_data() && self.peer_credit() > 0))
    }

    /// What the event loop should watch the host socket for.
    pub fn interest(&self) -> EventSet {
        let mut set = EventSet::empty();
        if self.hung_up || self.done {
            return set;
        }
        if self.may_send_data() && !self.has_data() && !self.host_eof {
            set |= EventSet::IN;
        }
        if self.to_host_at < self.to_host.len() {
            set |= EventSet::OUT;
        }
        set
    }

    fn may_send_data(&self) -> bool {
        self.state == State::Established && self.guest_shut & SHUTDOWN_RCV == 0
    }

    fn has_data(&self) -> bool {
        !self.prefix.is_empty() || (self.readable && !self.host_eof)
    }

    /// How many more bytes the guest can take.
    fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn reset(&mut self) {
        self.owe |= OWE_RST;
    }

    /// The host socket is readable (or hung up: `hangup`, after which it is no longer watched).
    pub fn host_readable(&mut self, hangup: bool) {
        self.readable = true;
        if hangup {
            // No longer watched: bytes still held for the host are tried now (and fail).
            self.hung_up = true;
            self.flush();
        }
        self.after_change();
    }

    /// The host socket can take bytes again.
    pub fn host_writable(&mut self) {
        self.flush();
        self.after_change();
    }

    /// Handles a packet from the guest for this connection.
    pub fn guest_packet(&mut self, h: &Header, payload: &[u8]) {
        self.peer_buf_alloc = h.buf_alloc;
        self.peer_fwd_cnt = h.fwd_cnt;
        if self.peer_credit() > 0 {
            self.asked_credit = false;
        }
        match h.op {
            OP_RESPONSE if self.state == State::Connecting => {
                self.owe &= !OWE_REQUEST;
                let ok = format!("OK {}\n", self.key.local);
                // A new socket's buffer takes these few bytes at once; if not, the client is gone.
                match self.stream.write(ok.as_bytes()) {
                    Ok(n) if n == ok.len() => self.state = State::Established,
                    _ => self.reset(),
                }
            }
            OP_RST => self.done = true,
            OP_RW if self.state == State::Established && self.guest_shut & SHUTDOWN_SEND == 0 => {
                self.pass_to_host(payload)
            }
            OP_SHUTDOWN if self.state != State::Connecting => {
                self.guest_shut |= h.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.guest_shut == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    self.state = State::Closing;
                }
                self.flush();
            }
            OP_CREDIT_UPDATE if self.state != State::Connecting => {}
            OP_CREDIT_REQUEST if self.state != State::Connecting => {
                self.owe |= OWE_CREDIT_UPDATE;
            }
            // A REQUEST for a connection that exists, a RESPONSE to nothing asked, data after the
            // guest's own shutdown, an unknown operation: the guest and the device disagree.
            _ => self.reset(),
        }
        self.after_change();
    }

    /// Passes guest bytes on to the host (keeping what it does not take at once).
    fn pass_to_host(&mut self, payload: &[u8]) {
        let held = self.to_host.len() - self.to_host_at;
        if held + payload.len() > TO_HOST_BUF as usize {
            log::warn!(
                "vsock: the guest's port {} sent past its credit to host port {}; connection reset",
                self.key.peer,
                self.key.local
            );
            self.reset();
            return;
        }
        if held == 0 {
            self.to_host.clear();
            self.to_host_at = 0;
        } else if self.to_host_at > self.to_host.len() / 2 {
            self.to_host.drain(..self.to_host_at);
            self.to_host_at = 0;
        }
        self.to_host.extend_from_slice(payload);
        self.flush();
    }

    /// Writes held guest bytes to the host socket until it takes no more.
    fn flush(&mut self) {
        while self.to_host_at < self.to_host.len() && self.owe & OWE_RST == 0 {
            match self.stream.write(&self.to_host[self.to_host_at..]) {
                Ok(0) => self.reset(),
                Ok(n) => {
                    self.to_host_at += n;
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The host end is gone: the guest is told.
                Err(_) => self.reset(),
            }
        }
        if self.to_host_at < self.to_host.len() {
            return;
        }
        if self.guest_shut & SHUTDOWN_SEND != 0 && !self.host_write_shut {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        if self.state == State::Closing {
            self.reset();
        }
    }

    /// Works out what is owed after a change: a credit update when the guest is low on credit
    /// the device has freed, a credit request when host bytes wait for credit the guest has not
    /// given.
    fn after_change(&mut self) {
        let held = (self.to_host.len() - self.to_host_at) as u32;
        let believed = self
            .fwd_cnt
            .wrapping_sub(self.advertised_fwd_cnt)
            .wrapping_add(held);
        if self.fwd_cnt != self.advertised_fwd_cnt && believed > TO_HOST_BUF / 2 {
            self.owe |= OWE_CREDIT_UPDATE;
        }
        if self.may_send_data() && self.has_data() && self.peer_credit() == 0 && !self.asked_credit
        {
            self.asked_credit = true;
            self.owe |= OWE_CREDIT_REQUEST;
        }
    }

    /// The header of a packet of `op` for the guest, carrying this end's credit.
    fn header(&mut self, op: u16, flags: u32, len: usize) -> Header {
        self.advertised_fwd_cnt = self.fwd_cnt;
        self.owe &= !OWE_CREDIT_UPDATE;
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.key.local,
            dst_port: self.key.peer,
            len: len as u32,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: TO_HOST_BUF,
            fwd_cnt: self.fwd_cnt,
        }
    }

    /// The next packet for the guest, with at most `room` payload bytes in `buf`; `None` if there
    /// is nothing to send after all (the host socket had nothing to read).
    pub fn next_packet(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<Header> {
        buf.clear();
        if self.done {
            return None;
        }
        let owed = |c: &mut Self, bit: u8| {
            let was = c.owe & bit != 0;
            c.owe &= !bit;
            was
        };
        if owed(self, OWE_RST) {
            self.done = true;
            return Some(self.header(OP_RST, 0, 0));
        }
        if owed(self, OWE_REQUEST) {
            return Some(self.header(OP_REQUEST, 0, 0));
        }
        if owed(self, OWE_RESPONSE) {
            return Some(self.header(OP_RESPONSE, 0, 0));
        }
        if let Some(len) = self.read_data(room, buf) {
            self.rx_cnt = self.rx_cnt.wrapping_add(len as u32);
            let h = self.header(OP_RW, 0, len);
            self.after_change();
            return Some(h);
        }
        if owed(self, OWE_SHUTDOWN) {
            return Some(self.header(OP_SHUTDOWN, SHUTDOWN_SEND, 0));
        }
        if owed(self, OWE_CREDIT_UPDATE) {
            return Some(self.header(OP_CREDIT_UPDATE, 0, 0));
        }
        if owed(self, OWE_CREDIT_REQUEST) {
            return Some(self.header(OP_CREDIT_REQUEST, 0, 0));
        }
        None
    }

    /// Reads host bytes for the guest into `buf`: how many, or `None` if there are none to send
    /// now. The host socket's end is noted (and a SHUTDOWN owed); its failure owes a reset.
    fn read_data(&mut self, room: usize, buf: &mut Vec<u8>) -> Option<usize> {
        if !self.may_send_data() || !self.has_data() {
            return None;
        }
        let room = room
            .min(self.peer_credit() as usize)
            .min(MAX_PAYLOAD as usize);
        if room == 0 {
            self.after_change();
            return None;
        }
        if !self.prefix.is_empty() {
            let n = room.min(self.prefix.len());
            buf.extend_from_slice(&self.prefix[..n]);
            self.prefix.drain(..n);
            return Some(n);
        }
        buf.resize(room, 0);
        loop {
            match self.stream.read(buf) {
                Ok(0) => {
                    buf.clear();
                    self.readable = false;
                    self.host_eof = true;
                    self.owe |= OWE_SHUTDOWN;
                    return None;
                }
                Ok(n) => {
                    buf.truncate(n);
                    return Some(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.clear();
                    self.readable = false;
                    if e.kind() != ErrorKind::WouldBlock {
                        self.host_eof = true;
                        self.reset();
                    } else if self.hung_up {
                        // Not watched any more and nothing left: treat as the end.
                        self.host_eof = true;
                        self.owe |= OWE_SHUTDOWN;
                    }
                    return None;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(op: u16, flags: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    const KEY: Key = Key {
        local: 52,
        peer: 1000,
    };

    fn established(buf_alloc: u32) -> (Connection, UnixStream) {
        let (host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        let mut c = Connection::from_guest(KEY, &header(OP_REQUEST, 0, buf_alloc, 0), ours);
        let mut buf = Vec::new();
        assert_eq!(c.next_packet(4096, &mut buf).unwrap().op, OP_RESPONSE);
        (c, host)
    }

    #[test]
    fn host_bytes_go_to_the_guest_only_within_its_credit() {
        let (mut c, mut host) = established(10);
        host.write_all(b"hello, world").unwrap();
        c.host_readable(false);
        let mut buf = Vec::new();
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!(
            (h.op, h.len, buf.as_slice()),
            (OP_RW, 10, &b"hello, wor"[..])
        );
        // No credit left: one credit request, and the socket is not read.
        assert_eq!(c.next_packet(4096, &mut buf).unwrap().op, OP_CREDIT_REQUEST);
        assert!(c.next_packet(4096, &mut buf).is_none());
        assert!(!c.wants_rx());
        // The guest consumed 4 bytes.
        c.guest_packet(&header(OP_CREDIT_UPDATE, 0, 10, 4), &[]);
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!((h.op, buf.as_slice()), (OP_RW, &b"ld"[..]));
    }

    #[test]
    fn a_guest_past_its_credit_is_reset() {
        let (mut c, host) = established(1 << 20);
        // The host never reads: the socket buffer fills, then the device's, then the guest is past.
        let chunk = vec![7u8; MAX_PAYLOAD as usize];
        let mut sent = 0usize;
        while !c.is_done() && c.owe & OWE_RST == 0 {
            let mut h = header(OP_RW, 0, 1 << 20, 0);
            h.len = chunk.len() as u32;
            c.guest_packet(&h, &chunk);
            sent += chunk.len();
            assert!(sent < 64 << 20, "never reset");
        }
        let mut buf = Vec::new();
        assert_eq!(c.next_packet(4096, &mut buf).unwrap().op, OP_RST);
        assert!(c.is_done());
        drop(host);
    }

    #[test]
    fn host_eof_is_a_send_shutdown_and_the_guest_close_a_reset() {
        let (mut c, host) = established(1 << 16);
        drop(host);
        c.host_readable(true);
        let mut buf = Vec::new();
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!((h.op, h.flags), (OP_SHUTDOWN, SHUTDOWN_SEND));
        assert!(c.next_packet(4096, &mut buf).is_none());
        c.guest_packet(&header(OP_SHUTDOWN, 3, 1 << 16, 0), &[]);
        assert_eq!(c.next_packet(4096, &mut buf).unwrap().op, OP_RST);
        assert!(c.is_done());
    }

    #[test]
    fn the_guest_send_shutdown_shuts_the_host_write_side_after_its_bytes() {
        let (mut c, mut host) = established(1 << 16);
        let mut h = header(OP_RW, 0, 1 << 16, 0);
        h.len = 3;
        c.guest_packet(&h, b"abc");
        c.guest_packet(&header(OP_SHUTDOWN, SHUTDOWN_SEND, 1 << 16, 0), &[]);
        host.set_nonblocking(false).unwrap();
        let mut got = String::new();
        host.read_to_string(&mut got).unwrap();
        assert_eq!(got, "abc");
        // The host can still talk to the guest.
        host.write_all(b"reply").unwrap();
        c.host_readable(false);
        let mut buf = Vec::new();
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!((h.op, buf.as_slice()), (OP_RW, &b"reply"[..]));
    }

    #[test]
    fn a_host_connection_waits_for_the_guest_then_says_ok_with_its_port() {
        let (mut host, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut c = Connection::from_host(KEY, 3, ours, b"early".to_vec());
        let mut buf = Vec::new();
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!(
            (h.op, h.src_port, h.dst_port, h.dst_cid),
            (OP_REQUEST, 52, 1000, 3)
        );
        assert_eq!(
            c.interest(),
            EventSet::empty(),
            "not read before the guest accepts"
        );
        c.guest_packet(&header(OP_RESPONSE, 0, 1 << 16, 0), &[]);
        let mut ok = [0u8; 6];
        host.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"OK 52\n");
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!((h.op, buf.as_slice()), (OP_RW, &b"early"[..]));
    }

    #[test]
    fn a_credit_request_is_answered_and_data_to_a_connecting_socket_is_a_reset() {
        let (mut c, _host) = established(1 << 16);
        c.guest_packet(&header(OP_CREDIT_REQUEST, 0, 1 << 16, 0), &[]);
        let mut buf = Vec::new();
        let h = c.next_packet(4096, &mut buf).unwrap();
        assert_eq!((h.op, h.buf_alloc), (OP_CREDIT_UPDATE, TO_HOST_BUF));

        let (_host, ours) = UnixStream::pair().unwrap();
        let mut c = Connection::from_host(KEY, 3, ours, Vec::new());
        let mut h = header(OP_RW, 0, 1 << 16, 0);
        h.len = 1;
        c.guest_packet(&h, b"x");
        assert_eq!(c.next_packet(4096, &mut buf).unwrap().op, OP_RST);
    }
}
