//! The host end of hybrid vsock, as a client of kvmkit's `--vsock` socket: connect to a guest port
//! (`CONNECT <port>\n`, answered `OK <host port>\n`), and the FNV-1a hash the test guest prints.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// FNV-1a, 64 bits: what tools/guest/init_vsock.c prints of the bytes it moved.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Hashes `bytes` on.
    ///
    /// ```
    /// use kvmkit_integration_tests::vsock::Fnv;
    /// let mut h = Fnv::default();
    /// h.update(b"a");
    /// assert_eq!(format!("{:016x}", h.0), "af63dc4c8601ec8c");
    /// ```
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Why a connection to a guest port failed.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket could not be reached or read.
    Io(std::io::Error),
    /// kvmkit answered something else than `OK <port>` (or closed: the guest refused).
    Refused(String),
}

/// Connects to the guest's `port` through kvmkit's vsock socket at `socket`; returns the stream
/// (with a 60 s read timeout) and the host port kvmkit gave the connection.
pub fn connect(socket: &Path, port: u32) -> Result<(UnixStream, u32), ConnectError> {
    let mut s = UnixStream::connect(socket).map_err(ConnectError::Io)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(ConnectError::Io)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(ConnectError::Io)?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).map_err(ConnectError::Io)? {
            0 => break,
            _ if b[0] == b'\n' => break,
            _ => line.push(b[0]),
        }
        if line.len() > 64 {
            break;
        }
    }
    let text = String::from_utf8_lossy(&line).into_owned();
    match text.strip_prefix("OK ").and_then(|p| p.parse().ok()) {
        Some(host_port) => Ok((s, host_port)),
        None => Err(ConnectError::Refused(text)),
    }
}

/// Reads one line (without its newline) from `s`.
pub fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b)? == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}
