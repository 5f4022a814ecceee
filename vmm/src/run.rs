//! Running a VM: one thread per vCPU, and an event-loop thread (`kvmkit-events`) that runs the VM's
//! event sources (guest reset and power-off, a vCPU's fatal exit, a stop signal, a stop request,
//! console input, and any a caller registers) until one of them ends the VM, then stops every vCPU
//! thread. [`RunningVm`] can pause and resume the vCPUs meanwhile.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use assist::Assist;
use event_manager::{EventManager, RemoteEndpoint, SubscriberOps};
use legacy::I8042;
use virtio::DeviceCounters;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::assist_hook::AssistHook;
use crate::console_buffer::ConsoleDrain;
use crate::events::{ConsoleInput, EndOn, EventSource, StopSignalSource, VcpuOutcomes, VmEnd};
use crate::outcome::Outcome;
use crate::timeline::Timeline;
use crate::vcpu::{ExitCounts, ExitHook, VcpuGroup};
use crate::vm::Vm;

/// How long the end of a VM waits for the guest's last console output to be written: a stalled
/// reader must not hold up a stop (a stop signal ends kvmkit within a second).
const CONSOLE_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);

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

/// A VM whose vCPUs and event loop are running. It dereferences to its [`VmHandle`], which other
/// threads (the API) can share; [`RunningVm::wait`] is for the one that waits for the end.
pub struct RunningVm {
    handle: Arc<VmHandle>,
    events: JoinHandle<Result<Outcome, Error>>,
}

impl std::fmt::Debug for RunningVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningVm")
            .field("vcpus", &self.handle.vcpus)
            .finish()
    }
}

impl std::ops::Deref for RunningVm {
    type Target = VmHandle;

    fn deref(&self) -> &VmHandle {
        &self.handle
    }
}

/// Controls of a running VM: pause, resume, stop, keystrokes, the power button, its counters.
pub struct VmHandle {
    vcpus: Arc<VcpuGroup>,
    stop: EventFd,
    end: VmEnd,
    endpoint: RemoteEndpoint<EventSource>,
    i8042: Arc<Mutex<I8042>>,
    power_button: Option<EventFd>,
    exits: Arc<ExitCounts>,
    devices: Vec<(String, Arc<dyn DeviceCounters>)>,
    console: ConsoleDrain,
    assist: Option<Arc<Assist>>,
    timeline: Arc<Timeline>,
    parts: crate::snapshot::VmParts,
}

impl std::fmt::Debug for VmHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmHandle")
            .field("vcpus", &self.vcpus)
            .finish()
    }
}

/// Why the VM could not be asked for something.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The guest has not read the keys typed before.
    #[error("cannot type Ctrl-Alt-Del: {0}")]
    Keys(#[from] legacy::KeyError),
    /// No ACPI, so no power button.
    #[error("the VM has no power button: it was started with --acpi off (use SendCtrlAltDel)")]
    NoPowerButton,
    /// The power button's interrupt could not be raised.
    #[error("cannot press the power button: {0}")]
    PowerButton(String),
}

impl RunningVm {
    /// The VM's controls, to share with other threads.
    pub fn handle(&self) -> &Arc<VmHandle> {
        &self.handle
    }
}

impl VmHandle {
    /// Pauses every vCPU; returns once none is in `KVM_RUN`. The VM's devices and event loop go on.
    pub fn pause(&self) {
        self.vcpus.pause();
    }

    /// Resumes the vCPUs after [`VmHandle::pause`].
    pub fn resume(&self) {
        self.vcpus.resume();
    }

    /// Asks the VM to stop; [`RunningVm::wait`] then returns [`Outcome::Stopped`] (unless the guest
    /// ended it first).
    pub fn stop(&self) {
        let _ = self.stop.write(1);
    }

    /// Types Ctrl-Alt-Del on the guest's i8042 keyboard.
    pub fn ctrl_alt_del(&self) -> Result<(), ControlError> {
        let mut i8042 = self.i8042.lock().unwrap_or_else(|e| e.into_inner());
        Ok(i8042.ctrl_alt_del()?)
    }

    /// Presses the ACPI power button (its GED interrupt).
    pub fn press_power_button(&self) -> Result<(), ControlError> {
        let button = self
            .power_button
            .as_ref()
            .ok_or(ControlError::NoPowerButton)?;
        button
            .write(1)
            .map_err(|e| ControlError::PowerButton(e.to_string()))
    }

    /// Every counter of the VM, grouped as Firecracker's metrics group them: `vcpu` (exits by
    /// kind), `assist` (instructions and system calls the assist completed, if it is on) and one
    /// group per virtio device (`block_vda`, `net_eth0`, `entropy_rng0`).
    pub fn counters(&self) -> Vec<(String, Vec<(&'static str, u64)>)> {
        let mut groups = vec![
            ("vcpu".to_owned(), self.exits.snapshot()),
            (
                "uart".to_owned(),
                vec![("missed_write_count", self.console.dropped())],
            ),
        ];
        if let Some(assist) = &self.assist {
            groups.push(("assist".to_owned(), assist.counts().all()));
        }
        for (key, device) in &self.devices {
            groups.push((key.clone(), device.counters()));
        }
        groups
    }

    /// The VM's boot timeline.
    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    /// Saves the paused VM, described by `config`, to `snapshot` and its RAM (all of it, or the
    /// pages written since the last snapshot: `kind`) to `memory`. Returns the pages of RAM the
    /// memory file got.
    pub fn snapshot(
        &self,
        config: &crate::config::VmConfig,
        kind: crate::snapshot::Kind,
        snapshot: &std::path::Path,
        memory: &std::path::Path,
    ) -> Result<u64, crate::snapshot::Error> {
        self.parts.create(
            &self.vcpus,
            (&config.boot, &config.machine, &config.devices),
            kind,
            snapshot,
            memory,
        )
    }

    /// Where event sources end the VM: a source made for [`VmHandle::add_event_source`] keeps a
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
}

impl RunningVm {
    /// Waits for the VM to end and returns why. Every vCPU thread has stopped when this returns.
    pub fn wait(self) -> Result<Outcome, Error> {
        match self.events.join() {
            Ok(result) => result,
            Err(_) => {
                self.handle.vcpus.stop();
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
    start_with(vm, input, false)
}

/// [`start`], with the vCPUs paused from the start if `paused` (a restored VM waiting for its
/// resume).
pub fn start_with(mut vm: Vm, input: Input, paused: bool) -> Result<RunningVm, Error> {
    // A hand-made guest may write LSTAR at once: its vCPUs wait for the trap. A restored guest's
    // or a Linux kernel's start now and read LSTAR once the trap is in (`Vm::trap_may_lag`).
    let trap_pending = if vm.trap_may_lag {
        vm.msr_filter.take().map(|_| vm.msr_filter_ready.clone())
    } else {
        vm.finish_msr_filter();
        None
    };
    let parts = vm.parts();
    let Vm {
        kvm,
        vm: kvm_vm,
        ram,
        mut devices,
        legacy,
        vcpus,
        timeline,
        assist,
        restored_lstar,
        msr_filter: _,
        msr_filter_ready: _,
        trap_may_lag: _,
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
    if let Some(source) = devices.take_console_resize() {
        let resize = crate::events::TerminalResize::new(source).map_err(setup)?;
        manager.add_subscriber(Box::new(resize));
    }
    if let Some(input) = input.into_file() {
        let console =
            ConsoleInput::new(input, legacy.serial.clone(), end.clone()).map_err(setup)?;
        manager.add_subscriber(Box::new(console));
    }
    let endpoint = manager.remote_endpoint();

    let mut hooked = Vec::with_capacity(vcpus.len());
    for (i, mut vcpu) in vcpus.into_iter().enumerate() {
        let mut hook = assist.clone().map(|a| match &trap_pending {
            Some(ready) => AssistHook::new(a).with_trap_pending(ready.clone()),
            None => AssistHook::new(a),
        });
        // A restored guest wrote its LSTAR before the snapshot: the system call bridge learns it now.
        if let (Some(hook), Some(&Some(lstar))) = (hook.as_mut(), restored_lstar.get(i)) {
            let write = crate::vcpu::Unhandled::WriteMsr {
                index: accel::x86::msr::LSTAR,
                data: lstar,
            };
            if let crate::vcpu::Handled::End(outcome) = hook.handle(&mut vcpu, write) {
                log::warn!("restored vCPU {i}: system call bridge not armed: {outcome}");
            }
        }
        hooked.push((vcpu, hook.map(|h| Box::new(h) as Box<dyn ExitHook>)));
    }
    let vcpus = hooked;
    let exits = Arc::new(ExitCounts::default());
    let group = Arc::new(
        VcpuGroup::spawn(
            vcpus,
            devices.buses().clone(),
            tx,
            &wake,
            timeline.clone(),
            exits.clone(),
            paused,
        )
        .map_err(Error::Spawn)?,
    );
    let device_counters = devices.counters();
    let other_consoles = devices.take_console_drains();
    let handle_timeline = timeline.clone();
    // The VM's fd (and with it the irqfds), its RAM and its devices must outlive every vCPU thread:
    // the event-loop thread owns them and drops them only after it has stopped the vCPUs.
    let keep_alive = (kvm, kvm_vm, ram, devices);
    let panicked = legacy.panicked;
    let console = legacy.console;
    let loop_console = console.clone();
    let loop_group = group.clone();
    let loop_end = end.clone();
    let events = std::thread::Builder::new()
        .name("kvmkit-events".into())
        .spawn(move || {
            crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::EventLoop);
            let result = event_loop(&mut manager, &loop_end);
            timeline.mark(crate::timeline::Event::GuestShutdown);
            loop_group.stop();
            // The guest's last words reach the console, unless nobody reads it.
            for console in std::iter::once(&loop_console).chain(&other_consoles) {
                if !console.finish(CONSOLE_DRAIN) {
                    log::warn!(
                        "guest console output not written: its reader is stalled or gone ({} \
                         bytes dropped in all)",
                        console.dropped()
                    );
                }
            }
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
            handle: Arc::new(VmHandle {
                vcpus: group,
                stop,
                end,
                endpoint,
                i8042: legacy.i8042,
                power_button: legacy.power_button,
                exits,
                devices: device_counters,
                console,
                assist,
                timeline: handle_timeline,
                parts,
            }),
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
