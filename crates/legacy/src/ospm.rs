//! A one-byte port that tells the VMM the guest runs an ACPI interpreter (OSPM).
//!
//! kvmkit's DSDT has a `\_SB._INI` method that writes 1 here. ACPICA runs it while it initializes the
//! ACPI namespace, before the kernel enumerates any device the tables describe. Until that write the
//! guest may be a kernel without ACPI, which learns of its devices elsewhere (the command line); after
//! it, the guest is known to take its devices from the ACPI tables.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bus::BusDevice;

/// The OSPM presence port: any non-zero write sets the flag; reads return 1 once it is set.
#[derive(Debug, Default)]
pub struct OspmProbe {
    seen: Arc<AtomicBool>,
}

impl OspmProbe {
    /// A probe whose flag starts clear.
    pub fn new() -> Self {
        Self::default()
    }

    /// A probe that sets `seen` (shared with whoever acts on it).
    pub fn with_flag(seen: Arc<AtomicBool>) -> Self {
        Self { seen }
    }

    /// The flag, shared with whoever acts on it (it only ever goes from false to true).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.seen.clone()
    }
}

impl BusDevice for OspmProbe {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = u8::from(self.seen.load(Ordering::SeqCst));
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if data.iter().any(|&b| b != 0) && !self.seen.swap(true, Ordering::SeqCst) {
            log::debug!("the guest's ACPI interpreter is running (\\_SB._INI)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_zero_write_sets_the_flag_for_good() {
        let mut p = OspmProbe::new();
        let flag = p.flag();
        let mut b = [0xffu8; 2];
        p.read(0x603, 0, &mut b);
        assert_eq!(b, [0, 0]);
        p.write(0x603, 0, &[0]);
        assert!(!flag.load(Ordering::SeqCst));
        p.write(0x603, 0, &[1]);
        assert!(flag.load(Ordering::SeqCst));
        p.write(0x603, 0, &[0]);
        p.read(0x603, 0, &mut b);
        assert_eq!(b, [1, 0]);
    }
}
