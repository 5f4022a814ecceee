//! The instructions kvmkit finishes for the backend, one function each, and the hints for those it
//! does not. Every function gets the decoded instruction and the vCPU's state at it, and either
//! completes it (new registers, RIP past it) or raises the exception the CPU would have raised.

use accel::x86::{cr0, cr4, rflags, vector};
use iced_x86::{Code, Formatter, Instruction, IntelFormatter, Mnemonic, OpKind};
use kvm_bindings::{kvm_regs, kvm_sregs};
use vm_memory::GuestMemoryBackend;

use crate::counts::Kind;
use crate::cpu::GuestCpu;
use crate::mode::{Mode, long_mode};
use crate::paging::{self, Access, Fault};
use crate::{Error, Resolution, registers};

/// The MXCSR bits a CPU with DAZ accepts (MXCSR_MASK); setting any other bit is #GP(0).
const MXCSR_MASK: u32 = 0xffff;

/// The flags POPCNT writes.
const ARITH_FLAGS: u64 =
    rflags::CF | rflags::PF | rflags::AF | rflags::ZF | rflags::SF | rflags::OF;

/// The vCPU at the instruction being assisted.
pub(crate) struct At<'a, C: GuestCpu, M: GuestMemoryBackend> {
    pub cpu: &'a C,
    pub memory: &'a M,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub mode: Mode,
    pub instr: Instruction,
    /// The instruction's bytes.
    pub bytes: &'a [u8],
}

impl<C: GuestCpu, M: GuestMemoryBackend> At<'_, C, M> {
    /// The address of the next instruction, wrapped as the CPU wraps IP in 16- and 32-bit code.
    fn next_rip(&self) -> u64 {
        let next = self.instr.next_ip();
        match self.mode.bitness {
            64 => next,
            32 => next & 0xffff_ffff,
            _ => next & 0xffff,
        }
    }

    /// Completes the instruction: RIP past it, registers as changed.
    fn finish(mut self, kind: Kind) -> Result<Resolution, Error> {
        self.regs.rip = self.next_rip();
        self.cpu.set_regs(&self.regs)?;
        Ok(Resolution::Resumed(kind))
    }

    /// Raises exception `vector` at the instruction (RIP unchanged: a fault).
    fn fault(self, kind: Kind, vector: u8, error_code: Option<u32>) -> Result<Resolution, Error> {
        self.cpu.inject_exception(vector, error_code)?;
        Ok(Resolution::Resumed(kind))
    }

    /// True if the IDT (or real-mode IVT) has a gate for `vector`.
    fn idt_has(&self, vector: u8) -> bool {
        let gate = self.mode.gate_size(long_mode(&self.sregs));
        u64::from(self.sregs.idt.limit) >= (u64::from(vector) + 1) * gate - 1
    }

    /// The linear address of the instruction's memory operand `operand`.
    fn operand_address(&self, operand: u32) -> u64 {
        let (regs, sregs, mode) = (&self.regs, &self.sregs, self.mode);
        let address = self
            .instr
            .virtual_address(operand, 0, |reg, _, _| {
                registers::value(regs, sregs, mode, reg)
            })
            .unwrap_or(u64::MAX);
        if mode.bitness == 64 {
            address
        } else {
            address & 0xffff_ffff
        }
    }

    /// The access to the instruction's memory operand, from the instruction's privilege level.
    fn access(&self, write: bool) -> Access {
        Access {
            write,
            user: self.mode.cpl == 3,
        }
    }

    /// Reads the instruction's memory operand `size` bytes wide, as the CPU would (page
    /// permissions, SMAP, canonical addresses); `Err` with the fault.
    fn read_memory_operand(&self, operand: u32, size: usize) -> Result<u64, Fault> {
        let mut buf = [0u8; 8];
        let linear = self.operand_address(operand);
        paging::read(
            self.memory,
            &self.sregs,
            self.regs.rflags,
            linear,
            &mut buf[..size],
            self.access(false),
        )?;
        Ok(u64::from_le_bytes(buf))
    }

    /// Writes `data` to the instruction's memory operand `operand`, as the CPU would; `Err` with
    /// the fault (nothing is written then).
    fn write_memory_operand(&self, operand: u32, data: &[u8]) -> Result<(), Fault> {
        let linear = self.operand_address(operand);
        paging::write(
            self.memory,
            &self.sregs,
            self.regs.rflags,
            linear,
            data,
            self.access(true),
        )
    }

    /// Raises what `fault` is on a CPU: #PF with CR2 and the error code, #GP(0) (#SS(0) for a
    /// stack reference) for a non-canonical address. An operand outside guest RAM is a #PF too
    /// (not present): the assist cannot reach device memory.
    fn memory_fault(self, kind: Kind, fault: Fault, write: bool) -> Result<Resolution, Error> {
        let (linear, error) = match fault {
            Fault::Page { linear, error } => (linear, error),
            Fault::NotRam { linear, .. } => {
                let user = if self.mode.cpl == 3 { 1 << 2 } else { 0 };
                (linear, user | if write { 1 << 1 } else { 0 })
            }
            Fault::NonCanonical => {
                let stack = self.instr.memory_segment() == iced_x86::Register::SS;
                let vector = if stack { vector::SS } else { vector::GP };
                return self.fault(kind, vector, Some(0));
            }
        };
        let mut sregs = self.sregs;
        sregs.cr2 = linear;
        self.cpu.set_sregs(&sregs)?;
        self.fault(kind, vector::PF, Some(error))
    }
}

/// Finishes `at.instr`, or says why not.
pub(crate) fn assist<C: GuestCpu, M: GuestMemoryBackend>(
    at: At<'_, C, M>,
) -> Result<Resolution, Error> {
    match at.instr.code() {
        Code::Int3 => int3(at),
        Code::Wait => fwait(at),
        Code::Clac => smap_flag(at, Kind::Clac, false),
        Code::Stac => smap_flag(at, Kind::Stac, true),
        Code::Popcnt_r16_rm16 | Code::Popcnt_r32_rm32 | Code::Popcnt_r64_rm64 => popcnt(at),
        Code::Rdrand_r16 | Code::Rdrand_r32 | Code::Rdrand_r64 => random(at, Kind::Rdrand),
        Code::Rdseed_r16 | Code::Rdseed_r32 | Code::Rdseed_r64 => random(at, Kind::Rdseed),
        Code::Ldmxcsr_m32 => mxcsr(at, Kind::Ldmxcsr),
        Code::Stmxcsr_m32 => mxcsr(at, Kind::Stmxcsr),
        _ => Err(unsupported(&at.instr, at.regs.rip, at.bytes)),
    }
}

/// INT3: the guest's #BP handler runs with the return address after the INT3, as on a CPU. With no
/// gate for #BP in the IDT (an empty IDT, which Linux's `reboot=t` loads on purpose) the CPU would
/// end up in a triple fault: so does the VM.
fn int3<C: GuestCpu, M: GuestMemoryBackend>(at: At<'_, C, M>) -> Result<Resolution, Error> {
    if !at.idt_has(vector::BP) {
        return Ok(Resolution::TripleFault(Kind::Int3));
    }
    let mut at = at;
    at.regs.rip = at.next_rip();
    at.cpu.set_regs(&at.regs)?;
    at.cpu.inject_exception(vector::BP, None)?;
    Ok(Resolution::Resumed(Kind::Int3))
}

/// FWAIT: waits for pending unmasked x87 exceptions, which the backend's guests never have pending
/// (Linux masks them). With CR0.MP and CR0.TS set, it raises #NM instead.
fn fwait<C: GuestCpu, M: GuestMemoryBackend>(at: At<'_, C, M>) -> Result<Resolution, Error> {
    if at.sregs.cr0 & (cr0::MP | cr0::TS) == (cr0::MP | cr0::TS) {
        return at.fault(Kind::Fwait, vector::NM, None);
    }
    at.finish(Kind::Fwait)
}

/// CLAC / STAC: clear or set RFLAGS.AC. #UD outside ring 0 or without CR4.SMAP, as on a CPU.
fn smap_flag<C: GuestCpu, M: GuestMemoryBackend>(
    mut at: At<'_, C, M>,
    kind: Kind,
    set: bool,
) -> Result<Resolution, Error> {
    if at.mode.cpl != 0 || at.sregs.cr4 & cr4::SMAP == 0 {
        return at.fault(kind, vector::UD, None);
    }
    if set {
        at.regs.rflags |= rflags::AC;
    } else {
        at.regs.rflags &= !rflags::AC;
    }
    at.finish(kind)
}

/// POPCNT r, r/m: the number of set bits; ZF if the source is 0; CF, PF, AF, SF, OF cleared.
fn popcnt<C: GuestCpu, M: GuestMemoryBackend>(mut at: At<'_, C, M>) -> Result<Resolution, Error> {
    let dest = at.instr.op0_register();
    let size = dest.size();
    let source = match at.instr.op1_kind() {
        OpKind::Register => {
            registers::value(&at.regs, &at.sregs, at.mode, at.instr.op1_register()).unwrap_or(0)
        }
        _ => match at.read_memory_operand(1, size) {
            Ok(v) => v,
            Err(fault) => return at.memory_fault(Kind::Popcnt, fault, false),
        },
    };
    let source = if size == 8 {
        source
    } else {
        source & ((1u64 << (size * 8)) - 1)
    };
    registers::write(&mut at.regs, dest, u64::from(source.count_ones()));
    at.regs.rflags &= !ARITH_FLAGS;
    if source == 0 {
        at.regs.rflags |= rflags::ZF;
    }
    at.finish(Kind::Popcnt)
}

/// RDRAND / RDSEED r: a random value from the host's kernel (getrandom), CF set (valid), the other
/// arithmetic flags cleared.
fn random<C: GuestCpu, M: GuestMemoryBackend>(
    mut at: At<'_, C, M>,
    kind: Kind,
) -> Result<Resolution, Error> {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most buf.len() bytes into the buffer we own.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    at.regs.rflags &= !ARITH_FLAGS;
    if got == buf.len() as isize {
        registers::write(
            &mut at.regs,
            at.instr.op0_register(),
            u64::from_le_bytes(buf),
        );
        at.regs.rflags |= rflags::CF;
    } else {
        // No randomness now: what a CPU reports when its generator is drained (CF = 0, value 0).
        registers::write(&mut at.regs, at.instr.op0_register(), 0);
    }
    at.finish(kind)
}

/// LDMXCSR m32 / STMXCSR m32: load or store the SSE control/status register, which KVM keeps in the
/// vCPU's XSAVE image. #UD with CR0.EM set or CR4.OSFXSR clear, #NM with CR0.TS set, #GP(0) for a
/// reserved bit, #PF for an operand the page tables do not allow, #GP(0) for a non-canonical one.
fn mxcsr<C: GuestCpu, M: GuestMemoryBackend>(
    at: At<'_, C, M>,
    kind: Kind,
) -> Result<Resolution, Error> {
    if at.sregs.cr0 & cr0::EM != 0 || at.sregs.cr4 & cr4::OSFXSR == 0 {
        return at.fault(kind, vector::UD, None);
    }
    if at.sregs.cr0 & cr0::TS != 0 {
        return at.fault(kind, vector::NM, None);
    }
    if kind == Kind::Stmxcsr {
        let mxcsr = at.cpu.mxcsr()?;
        if let Err(fault) = at.write_memory_operand(0, &mxcsr.to_le_bytes()) {
            return at.memory_fault(kind, fault, true);
        }
        return at.finish(kind);
    }
    let value = match at.read_memory_operand(0, 4) {
        Ok(v) => v as u32,
        Err(fault) => return at.memory_fault(kind, fault, false),
    };
    if value & !MXCSR_MASK != 0 {
        return at.fault(kind, vector::GP, Some(0));
    }
    at.cpu.set_mxcsr(value)?;
    at.finish(kind)
}

/// The error for an instruction kvmkit does not finish, with what may help.
pub(crate) fn unsupported(instr: &Instruction, rip: u64, bytes: &[u8]) -> Error {
    let mut text = String::new();
    IntelFormatter::new().format(instr, &mut text);
    Error::Unsupported {
        rip,
        text,
        bytes: crate::error::Bytes(bytes.to_vec()),
        hint: hint(instr),
    }
}

/// What a user can do about an instruction neither the backend nor kvmkit runs: the kernel parameter
/// that keeps Linux off it, or else the CPU features it needs (iced-x86's CPUID data), whose
/// `clearcpuid=` may make the kernel pick other code.
fn hint(instr: &Instruction) -> String {
    use Mnemonic as M;
    let parameter = match instr.mnemonic() {
        M::Xsave
        | M::Xsave64
        | M::Xsaveopt
        | M::Xsaveopt64
        | M::Xsavec
        | M::Xsavec64
        | M::Xsaves
        | M::Xsaves64
        | M::Xrstor
        | M::Xrstor64
        | M::Xrstors
        | M::Xrstors64
        | M::Xsetbv
        | M::Xgetbv => Some("noxsave"),
        M::Cmpxchg16b => Some("clearcpuid=cx16"),
        M::Invpcid => Some("nopcid clearcpuid=invpcid"),
        M::Rdfsbase | M::Rdgsbase | M::Wrfsbase | M::Wrgsbase => Some("nofsgsbase"),
        M::Rdpid => Some("clearcpuid=rdpid"),
        M::Serialize => Some("clearcpuid=serialize"),
        _ => None,
    };
    if let Some(parameter) = parameter {
        return format!("boot the guest kernel with `{parameter}`");
    }
    let features: Vec<String> = instr
        .cpuid_features()
        .iter()
        .map(|f| format!("{f:?}"))
        .collect();
    format!(
        "it needs CPU feature {}: if the guest kernel has code without it, `clearcpuid=` may select that \
         (see docs/software-kvm.md)",
        features.join("+")
    )
}
