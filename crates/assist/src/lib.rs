#![doc = include_str!("../README.md")]

mod access;
mod counts;
mod cpu;
mod error;
mod instructions;
mod mode;
mod paging;
mod registers;
pub mod syscall;

#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(test)]
mod tests;

use memory::GuestMemoryMmap;
use vm_memory::GuestMemoryBackend;

pub use access::AccessError;
pub use counts::{Counts, Kind};
pub use cpu::GuestCpu;
pub use error::{Bytes, Error};
pub use mode::Mode;
pub use syscall::{Entry, SyscallBridge, SyscallError};

/// What an assist did with the instruction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// The guest can run on: the instruction completed (RIP is past it), or the exception it raises
    /// on a CPU is injected.
    Resumed(Kind),
    /// The instruction raises an exception that the guest has no IDT gate for: on a CPU that ends in
    /// a triple fault (x86 shutdown), and so does the VM.
    TripleFault(Kind),
}

/// Finishes the guest instructions that a software KVM backend's emulator gives up on
/// (`KVM_EXIT_INTERNAL_ERROR`, emulation failure), and counts them. One per VM, shared by its vCPU
/// threads. `M` is the guest memory it reads and writes (kvmkit's by default; any
/// [`GuestMemoryBackend`] works).
#[derive(Debug)]
pub struct Assist<M = GuestMemoryMmap> {
    memory: M,
    counts: Counts,
}

impl<M: GuestMemoryBackend> Assist<M> {
    /// An assist that reads the guest's code and operands from `memory`.
    pub fn new(memory: M) -> Self {
        Self {
            memory,
            counts: Counts::default(),
        }
    }

    /// The guest memory the assist reads code and operands from.
    pub fn memory(&self) -> &M {
        &self.memory
    }

    /// How many instructions of each kind were assisted so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Handles an emulation failure of `cpu`, stopped at the instruction the backend could not run:
    /// reads it at RIP through the guest's page tables, decodes it for the vCPU's mode, and completes
    /// it or raises its exception. Any other instruction, or one that cannot be read or decoded, is an
    /// [`Error`] that says which, where, and what may help; the guest's state is then unchanged.
    pub fn handle(&self, cpu: &impl GuestCpu) -> Result<Resolution, Error> {
        let regs = cpu.regs()?;
        let sregs = cpu.sregs()?;
        let mode = Mode::of(&sregs);
        let linear = if mode.bitness == 64 {
            regs.rip
        } else {
            mode.linear(sregs.cs.base, regs.rip)
        };
        let access::Fetched {
            bytes,
            len: n,
            failed,
            instr,
        } = access::fetch_instruction(cpu, &self.memory, linear, regs.rip, mode.bitness);
        if let (0, Some(source)) = (n, failed) {
            return Err(Error::Fetch {
                rip: regs.rip,
                source,
            });
        }
        if instr.is_invalid() {
            return Err(Error::Decode {
                rip: regs.rip,
                bitness: mode.bitness,
                bytes: Bytes(bytes[..n].to_vec()),
            });
        }
        let resolution = instructions::assist(instructions::At {
            cpu,
            memory: &self.memory,
            regs,
            sregs,
            mode,
            instr,
            bytes: &bytes[..instr.len().min(n)],
        })?;
        let (Resolution::Resumed(kind) | Resolution::TripleFault(kind)) = resolution;
        self.counts.add(kind);
        Ok(resolution)
    }
}
