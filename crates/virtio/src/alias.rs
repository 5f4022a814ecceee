//! A second register window onto a virtio-mmio device, which turns into an empty placeholder once a
//! flag is set.
//!
//! kvmkit describes each virtio-mmio device twice: in the ACPI DSDT at its window, and on the kernel
//! command line (`virtio_mmio.device=`) at an alias of that window. A kernel without ACPI knows only
//! the alias and drives the device through it. A kernel with ACPI finds the device in the DSDT first
//! and tells the VMM so (the DSDT's `\_SB._INI`, before it enumerates devices); from then on the
//! alias reads as a virtio-mmio *placeholder*, device ID 0, which Linux's virtio-mmio driver skips
//! without a word. The device is probed once either way, and the two descriptions never claim the
//! same addresses (which would make the second probe fail with -EBUSY).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bus::{BusDevice, SharedDevice};

use crate::mmio::{MAGIC_VALUE, VERSION};

/// A window that forwards every access to `device` until `hidden` is set, and from then on reads
/// as a virtio-mmio placeholder (magic, version 2, device ID 0, all else 0) and ignores writes.
pub struct MmioAlias {
    device: SharedDevice,
    hidden: Arc<AtomicBool>,
}

impl std::fmt::Debug for MmioAlias {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioAlias")
            .field("hidden", &self.hidden.load(Ordering::SeqCst))
            .finish()
    }
}

impl MmioAlias {
    /// An alias of `device`'s window, hidden once `hidden` becomes true.
    pub fn new(device: SharedDevice, hidden: Arc<AtomicBool>) -> Self {
        Self { device, hidden }
    }

    fn hidden(&self) -> bool {
        self.hidden.load(Ordering::SeqCst)
    }
}

/// What a placeholder's register at `offset` reads as.
fn placeholder(offset: u64) -> u32 {
    match offset {
        0x000 => MAGIC_VALUE,
        0x004 => VERSION,
        _ => 0,
    }
}

impl BusDevice for MmioAlias {
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        if !self.hidden() {
            self.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read(base, offset, data);
            return;
        }
        data.fill(0);
        if data.len() == 4 && offset.is_multiple_of(4) {
            data.copy_from_slice(&placeholder(offset).to_le_bytes());
        }
    }

    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        if !self.hidden() {
            self.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write(base, offset, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Answers every read with 0x5a bytes and counts writes.
    #[derive(Default)]
    struct Real {
        writes: usize,
    }

    impl BusDevice for Real {
        fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
            data.fill(0x5a);
        }
        fn write(&mut self, _base: u64, _offset: u64, _data: &[u8]) {
            self.writes += 1;
        }
    }

    fn word(alias: &mut MmioAlias, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        alias.read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn forwards_until_hidden_then_reads_as_a_placeholder() {
        let real = Arc::new(Mutex::new(Real::default()));
        let hidden = Arc::new(AtomicBool::new(false));
        let mut alias = MmioAlias::new(real.clone(), hidden.clone());
        assert_eq!(word(&mut alias, 0x008), 0x5a5a_5a5a);
        alias.write(0, 0x070, &[1, 0, 0, 0]);
        assert_eq!(real.lock().unwrap().writes, 1);

        hidden.store(true, Ordering::SeqCst);
        assert_eq!(word(&mut alias, 0x000), MAGIC_VALUE);
        assert_eq!(word(&mut alias, 0x004), VERSION);
        assert_eq!(word(&mut alias, 0x008), 0, "device ID 0: a placeholder");
        assert_eq!(word(&mut alias, 0x100), 0);
        let mut odd = [0xffu8; 2];
        alias.read(0, 0x001, &mut odd);
        assert_eq!(odd, [0, 0]);
        alias.write(0, 0x070, &[0, 0, 0, 0]);
        assert_eq!(real.lock().unwrap().writes, 1, "writes are ignored");
    }
}
