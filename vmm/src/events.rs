//! What the VM's event loop (`kvmkit-events`) watches: each source is an event-manager subscriber
//! that may end the VM through the shared [`VmEnd`]. The loop runs every source registered with it,
//! these and any a caller adds ([`crate::run::VmHandle::add_event_source`]).

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use crate::console::EscapeParser;
use crate::outcome::Outcome;
use crate::signals::StopSignals;

/// An event source the VM's event loop runs.
pub type EventSource = Box<dyn MutEventSubscriber + Send>;

/// How often to retry console input that did not fit in the UART's receive FIFO.
const INPUT_RETRY: Duration = Duration::from_millis(10);

/// Where event sources say the VM is over. The first outcome given is the one the VM ends with.
#[derive(Debug, Clone, Default)]
pub struct VmEnd(Arc<Mutex<Option<Outcome>>>);

impl VmEnd {
    /// Ends the VM with `outcome`, unless something ended it already.
    pub fn end(&self, outcome: Outcome) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(outcome);
        }
    }

    /// How the VM ended, if it did.
    pub fn outcome(&self) -> Option<Outcome> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Watches `fd` for input, or reports (once) that it cannot.
fn watch(ops: &mut EventOps<'_>, events: Events, what: &str) {
    if let Err(e) = ops.add(events) {
        log::error!("event loop: cannot watch {what}: {e}");
    }
}

/// Ends the VM with `outcome` when `event` is written (the guest's reset or power-off, a stop request).
#[derive(Debug)]
pub struct EndOn {
    event: EventFd,
    outcome: Outcome,
    end: VmEnd,
}

impl EndOn {
    /// A source that ends the VM with `outcome` once `event` fires.
    pub fn new(event: EventFd, outcome: Outcome, end: VmEnd) -> Self {
        Self {
            event,
            outcome,
            end,
        }
    }
}

impl MutEventSubscriber for EndOn {
    fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
        let _ = self.event.read();
        self.end.end(self.outcome.clone());
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        watch(ops, Events::new(&self.event, EventSet::IN), "an end event");
    }
}

/// Ends the VM when a stop signal (SIGTERM, SIGINT, SIGHUP, SIGQUIT) arrives.
#[derive(Debug)]
pub struct StopSignalSource {
    signals: StopSignals,
    end: VmEnd,
}

impl StopSignalSource {
    /// Routes stop signals to the event loop from now on.
    pub fn new(end: VmEnd) -> std::io::Result<Self> {
        Ok(Self {
            signals: StopSignals::new()?,
            end,
        })
    }
}

impl MutEventSubscriber for StopSignalSource {
    fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
        if let Some(sig) = self.signals.received() {
            self.end.end(Outcome::Signal(sig));
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        watch(
            ops,
            Events::new(self.signals.event(), EventSet::IN),
            "stop signals",
        );
    }
}

/// How often a pseudo-terminal's size is looked at (`--console pty`).
const PTY_SIZE_CHECK: Duration = Duration::from_secs(1);

/// Tells the virtio console its terminal's new size: kvmkit's own terminal's on SIGWINCH
/// (`--console tty`), or its pseudo-terminal's, looked at every second
/// (`--console pty`: whoever attaches sets the size on the other side, which sends no signal).
#[derive(Debug)]
pub struct TerminalResize {
    source: Source,
    resizer: virtio_devices::console::Resizer,
    last: Option<(u16, u16)>,
}

#[derive(Debug)]
enum Source {
    Signal(crate::signals::WindowChanges),
    Poll(std::os::fd::OwnedFd, TimerFd),
}

impl TerminalResize {
    /// Passes size changes from `source` on to its console from now on.
    pub fn new(source: crate::devices::hvc::ResizeSource) -> std::io::Result<Self> {
        use crate::devices::hvc::ResizeSource;
        let (source, resizer, last) = match source {
            ResizeSource::Signal(resizer) => (
                Source::Signal(crate::signals::WindowChanges::new()?),
                resizer,
                None,
            ),
            ResizeSource::Poll(fd, resizer) => {
                let mut timer = TimerFd::new()?;
                timer.reset(PTY_SIZE_CHECK, Some(PTY_SIZE_CHECK))?;
                let last = crate::devices::hvc::terminal_size(fd.as_raw_fd());
                (Source::Poll(fd, timer), resizer, last)
            }
        };
        Ok(Self {
            source,
            resizer,
            last,
        })
    }
}

impl MutEventSubscriber for TerminalResize {
    fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
        let fd = match &mut self.source {
            Source::Signal(changes) => {
                let _ = changes.event().read();
                1
            }
            Source::Poll(fd, timer) => {
                let _ = timer.wait();
                fd.as_raw_fd()
            }
        };
        let size = crate::devices::hvc::terminal_size(fd);
        if let Some((cols, rows)) = size
            && size != self.last
        {
            self.last = size;
            self.resizer.resize(cols, rows);
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        let events = match &self.source {
            Source::Signal(changes) => Events::new(changes.event(), EventSet::IN),
            Source::Poll(_, timer) => Events::new(timer, EventSet::IN),
        };
        watch(ops, events, "terminal size changes");
    }
}

/// Ends the VM with what a vCPU thread reports (the guest ended it, or the vCPU failed).
#[derive(Debug)]
pub struct VcpuOutcomes {
    wake: EventFd,
    outcomes: Receiver<Outcome>,
    end: VmEnd,
}

impl VcpuOutcomes {
    /// Reads `outcomes` each time a vCPU thread writes `wake`.
    pub fn new(wake: EventFd, outcomes: Receiver<Outcome>, end: VmEnd) -> Self {
        Self {
            wake,
            outcomes,
            end,
        }
    }
}

impl MutEventSubscriber for VcpuOutcomes {
    fn process(&mut self, _events: Events, _ops: &mut EventOps<'_>) {
        let _ = self.wake.read();
        if let Ok(outcome) = self.outcomes.try_recv() {
            self.end.end(outcome);
        }
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        watch(
            ops,
            Events::new(&self.wake, EventSet::IN),
            "the vCPU threads",
        );
    }
}

const INPUT: u32 = 0;
const RETRY: u32 = 1;

/// Feeds host input (stdin, a pipe) to the UART, with Ctrl-A x to quit. Input that does not fit in
/// the UART's receive FIFO waits, and a timer retries it.
pub struct ConsoleInput {
    input: Option<File>,
    parser: EscapeParser,
    pending: VecDeque<u8>,
    serial: Arc<Mutex<legacy::Serial>>,
    retry: TimerFd,
    end: VmEnd,
}

impl std::fmt::Debug for ConsoleInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleInput")
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl ConsoleInput {
    /// Reads `input` into `serial`.
    pub fn new(
        input: File,
        serial: Arc<Mutex<legacy::Serial>>,
        end: VmEnd,
    ) -> std::io::Result<Self> {
        Ok(Self {
            input: Some(input),
            parser: EscapeParser::default(),
            pending: VecDeque::new(),
            serial,
            retry: TimerFd::new()?,
            end,
        })
    }

    fn read_input(&mut self, ops: &mut EventOps<'_>) {
        let Some(f) = self.input.as_mut() else { return };
        let mut buf = [0u8; 64];
        match f.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(0) | Err(_) => {
                // EOF or a broken input: stop watching it, the guest runs on.
                let _ = ops.remove(Events::empty(&*f));
                self.input = None;
            }
            Ok(k) => {
                let input = self.parser.feed(&buf[..k]);
                self.pending.extend(input.to_guest);
                if input.quit {
                    self.end.end(Outcome::Quit);
                }
            }
        }
    }

    fn feed_uart(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut uart = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let (front, _) = self.pending.as_slices();
        let taken = uart.enqueue_input(front);
        self.pending.drain(..taken);
        drop(uart);
        if !self.pending.is_empty()
            && let Err(e) = self.retry.reset(INPUT_RETRY, None)
        {
            log::warn!("console input: cannot arm the retry timer: {e}");
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn process(&mut self, events: Events, ops: &mut EventOps<'_>) {
        match events.data() {
            INPUT => self.read_input(ops),
            _ => {
                let _ = self.retry.wait();
            }
        }
        self.feed_uart();
    }

    fn init(&mut self, ops: &mut EventOps<'_>) {
        watch(
            ops,
            Events::with_data(&self.retry, RETRY, EventSet::IN),
            "the input timer",
        );
        // An input that epoll cannot watch (a regular file) simply gives no input.
        if let Some(f) = &self.input
            && ops.add(Events::with_data(f, INPUT, EventSet::IN)).is_err()
        {
            self.input = None;
        }
    }
}
