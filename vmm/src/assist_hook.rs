//! The instruction assist as the vCPU loop's [`ExitHook`]: on a software KVM backend, emulation
//! failures go to [`assist::Assist::handle`], and the system call bridge's trapped LSTAR writes and
//! breakpoints to its [`SyscallBridge`] (docs/software-kvm.md).

use std::sync::Arc;

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
}

impl AssistHook {
    /// A hook for one vCPU of the VM whose assist is `assist`.
    pub fn new(assist: Arc<Assist>) -> Self {
        Self {
            assist,
            syscalls: SyscallBridge::default(),
        }
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
}
