//! System calls from guest user mode on a backend that leaves SYSCALL half done.
//!
//! On kvm_pvm a 64-bit SYSCALL from guest ring 3 loads RIP from LSTAR and sets RCX and R11, but leaves
//! the vCPU in ring 3. Fetching the kernel's entry code from ring 3 then page-faults, and the guest
//! kernel kills the process as if it had jumped into kernel text. No exit reaches the VMM for the
//! SYSCALL itself (a breakpoint on the entry point does not fire either: the backend delivers the
//! page fault first).
//!
//! The page fault does reach the guest kernel's #PF handler, in ring 0, and ring-0 code breakpoints do
//! work. So kvmkit:
//!
//! 1. traps the guest's writes to LSTAR (an MSR filter), writes the value for the guest, and notes
//!    the entry point and the #PF handler in the guest's IDT;
//! 2. puts an execution breakpoint (debug register 0, `KVM_SET_GUEST_DEBUG`) on the #PF handler;
//! 3. when a vCPU stops there, reads the exception frame: a user-mode instruction fetch fault at the
//!    SYSCALL entry point, with CR2 equal to it, is a SYSCALL the backend left in ring 3. kvmkit then
//!    finishes the SYSCALL instead of the fault: RSP back to the user stack, RIP at the entry, CS and
//!    SS from STAR's kernel selectors, RFLAGS masked by SFMASK, and RCX/R11 as the backend saved them.
//!    A ring-3 `jmp` to the entry point faults the same way, with RCX and R11 of user mode's choosing
//!    (R11 with IOPL 3 would reach user mode through SYSRET): only a fault whose saved RFLAGS has IF
//!    clear, which user mode cannot do and the backend's SYSCALL does (SFMASK), with RCX right after
//!    a SYSCALL instruction in user memory, is finished. Any other page fault goes on to the
//!    handler unchanged. The backend ignores RFLAGS.RF, so to let
//!    the handler's first instruction run the breakpoint moves to its second instruction and, once
//!    there, back.
//!
//! The kernel's entry code then runs as after a real SYSCALL, and returns to user mode with SYSRET
//! or IRET as usual. Costs: two exits per page fault and one per system call (about 50 µs each here);
//! the guest cannot use hardware breakpoint 0 itself, and its other debug exceptions are passed back
//! to it.

use accel::x86::{msr, pf_error, rflags, vector};
use iced_x86::FlowControl;
use vm_memory::GuestMemoryBackend;

use crate::Assist;
use crate::access::{fetch_instruction, read_linear};
use crate::counts::Kind;
use crate::cpu::GuestCpu;

/// Errors from the system call bridge.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyscallError {
    /// A vCPU ioctl failed.
    #[error("system call bridge: {0}")]
    Cpu(#[from] accel::Error),
}

/// What [`SyscallBridge::breakpoint`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The page fault was a ring-3 SYSCALL: the vCPU is now at the kernel's entry point in ring 0.
    Finished,
    /// Another page fault: the guest's handler runs as it would have.
    Passed,
    /// The handler's second instruction: the breakpoint is back on its first.
    Rearmed,
    /// A debug exception that was not kvmkit's breakpoint: handed back to the guest as #DB.
    Reflected,
}

/// Per-vCPU state of the system call bridge.
#[derive(Debug, Default)]
pub struct SyscallBridge {
    /// The guest's SYSCALL entry point (LSTAR).
    entry: Option<u64>,
    /// Where the breakpoint is: the guest's #PF handler.
    watch: Option<u64>,
    /// While a page fault passes through: the handler's second instruction, where the breakpoint
    /// waits to move back to the handler's first.
    rearm_at: Option<u64>,
}

impl SyscallBridge {
    /// The guest's SYSCALL entry point, once a LSTAR write told it.
    pub fn entry(&self) -> Option<u64> {
        self.entry
    }

    /// The guest wrote `value` to LSTAR (trapped): writes it for the guest, and arms the breakpoint
    /// on the guest's #PF handler. Returns false (and arms nothing) if the guest has no readable
    /// 64-bit #PF gate yet; its system calls then behave as without kvmkit.
    pub fn lstar_written(
        &mut self,
        assist: &Assist<impl GuestMemoryBackend>,
        cpu: &impl GuestCpu,
        value: u64,
    ) -> Result<bool, SyscallError> {
        cpu.set_msr(msr::LSTAR, value)?;
        self.entry = Some(value);
        let Some(handler) = pf_handler(cpu, assist.memory())? else {
            return Ok(false);
        };
        cpu.set_hw_breakpoint(Some(handler))?;
        self.watch = Some(handler);
        Ok(true)
    }

    /// The vCPU stopped at a debug exception at `pc`.
    pub fn breakpoint(
        &mut self,
        assist: &Assist<impl GuestMemoryBackend>,
        cpu: &impl GuestCpu,
        pc: u64,
    ) -> Result<Entry, SyscallError> {
        if self.rearm_at == Some(pc) {
            cpu.set_hw_breakpoint(self.watch)?;
            self.rearm_at = None;
            return Ok(Entry::Rearmed);
        }
        if self.watch != Some(pc) {
            cpu.inject_exception(vector::DB, None)?;
            return Ok(Entry::Reflected);
        }
        let mut regs = cpu.regs()?;
        let mut sregs = cpu.sregs()?;
        // The frame the CPU pushed for #PF: error code, RIP, CS, RFLAGS, RSP, SS.
        let mut raw = [0u8; 48];
        let frame = match read_linear(cpu, assist.memory(), regs.rsp, &mut raw) {
            (48, None) => {
                let word = |i: usize| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(&raw[i * 8..i * 8 + 8]);
                    u64::from_le_bytes(w)
                };
                Some([word(0), word(1), word(2), word(3), word(4)])
            }
            _ => None,
        };
        match frame {
            Some([error, rip, cs, rflags, rsp])
                if cs & 3 == 3
                    && Some(rip) == self.entry
                    && sregs.cr2 == rip
                    && error & pf_error::INSTRUCTION_FETCH != 0
                    && follows_syscall(cpu, assist.memory(), regs.rcx) =>
            {
                let star = cpu.msr(msr::STAR)?;
                let sfmask = cpu.msr(msr::SYSCALL_MASK)?;
                // Only the backend's SYSCALL leaves ring 3 with IF clear (SFMASK cleared it; user
                // mode cannot): a jump to the entry point faults with user mode's own flags, and
                // its RCX and R11, which SYSRET would restore, are user mode's choice. It gets the
                // page fault. For a real SYSCALL, RCX and R11 are the ones the backend saved.
                if sfmask & rflags::IF == 0 || rflags & rflags::IF != 0 {
                    return self.pass(assist, cpu, pc);
                }
                let selector = ((star >> 32) & 0xfffc) as u16;
                sregs.cs = crate::mode::flat_segment(selector, true);
                sregs.ss = crate::mode::flat_segment(selector.wrapping_add(8), false);
                regs.rsp = rsp;
                regs.rip = rip;
                // The frame's RF belongs to the fault, not to the SYSCALL.
                regs.rflags = (rflags & !sfmask & !rflags::RF) | 2;
                cpu.set_sregs(&sregs)?;
                cpu.set_regs(&regs)?;
                assist.counts().add(Kind::Syscall);
                Ok(Entry::Finished)
            }
            _ => self.pass(assist, cpu, pc),
        }
    }
}

impl SyscallBridge {
    /// Lets the #PF handler at `pc` run: moves the breakpoint to its second instruction, and back
    /// once there (the backend ignores RFLAGS.RF, so the breakpoint cannot stay put).
    fn pass(
        &mut self,
        assist: &Assist<impl GuestMemoryBackend>,
        cpu: &impl GuestCpu,
        pc: u64,
    ) -> Result<Entry, SyscallError> {
        match next_instruction(cpu, assist.memory(), pc) {
            Some(next) => {
                cpu.set_hw_breakpoint(Some(next))?;
                self.rearm_at = Some(next);
            }
            None => {
                cpu.set_hw_breakpoint(None)?;
                self.watch = None;
            }
        }
        Ok(Entry::Passed)
    }
}

/// The encoding of SYSCALL.
const SYSCALL: [u8; 2] = [0x0f, 0x05];
/// The first address above the lower (user) half of a 48-bit address space.
const USER_END: u64 = 1 << 47;

/// True if `rcx` is where a SYSCALL leaves it: a user-half address right after a SYSCALL
/// instruction. A ring-3 jump to the entry point (which faults the same way) with any other RCX
/// is not a system call, and gets the page fault a CPU would give it.
fn follows_syscall(cpu: &impl GuestCpu, memory: &impl GuestMemoryBackend, rcx: u64) -> bool {
    let Some(at) = rcx
        .checked_sub(SYSCALL.len() as u64)
        .filter(|_| rcx < USER_END)
    else {
        return false;
    };
    let mut bytes = [0u8; 2];
    matches!(read_linear(cpu, memory, at, &mut bytes), (2, None)) && bytes == SYSCALL
}

/// The address of the instruction after the one at `pc`, if that one always falls through to it.
fn next_instruction(cpu: &impl GuestCpu, memory: &impl GuestMemoryBackend, pc: u64) -> Option<u64> {
    let instr = fetch_instruction(cpu, memory, pc, pc, 64).instr;
    (!instr.is_invalid() && instr.flow_control() == FlowControl::Next).then(|| instr.next_ip())
}

/// The address of the #PF handler in the guest's IDT, if the IDT has a 64-bit gate for it.
fn pf_handler(
    cpu: &impl GuestCpu,
    memory: &impl GuestMemoryBackend,
) -> Result<Option<u64>, SyscallError> {
    let sregs = cpu.sregs()?;
    let offset = u64::from(vector::PF) * 16;
    if u64::from(sregs.idt.limit) < offset + 15 {
        return Ok(None);
    }
    let mut gate = [0u8; 16];
    // The guest chose the IDT base: a base near the top of the address space wraps, as the CPU's
    // linear addresses do, instead of overflowing.
    if read_linear(cpu, memory, sregs.idt.base.wrapping_add(offset), &mut gate)
        .1
        .is_some()
    {
        return Ok(None);
    }
    let present = gate[5] & 0x80 != 0;
    let handler = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
        | u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16
        | u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32;
    Ok(present.then_some(handler))
}
