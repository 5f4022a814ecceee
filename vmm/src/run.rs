//! Running a VM: one thread per vCPU, and an event loop on the calling thread that waits for the
//! VM to end (guest reset, a vCPU's fatal exit, the user's quit) while feeding console input.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::console::EscapeParser;
use crate::outcome::Outcome;
use crate::vcpu::VcpuThread;
use crate::vm::Vm;

/// Errors from running a VM (not from the guest: those are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event loop's epoll or eventfd could not be set up or waited on.
    #[error("event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    /// A vCPU thread could not be started.
    #[error("cannot start a vCPU thread: {0}")]
    Spawn(#[source] std::io::Error),
}

const TOKEN_RESET: u64 = 0;
const TOKEN_VCPU: u64 = 1;
const TOKEN_STDIN: u64 = 2;
/// How often to retry console input that did not fit in the UART's FIFO.
const INPUT_RETRY_MS: i32 = 10;

/// Where console input comes from.
#[derive(Debug)]
pub enum Input {
    /// No input: the guest's UART never receives anything.
    None,
    /// The process's stdin, with Ctrl-A x to quit.
    Stdin,
    /// Any readable descriptor (a pipe, a socket), with Ctrl-A x to quit.
    Fd(OwnedFd),
}

impl Input {
    /// The descriptor to read, if any. A stdin that cannot be duplicated gives no input.
    fn into_file(self) -> Option<File> {
        match self {
            Input::None => None,
            Input::Stdin => std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .map(File::from),
            Input::Fd(fd) => Some(File::from(fd)),
        }
    }
}

/// Runs `vm` until it ends and returns why. Every vCPU thread has stopped when this returns.
pub fn run(vm: Vm, input: Input) -> Result<Outcome, Error> {
    let Vm {
        buses,
        vcpus,
        serial,
        reset,
        panicked,
        ..
    } = vm;
    let epoll = Epoll::new().map_err(Error::EventLoop)?;
    let wake = EventFd::new(EFD_NONBLOCK).map_err(Error::EventLoop)?;
    let watch = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    watch(reset.as_raw_fd(), TOKEN_RESET).map_err(Error::EventLoop)?;
    watch(wake.as_raw_fd(), TOKEN_VCPU).map_err(Error::EventLoop)?;
    // An input that epoll cannot watch (a regular file) simply gives no input.
    let mut input = input.into_file();
    if let Some(f) = &input
        && watch(f.as_raw_fd(), TOKEN_STDIN).is_err()
    {
        input = None;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let buses = Arc::new(buses);
    let mut threads = Vec::with_capacity(vcpus.len());
    let mut spawn_error = None;
    for vcpu in vcpus {
        let wake = wake.try_clone().map_err(Error::EventLoop)?;
        match VcpuThread::spawn(vcpu, buses.clone(), stop.clone(), tx.clone(), wake) {
            Ok(t) => threads.push(t),
            Err(e) => {
                spawn_error = Some(Error::Spawn(e));
                break;
            }
        }
    }

    let mut parser = EscapeParser::default();
    let mut pending: VecDeque<u8> = VecDeque::new();
    let mut events = vec![EpollEvent::default(); 4];
    let result = loop {
        if let Some(e) = spawn_error.take() {
            break Err(e);
        }
        let timeout = if pending.is_empty() {
            -1
        } else {
            INPUT_RETRY_MS
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(Error::EventLoop(e)),
        };
        let mut ended = None;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_RESET => {
                    let _ = reset.read();
                    ended = Some(Outcome::Reset);
                }
                TOKEN_VCPU => {
                    let _ = wake.read();
                    if let Ok(outcome) = rx.try_recv() {
                        ended = Some(outcome);
                    }
                }
                TOKEN_STDIN => {
                    let Some(f) = input.as_mut() else { continue };
                    let mut buf = [0u8; 64];
                    match f.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Ok(0) | Err(_) => {
                            // EOF or a broken input: stop watching it, the guest runs on.
                            let fd = f.as_raw_fd();
                            let _ = epoll.ctl(ControlOperation::Delete, fd, EpollEvent::default());
                            input = None;
                        }
                        Ok(k) => {
                            let input = parser.feed(&buf[..k]);
                            pending.extend(input.to_guest);
                            if input.quit {
                                ended = Some(Outcome::Quit);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if !pending.is_empty() {
            let mut uart = serial.lock().unwrap_or_else(|e| e.into_inner());
            let (front, _) = pending.as_slices();
            let taken = uart.enqueue_input(front);
            pending.drain(..taken);
        }
        if let Some(outcome) = ended {
            break Ok(outcome);
        }
    };
    stop.store(true, Ordering::Release);
    for t in threads {
        t.stop();
    }
    // A reset that follows a kernel panic is the guest crashing, not rebooting.
    result.map(|o| match o {
        Outcome::Reset if panicked.load(Ordering::SeqCst) => Outcome::GuestPanic,
        o => o,
    })
}
