//! The vCPU threads: run the guest, hand port and MMIO exits to the buses, report how it ended; and
//! the pause / resume / stop controls over all of them.
//!
//! The loop knows no device and no address: every access goes to [`Buses`]. Exits it cannot
//! complete by itself (an emulation failure, a trapped MSR write, a debug exit) go to the vCPU's
//! [`ExitHook`] if it has one: that is where the instruction assist plugs in
//! ([`crate::assist_hook`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::JoinHandle;
use std::time::Duration;

use accel::{SystemEvent, Vcpu, VcpuExit};
use vmm_sys_util::eventfd::EventFd;

use crate::devices::Buses;
use crate::outcome::Outcome;
use crate::timeline::{Event, Timeline};

/// An exit the loop does not complete by itself, with what it needs copied out of the `kvm_run`
/// page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unhandled {
    /// `KVM_EXIT_INTERNAL_ERROR` (details: [`Vcpu::internal_error`]).
    InternalError,
    /// A write to an MSR that the VM traps to userspace.
    WriteMsr {
        /// The MSR.
        index: u32,
        /// The value the guest wrote.
        data: u64,
    },
    /// A debug exception (a breakpoint set through `KVM_SET_GUEST_DEBUG`) at `pc`.
    Breakpoint {
        /// The guest's linear address of the instruction.
        pc: u64,
    },
}

/// What an [`ExitHook`] did with an exit.
#[derive(Debug)]
pub enum Handled {
    /// Dealt with: the guest runs on.
    Resume,
    /// The VM ends so.
    End(Outcome),
    /// Not this hook's business: the loop does what it does without a hook.
    NotMine,
}

/// Extends one vCPU's loop for the exits it cannot complete by itself. Each vCPU thread owns its
/// hook, so a hook may keep per-vCPU state.
pub trait ExitHook: Send {
    /// Deals with `exit` of `vcpu`, stopped there.
    fn handle(&mut self, vcpu: &mut Vcpu, exit: Unhandled) -> Handled;

    /// Called before each `KVM_RUN` of `vcpu`; an outcome ends the VM. Nothing by default.
    fn before_run(&mut self, _vcpu: &mut Vcpu) -> Option<Outcome> {
        None
    }
}

/// How many exits of each kind the vCPUs of a VM took, for metrics. Counters only grow.
#[derive(Debug, Default)]
pub struct ExitCounts {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    interrupted: AtomicU64,
    internal_error: AtomicU64,
    msr_write: AtomicU64,
    debug: AtomicU64,
}

impl ExitCounts {
    fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter, named as in Firecracker's `vcpu` metrics where it has one.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("exit_io_in", get(&self.io_in)),
            ("exit_io_out", get(&self.io_out)),
            ("exit_mmio_read", get(&self.mmio_read)),
            ("exit_mmio_write", get(&self.mmio_write)),
            ("exit_interrupted", get(&self.interrupted)),
            ("exit_internal_error", get(&self.internal_error)),
            ("exit_msr_write", get(&self.msr_write)),
            ("exit_debug", get(&self.debug)),
        ]
    }
}

/// Runs `vcpu` until the guest does something that ends the VM (the outcome) or `control` asks it to
/// stop (`None`); parks it while `control` asks for a pause. Port and MMIO exits are completed through
/// `buses`; the other exits go to `hook` first, when there is one. Each exit is counted in `counts`.
pub fn run_loop(
    vcpu: &mut Vcpu,
    buses: &Buses,
    mut hook: Option<&mut dyn ExitHook>,
    control: &Control,
    counts: &ExitCounts,
) -> Option<Outcome> {
    let id = vcpu.id();
    loop {
        match control.request() {
            Request::Run => {}
            Request::Pause => {
                control.park(vcpu);
                continue;
            }
            Request::Stop => return None,
        }
        if let Some(hook) = hook.as_deref_mut()
            && let Some(outcome) = hook.before_run(vcpu)
        {
            return Some(outcome);
        }
        let next = match vcpu.run() {
            Ok(VcpuExit::IoIn { port, data }) => {
                ExitCounts::add(&counts.io_in);
                buses.pio.read(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::IoOut { port, data }) => {
                ExitCounts::add(&counts.io_out);
                buses.pio.write(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::MmioRead { addr, data }) => {
                ExitCounts::add(&counts.mmio_read);
                buses.mmio.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite { addr, data }) => {
                ExitCounts::add(&counts.mmio_write);
                buses.mmio.write(addr, data);
                continue;
            }
            Ok(VcpuExit::Interrupted) => {
                ExitCounts::add(&counts.interrupted);
                continue;
            }
            Ok(VcpuExit::InternalError) => {
                ExitCounts::add(&counts.internal_error);
                Next::Hook(Unhandled::InternalError)
            }
            Ok(VcpuExit::WriteMsr { index, data, error }) => {
                ExitCounts::add(&counts.msr_write);
                if accel::x86::msr::write_faults(index, data) {
                    // What the CPU does with the value: #GP, the write not done.
                    *error = 1;
                    continue;
                }
                Next::Hook(Unhandled::WriteMsr { index, data })
            }
            Ok(VcpuExit::Debug { pc, .. }) => {
                ExitCounts::add(&counts.debug);
                Next::Hook(Unhandled::Breakpoint { pc })
            }
            Ok(VcpuExit::Hlt) => Next::Halted,
            Ok(VcpuExit::Shutdown) => Next::TripleFault,
            Ok(VcpuExit::SystemEvent(SystemEvent::Shutdown)) => Next::End(Outcome::PowerOff),
            Ok(VcpuExit::SystemEvent(SystemEvent::Reset)) => Next::End(Outcome::Reset),
            Ok(VcpuExit::SystemEvent(_)) => Next::End(Outcome::Crash { vcpu: id }),
            Ok(VcpuExit::FailEntry { reason }) => {
                Next::End(Outcome::FailEntry { vcpu: id, reason })
            }
            // kvmkit asks KVM for no other exits; looping on one would spin forever.
            Ok(VcpuExit::Other(what)) => Next::End(Outcome::VcpuError {
                vcpu: id,
                error: format!("unexpected KVM exit: {what}"),
            }),
            Err(e) => Next::End(Outcome::VcpuError {
                vcpu: id,
                error: e.to_string(),
            }),
        };
        let unhandled = match next {
            Next::Hook(unhandled) => unhandled,
            Next::Halted => {
                let rip = rip(vcpu);
                return Some(Outcome::Halted { vcpu: id, rip });
            }
            Next::TripleFault => {
                let rip = rip(vcpu);
                return Some(Outcome::TripleFault { vcpu: id, rip });
            }
            Next::End(outcome) => return Some(outcome),
        };
        let handled = match hook.as_deref_mut() {
            Some(hook) => hook.handle(vcpu, unhandled),
            None => Handled::NotMine,
        };
        match handled {
            Handled::Resume => {}
            Handled::End(outcome) => return Some(outcome),
            Handled::NotMine => return Some(unhandled_outcome(vcpu, unhandled)),
        }
    }
}

/// What the loop does after an exit it did not complete in place (copied out of `kvm_run`).
enum Next {
    Hook(Unhandled),
    Halted,
    TripleFault,
    End(Outcome),
}

/// The guest's RIP, for outcome messages (`u64::MAX` if KVM cannot say).
pub fn rip(vcpu: &Vcpu) -> u64 {
    vcpu.regs().map(|r| r.rip).unwrap_or(u64::MAX)
}

/// How the VM ends on an exit no hook dealt with.
fn unhandled_outcome(vcpu: &mut Vcpu, exit: Unhandled) -> Outcome {
    let id = vcpu.id();
    match exit {
        Unhandled::InternalError => Outcome::InternalError {
            vcpu: id,
            rip: rip(vcpu),
            error: vcpu.internal_error(),
            assist: None,
        },
        Unhandled::WriteMsr { index, .. } => Outcome::VcpuError {
            vcpu: id,
            error: format!("unexpected MSR write exit ({index:#x})"),
        },
        Unhandled::Breakpoint { pc } => Outcome::VcpuError {
            vcpu: id,
            error: format!("unexpected debug exit at {pc:#x}"),
        },
    }
}

/// What the vCPU threads are asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Run the guest.
    Run,
    /// Leave `KVM_RUN` and wait.
    Pause,
    /// Leave `KVM_RUN` and end the thread.
    Stop,
}

/// Work a parked vCPU's thread does with its vCPU: KVM's vCPU state is read and written by the
/// thread that runs the vCPU (snapshots do it this way).
pub type VcpuJob = Box<dyn FnOnce(&mut Vcpu) + Send>;

/// The request all vCPU threads of a VM follow, how many of them are parked, and work for parked
/// ones.
pub struct Control {
    request: AtomicU8,
    parked: Mutex<usize>,
    changed: Condvar,
    jobs: Mutex<HashMap<u64, VcpuJob>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("request", &self.request())
            .field("parked", &self.parked())
            .finish()
    }
}

impl Default for Control {
    fn default() -> Self {
        Self {
            request: AtomicU8::new(Request::Run as u8),
            parked: Mutex::new(0),
            changed: Condvar::new(),
            jobs: Mutex::new(HashMap::new()),
        }
    }
}

impl Control {
    /// The current request (one atomic load: the vCPU loop checks it before every `KVM_RUN`).
    pub fn request(&self) -> Request {
        match self.request.load(Ordering::Acquire) {
            0 => Request::Run,
            1 => Request::Pause,
            _ => Request::Stop,
        }
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the request and wakes parked threads to look at it.
    pub fn set(&self, request: Request) {
        let _parked = self.lock();
        self.request.store(request as u8, Ordering::Release);
        self.changed.notify_all();
    }

    /// Called by a vCPU thread that saw [`Request::Pause`]: counts itself parked and waits until the
    /// request changes, doing the jobs given for its vCPU meanwhile.
    pub fn park(&self, vcpu: &mut Vcpu) {
        let mut parked = self.lock();
        *parked += 1;
        self.changed.notify_all();
        while self.request() == Request::Pause {
            let job = self
                .jobs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&vcpu.id());
            if let Some(job) = job {
                drop(parked);
                job(vcpu);
                parked = self.lock();
                continue;
            }
            parked = self.changed.wait(parked).unwrap_or_else(|e| e.into_inner());
        }
        *parked -= 1;
        self.changed.notify_all();
    }

    /// Gives parked vCPU `id` a job.
    fn give(&self, id: u64, job: VcpuJob) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, job);
        // Under the lock the threads check for jobs with: none can miss this wake-up.
        let _parked = self.lock();
        self.changed.notify_all();
    }

    /// How many vCPU threads are parked now.
    pub fn parked(&self) -> usize {
        *self.lock()
    }

    /// Waits up to `timeout` for the parked count to change; returns the count.
    fn wait_parked(&self, timeout: Duration) -> usize {
        let parked = self.lock();
        let (parked, _) = self
            .changed
            .wait_timeout(parked, timeout)
            .unwrap_or_else(|e| e.into_inner());
        *parked
    }
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    accel::kick_current_thread();
}

/// Installs the handler for [`kick_signal`]: it sets `immediate_exit` of the vCPU the signalled thread
/// runs, so `KVM_RUN` returns whether the signal came during or just before it.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registering a handler for a valid real-time signal cannot fail.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
}

/// How often a kick is repeated while waiting for vCPU threads to answer it. One kick is enough with
/// `immediate_exit`; the repeat covers a kick that lands between the thread's check of the request
/// and its clearing of `immediate_exit`.
const KICK_RETRY: Duration = Duration::from_millis(10);

/// The vCPU threads of a running VM.
#[derive(Debug)]
pub struct VcpuGroup {
    control: Arc<Control>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    ids: Vec<u64>,
}

/// Why work could not be done on the vCPUs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The vCPUs are not paused.
    #[error("the vCPUs are not paused")]
    NotPaused,
    /// A vCPU thread did not answer (it ended, or hangs).
    #[error("vCPU {0} did not answer")]
    NoAnswer(u64),
}

/// How long a parked vCPU thread may take to do a job.
const JOB_TIMEOUT: Duration = Duration::from_secs(10);

impl VcpuGroup {
    /// Starts each vCPU, with its exit hook if it has one, on a thread named `kvmkit-vcpu-N`. A
    /// vCPU whose guest ends the VM sends the outcome on `outcomes` and writes `wake`; a thread that
    /// panics reports that as its outcome. Exits are counted in `counts`. With `paused` the vCPUs
    /// park before they first run, until [`VcpuGroup::resume`].
    pub fn spawn(
        vcpus: Vec<(Vcpu, Option<Box<dyn ExitHook>>)>,
        buses: Arc<Buses>,
        outcomes: Sender<Outcome>,
        wake: &EventFd,
        timeline: Arc<Timeline>,
        counts: Arc<ExitCounts>,
        paused: bool,
    ) -> std::io::Result<Self> {
        install_kick_handler();
        let control = Arc::new(Control::default());
        if paused {
            control.set(Request::Pause);
        }
        let group = Self {
            control: control.clone(),
            threads: Mutex::new(Vec::new()),
            ids: vcpus.iter().map(|(v, _)| v.id()).collect(),
        };
        for (mut vcpu, mut hook) in vcpus {
            let (buses, control, outcomes) = (buses.clone(), control.clone(), outcomes.clone());
            let timeline = timeline.clone();
            let counts = counts.clone();
            let wake = wake.try_clone()?;
            let id = vcpu.id();
            let spawned = std::thread::Builder::new()
                .name(format!("kvmkit-vcpu-{id}"))
                .spawn(move || {
                    crate::seccomp::apply_or_exit(crate::seccomp::ThreadKind::Vcpu);
                    let mut vcpu = vcpu.bind_kick();
                    if id == 0 {
                        timeline.mark(Event::FirstKvmRun);
                    }
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let hook = hook.as_mut().map(|h| h.as_mut() as &mut dyn ExitHook);
                        run_loop(&mut vcpu, &buses, hook, &control, &counts)
                    }));
                    drop(vcpu);
                    let outcome = match ran {
                        Ok(outcome) => outcome,
                        Err(_) => Some(Outcome::VcpuError {
                            vcpu: id,
                            error: "the vCPU thread panicked".into(),
                        }),
                    };
                    if let Some(outcome) = outcome {
                        let _ = outcomes.send(outcome);
                        let _ = wake.write(1);
                    }
                });
            match spawned {
                Ok(handle) => group.lock().push(handle),
                Err(e) => {
                    group.stop();
                    return Err(e);
                }
            }
        }
        Ok(group)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn kick_all(&self) {
        use vmm_sys_util::signal::Killable;
        for t in self.lock().iter().filter(|t| !t.is_finished()) {
            let _ = t.kill(kick_signal());
        }
    }

    fn running(&self) -> usize {
        self.lock().iter().filter(|t| !t.is_finished()).count()
    }

    /// Pauses every vCPU: returns once each running vCPU thread has left `KVM_RUN` and parked.
    pub fn pause(&self) {
        self.control.set(Request::Pause);
        self.kick_all();
        while self.control.parked() < self.running() {
            if self.control.wait_parked(KICK_RETRY) < self.running() {
                self.kick_all();
            }
        }
    }

    /// Lets paused vCPUs run the guest again.
    pub fn resume(&self) {
        self.control.set(Request::Run);
    }

    /// Runs `job` on each paused vCPU, on its own thread, and returns the answers in vCPU order.
    pub fn on_each_paused<T: Send + 'static>(
        &self,
        job: impl Fn(&mut Vcpu) -> T + Send + Sync + 'static,
    ) -> Result<Vec<T>, JobError> {
        if self.control.request() != Request::Pause || self.control.parked() < self.running() {
            return Err(JobError::NotPaused);
        }
        let job = Arc::new(job);
        let mut answers = Vec::with_capacity(self.ids.len());
        for &id in &self.ids {
            let (tx, rx) = std::sync::mpsc::channel();
            let job = job.clone();
            self.control.give(
                id,
                Box::new(move |vcpu: &mut Vcpu| {
                    let _ = tx.send(job(vcpu));
                }),
            );
            answers.push((id, rx));
        }
        answers
            .into_iter()
            .map(|(id, rx)| {
                rx.recv_timeout(JOB_TIMEOUT)
                    .map_err(|_| JobError::NoAnswer(id))
            })
            .collect()
    }

    /// Stops every vCPU thread and joins it. Idempotent.
    pub fn stop(&self) {
        self.control.set(Request::Stop);
        loop {
            self.kick_all();
            if self.running() == 0 {
                break;
            }
            std::thread::sleep(KICK_RETRY);
        }
        for t in self.lock().drain(..) {
            let _ = t.join();
        }
    }
}
