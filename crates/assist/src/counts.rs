//! How many times each kind of assist ran, for the report at exit and the boot timeline.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// The instructions kvmkit finishes for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `INT3`: the guest's #BP handler runs after it (or a triple fault with no usable IDT).
    Int3,
    /// `FWAIT`: nothing to wait for (or #NM when CR0.TS and CR0.MP say the FPU is not the guest's).
    Fwait,
    /// `CLAC`: clears RFLAGS.AC.
    Clac,
    /// `STAC`: sets RFLAGS.AC.
    Stac,
    /// `POPCNT`: counts the bits of its operand.
    Popcnt,
    /// `RDRAND`: a random number from the host.
    Rdrand,
    /// `RDSEED`: a random number from the host.
    Rdseed,
    /// `LDMXCSR`: loads the SSE control/status register.
    Ldmxcsr,
    /// `STMXCSR`: stores the SSE control/status register.
    Stmxcsr,
    /// `SYSCALL` from user mode, moved to ring 0 (see [`SyscallBridge`](crate::SyscallBridge)).
    Syscall,
}

impl Kind {
    /// Every kind, in report order.
    pub const ALL: [Kind; 10] = [
        Kind::Int3,
        Kind::Fwait,
        Kind::Clac,
        Kind::Stac,
        Kind::Popcnt,
        Kind::Rdrand,
        Kind::Rdseed,
        Kind::Ldmxcsr,
        Kind::Stmxcsr,
        Kind::Syscall,
    ];

    /// The instruction's name, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Int3 => "int3",
            Kind::Fwait => "fwait",
            Kind::Clac => "clac",
            Kind::Stac => "stac",
            Kind::Popcnt => "popcnt",
            Kind::Rdrand => "rdrand",
            Kind::Rdseed => "rdseed",
            Kind::Ldmxcsr => "ldmxcsr",
            Kind::Stmxcsr => "stmxcsr",
            Kind::Syscall => "syscall",
        }
    }
}

/// Counters per [`Kind`], shared by all vCPU threads.
#[derive(Debug, Default)]
pub struct Counts([AtomicU64; Kind::ALL.len()]);

impl Counts {
    /// Counts one assist of `kind`.
    pub fn add(&self, kind: Kind) {
        self.0[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// How many assists of `kind` ran.
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind as usize].load(Ordering::Relaxed)
    }

    /// The total over all kinds.
    pub fn total(&self) -> u64 {
        Kind::ALL.iter().map(|&k| self.get(k)).sum()
    }

    /// `(name, count)` for every kind, in report order.
    pub fn all(&self) -> Vec<(&'static str, u64)> {
        Kind::ALL.iter().map(|&k| (k.name(), self.get(k))).collect()
    }

    /// `(name, count)` for every kind that ran at least once, in report order.
    pub fn nonzero(&self) -> Vec<(&'static str, u64)> {
        Kind::ALL
            .iter()
            .map(|&k| (k.name(), self.get(k)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }
}

impl fmt::Display for Counts {
    /// `int3 1, fwait 3`, or `none`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counts = self.nonzero();
        if counts.is_empty() {
            return write!(f, "none");
        }
        for (i, (name, n)) in counts.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{name} {n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_report_only_what_ran() {
        let c = Counts::default();
        assert_eq!(c.to_string(), "none");
        c.add(Kind::Fwait);
        c.add(Kind::Int3);
        c.add(Kind::Fwait);
        assert_eq!(c.to_string(), "int3 1, fwait 2");
        assert_eq!(c.total(), 3);
        assert_eq!(c.nonzero(), vec![("int3", 1), ("fwait", 2)]);
    }
}
