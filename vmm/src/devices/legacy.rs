//! The legacy PC devices on the port bus: COM1 (its interrupt an irqfd), the i8042 and its keyboard
//! (IRQ 1 an irqfd, the reset line an eventfd), the CMOS RTC, the boot-timer port, and with ACPI the
//! power registers, the OSPM probe and the power button (a GED interrupt, an irqfd). Each is
//! described to the DSDT as it is placed.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bus::SharedDevice;
use legacy::{
    ACPI_POWER, BOOT_TIMER, BootTimer, CMOS, COM1, COM1_IRQ, I8042, I8042_COMMAND, I8042_DATA,
    I8042_IRQ, OSPM_PROBE, OspmProbe, PortRange, PowerRegisters, Rtc, Serial,
};
use machine::acpi::{IsaDevice, IsaKind, PowerPorts};
use vmm_sys_util::eventfd::EFD_NONBLOCK;
use vmm_sys_util::eventfd::EventFd;

use super::{DeviceManager, Error};
use crate::console::ConsoleOutput;
use crate::console_buffer::{self, ConsoleDrain};
use crate::timeline::{Event, Timeline};

/// What the rest of the VMM needs of the legacy devices.
#[derive(Debug)]
pub struct Legacy {
    /// The UART, to feed it console input.
    pub serial: Arc<Mutex<Serial>>,
    /// Written when the guest resets the machine (i8042 or ACPI reset register).
    pub reset: EventFd,
    /// Written when the guest powers off (ACPI S5).
    pub power_off: EventFd,
    /// The keyboard controller, to type on its keyboard.
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS RTC.
    pub rtc: Arc<Mutex<Rtc>>,
    /// Writing it presses the ACPI power button (with ACPI only).
    pub power_button: Option<EventFd>,
    /// Set once the guest's console shows a kernel panic.
    pub panicked: Arc<AtomicBool>,
    /// The console's buffer: bytes dropped, and the last drain when the VM ends.
    pub console: ConsoleDrain,
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)
}

fn ports(r: PortRange) -> (u16, u8) {
    (r.base, r.len as u8)
}

/// Places the legacy devices; the UART writes guest output to `console` (watched for the timeline
/// and for kernel panics) through a buffer and a thread of its own: a stalled reader of `console`
/// never blocks a vCPU (see [`console_buffer`]).
pub fn place(
    dm: &mut DeviceManager,
    vm: &accel::Vm,
    console: Box<dyn Write + Send>,
    timeline: &Arc<Timeline>,
) -> Result<Legacy, Error> {
    let panicked = Arc::new(AtomicBool::new(false));
    let serial_irq = eventfd()?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)?;
    let (buffered, drain) = console_buffer::spawn(console).map_err(Error::Thread)?;
    let out = ConsoleOutput::new(Box::new(buffered), panicked.clone(), timeline.clone());
    let serial = Arc::new(Mutex::new(Serial::new(serial_irq, Box::new(out))));
    dm.add_port(
        serial.clone(),
        COM1,
        Some(IsaDevice {
            kind: IsaKind::Serial,
            ports: vec![ports(COM1)],
            irq: Some(COM1_IRQ),
        }),
    )?;

    let reset = eventfd()?;
    let clone = |e: &EventFd| e.try_clone().map_err(Error::EventFd);
    let keyboard_irq = eventfd()?;
    vm.register_irqfd(&keyboard_irq, I8042_IRQ)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(clone(&reset)?, keyboard_irq)));
    let shared: SharedDevice = i8042.clone();
    // The DSDT names IRQ 1: a hardware-reduced ACPI kernel has no legacy ISA interrupts otherwise.
    dm.add_port(
        shared.clone(),
        I8042_DATA,
        Some(IsaDevice {
            kind: IsaKind::Keyboard,
            ports: vec![ports(I8042_DATA), ports(I8042_COMMAND)],
            irq: Some(I8042_IRQ),
        }),
    )?;
    dm.add_port(shared, I8042_COMMAND, None)?;
    let rtc = Arc::new(Mutex::new(Rtc::new()));
    dm.add_port(
        rtc.clone(),
        CMOS,
        Some(IsaDevice {
            kind: IsaKind::Rtc,
            ports: vec![ports(CMOS)],
            irq: None,
        }),
    )?;
    let marks = timeline.clone();
    let boot_timer = BootTimer::new(Box::new(move |_| marks.mark(Event::GuestMarker)));
    dm.add_port(Arc::new(Mutex::new(boot_timer)), BOOT_TIMER, None)?;

    let power_off = eventfd()?;
    let mut power_button = None;
    if dm.acpi {
        let gsi = dm.allocator.irq()?;
        let button = eventfd()?;
        vm.register_irqfd(&button, gsi)?;
        power_button = Some(button);
        dm.power_button = Some(gsi);
        let power = PowerRegisters::new(clone(&power_off)?, clone(&reset)?);
        dm.add_port(Arc::new(Mutex::new(power)), ACPI_POWER, None)?;
        dm.power = Some(PowerPorts {
            sleep_control: ACPI_POWER.base + legacy::power::SLEEP_CONTROL,
            sleep_status: ACPI_POWER.base + legacy::power::SLEEP_STATUS,
            reset: ACPI_POWER.base + legacy::power::RESET,
            reset_value: legacy::power::RESET_VALUE,
            s5_sleep_type: legacy::power::S5_SLEEP_TYPE,
        });
        let probe = OspmProbe::with_flag(dm.ospm_seen.clone());
        dm.add_port(Arc::new(Mutex::new(probe)), OSPM_PROBE, None)?;
        dm.ospm_probe = Some(OSPM_PROBE.base);
    }
    Ok(Legacy {
        serial,
        reset,
        power_off,
        i8042,
        rtc,
        power_button,
        panicked,
        console: drain,
    })
}
