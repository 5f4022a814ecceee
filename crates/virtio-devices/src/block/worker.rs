//! The block device's worker thread: it waits on the queue's notification eventfd, takes every
//! available request, carries it out on the image and returns it to the guest, off the vCPU threads.

use std::os::unix::io::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio::{ActiveQueue, Interrupt};
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use super::disk::DiskImage;
use super::execute::{STATUS_IOERR, STATUS_OK, execute};
use super::request::parse;

const TOKEN_KICK: u64 = 0;
const TOKEN_KILL: u64 = 1;

/// Everything needed to answer the requests of one queue: what the worker thread runs, and what a
/// benchmark or a test can run on its own thread.
pub struct Handler {
    name: String,
    mem: GuestMemoryMmap,
    queue: ActiveQueue,
    interrupt: Arc<Interrupt>,
    disk: Arc<DiskImage>,
    serial: Vec<u8>,
}

impl Handler {
    /// A handler for `queue` of disk `disk`; `name` prefixes its log lines.
    pub fn new(
        name: &str,
        mem: GuestMemoryMmap,
        queue: ActiveQueue,
        interrupt: Arc<Interrupt>,
        disk: Arc<DiskImage>,
        serial: Vec<u8>,
    ) -> Self {
        Self {
            name: name.to_owned(),
            mem,
            queue,
            interrupt,
            disk,
            serial,
        }
    }

    /// Takes every available request, answers each, and interrupts the guest if it wants that.
    /// An error means the queue itself is broken (the device needs a reset).
    pub fn process_queue(&mut self) -> Result<(), virtio_queue::Error> {
        let event_idx = self.queue.queue.event_idx_enabled();
        let mut used_any = false;
        loop {
            if event_idx {
                self.queue.queue.disable_notification(&self.mem)?;
            }
            let chains: Vec<DescriptorChain<&GuestMemoryMmap>> =
                self.queue.queue.iter(&self.mem)?.collect();
            let size = self.queue.queue.size();
            for chain in chains {
                let head = chain.head_index();
                if head >= size {
                    // No descriptor to read and no used-ring id to give back: drop it.
                    log::warn!(
                        "{}: available ring names descriptor {head} of {size}; dropped",
                        self.name
                    );
                    continue;
                }
                let len = handle(self, chain);
                self.queue.queue.add_used(&self.mem, head, len)?;
                used_any = true;
            }
            // With event-index, re-enabling notifications reports requests that arrived meanwhile.
            if !event_idx || !self.queue.queue.enable_notification(&self.mem)? {
                break;
            }
        }
        if used_any && self.queue.queue.needs_notification(&self.mem)? {
            self.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

/// A running worker; dropping it stops the thread and waits for it.
pub(crate) struct Worker {
    kill: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the worker thread.
    pub(crate) fn spawn(ctx: Handler) -> std::io::Result<Self> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let thread_kill = kill.try_clone()?;
        let thread = std::thread::Builder::new()
            .name(format!("kvmkit-{}", ctx.name))
            .spawn(move || run(ctx, thread_kill))?;
        Ok(Self {
            kill,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Err(e) = self.kill.write(1) {
            log::error!("virtio-blk: cannot stop the worker: {e}");
            return;
        }
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("virtio-blk: the worker thread panicked");
        }
    }
}

fn run(mut ctx: Handler, kill: EventFd) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            log::error!("{}: cannot create epoll: {e}", ctx.name);
            ctx.interrupt.signal_needs_reset();
            return;
        }
    };
    for (fd, token) in [
        (ctx.queue.kick.as_raw_fd(), TOKEN_KICK),
        (kill.as_raw_fd(), TOKEN_KILL),
    ] {
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        ) {
            log::error!("{}: cannot watch an eventfd: {e}", ctx.name);
            ctx.interrupt.signal_needs_reset();
            return;
        }
    }
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("{}: epoll: {e}", ctx.name);
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                TOKEN_KILL => return,
                TOKEN_KICK => {
                    let _ = ctx.queue.kick.read();
                    if let Err(e) = ctx.process_queue() {
                        log::warn!("{}: queue broken ({e}); the device needs a reset", ctx.name);
                        ctx.interrupt.signal_needs_reset();
                        // Wait for the reset (the kill eventfd) without spinning on kicks.
                        let _ = epoll.ctl(
                            ControlOperation::Delete,
                            ctx.queue.kick.as_raw_fd(),
                            EpollEvent::default(),
                        );
                    }
                }
                _ => {}
            }
        }
    }
}

/// Answers one request; returns the used length (bytes written into the chain, status included).
fn handle(ctx: &Handler, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    match parse(chain, &ctx.mem) {
        Ok(req) => {
            let (status, written) = match execute(&req, &ctx.mem, &ctx.disk, &ctx.serial) {
                Ok(n) => (STATUS_OK, n),
                Err(e) => {
                    log::warn!(
                        "{}: {:?} request at sector {}: {e}",
                        ctx.name,
                        req.kind,
                        req.sector
                    );
                    (e.status(), 0)
                }
            };
            write_status(ctx, req.status, status);
            written.saturating_add(1)
        }
        Err((e, Some(status))) => {
            log::warn!("{}: malformed request: {e}", ctx.name);
            write_status(ctx, status, STATUS_IOERR);
            1
        }
        Err((e, None)) => {
            log::warn!("{}: malformed request dropped: {e}", ctx.name);
            0
        }
    }
}

fn write_status(ctx: &Handler, at: vm_memory::GuestAddress, status: u8) {
    // The parser checked the status byte is in guest memory.
    if let Err(e) = ctx.mem.write_obj(status, at) {
        log::warn!("{}: cannot write the request status: {e}", ctx.name);
    }
}
