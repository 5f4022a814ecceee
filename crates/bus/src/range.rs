//! Address ranges on a bus.

use std::fmt;

/// A non-empty, non-wrapping address range `[base, base + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BusRange {
    base: u64,
    len: u64,
}

impl BusRange {
    /// The range `[base, base + len)`, or `None` if `len` is zero or the range runs past `u64::MAX`.
    pub fn new(base: u64, len: u64) -> Option<Self> {
        if len == 0 {
            return None;
        }
        base.checked_add(len - 1)?;
        Some(Self { base, len })
    }

    /// First address of the range.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Number of addresses in the range.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a `BusRange` is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Last address inside the range.
    pub fn last(&self) -> u64 {
        self.base + (self.len - 1)
    }

    /// True if `addr` is inside the range.
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr <= self.last()
    }

    /// True if the two ranges share at least one address.
    pub fn overlaps(&self, other: &BusRange) -> bool {
        self.base <= other.last() && other.base <= self.last()
    }
}

impl fmt::Display for BusRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}..={:#x}]", self.base, self.last())
    }
}
