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

/// A UART's registers and receive FIFO, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialState {
    /// Divisor latch, low and high bytes.
    pub divisor: [u8; 2],
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Received bytes the guest has not read.
    pub receive_fifo: Vec<u8>,
}

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

    /// The registers and receive FIFO, as the guest left them.
    pub fn state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            divisor: [s.baud_divisor_low, s.baud_divisor_high],
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            receive_fifo: s.in_buffer,
        }
    }

    /// Puts the registers and receive FIFO back as `state` has them; the output and the interrupt
    /// stay this UART's.
    pub fn restore(&mut self, state: &SerialState) -> std::io::Result<()> {
        let irq = self.uart.interrupt_evt().0.try_clone()?;
        let placeholder = vm_superio::Serial::new(
            EventFdTrigger(irq.try_clone()?),
            Box::new(std::io::sink()) as Box<dyn Write + Send>,
        );
        let out = std::mem::replace(&mut self.uart, placeholder).into_writer();
        let superio_state = vm_superio::serial::SerialState {
            baud_divisor_low: state.divisor[0],
            baud_divisor_high: state.divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.receive_fifo.clone(),
        };
        match vm_superio::Serial::from_state(
            &superio_state,
            EventFdTrigger(irq),
            vm_superio::serial::NoEvents,
            out,
        ) {
            Ok(uart) => {
                self.uart = uart;
                Ok(())
            }
            Err(e) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("UART state: {e:?}"),
            )),
        }
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
    fn a_restored_uart_has_the_registers_and_pending_input_of_the_saved_one() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut a = Serial::new(irq.try_clone().unwrap(), Box::new(std::io::sink()));
        a.write(0x3f8, 3, &[0x80]); // DLAB
        a.write(0x3f8, 0, &[0x0c]); // divisor 12: 9600 baud
        a.write(0x3f8, 3, &[0x03]); // 8N1
        a.write(0x3f8, 7, &[0x5a]); // scratch
        a.write(0x3f8, 1, &[0x01]);
        a.enqueue_input(b"hi");
        let state: SerialState =
            serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        let sink = Sink::default();
        let mut b = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        b.restore(&state).unwrap();
        assert_eq!(b.state(), state);
        let mut r = [0u8];
        b.read(0x3f8, 7, &mut r);
        assert_eq!(r, [0x5a]);
        b.read(0x3f8, 0, &mut r);
        assert_eq!(r, [b'h'], "the input the guest had not read");
        b.write(0x3f8, 0, b"!");
        assert_eq!(
            &*sink.0.lock().unwrap(),
            b"!",
            "output still goes to the new UART's sink"
        );
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
