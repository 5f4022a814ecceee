//! The vCPU thread: run the guest, hand port and MMIO exits to the buses, report how it ended.
//!
//! The loop knows no device and no address: every access goes to [`Buses`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use accel::{EventFd, SystemEvent, Vcpu, VcpuExit};
use bus::Bus;

use crate::outcome::Outcome;

/// The address spaces a vCPU's exits go to.
#[derive(Debug, Default)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Runs `vcpu` until the guest does something that ends the VM (the outcome) or `stop` is set
/// (`None`). Port and MMIO exits are completed through `buses`.
pub fn run_loop(vcpu: &mut Vcpu, buses: &Buses, stop: &AtomicBool) -> Option<Outcome> {
    let id = vcpu.id();
    loop {
        if stop.load(Ordering::Acquire) {
            return None;
        }
        let ended = match vcpu.run() {
            Ok(VcpuExit::IoIn { port, data }) => {
                buses.pio.read(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::IoOut { port, data }) => {
                buses.pio.write(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::MmioRead { addr, data }) => {
                buses.mmio.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite { addr, data }) => {
                buses.mmio.write(addr, data);
                continue;
            }
            Ok(VcpuExit::Interrupted) => continue,
            // kvmkit asks KVM for no other exits; looping on one would spin forever.
            Ok(VcpuExit::Other(what)) => Ended::Outcome(Outcome::VcpuError {
                vcpu: id,
                error: format!("unexpected KVM exit: {what}"),
            }),
            Ok(VcpuExit::Hlt) => Ended::Halted,
            Ok(VcpuExit::Shutdown) => Ended::TripleFault,
            Ok(VcpuExit::SystemEvent(SystemEvent::Shutdown)) => Ended::Outcome(Outcome::PowerOff),
            Ok(VcpuExit::SystemEvent(SystemEvent::Reset)) => Ended::Outcome(Outcome::Reset),
            Ok(VcpuExit::SystemEvent(_)) => Ended::Outcome(Outcome::Crash { vcpu: id }),
            Ok(VcpuExit::InternalError) => Ended::InternalError,
            Ok(VcpuExit::FailEntry { reason }) => {
                Ended::Outcome(Outcome::FailEntry { vcpu: id, reason })
            }
            Err(e) => Ended::Outcome(Outcome::VcpuError {
                vcpu: id,
                error: e.to_string(),
            }),
        };
        let rip = vcpu.regs().map(|r| r.rip).unwrap_or(u64::MAX);
        return Some(match ended {
            Ended::Outcome(o) => o,
            Ended::Halted => Outcome::Halted { vcpu: id, rip },
            Ended::TripleFault => Outcome::TripleFault { vcpu: id, rip },
            Ended::InternalError => Outcome::InternalError {
                vcpu: id,
                rip,
                error: vcpu.internal_error(),
            },
        });
    }
}

/// An exit that ends the loop, before the registers are read.
enum Ended {
    Outcome(Outcome),
    Halted,
    TripleFault,
    InternalError,
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> i32 {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) handler for [`kick_signal`]: its only job is to make `KVM_RUN` return EINTR.
pub fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registering a handler for a valid real-time signal cannot fail.
        let _ = vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick);
    });
}

/// A running vCPU thread.
#[derive(Debug)]
pub struct VcpuThread {
    handle: JoinHandle<()>,
}

impl VcpuThread {
    /// Starts `vcpu` on a thread named `kvmkit-vcpu-N`. Its outcome (if it ends the VM) is sent on
    /// `outcomes`, and `wake` is written so the event loop notices.
    pub fn spawn(
        mut vcpu: Vcpu,
        buses: Arc<Buses>,
        stop: Arc<AtomicBool>,
        outcomes: Sender<Outcome>,
        wake: EventFd,
    ) -> std::io::Result<Self> {
        install_kick_handler();
        let handle = std::thread::Builder::new()
            .name(format!("kvmkit-vcpu-{}", vcpu.id()))
            .spawn(move || {
                if let Some(outcome) = run_loop(&mut vcpu, &buses, &stop) {
                    let _ = outcomes.send(outcome);
                    let _ = wake.write(1);
                }
            })?;
        Ok(Self { handle })
    }

    /// Waits for the thread to leave `KVM_RUN` and end, kicking it with [`kick_signal`] until it
    /// does (a kick can arrive just before it enters `KVM_RUN`, so one is not enough). `stop` must
    /// already be set.
    pub fn stop(self) {
        use vmm_sys_util::signal::Killable;
        while !self.handle.is_finished() {
            let _ = self.handle.kill(kick_signal());
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = self.handle.join();
    }
}
