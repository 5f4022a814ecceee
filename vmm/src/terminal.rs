//! Raw mode for the host terminal while the guest owns the console, restored on every way out:
//! normal return, error, panic (a hook) and stop signals (see [`crate::signals`]).

use std::sync::atomic::{AtomicBool, Ordering};

use vmm_sys_util::terminal::Terminal;

/// Set while stdin is in raw mode, so the panic hook and signal handlers know to restore it.
static RAW: AtomicBool = AtomicBool::new(false);

/// Puts the controlling terminal on stdin back into canonical mode, if kvmkit put it in raw mode.
/// Safe to call from a signal handler: it only makes `tcgetattr`/`tcsetattr` calls.
pub fn restore() {
    if RAW.swap(false, Ordering::SeqCst) {
        let _ = std::io::stdin().lock().set_canon_mode();
    }
}

/// Raw mode for as long as this guard lives.
#[derive(Debug)]
pub struct RawModeGuard(());

impl RawModeGuard {
    /// Puts stdin in raw mode if it is a terminal; `None` if it is not (nothing to restore then).
    pub fn new() -> Option<Self> {
        let stdin = std::io::stdin();
        let lock = stdin.lock();
        if !is_tty(0) {
            return None;
        }
        install_restorers();
        lock.set_raw_mode().ok()?;
        RAW.store(true, Ordering::SeqCst);
        Some(Self(()))
    }
}

impl Drop for RawModeGuard {
    fn drop(&mut self) {
        restore();
    }
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor; any value is acceptable.
    unsafe { libc::isatty(fd) == 1 }
}

/// True if stdin is a terminal whose foreground is another process group: kvmkit was started in
/// the background of a shell (`kvmkit --api-sock S &`). Reading that terminal, or changing its mode,
/// would stop kvmkit (SIGTTIN, SIGTTOU), so the console then takes no input.
pub fn stdin_is_background_terminal() -> bool {
    if !is_tty(0) {
        return false;
    }
    // SAFETY: tcgetpgrp and getpgrp only query the terminal and the process; no memory is passed.
    let (foreground, own) = unsafe { (libc::tcgetpgrp(0), libc::getpgrp()) };
    foreground != own
}

fn install_restorers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        crate::signals::install();
    });
}
