//! Running a VM: one thread per vCPU, and an event-loop thread (`kvmkit-events`) that waits for the
//! VM to end (guest reset, a vCPU's fatal exit, the user's quit, a stop signal) while feeding console
//! input, then stops every vCPU thread. [`RunningVm`] can pause and resume the vCPUs meanwhile.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::console::EscapeParser;
use crate::outcome::Outcome;
use crate::signals::StopSignals;
use crate::vcpu::VcpuGroup;
use crate::vm::Vm;

/// Errors from running a VM (not from the guest: those are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The event loop's epoll or eventfd could not be set up or waited on.
    #[error("event loop: {0}")]
    EventLoop(#[source] std::io::Error),
    /// A vCPU or event-loop thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The event loop panicked (the vCPUs were stopped).
    #[error("the event loop panicked")]
    Panicked,
}

const TOKEN_RESET: u64 = 0;
const TOKEN_VCPU: u64 = 1;
const TOKEN_STDIN: u64 = 2;
const TOKEN_SIGNAL: u64 = 3;
const TOKEN_STOP: u64 = 4;
const TOKEN_POWER_OFF: u64 = 5;
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

/// A VM whose vCPUs and event loop are running.
#[derive(Debug)]
pub struct RunningVm {
    vcpus: Arc<VcpuGroup>,
    stop: EventFd,
    events: JoinHandle<Result<Outcome, Error>>,
}

impl RunningVm {
    /// Pauses every vCPU; returns once none is in `KVM_RUN`. The VM's devices and event loop go on.
    pub fn pause(&self) {
        self.vcpus.pause();
    }

    /// Resumes the vCPUs after [`RunningVm::pause`].
    pub fn resume(&self) {
        self.vcpus.resume();
    }

    /// Asks the VM to stop; [`RunningVm::wait`] then returns [`Outcome::Stopped`] (unless the guest
    /// ended it first).
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }

    /// Waits for the VM to end and returns why. Every vCPU thread has stopped when this returns.
    pub fn wait(self) -> Result<Outcome, Error> {
        match self.events.join() {
            Ok(result) => result,
            Err(_) => {
                self.vcpus.stop();
                Err(Error::Panicked)
            }
        }
    }
}

/// Runs `vm` until it ends and returns why. Every vCPU thread has stopped when this returns.
pub fn run(vm: Vm, input: Input) -> Result<Outcome, Error> {
    start(vm, input)?.wait()
}

/// Starts `vm`: its vCPU threads and its event loop.
pub fn start(vm: Vm, input: Input) -> Result<RunningVm, Error> {
    let Vm {
        kvm,
        vm: kvm_vm,
        ram,
        buses,
        vcpus,
        serial,
        reset,
        power_off,
        panicked,
        acpi: _,
        virtio: _,
        timeline,
        assist,
    } = vm;
    // The VM's fd (and with it the irqfds) and its RAM must outlive every vCPU thread: the event-loop
    // thread owns them and drops them only after it has stopped the vCPUs.
    let keep_alive = (kvm, kvm_vm, ram);
    let wake = EventFd::new(EFD_NONBLOCK).map_err(Error::EventLoop)?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(Error::EventLoop)?;
    let loop_stop = stop.try_clone().map_err(Error::EventLoop)?;
    let (tx, rx) = mpsc::channel();
    let group = Arc::new(
        VcpuGroup::spawn(vcpus, Arc::new(buses), assist, tx, &wake, timeline.clone())
            .map_err(Error::Spawn)?,
    );
    let loop_group = group.clone();
    let events = std::thread::Builder::new()
        .name("kvmkit-events".into())
        .spawn(move || {
            let result = event_loop(EventSources {
                wake,
                reset,
                power_off,
                stop: loop_stop,
                rx,
                serial,
                input,
            });
            timeline.mark(crate::timeline::Event::GuestShutdown);
            loop_group.stop();
            drop(keep_alive);
            // A reset that follows a kernel panic is the guest crashing, not rebooting.
            result.map(|o| match o {
                Outcome::Reset if panicked.load(Ordering::SeqCst) => Outcome::GuestPanic,
                o => o,
            })
        });
    match events {
        Ok(events) => Ok(RunningVm {
            vcpus: group,
            stop,
            events,
        }),
        Err(e) => {
            group.stop();
            Err(Error::Spawn(e))
        }
    }
}

/// What the event loop watches.
struct EventSources {
    wake: EventFd,
    reset: EventFd,
    power_off: EventFd,
    stop: EventFd,
    rx: mpsc::Receiver<Outcome>,
    serial: Arc<Mutex<legacy::Serial>>,
    input: Input,
}

fn event_loop(sources: EventSources) -> Result<Outcome, Error> {
    let EventSources {
        wake,
        reset,
        power_off,
        stop,
        rx,
        serial,
        input,
    } = sources;
    let signals = StopSignals::new().map_err(Error::EventLoop)?;
    let epoll = Epoll::new().map_err(Error::EventLoop)?;
    let watch = |fd: i32, token: u64| {
        epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        )
    };
    watch(reset.as_raw_fd(), TOKEN_RESET).map_err(Error::EventLoop)?;
    watch(power_off.as_raw_fd(), TOKEN_POWER_OFF).map_err(Error::EventLoop)?;
    watch(wake.as_raw_fd(), TOKEN_VCPU).map_err(Error::EventLoop)?;
    watch(signals.event().as_raw_fd(), TOKEN_SIGNAL).map_err(Error::EventLoop)?;
    watch(stop.as_raw_fd(), TOKEN_STOP).map_err(Error::EventLoop)?;
    // An input that epoll cannot watch (a regular file) simply gives no input.
    let mut input = input.into_file();
    if let Some(f) = &input
        && watch(f.as_raw_fd(), TOKEN_STDIN).is_err()
    {
        input = None;
    }

    let mut parser = EscapeParser::default();
    let mut pending: VecDeque<u8> = VecDeque::new();
    // One slot per token: every source can be ready at once.
    let mut events = vec![EpollEvent::default(); 6];
    loop {
        let timeout = if pending.is_empty() {
            -1
        } else {
            INPUT_RETRY_MS
        };
        let n = match epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::EventLoop(e)),
        };
        let mut ended = None;
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_RESET => {
                    let _ = reset.read();
                    ended = Some(Outcome::Reset);
                }
                TOKEN_POWER_OFF => {
                    let _ = power_off.read();
                    ended = Some(Outcome::PowerOff);
                }
                TOKEN_STOP => {
                    let _ = stop.read();
                    ended = Some(Outcome::Stopped);
                }
                TOKEN_SIGNAL => {
                    if let Some(sig) = signals.received() {
                        ended = Some(Outcome::Signal(sig));
                    }
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
            return Ok(outcome);
        }
    }
}
