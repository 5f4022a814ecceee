//! The boot timer: a port the guest writes to when it reaches a point worth timing (its init
//! started, say), so the VMM can timestamp guest progress without parsing console output.

use bus::BusDevice;

/// A one-byte port; every write calls the VMM's callback with the byte written.
///
/// Reads return 0. From guest userspace it takes `ioperm(port, 1, 1)` and an `outb`.
pub struct BootTimer {
    on_write: Box<dyn FnMut(u8) + Send>,
    writes: u64,
}

impl std::fmt::Debug for BootTimer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootTimer")
            .field("writes", &self.writes)
            .finish()
    }
}

impl BootTimer {
    /// A boot timer that calls `on_write` with each byte the guest writes.
    pub fn new(on_write: Box<dyn FnMut(u8) + Send>) -> Self {
        Self {
            on_write,
            writes: 0,
        }
    }

    /// How many writes the guest made.
    pub fn writes(&self) -> u64 {
        self.writes
    }
}

impl BusDevice for BootTimer {
    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        if let Some(&byte) = data.first() {
            self.writes += 1;
            (self.on_write)(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn each_write_reaches_the_callback_and_reads_are_zero() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut t = BootTimer::new(Box::new(move |b| sink.lock().unwrap().push(b)));
        t.write(0x440, 0, &[7]);
        t.write(0x440, 0, &[9, 9, 9, 9]);
        t.write(0x440, 0, &[]);
        assert_eq!(*seen.lock().unwrap(), vec![7, 9]);
        assert_eq!(t.writes(), 2);
        let mut d = [0xffu8; 2];
        t.read(0x440, 0, &mut d);
        assert_eq!(d, [0, 0]);
    }
}
