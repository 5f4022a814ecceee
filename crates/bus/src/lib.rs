#![doc = include_str!("../README.md")]

mod device;
mod range;

pub use device::BusDevice;
pub use range::BusRange;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A device shared between the bus and whoever else drives it (an event loop, a stdin thread).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Errors from inserting devices into a [`Bus`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The range has length zero or wraps past `u64::MAX`.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// Base address of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {new} overlaps the existing device at {existing}")]
    Overlap {
        /// The range that was being inserted.
        new: BusRange,
        /// The range of the device already there.
        existing: BusRange,
    },
}

/// What a bus access found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A device handled the access.
    Handled,
    /// No device claims the address. Reads are answered with all ones, as on a PC with nothing decoding
    /// the address; writes are dropped.
    Unclaimed,
}

/// An address space (port I/O or MMIO) mapping non-overlapping ranges to devices.
///
/// Lookup is a `BTreeMap` range query: O(log n) in the number of devices. Devices can be inserted
/// and removed while vCPU threads dispatch accesses through a shared `&Bus` (device hotplug): the
/// map sits behind a read-write lock that an access holds only for the lookup, never while the
/// device runs, so a device may itself change the bus.
#[derive(Default)]
pub struct Bus {
    devices: RwLock<BTreeMap<u64, (BusRange, SharedDevice)>>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.map().values().map(|(r, _)| *r))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic cannot leave the map half-changed (each change is one BTreeMap call), so a poisoned
    // lock still guards a consistent map.
    fn map(&self) -> RwLockReadGuard<'_, BTreeMap<u64, (BusRange, SharedDevice)>> {
        self.devices.read().unwrap_or_else(|e| e.into_inner())
    }

    fn map_mut(&self) -> RwLockWriteGuard<'_, BTreeMap<u64, (BusRange, SharedDevice)>> {
        self.devices.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `device` at `[base, base + len)`. Fails if the range is empty, wraps, or overlaps a device
    /// already on the bus.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), Error> {
        let new = BusRange::new(base, len).ok_or(Error::InvalidRange { base, len })?;
        let mut devices = self.map_mut();
        // The only candidates for overlap are the last range starting at or before our end.
        if let Some((_, (existing, _))) = devices.range(..=new.last()).next_back()
            && existing.overlaps(&new)
        {
            return Err(Error::Overlap {
                new,
                existing: *existing,
            });
        }
        devices.insert(base, (new, device));
        Ok(())
    }

    /// Removes the device whose range starts at `base`, returning it.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        self.map_mut().remove(&base).map(|(_, d)| d)
    }

    /// Number of devices on the bus.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// True if no device is on the bus.
    pub fn is_empty(&self) -> bool {
        self.map().is_empty()
    }

    /// The device covering `addr`, with its range.
    pub fn get(&self, addr: u64) -> Option<(BusRange, SharedDevice)> {
        let devices = self.map();
        let (_, (range, dev)) = devices.range(..=addr).next_back()?;
        range.contains(addr).then(|| (*range, dev.clone()))
    }

    /// Dispatches a read of `data.len()` bytes at `addr` to the device covering it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Access {
        match self.get(addr) {
            Some((range, dev)) => {
                lock(&dev).read(range.base(), addr - range.base(), data);
                Access::Handled
            }
            None => {
                data.fill(0xff);
                Access::Unclaimed
            }
        }
    }

    /// Dispatches a write of `data` at `addr` to the device covering it.
    pub fn write(&self, addr: u64, data: &[u8]) -> Access {
        match self.get(addr) {
            Some((range, dev)) => {
                lock(&dev).write(range.base(), addr - range.base(), data);
                Access::Handled
            }
            None => Access::Unclaimed,
        }
    }
}

/// Locks a device, recovering from a poisoned lock: a device whose handler panicked on another thread is
/// still the best state we have, and one vCPU's failure must not take the others down with a second panic.
fn lock(dev: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    dev.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
