//! The 8250/16550 UART, as vm-superio models it, on a bus.

use std::io::Write;

use bus::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Raises the UART's interrupt by writing to an eventfd (registered as an irqfd with KVM).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// A 16550A UART. What the guest transmits goes to `out`; [`Serial::enqueue_input`] feeds the receive
/// FIFO; interrupts go out through the eventfd.
pub struct Serial {
    uart: Uart,
    write_errors: u64,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("write_errors", &self.write_errors)
            .finish()
    }
}

impl Serial {
    /// A UART that writes guest output to `out` and signals its interrupt on `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(EventFdTrigger(irq), out),
            write_errors: 0,
        }
    }

    /// Queues bytes for the guest to read; returns how many fit in the receive FIFO (0 when full).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }

    /// Free room in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// How many guest writes could not be delivered to the output or raise an interrupt. The guest never
    /// sees these failures: a UART has no way to report them.
    pub fn write_errors(&self) -> u64 {
        self.write_errors
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        // The UART has 8 byte-wide registers; wider accesses read the addressed one in the low byte.
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut())
            && reg < 8
        {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first())
            && reg < 8
            && self.uart.write(reg, value).is_err()
        {
            self.write_errors += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmit_reaches_output_and_receive_raises_interrupt() {
        let sink = Sink::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"ok\n" {
            s.write(0x3f8, 0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"ok\n");

        s.write(0x3f8, 1, &[0x01]); // IER: received-data interrupt on
        assert_eq!(s.enqueue_input(b"x"), 1);
        assert_eq!(irq.read().unwrap(), 1);
        let mut lsr = [0u8];
        s.read(0x3f8, 5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "LSR data ready");
        let mut rbr = [0u8];
        s.read(0x3f8, 0, &mut rbr);
        assert_eq!(rbr, [b'x']);
    }

    #[test]
    fn hostile_accesses_are_ignored_and_output_errors_counted() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = Serial::new(irq, Box::new(Broken));
        s.write(0x3f8, 0, b"a");
        assert_eq!(s.write_errors(), 1);
        s.write(0x3f8, 9, &[1]);
        s.write(0x3f8, u64::MAX, &[]);
        let mut wide = [0xaau8; 8];
        s.read(0x3f8, 1 << 40, &mut wide);
        assert_eq!(wide, [0; 8]);
        s.read(0x3f8, 5, &mut []);
    }
}
