//! The instruction assist as the vCPU loop's [`ExitHook`]: on a software KVM backend, emulation
//! failures go to [`assist::Assist::handle`], and the system call bridge's trapped LSTAR writes and
//! breakpoints to its [`SyscallBridge`] (docs/software-kvm.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use accel::Vcpu;
use assist::{Assist, Resolution, SyscallBridge};

use crate::outcome::Outcome;
use crate::vcpu::{ExitHook, Handled, Unhandled, rip};

/// `KVM_EXIT_INTERNAL_ERROR`'s suberror for an instruction KVM's emulator could not run.
const EMULATION_FAILURE: u32 = kvm_bindings::KVM_INTERNAL_ERROR_EMULATION;

/// One vCPU's assist: the VM's shared [`Assist`] and this vCPU's system call bridge.
#[derive(Debug)]
pub struct AssistHook {
    assist: Arc<Assist>,
    syscalls: SyscallBridge,
    /// Set once the LSTAR write trap is in, while the vCPU already runs (a restored VM does not
    /// wait for it); the hook then reads LSTAR once, for a write the trap came too late to see.
    trap_ready: Option<Arc<AtomicBool>>,
}

impl AssistHook {
    /// A hook for one vCPU of the VM whose assist is `assist`.
    pub fn new(assist: Arc<Assist>) -> Self {
        Self {
            assist,
            syscalls: SyscallBridge::default(),
            trap_ready: None,
        }
    }

    /// This hook, for a vCPU that runs before the LSTAR write trap is in: once `ready` is set it
    /// reads LSTAR and arms the bridge if the guest changed it meanwhile.
    pub fn with_trap_pending(mut self, ready: Arc<AtomicBool>) -> Self {
        self.trap_ready = Some(ready);
        self
    }
}

impl ExitHook for AssistHook {
    fn handle(&mut self, vcpu: &mut Vcpu, exit: Unhandled) -> Handled {
        let id = vcpu.id();
        let failed = |error: String| Handled::End(Outcome::VcpuError { vcpu: id, error });
        match exit {
            Unhandled::InternalError if vcpu.internal_error().suberror == EMULATION_FAILURE => {
                match self.assist.handle(vcpu) {
                    Ok(Resolution::Resumed(kind)) => {
                        log::debug!("vCPU {id}: assisted {}", kind.name());
                        Handled::Resume
                    }
                    Ok(Resolution::TripleFault(_)) => Handled::End(Outcome::TripleFault {
                        vcpu: id,
                        rip: rip(vcpu),
                    }),
                    Err(e) => Handled::End(Outcome::InternalError {
                        vcpu: id,
                        rip: rip(vcpu),
                        error: vcpu.internal_error(),
                        assist: Some(e.to_string()),
                    }),
                }
            }
            Unhandled::WriteMsr { index, data } if index == accel::x86::msr::LSTAR => {
                match self.syscalls.lstar_written(&self.assist, vcpu, data) {
                    Ok(armed) => {
                        log::debug!(
                            "vCPU {id}: LSTAR = {data:#x}, system call bridge armed: {armed}"
                        );
                        Handled::Resume
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            Unhandled::Breakpoint { pc } => {
                match self.syscalls.breakpoint(&self.assist, vcpu, pc) {
                    Ok(entry) => {
                        log::debug!("vCPU {id}: breakpoint at {pc:#x}: {entry:?}");
                        Handled::Resume
                    }
                    Err(e) => failed(e.to_string()),
                }
            }
            _ => Handled::NotMine,
        }
    }

    fn before_run(&mut self, vcpu: &mut Vcpu) -> Option<Outcome> {
        if !self
            .trap_ready
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire))
        {
            return None;
        }
        self.trap_ready = None;
        let lstar = match vcpu.msrs(&[accel::x86::msr::LSTAR]) {
            Ok(v) => v.first().copied().unwrap_or(0),
            Err(e) => {
                log::warn!("vCPU {}: cannot read LSTAR: {e}", vcpu.id());
                return None;
            }
        };
        if lstar == 0 || self.syscalls.entry() == Some(lstar) {
            return None;
        }
        let write = Unhandled::WriteMsr {
            index: accel::x86::msr::LSTAR,
            data: lstar,
        };
        match self.handle(vcpu, write) {
            Handled::End(outcome) => Some(outcome),
            Handled::Resume | Handled::NotMine => None,
        }
    }
}
