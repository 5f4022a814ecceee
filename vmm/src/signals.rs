//! SIGTERM, SIGINT, SIGHUP and SIGQUIT: while a VM runs they stop it in order (the event loop sees
//! them through an eventfd); at any other time they restore the terminal and end the process.
//! Either way the exit code is 128 + the signal number (130 for SIGINT, 143 for SIGTERM).

use std::os::fd::AsRawFd;
use std::sync::Once;
use std::sync::atomic::{AtomicI32, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// The eventfd of the running VM's event loop, or -1.
static STOP_FD: AtomicI32 = AtomicI32::new(-1);
/// The last stop signal received, or 0.
static LAST: AtomicI32 = AtomicI32::new(0);

/// The signals that stop kvmkit.
pub const STOP_SIGNALS: [i32; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT];

extern "C" fn on_stop_signal(num: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    LAST.store(num, Ordering::SeqCst);
    let fd = STOP_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte buffer and `fd` an eventfd that
        // stays open while it is registered here (`StopSignals` unregisters it before closing it).
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    } else {
        crate::terminal::restore();
        // SAFETY: _exit is async-signal-safe and ends the process at once.
        unsafe { libc::_exit(128 + num) };
    }
}

/// Installs the handler for [`STOP_SIGNALS`] (once per process).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for sig in STOP_SIGNALS {
            // These are valid, catchable signals: registration cannot fail.
            let _ = vmm_sys_util::signal::register_signal_handler(sig, on_stop_signal);
        }
    });
}

/// While alive, stop signals are delivered to the event loop through [`StopSignals::event`]. Signals
/// are process-wide: with several VMs in one process, the most recently started one receives them.
#[derive(Debug)]
pub struct StopSignals {
    event: EventFd,
}

impl StopSignals {
    /// Routes stop signals to a new eventfd.
    pub fn new() -> std::io::Result<Self> {
        install();
        let event = EventFd::new(libc::EFD_NONBLOCK)?;
        LAST.store(0, Ordering::SeqCst);
        STOP_FD.store(event.as_raw_fd(), Ordering::SeqCst);
        Ok(Self { event })
    }

    /// The eventfd that becomes readable when a stop signal arrives.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The signal that arrived, if one did.
    pub fn received(&self) -> Option<i32> {
        let _ = self.event.read();
        match LAST.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
        }
    }
}

impl Drop for StopSignals {
    fn drop(&mut self) {
        // Only if signals still come here: a VM started since has routed them to its own loop.
        let _ = STOP_FD.compare_exchange(
            self.event.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

/// The eventfd SIGWINCH writes to, or -1.
static WINCH_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_window_change(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = WINCH_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a live 8-byte buffer and `fd` an eventfd
        // that stays open while it is registered here (`WindowChanges` unregisters it first).
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// While alive, SIGWINCH (kvmkit's terminal changed size) makes [`WindowChanges::event`]
/// readable.
#[derive(Debug)]
pub struct WindowChanges {
    event: EventFd,
}

impl WindowChanges {
    /// Routes SIGWINCH to a new eventfd.
    pub fn new() -> std::io::Result<Self> {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // A valid, catchable signal: registration cannot fail.
            let _ = vmm_sys_util::signal::register_signal_handler(libc::SIGWINCH, on_window_change);
        });
        let event = EventFd::new(libc::EFD_NONBLOCK)?;
        WINCH_FD.store(event.as_raw_fd(), Ordering::SeqCst);
        Ok(Self { event })
    }

    /// The eventfd that becomes readable when the terminal changes size.
    pub fn event(&self) -> &EventFd {
        &self.event
    }
}

impl Drop for WindowChanges {
    fn drop(&mut self) {
        let _ = WINCH_FD.compare_exchange(
            self.event.as_raw_fd(),
            -1,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}
