//! The trait every device on a bus implements.

/// A device that answers reads and writes on a [`Bus`](crate::Bus).
///
/// `base` is where the device's range starts and `offset` is the accessed address relative to it, so one
/// implementation can sit at any address. `data.len()` is the access width (1, 2, 4 or 8 bytes for a
/// vCPU access). Implementations must accept any offset and width a guest may produce: a guest can
/// access any address in the range with any width.
pub trait BusDevice: Send {
    /// Fills `data` with what the device returns for a read at `base + offset`.
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]) {
        let _ = (base, offset);
        data.fill(0);
    }

    /// Handles a write of `data` at `base + offset`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
        let _ = (base, offset, data);
    }
}
