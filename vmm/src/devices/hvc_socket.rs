//! `--console socket=PATH`: the virtio console on a Unix socket that one client at a time attaches
//! to (`socat -,raw,echo=0 UNIX-CONNECT:PATH`), detaches from and attaches to again, while the guest
//! goes on.
//!
//! A relay thread (`kvmkit-hvc-socket`) accepts the client and copies what it types into a pipe the
//! console device reads; the guest's output goes to the client through the console's buffer and
//! writer thread. While no client is attached the guest's output is discarded. A second client
//! while one is attached is told so and closed.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::api::server::{Flag, bind_as};

/// What a second client is told before it is closed.
const BUSY: &[u8] = b"kvmkit: this console has a client already\r\n";

/// Why the socket console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be made.
    #[error(transparent)]
    Bind(#[from] crate::api::server::Error),
    /// The pipe, the eventfd or the relay thread could not be made.
    #[error("--console socket={path}: {source}", path = .path.display())]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// The attached client, shared by the relay (which attaches and detaches it) and the output.
type Client = Arc<Mutex<Option<UnixStream>>>;

fn lock(client: &Client) -> MutexGuard<'_, Option<UnixStream>> {
    client.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's output: to the attached client, or nowhere.
pub struct SocketOutput(Client);

impl Write for SocketOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut client = lock(&self.0);
        if let Some(stream) = client.as_mut()
            && stream.write_all(buf).is_err()
        {
            // It went away: the relay sees the hang-up too; output is discarded until the next.
            *client = None;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The socket console's relay; dropping it stops the relay and removes the socket.
pub struct SocketConsole {
    path: PathBuf,
    stop: EventFd,
    relay: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SocketConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketConsole")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Drop for SocketConsole {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(relay) = self.relay.take() {
            let _ = relay.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors from pipe2, owned from here on.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Binds `path` and starts the relay: returns it, the console's output and its input (the pipe's
/// read end, non-blocking).
pub fn start(path: &Path) -> Result<(SocketConsole, SocketOutput, File), Error> {
    let listener = bind_as(Flag::ConsoleSocket, path)?;
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    listener.set_nonblocking(true).map_err(io)?;
    let (input, to_guest) = pipe().map_err(io)?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(io)?;
    let client: Client = Arc::default();
    let relay = Relay {
        listener,
        client: client.clone(),
        to_guest,
        stop: stop.try_clone().map_err(io)?,
        pending: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("kvmkit-hvc-socket".into())
        .spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::ConsoleSocket);
            relay.run();
        })
        .map_err(io)?;
    Ok((
        SocketConsole {
            path: path.to_owned(),
            stop,
            relay: Some(thread),
        },
        SocketOutput(client),
        input,
    ))
}

struct Relay {
    listener: UnixListener,
    client: Client,
    to_guest: File,
    stop: EventFd,
    /// Typed bytes the pipe had no room for yet (the guest is not reading).
    pending: Vec<u8>,
}

impl Relay {
    fn run(mut self) {
        let mut reader: Option<OwnedFd> = None;
        loop {
            let reader_fd = reader.as_ref().map_or(-1, AsRawFd::as_raw_fd);
            let mut fds = [
                poll_fd(self.stop.as_raw_fd(), libc::POLLIN),
                poll_fd(self.listener.as_raw_fd(), libc::POLLIN),
                // While typed bytes wait, the client is not read: they wait for the pipe instead.
                poll_fd(
                    if self.pending.is_empty() {
                        reader_fd
                    } else {
                        -1
                    },
                    libc::POLLIN,
                ),
                poll_fd(
                    if self.pending.is_empty() {
                        -1
                    } else {
                        self.to_guest.as_raw_fd()
                    },
                    libc::POLLOUT,
                ),
            ];
            // SAFETY: poll reads and writes the four pollfds of `fds`; a negative fd is ignored.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("console socket: poll failed; the socket console stops");
                return;
            }
            if fds[0].revents != 0 {
                return;
            }
            if fds[1].revents != 0 {
                self.accept(&mut reader);
            }
            if fds[2].revents != 0 && !self.pass_typed(&mut reader) {
                reader = None;
                *lock(&self.client) = None;
            }
            if fds[3].revents != 0 {
                self.flush_pending();
            }
        }
    }

    /// Takes a new client, or tells it another one is attached.
    fn accept(&mut self, reader: &mut Option<OwnedFd>) {
        let Ok((mut stream, _)) = self.listener.accept() else {
            return;
        };
        if reader.is_some() {
            let _ = stream.write_all(BUSY);
            return;
        }
        // Both ends stay blocking (they share one open file, so one flag): the relay reads only
        // when poll says there is something, and the output's writer thread may block on a
        // client that reads slowly (its buffer then drops, as for any stalled console reader).
        let attached = stream
            .try_clone()
            .map(|writer| (writer, OwnedFd::from(stream)));
        match attached {
            Ok((writer, read_side)) => {
                *lock(&self.client) = Some(writer);
                *reader = Some(read_side);
            }
            Err(e) => log::warn!("console socket: cannot take a client: {e}"),
        }
    }

    /// Copies what the client typed into the pipe; false once the client is gone.
    fn pass_typed(&mut self, reader: &mut Option<OwnedFd>) -> bool {
        let Some(fd) = reader.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 4096];
        // SAFETY: read writes at most `buf.len()` bytes into `buf`; the fd is the client's.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        match n {
            0 => false,
            n if n < 0 => {
                let e = io::Error::last_os_error();
                matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                )
            }
            n => {
                self.pending.extend_from_slice(&buf[..n as usize]);
                self.flush_pending();
                true
            }
        }
    }

    /// Moves waiting bytes into the pipe, as far as it has room.
    fn flush_pending(&mut self) {
        while !self.pending.is_empty() {
            match self.to_guest.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

fn poll_fd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn read_some(input: &mut File) -> Vec<u8> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = [0u8; 64];
        loop {
            match input.read(&mut buf) {
                Ok(n) => return buf[..n].to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    assert!(std::time::Instant::now() < deadline, "nothing came");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn connect(path: &Path) -> UnixStream {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s
    }

    #[test]
    fn a_client_attaches_detaches_and_attaches_again_and_a_second_is_refused() {
        let path = std::env::temp_dir().join(format!("kvmkit-hvc-{}.sock", std::process::id()));
        let (relay, mut output, mut input) = start(&path).unwrap();
        // Output with nobody attached is discarded, and does not wait.
        output.write_all(b"lost").unwrap();

        let mut first = connect(&path);
        first.write_all(b"typed").unwrap();
        assert_eq!(read_some(&mut input), b"typed");
        // The relay has attached the client once its bytes came through.
        output.write_all(b"to the client").unwrap();
        let mut got = [0u8; 13];
        first.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"to the client");

        let mut second = connect(&path);
        let mut told = Vec::new();
        second.read_to_end(&mut told).unwrap();
        assert_eq!(told, BUSY);

        drop(first);
        // Until the relay sees the hang-up, output may still try the old client: either way
        // nothing blocks, and the next client gets what comes after it attached.
        std::thread::sleep(std::time::Duration::from_millis(100));
        output.write_all(b"also lost").unwrap();
        let mut again = connect(&path);
        again.write_all(b"back").unwrap();
        assert_eq!(read_some(&mut input), b"back");
        output.write_all(b"hello again").unwrap();
        let mut got = [0u8; 11];
        again.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello again");

        drop(relay);
        assert!(!path.exists(), "the socket is removed");
    }
}
