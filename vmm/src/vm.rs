//! Assembling a VM: KVM, memory, the legacy devices on the buses, vCPUs, and a kernel to boot.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use accel::{EventFd, Kvm, Vcpu};
use assist::Assist;
use bus::SharedDevice;
use legacy::{
    ACPI_POWER, BOOT_TIMER, BootTimer, CMOS, COM1, COM1_IRQ, I8042, I8042_COMMAND, I8042_DATA,
    PortRange, PowerRegisters, Rtc, Serial,
};
use machine::acpi::{AcpiConfig, IsaDevice, IsaKind, MmioDevice, PowerPorts};
use machine::{BootInfo, BootSpec, Platform};
use memory::{Allocator, GuestRam};
use virtio_devices::{Block, BlockConfig};
use vmm_sys_util::eventfd::EFD_NONBLOCK;

use crate::console::ConsoleOutput;
use crate::devices::{VirtioSlot, add_device};
use crate::software_kvm::AssistMode;
use crate::timeline::{Event, Timeline};
use crate::vcpu::Buses;

/// Errors from building a VM.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM refused something.
    #[error(transparent)]
    Accel(#[from] accel::Error),
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] memory::Error),
    /// The kernel, initramfs or boot structures could not be loaded.
    #[error(transparent)]
    Machine(#[from] machine::Error),
    /// Two devices claimed the same addresses.
    #[error("cannot place a device: {0}")]
    Bus(#[from] bus::Error),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
    /// A disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] virtio_devices::block::disk::Error),
    /// No device window or interrupt line is left.
    #[error("cannot place a device: {0}")]
    Allocate(#[from] memory::AllocError),
    /// A virtio transport could not be created.
    #[error(transparent)]
    Virtio(#[from] virtio::mmio::Error),
}

/// What a VM is made of.
pub struct VmConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Where the serial console's output goes.
    pub serial_out: Box<dyn Write + Send>,
    /// ACPI: the power registers on the port bus, and ACPI tables for a kernel to boot with.
    pub acpi: bool,
    /// virtio-blk disks (the guest sees vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// Where the VM's boot timeline is recorded.
    pub timeline: Arc<Timeline>,
    /// When to finish instructions a software KVM backend cannot run.
    pub instruction_assist: AssistMode,
}

/// A VM ready to run: memory registered, devices on the buses, vCPUs created.
pub struct Vm {
    pub(crate) kvm: Kvm,
    pub(crate) vm: accel::Vm,
    pub(crate) ram: GuestRam,
    pub(crate) buses: Buses,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) serial: Arc<Mutex<Serial>>,
    pub(crate) reset: EventFd,
    pub(crate) power_off: EventFd,
    pub(crate) panicked: Arc<AtomicBool>,
    pub(crate) acpi: bool,
    pub(crate) virtio: Vec<VirtioSlot>,
    pub(crate) timeline: Arc<Timeline>,
    pub(crate) assist: Option<Arc<Assist>>,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.ram.size())
            .field("vcpus", &self.vcpus.len())
            .field("pio", &self.buses.pio)
            .field("mmio", &self.buses.mmio)
            .finish()
    }
}

/// The guest's name for disk `i`: vda, vdb, ..., vdz, vdaa, ...
fn disk_name(i: usize) -> String {
    let mut name = String::new();
    let mut n = i;
    loop {
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// What the ACPI tables say about this VM: its vCPUs, the legacy devices [`Vm::new`] puts on the
/// port bus, the virtio-mmio devices and the power registers.
fn acpi_config(cpus: u32, virtio: &[VirtioSlot]) -> AcpiConfig {
    let ports = |r: PortRange| (r.base, r.len as u8);
    AcpiConfig {
        cpus,
        isa: vec![
            IsaDevice {
                kind: IsaKind::Serial,
                ports: vec![ports(COM1)],
                irq: Some(COM1_IRQ),
            },
            IsaDevice {
                kind: IsaKind::Keyboard,
                ports: vec![ports(I8042_DATA), ports(I8042_COMMAND)],
                irq: None,
            },
            IsaDevice {
                kind: IsaKind::Rtc,
                ports: vec![ports(CMOS)],
                irq: None,
            },
        ],
        virtio_mmio: virtio
            .iter()
            .map(|s| MmioDevice {
                base: s.base,
                size: virtio::mmio::WINDOW_SIZE as u32,
                irq: s.irq,
            })
            .collect(),
        power: PowerPorts {
            sleep_control: ACPI_POWER.base + legacy::power::SLEEP_CONTROL,
            sleep_status: ACPI_POWER.base + legacy::power::SLEEP_STATUS,
            reset: ACPI_POWER.base + legacy::power::RESET,
            reset_value: legacy::power::RESET_VALUE,
            s5_sleep_type: legacy::power::S5_SLEEP_TYPE,
        },
    }
}

fn eventfd() -> Result<EventFd, Error> {
    EventFd::new(EFD_NONBLOCK).map_err(Error::EventFd)
}

impl Vm {
    /// Creates the VM: opens KVM, maps and registers RAM, puts COM1, the i8042, the RTC and (with
    /// ACPI) the power registers on the port bus, the disks on the MMIO bus, and creates the vCPUs
    /// (not yet configured).
    pub fn new(config: VmConfig) -> Result<Self, Error> {
        let kvm = Kvm::new()?;
        let mut vm = kvm.create_vm()?;
        let ram = GuestRam::new(config.memory)?;
        vm.add_guest_memory(ram.memory())?;
        config.timeline.mark(Event::MemoryReady);

        let panicked = Arc::new(AtomicBool::new(false));
        let serial_irq = eventfd()?;
        vm.register_irqfd(&serial_irq, COM1_IRQ)?;
        let out = ConsoleOutput::new(config.serial_out, panicked.clone(), config.timeline.clone());
        let serial = Arc::new(Mutex::new(Serial::new(serial_irq, Box::new(out))));
        let reset = eventfd()?;
        let i8042: SharedDevice = Arc::new(Mutex::new(I8042::new(
            reset.try_clone().map_err(Error::EventFd)?,
        )));

        let mut buses = Buses::default();
        let mut add = |dev: SharedDevice, at: PortRange| {
            buses.pio.insert(dev, u64::from(at.base), u64::from(at.len))
        };
        add(serial.clone(), COM1)?;
        add(i8042.clone(), I8042_DATA)?;
        add(i8042, I8042_COMMAND)?;
        add(Arc::new(Mutex::new(Rtc::new())), CMOS)?;
        let timeline = config.timeline.clone();
        let boot_timer = BootTimer::new(Box::new(move |_| timeline.mark(Event::GuestMarker)));
        add(Arc::new(Mutex::new(boot_timer)), BOOT_TIMER)?;
        let power_off = eventfd()?;
        if config.acpi {
            let clone = |e: &EventFd| e.try_clone().map_err(Error::EventFd);
            let power = PowerRegisters::new(clone(&power_off)?, clone(&reset)?);
            add(Arc::new(Mutex::new(power)), ACPI_POWER)?;
        }

        let mut allocator = Allocator::new();
        let mut virtio = Vec::new();
        for (i, disk) in config.disks.iter().enumerate() {
            let block = Block::new(&disk_name(i), disk)?;
            virtio.push(add_device(
                &vm,
                ram.memory(),
                &mut buses.mmio,
                &mut allocator,
                Box::new(block),
            )?);
        }

        let vcpus = (0..u64::from(config.cpus))
            .map(|id| vm.create_vcpu(id))
            .collect::<Result<Vec<_>, _>>()?;
        let software_kvm = kvm.is_software_backend();
        let assist = config
            .instruction_assist
            .enabled(software_kvm)
            .then(|| Arc::new(Assist::new(ram.memory().clone())));
        // The system call bridge (docs/software-kvm.md) learns the SYSCALL entry point from the guest's
        // LSTAR write. Without the MSR filter guests still boot; their user space does not.
        if assist.is_some()
            && software_kvm
            && let Err(e) = vm.trap_msr_writes(&[accel::x86::msr::LSTAR])
        {
            log::warn!("system call bridge off: {e}");
        }
        Ok(Self {
            kvm,
            vm,
            ram,
            buses,
            vcpus,
            serial,
            reset,
            power_off,
            panicked,
            acpi: config.acpi,
            virtio,
            timeline: config.timeline,
            assist,
        })
    }

    /// Loads a Linux kernel (and initramfs, command line) and configures every vCPU to boot it:
    /// CPUID, MSRs and LAPIC for all, entry registers for vCPU 0.
    pub fn load_linux(&mut self, spec: &BootSpec<'_>) -> Result<BootInfo, Error> {
        let cpus = self.vcpus.len() as u32;
        let platform = Platform {
            cpus,
            acpi: self.acpi.then(|| acpi_config(cpus, &self.virtio)),
        };
        // Without ACPI the kernel learns of the virtio devices from its command line.
        let mut cmdline = spec.cmdline.to_owned();
        if !self.acpi {
            for slot in &self.virtio {
                cmdline.push(' ');
                cmdline.push_str(&virtio::cmdline_device(slot.base, slot.irq));
            }
        }
        let spec = BootSpec {
            cmdline: &cmdline,
            ..*spec
        };
        let boot = machine::load(&self.ram, &spec, &platform)?;
        for vcpu in &self.vcpus {
            let bsp = (vcpu.id() == 0).then_some(&boot);
            machine::configure_vcpu(&self.kvm, vcpu, &self.ram, cpus, bsp)?;
        }
        self.timeline.mark(Event::KernelLoaded);
        Ok(boot)
    }

    /// True if KVM here is a software backend (kvm_pvm) rather than hardware virtualization.
    pub fn is_software_kvm(&self) -> bool {
        self.kvm.is_software_backend()
    }

    /// The instruction assist, if it is on for this VM: its counts stay readable after the VM ran.
    pub fn assist(&self) -> Option<&Arc<Assist>> {
        self.assist.as_ref()
    }

    /// The guest's RAM.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// vCPU `i`, to set up registers by hand (tests, custom boot).
    pub fn vcpu(&self, i: usize) -> Option<&Vcpu> {
        self.vcpus.get(i)
    }

    /// The port-I/O bus, to add devices.
    pub fn pio_bus_mut(&mut self) -> &mut bus::Bus {
        &mut self.buses.pio
    }

    /// The MMIO bus, to add devices.
    pub fn mmio_bus_mut(&mut self) -> &mut bus::Bus {
        &mut self.buses.mmio
    }

    /// The KVM VM, for irqfds and other VM-wide setup.
    pub fn kvm_vm(&self) -> &accel::Vm {
        &self.vm
    }

    /// The VM's boot timeline.
    pub fn timeline(&self) -> &Arc<Timeline> {
        &self.timeline
    }

    /// The COM1 UART, to feed it input.
    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }
}
