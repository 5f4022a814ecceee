//! The thread a virtio device does its work on, shared by every device model.
//!
//! A device hands [`Worker::spawn`] an event-manager subscriber ([`MutEventSubscriber`]) that
//! registers what it waits on in `init` (its queues' notification eventfds, a tap, a socket...) and
//! handles it in `process`. The worker runs an [`EventManager`] with that subscriber and a kill
//! eventfd on a thread named `kvmkit-<name>`, off the vCPU threads.
//!
//! - Dropping the [`Worker`] stops the thread and joins it (a device's `reset` just drops it).
//! - A panic in the subscriber ends the thread, not the VMM: it is logged, and the device's
//!   [`Interrupt`] shows DEVICE_NEEDS_RESET to the driver, whose reset then drops the worker.
//! - An epoll failure (a subscriber's fd that cannot be watched) is likewise reported as
//!   DEVICE_NEEDS_RESET, never a hang: see [`QueueError`] for the subscriber's side of it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::Interrupt;

/// What a worker runs: any event-manager subscriber that can move to the worker thread.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// What a worker thread does beyond a device's usual work, for a process that confines each
/// thread to the system calls it needs ([`on_thread_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerRole {
    /// The device's queues, eventfds and the files or taps it was handed.
    Device,
    /// That, and host Unix sockets it accepts, connects and shuts down (vsock).
    HostSockets,
}

/// A device's worker thread; dropping it stops the thread and waits for it.
#[derive(Debug)]
pub struct Worker {
    name: String,
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `subscriber` on a thread of its own, `kvmkit-<name>`. `interrupt` is the device's:
    /// it shows DEVICE_NEEDS_RESET if the subscriber panics or the event loop fails.
    pub fn spawn(
        name: &str,
        subscriber: impl MutEventSubscriber + Send + 'static,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        Self::spawn_as(name, WorkerRole::Device, subscriber, interrupt)
    }

    /// [`Worker::spawn`] for a worker that does more than a device's usual work (`role`, which
    /// [`on_thread_start`]'s function is given).
    pub fn spawn_as(
        name: &str,
        role: WorkerRole,
        subscriber: impl MutEventSubscriber + Send + 'static,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let thread_kill = kill.try_clone()?;
        let thread_name = name.to_owned();
        let thread = std::thread::Builder::new()
            .name(format!("kvmkit-{name}"))
            .spawn(move || {
                run(
                    &thread_name,
                    role,
                    Box::new(subscriber),
                    thread_kill,
                    &interrupt,
                )
            })?;
        Ok(Self {
            name: name.to_owned(),
            kill,
            thread: Some(thread),
        })
    }

    /// True once the thread has ended (stopped, or after a panic).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.kill.write(1) {
            // Without the kill event the thread would never end: leave it rather than hang here.
            log::error!("{}: cannot stop the device worker: {e}", self.name);
            return;
        }
        if let Some(t) = self.thread.take() {
            // A panic was reported by the thread itself.
            let _ = t.join();
        }
    }
}

/// Ends the event loop when the kill eventfd is written.
struct KillSwitch {
    kill: EventFd,
    killed: Arc<AtomicBool>,
}

impl MutEventSubscriber for KillSwitch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
        let _ = self.kill.read();
        self.killed.store(true, Ordering::SeqCst);
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        if let Err(e) = ops.add(Events::new(&self.kill, EventSet::IN)) {
            log::error!("device worker: cannot watch its kill eventfd: {e}");
            self.killed.store(true, Ordering::SeqCst);
        }
    }
}

/// What every worker thread runs first, if set ([`on_thread_start`]).
static THREAD_START: std::sync::OnceLock<fn(&str, WorkerRole)> = std::sync::OnceLock::new();

/// Sets a function every device worker thread runs before anything else, given the worker's name
/// (`vda`, `vsock0`) and role, for the whole process (once; later calls are ignored). kvmkit
/// installs its seccomp filter for device threads there, chosen by the role.
pub fn on_thread_start(start: fn(&str, WorkerRole)) {
    let _ = THREAD_START.set(start);
}

fn run(name: &str, role: WorkerRole, subscriber: Subscriber, kill: EventFd, interrupt: &Interrupt) {
    if let Some(start) = THREAD_START.get() {
        start(name, role);
    }
    let killed = Arc::new(AtomicBool::new(false));
    let mut manager = match EventManager::<Subscriber>::new() {
        Ok(m) => m,
        Err(e) => {
            log::error!(
                "{name}: cannot create the device's event loop: {e}; the device needs a reset"
            );
            interrupt.signal_needs_reset();
            return;
        }
    };
    let ran = catch_unwind(AssertUnwindSafe(|| {
        manager.add_subscriber(Box::new(KillSwitch {
            kill,
            killed: killed.clone(),
        }));
        manager.add_subscriber(subscriber);
        while !killed.load(Ordering::SeqCst) {
            if let Err(e) = manager.run() {
                log::error!("{name}: device event loop: {e}; the device needs a reset");
                interrupt.signal_needs_reset();
                return;
            }
        }
    }));
    if let Err(panic) = ran {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown cause".to_owned());
        log::error!("{name}: the device worker panicked ({what}); the device needs a reset");
        interrupt.signal_needs_reset();
    }
}

/// A queue a device can no longer use: the driver broke it (a lying available index, rings that
/// left guest memory). The subscriber stops watching the queue's kick (so it does not spin on it),
/// and the device shows DEVICE_NEEDS_RESET until the driver resets it.
#[derive(Debug)]
pub struct QueueError {
    /// The queue's index.
    pub queue: u16,
    /// What virtio-queue found.
    pub source: virtio_queue::Error,
}

impl QueueError {
    /// Reports the broken queue: a log line from device `name`, DEVICE_NEEDS_RESET on `interrupt`, and
    /// `kick` removed from `ops`' watch list.
    pub fn report(
        &self,
        name: &str,
        interrupt: &Interrupt,
        kick: &EventFd,
        ops: &mut EventOps<'_>,
    ) {
        log::warn!(
            "{name}: queue {} broken ({}); the device needs a reset",
            self.queue,
            self.source
        );
        interrupt.signal_needs_reset();
        let _ = ops.remove(Events::empty(kick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Counts kicks; panics on the third.
    struct Fragile {
        kick: EventFd,
        seen: Arc<std::sync::atomic::AtomicU32>,
    }

    impl MutEventSubscriber for Fragile {
        fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
            let _ = self.kick.read();
            if self.seen.fetch_add(1, Ordering::SeqCst) == 2 {
                panic!("third kick");
            }
        }

        fn init(&mut self, ops: &mut EventOps<'_>) {
            ops.add(Events::new(&self.kick, EventSet::IN))
                .expect("watch the kick");
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn a_panicking_subscriber_marks_the_device_and_the_worker_still_drops() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irq));
        let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let worker = Worker::spawn(
            "test-fragile",
            Fragile {
                kick: kick.try_clone().unwrap(),
                seen: seen.clone(),
            },
            interrupt.clone(),
        )
        .unwrap();
        for n in 1..=3 {
            kick.write(1).unwrap();
            wait_until("the kick", || seen.load(Ordering::SeqCst) >= n);
        }
        wait_until("the worker to end", || worker.is_finished());
        assert!(interrupt.needs_reset());
        // The driver's reset drops the worker: it returns at once.
        drop(worker);
    }

    #[test]
    fn dropping_a_worker_stops_its_thread() {
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let worker = Worker::spawn(
            "test-idle",
            Fragile {
                kick: kick.try_clone().unwrap(),
                seen: seen.clone(),
            },
            interrupt.clone(),
        )
        .unwrap();
        kick.write(1).unwrap();
        wait_until("the kick", || seen.load(Ordering::SeqCst) == 1);
        assert!(!worker.is_finished());
        drop(worker);
        assert!(!interrupt.needs_reset());
    }

    /// The workers started in this test binary, as `on_thread_start` saw them.
    static STARTED: std::sync::Mutex<Vec<(String, WorkerRole)>> = std::sync::Mutex::new(Vec::new());

    #[test]
    fn each_worker_thread_first_runs_the_start_function_with_its_name_and_role() {
        on_thread_start(|name, role| {
            let on_its_thread = std::thread::current().name() == Some(&format!("kvmkit-{name}"));
            assert!(on_its_thread, "runs on the worker's own thread");
            STARTED.lock().unwrap().push((name.to_owned(), role));
        });
        let interrupt = Arc::new(Interrupt::new(EventFd::new(EFD_NONBLOCK).unwrap()));
        let idle = || Fragile {
            kick: EventFd::new(EFD_NONBLOCK).unwrap(),
            seen: Arc::default(),
        };
        let plain = Worker::spawn("role-dev", idle(), interrupt.clone()).unwrap();
        let sockets =
            Worker::spawn_as("role-sock", WorkerRole::HostSockets, idle(), interrupt).unwrap();
        let seen = |name: &str| {
            STARTED
                .lock()
                .unwrap()
                .iter()
                .find(|(n, _)| n == name)
                .map(|&(_, role)| role)
        };
        wait_until("both workers to start", || {
            seen("role-dev").is_some() && seen("role-sock").is_some()
        });
        assert_eq!(seen("role-dev"), Some(WorkerRole::Device));
        assert_eq!(seen("role-sock"), Some(WorkerRole::HostSockets));
        drop((plain, sockets));
    }
}
