//! The virtio console's host side (`--console`): where the guest's `hvc0` output goes and its
//! input comes from. Output goes through the same bounded buffer and writer thread as the UART's
//! ([`crate::console_buffer`]), so a reader that stalls never holds up the guest.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use virtio_devices::console::{Console, ConsoleInput, Resizer};

use crate::config::devices::ConsoleMode;
use crate::console_buffer::{self, ConsoleDrain};

/// Why the console could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The output file could not be opened.
    #[error("cannot open console output {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No pseudo-terminal could be made.
    #[error("cannot make a pseudo-terminal for the console: {0}")]
    Pty(#[source] io::Error),
    /// stdin or stdout could not be duplicated, or the writer thread not started.
    #[error("cannot set up the console: {0}")]
    Io(#[source] io::Error),
    /// The console's socket could not be set up.
    #[error(transparent)]
    Socket(#[from] super::hvc_socket::Error),
}

/// A console device and what kvmkit keeps of its host side.
pub struct HostConsole {
    /// The device, to place on the machine.
    pub device: Console,
    /// The output buffer's drain, for the VM's end (none for `null`).
    pub drain: Option<ConsoleDrain>,
    /// The pseudo-terminal's path (`pty`).
    pub pty: Option<PathBuf>,
    /// The socket's relay (`socket`): it lives as long as the VM's devices.
    pub relay: Option<super::hvc_socket::SocketConsole>,
    /// How the terminal's size changes reach the guest, if they can.
    pub resize: Option<ResizeSource>,
}

/// Where a console's terminal size changes come from.
pub enum ResizeSource {
    /// kvmkit's own terminal (`tty`): SIGWINCH.
    Signal(Resizer),
    /// A pseudo-terminal (`pty`): whoever attaches sets the size on its side, which sends kvmkit no
    /// signal, so the size is looked at from time to time through this duplicate of the master.
    Poll(OwnedFd, Resizer),
}

impl std::fmt::Debug for ResizeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signal(_) => f.write_str("Signal"),
            Self::Poll(fd, _) => write!(f, "Poll({})", fd.as_raw_fd()),
        }
    }
}

/// An input read only when it has bytes (`poll` with no wait first), so its file flags stay as
/// they are: stdin's open file is the shell's too, and must not be left non-blocking.
struct Polled(OwnedFd);

impl Read for Polled {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd, which `pfd` is, and does not wait.
        let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        if ready == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // SAFETY: read writes at most `buf.len()` bytes into `buf`; the fd is ours.
        let n = unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

impl AsRawFd for Polled {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// A pseudo-terminal's master side, with its other side kept open: without a holder of the other
/// side the master reports a hang-up until someone attaches. (The device's worker reads it; it
/// makes no ioctl, which a worker's seccomp list does not have.)
struct PtyMaster {
    master: File,
    _other_side: OwnedFd,
}

impl Read for PtyMaster {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.master.read(buf)
    }
}

impl AsRawFd for PtyMaster {
    fn as_raw_fd(&self) -> RawFd {
        self.master.as_raw_fd()
    }
}

fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor for `fd`, which stays open; the new one is
    // owned by the result.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The terminal size of `fd`, if it is a terminal with a size: (columns, rows).
pub fn terminal_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data; TIOCGWINSZ writes one into `ws`.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above; a descriptor that is not a terminal gets ENOTTY.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0;
    (ok && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// The size a new pseudo-terminal starts with, until whoever attaches sets its own.
const PTY_SIZE: (u16, u16) = (80, 24);

/// Makes a pseudo-terminal in raw mode and 80x24: its master (non-blocking), the other side
/// (keep it open: without it the master reports a hang-up), and its path.
pub fn open_pty() -> io::Result<(File, OwnedFd, PathBuf)> {
    let (mut master, mut other) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name, termios and winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut other,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors from openpty, owned from here on.
    let (master, other) = unsafe { (File::from_raw_fd(master), OwnedFd::from_raw_fd(other)) };
    for fd in [master.as_raw_fd(), other.as_raw_fd()] {
        // SAFETY: F_SETFD on our own descriptor.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // Raw mode: the guest's bytes pass unchanged (no CR added, no echo, no line editing).
    // SAFETY: termios and winsize are plain data; tcgetattr fills the termios, cfmakeraw and
    // tcsetattr read it, TIOCSWINSZ reads the winsize.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(other.as_raw_fd(), &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(other.as_raw_fd(), libc::TCSANOW, &t);
        }
        let ws = libc::winsize {
            ws_col: PTY_SIZE.0,
            ws_row: PTY_SIZE.1,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        libc::ioctl(other.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
    // SAFETY: F_GETFL/F_SETFL on our own master descriptor.
    unsafe {
        let flags = libc::fcntl(master.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(master.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let path = std::fs::read_link(format!("/proc/self/fd/{}", other.as_raw_fd()))?;
    Ok((master, other, path))
}

/// Makes the console device `name` for `mode`.
pub fn make(name: &str, mode: &ConsoleMode) -> Result<HostConsole, Error> {
    let buffered = |out: Box<dyn io::Write + Send>| console_buffer::spawn(out).map_err(Error::Io);
    let mut resize = None;
    let mut relay = None;
    let (device, drain, pty) = match mode {
        ConsoleMode::Null => (
            Console::new(name, Box::new(io::sink()), None, None),
            None,
            None,
        ),
        ConsoleMode::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| Error::File {
                    path: path.clone(),
                    source,
                })?;
            let (out, drain) = buffered(Box::new(file))?;
            (
                Console::new(name, Box::new(out), None, None),
                Some(drain),
                None,
            )
        }
        ConsoleMode::Socket(path) => {
            let (socket, output, input) = super::hvc_socket::start(path)?;
            relay = Some(socket);
            let (out, drain) = buffered(Box::new(output))?;
            let input: Box<dyn ConsoleInput> = Box::new(input);
            (
                Console::new(name, Box::new(out), Some(input), None),
                Some(drain),
                None,
            )
        }
        ConsoleMode::Tty => {
            let (out, drain) = buffered(Box::new(io::stdout()))?;
            let input: Box<dyn ConsoleInput> = Box::new(Polled(duplicate(0).map_err(Error::Io)?));
            let size = terminal_size(1).or_else(|| terminal_size(0));
            let console = Console::new(name, Box::new(out), Some(input), size);
            if size.is_some() {
                resize = Some(ResizeSource::Signal(console.resizer()));
            }
            (console, Some(drain), None)
        }
        ConsoleMode::Pty => {
            let (master, other, path) = open_pty().map_err(Error::Pty)?;
            let output = master.try_clone().map_err(Error::Pty)?;
            let (out, drain) = buffered(Box::new(output))?;
            let watch = duplicate(master.as_raw_fd()).map_err(Error::Pty)?;
            let input: Box<dyn ConsoleInput> = Box::new(PtyMaster {
                master,
                _other_side: other,
            });
            let console = Console::new(name, Box::new(out), Some(input), Some(PTY_SIZE));
            resize = Some(ResizeSource::Poll(watch, console.resizer()));
            (console, Some(drain), Some(path))
        }
    };
    Ok(HostConsole {
        device,
        drain,
        pty,
        relay,
        resize,
    })
}
