//! Reading guest memory by linear address: translated page by page through the guest's page tables,
//! because consecutive linear pages need not be consecutive in guest-physical memory.

use iced_x86::{Decoder, DecoderOptions, Instruction};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::cpu::GuestCpu;

/// Why guest memory could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    /// No page table entry maps this linear address.
    #[error("linear address {0:#x} is not mapped")]
    NotMapped(u64),
    /// The page tables map it outside guest RAM (e.g. onto a device).
    #[error("linear address {linear:#x} maps to {physical:#x}, which is not guest RAM")]
    NotRam {
        /// The linear address.
        linear: u64,
        /// Where the page tables point.
        physical: u64,
    },
    /// Reading the vCPU's translation failed.
    #[error("KVM_TRANSLATE failed for {0:#x}")]
    Translate(u64),
}

impl AccessError {
    /// The linear address that failed.
    pub fn linear(&self) -> u64 {
        match *self {
            Self::NotMapped(a) | Self::Translate(a) | Self::NotRam { linear: a, .. } => a,
        }
    }
}

/// Fills `buf` from linear address `linear` onwards. Returns how many bytes were read before the
/// first failure, and the failure; `(buf.len(), None)` when all were.
pub fn read_linear(
    cpu: &impl GuestCpu,
    memory: &impl GuestMemoryBackend,
    linear: u64,
    buf: &mut [u8],
) -> (usize, Option<AccessError>) {
    let len = buf.len();
    by_page(cpu, linear, len, |done, physical, n| {
        memory
            .read_slice(&mut buf[done..done + n], GuestAddress(physical))
            .is_ok()
    })
}

/// The longest x86 instruction.
pub const MAX_INSN: usize = 15;

/// One instruction read from guest memory and decoded.
pub struct Fetched {
    /// Up to [`MAX_INSN`] bytes from the instruction's address (only `len` of them read).
    pub bytes: [u8; MAX_INSN],
    /// How many bytes could be read before the first unmapped or non-RAM page.
    pub len: usize,
    /// Why reading stopped short, if it did.
    pub failed: Option<AccessError>,
    /// The decoded instruction (`is_invalid()` if the bytes read are not one).
    pub instr: Instruction,
}

/// Reads the instruction at linear address `linear` (whose RIP is `ip`) and decodes it as
/// `bitness`-bit code.
pub fn fetch_instruction(
    cpu: &impl GuestCpu,
    memory: &impl GuestMemoryBackend,
    linear: u64,
    ip: u64,
    bitness: u32,
) -> Fetched {
    let mut bytes = [0u8; MAX_INSN];
    let (len, failed) = read_linear(cpu, memory, linear, &mut bytes);
    let instr = Decoder::with_ip(bitness, &bytes[..len], ip, DecoderOptions::NONE).decode();
    Fetched {
        bytes,
        len,
        failed,
        instr,
    }
}

/// Walks `len` bytes from `linear` page by page, calling `each(offset, physical, bytes)` for each
/// piece; stops at the first piece that is not mapped or for which `each` returns false (not RAM).
fn by_page(
    cpu: &impl GuestCpu,
    linear: u64,
    len: usize,
    mut each: impl FnMut(usize, u64, usize) -> bool,
) -> (usize, Option<AccessError>) {
    for (done, addr, in_page) in crate::paging::split_at_pages(linear, len) {
        let physical = match cpu.translate(addr) {
            Ok(Some(p)) => p,
            Ok(None) => return (done, Some(AccessError::NotMapped(addr))),
            Err(_) => return (done, Some(AccessError::Translate(addr))),
        };
        if !each(done, physical, in_page) {
            return (
                done,
                Some(AccessError::NotRam {
                    linear: addr,
                    physical,
                }),
            );
        }
    }
    (len, None)
}
