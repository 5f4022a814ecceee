//! The API's Unix socket: created 0600 (a stale socket from a dead kvmkit is replaced, anything
//! else at the path is an error), served on a thread of its own (`kvmkit-api`), each connection on
//! a thread (at most [`MAX_CONNECTIONS`] at once), and removed when the server is dropped.

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::http::{Connection, ReadError, Request, Response};

/// Connections served at once; more are answered 503 and closed. Each costs a thread (with a small
/// stack) for at most [`super::http::IDLE_TIMEOUT`] idle or [`super::http::REQUEST_TIMEOUT`] per
/// request.
pub const MAX_CONNECTIONS: usize = 64;
/// The stack of a connection's thread. Answering most requests needs little, but InstanceStart and
/// a snapshot load build the VM on it (a snapshot's vCPU state is parsed there): the default 2 MiB.
/// Only the pages a thread touches cost memory.
const CONNECTION_STACK: usize = 2 << 20;
/// How often the accept loop looks whether it should stop.
const POLL: Duration = Duration::from_millis(100);

/// Why the API socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something that is not a socket is at the path.
    #[error("{flag}{path}: the path exists and is not a socket", flag = .0.flag(), path = .1.display())]
    NotASocket(Flag, PathBuf),
    /// Another process answers on the socket.
    #[error("{flag}{path}: another process is serving this socket", flag = .0.flag(), path = .1.display())]
    InUse(Flag, PathBuf),
    /// The socket could not be created, bound, or made private.
    #[error("{flag}{path}: {source}", flag = .flag.flag(), path = .path.display())]
    Io {
        /// Which socket.
        flag: Flag,
        /// The socket's path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Which of kvmkit's sockets an error is about, as the command line names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// `--api-sock PATH`.
    ApiSock,
    /// `--console socket=PATH`.
    ConsoleSocket,
    /// `--vsock socket=PATH` (or `PUT /vsock`'s `uds_path`).
    VsockSocket,
}

impl Flag {
    fn flag(self) -> &'static str {
        match self {
            Self::ApiSock => "--api-sock ",
            Self::ConsoleSocket => "--console socket=",
            Self::VsockSocket => "--vsock socket=",
        }
    }
}

/// What answers each request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// The API server; dropping it stops accepting and removes the socket.
#[derive(Debug)]
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// Creates the API socket at `path` (see [`bind_as`]).
pub fn bind(path: &Path) -> Result<UnixListener, Error> {
    bind_as(Flag::ApiSock, path)
}

/// Creates the socket `flag` names at `path`: removes a stale one (no process answers it),
/// refuses anything else there, and makes it readable and writable by its owner only.
pub fn bind_as(flag: Flag, path: &Path) -> Result<UnixListener, Error> {
    let io = |source| Error::Io {
        flag,
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(Error::NotASocket(flag, path.to_owned()));
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(Error::InUse(flag, path.to_owned())),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(listener)
}

impl Server {
    /// Serves `listener` (bound at `path`) with `handler` on a new thread.
    pub fn spawn(listener: UnixListener, path: &Path, handler: Handler) -> Result<Self, Error> {
        let io = |source| Error::Io {
            flag: Flag::ApiSock,
            path: path.to_owned(),
            source,
        };
        listener.set_nonblocking(true).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("kvmkit-api".into())
            .spawn(move || {
                crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Api);
                accept_loop(&listener, &handler, &thread_stop);
            })
            .map_err(io)?;
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits up to [`POLL`] for `listener` to have a connection.
fn wait_readable(listener: &UnixListener) {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: `fds` is a valid array of one pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, POLL.as_millis() as libc::c_int) };
}

fn accept_loop(listener: &UnixListener, handler: &Handler, stop: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::SeqCst) {
        wait_readable(listener);
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                continue;
            }
            Err(e) => {
                log::warn!("API: accept: {e}");
                std::thread::sleep(POLL);
                continue;
            }
        };
        // Accepted sockets must block (with timeouts) whatever the listener does.
        if stream.set_nonblocking(false).is_err() {
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            let mut conn = Connection::new(stream);
            let busy = Response::fault(503, "too many API connections at once; try again");
            let _ = conn.write_response(&busy, false);
            continue;
        }
        let (handler, active) = (handler.clone(), active.clone());
        let spawned = std::thread::Builder::new()
            .name("kvmkit-api-conn".into())
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                serve(Connection::new(stream), &handler);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            log::warn!("API: cannot start a connection thread: {e}");
        }
    }
}

/// Answers the requests of one connection until the client closes it, asks to, or breaks the rules.
fn serve(mut conn: Connection, handler: &Handler) {
    loop {
        let request = match conn.read_request() {
            Ok(r) => r,
            Err(ReadError::Closed | ReadError::Io(_)) => return,
            Err(e @ ReadError::TooLarge(_)) => {
                let _ = conn.write_response(&Response::fault(413, &e.to_string()), false);
                return;
            }
            Err(e @ ReadError::Malformed(_)) => {
                let _ = conn.write_response(&Response::fault(400, &e.to_string()), false);
                return;
            }
        };
        let response = handler(&request);
        if conn.write_response(&response, request.keep_alive).is_err() || !request.keep_alive {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn temp_sock(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("kvmkit-api-{}-{name}.sock", std::process::id()))
    }

    fn echo_server(path: &Path) -> Server {
        let listener = bind(path).unwrap();
        let handler: Handler = Arc::new(|r: &Request| {
            Response::json(format!(
                "{{\"path\":\"{}\",\"len\":{}}}",
                r.path,
                r.body.len()
            ))
        });
        Server::spawn(listener, path, handler).unwrap()
    }

    fn ask(path: &Path, raw: &[u8]) -> String {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn the_socket_is_private_served_and_removed() {
        let path = temp_sock("serve");
        let server = echo_server(&path);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let out = ask(
            &path,
            b"PUT /x HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.ends_with(r#"{"path":"/x","len":2}"#), "{out}");
        let out = ask(&path, b"garbage\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(matches!(bind(&path), Err(Error::InUse(..))));
        drop(server);
        assert!(!path.exists());
    }

    #[test]
    fn a_stale_socket_is_replaced_and_other_files_are_refused() {
        let path = temp_sock("stale");
        let _ = std::fs::remove_file(&path);
        drop(UnixListener::bind(&path).unwrap()); // left behind, nobody listening
        let server = echo_server(&path);
        assert!(ask(&path, b"GET / HTTP/1.0\r\n\r\n").contains("200 OK"));
        drop(server);
        std::fs::write(&path, "not a socket").unwrap();
        assert!(matches!(bind(&path), Err(Error::NotASocket(..))));
        std::fs::remove_file(&path).unwrap();
    }
}
