//! Running a VM: one thread per vCPU, and an event-loop thread (`kvmkit-events`) that runs the VM's
//! event sources (guest reset and power-off, a vCPU's fatal exit, a stop signal, a stop request,
//! console input, and any a caller registers) until one of them ends the VM, then stops every vCPU
//! thread. [`RunningVm`] can pause and resume the vCPUs meanwhile.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use event_manager::{EventManager, RemoteEndpoint, SubscriberOps};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::assist_hook::AssistHook;
use crate::events::{ConsoleInput, EndOn, EventSource, StopSignalSource, VcpuOutcomes, VmEnd};
use crate::outcome::Outcome;
use crate::vcpu::{ExitHook, VcpuGroup};
use crate::vm::Vm;

/// Errors from running a VM (not from the guest: those are [`Outcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An eventfd, the signal route or the console's timer could not be set up.
    #[error("event loop: {0}")]
    Setup(#[source] std::io::Error),
    /// The event loop's epoll failed.
    #[error("event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
    /// A vCPU or event-loop thread could not be started.
    #[error("cannot start a thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The event loop panicked (the vCPUs were stopped).
    #[error("the event loop panicked")]
    Panicked,
    /// The event loop has ended, so it takes no more sources.
    #[error("the VM's event loop has ended")]
    Ended,
}

impl From<event_manager::Error> for Error {
    fn from(e: event_manager::Error) -> Self {
        Self::EventLoop(e)
    }
}

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
pub struct RunningVm {
    vcpus: Arc<VcpuGroup>,
    stop: EventFd,
    end: VmEnd,
    endpoint: RemoteEndpoint<EventSource>,
    events: JoinHandle<Result<Outcome, Error>>,
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm")
            .field("vcpus", &self.vcpus)
            .finish()
    }
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

    /// Where event sources end the VM: a source made for [`RunningVm::add_event_source`] keeps a
    /// clone and calls [`VmEnd::end`].
    pub fn vm_end(&self) -> VmEnd {
        self.end.clone()
    }

    /// Adds an event source to the running VM's event loop (on the loop's thread); returns once it
    /// is registered.
    pub fn add_event_source(&self, source: EventSource) -> Result<(), Error> {
        self.endpoint
            .call_blocking(move |ops| -> Result<(), event_manager::Error> {
                ops.add_subscriber(source);
                Ok(())
            })
            .map_err(|_| Error::Ended)
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
        devices,
        legacy,
        vcpus,
        timeline,
        assist,
    } = vm;
    let setup = Error::Setup;
    let end = VmEnd::default();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(setup)?;
    let stop = EventFd::new(EFD_NONBLOCK).map_err(setup)?;
    let (tx, rx) = mpsc::channel();
    let mut manager = EventManager::<EventSource>::new()?;
    let sources: Vec<EventSource> = vec![
        Box::new(EndOn::new(legacy.reset, Outcome::Reset, end.clone())),
        Box::new(EndOn::new(legacy.power_off, Outcome::PowerOff, end.clone())),
        Box::new(EndOn::new(
            stop.try_clone().map_err(setup)?,
            Outcome::Stopped,
            end.clone(),
        )),
        Box::new(StopSignalSource::new(end.clone()).map_err(setup)?),
        Box::new(VcpuOutcomes::new(
            wake.try_clone().map_err(setup)?,
            rx,
            end.clone(),
        )),
    ];
    for source in sources {
        manager.add_subscriber(source);
    }
    if let Some(input) = input.into_file() {
        let console =
            ConsoleInput::new(input, legacy.serial.clone(), end.clone()).map_err(setup)?;
        manager.add_subscriber(Box::new(console));
    }
    let endpoint = manager.remote_endpoint();

    let vcpus: Vec<(accel::Vcpu, Option<Box<dyn ExitHook>>)> = vcpus
        .into_iter()
        .map(|vcpu| {
            let hook = assist
                .clone()
                .map(|a| Box::new(AssistHook::new(a)) as Box<dyn ExitHook>);
            (vcpu, hook)
        })
        .collect();
    let group = Arc::new(
        VcpuGroup::spawn(vcpus, devices.buses().clone(), tx, &wake, timeline.clone())
            .map_err(Error::Spawn)?,
    );
    // The VM's fd (and with it the irqfds), its RAM and its devices must outlive every vCPU thread:
    // the event-loop thread owns them and drops them only after it has stopped the vCPUs.
    let keep_alive = (kvm, kvm_vm, ram, devices);
    let panicked = legacy.panicked;
    let loop_group = group.clone();
    let loop_end = end.clone();
    let events = std::thread::Builder::new()
        .name("kvmkit-events".into())
        .spawn(move || {
            let result = event_loop(&mut manager, &loop_end);
            timeline.mark(crate::timeline::Event::GuestShutdown);
            loop_group.stop();
            drop(manager);
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
            end,
            endpoint,
            events,
        }),
        Err(e) => {
            group.stop();
            Err(Error::Spawn(e))
        }
    }
}

/// Runs the sources of `manager` until one of them ends the VM.
fn event_loop(manager: &mut EventManager<EventSource>, end: &VmEnd) -> Result<Outcome, Error> {
    loop {
        manager.run()?;
        if let Some(outcome) = end.outcome() {
            return Ok(outcome);
        }
    }
}
