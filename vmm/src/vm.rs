//! Assembling a VM: KVM, memory, the devices (through the [`DeviceManager`]), vCPUs, and a kernel
//! to boot.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use accel::{IrqChip, Kvm, Vcpu};
use assist::Assist;
use legacy::Serial;
use machine::{BootInfo, BootSpec, Platform};
use memory::GuestRam;

use crate::config::{DevicesConfig, MachineConfig};
use crate::devices::{self, DeviceManager, Legacy};
use crate::timeline::{Event, Timeline};

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
    /// A device could not be made or placed.
    #[error(transparent)]
    Devices(#[from] devices::Error),
    /// A helper thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(String),
}

/// A VM ready to run: memory being registered, devices on the buses, vCPUs created.
pub struct Vm {
    pub(crate) kvm: Arc<Kvm>,
    pub(crate) vm: Arc<accel::Vm>,
    pub(crate) ram: GuestRam,
    pub(crate) devices: DeviceManager,
    pub(crate) legacy: Legacy,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) timeline: Arc<Timeline>,
    pub(crate) assist: Option<Arc<Assist>>,
    /// Each vCPU's LSTAR when it was restored from a snapshot (the instruction assist's system call
    /// bridge arms itself from it); empty for a VM that boots.
    pub(crate) restored_lstar: Vec<Option<u64>>,
    /// The thread installing the LSTAR write trap, if one is being installed.
    pub(crate) msr_filter: Option<std::thread::JoinHandle<()>>,
    /// Set once the LSTAR write trap is in.
    pub(crate) msr_filter_ready: Arc<AtomicBool>,
    /// Whether the vCPUs may start before the LSTAR write trap is in: the guest is a restored one
    /// (its LSTAR is known) or a Linux kernel (which runs for a long while, exiting often, before
    /// it writes LSTAR). A hand-made guest may write LSTAR at once: its vCPUs wait.
    pub(crate) trap_may_lag: bool,
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("memory", &self.ram.size())
            .field("vcpus", &self.vcpus.len())
            .field("devices", &self.devices)
            .finish()
    }
}

impl Vm {
    /// Creates the VM: opens KVM, maps and registers RAM, creates the in-kernel irqchip and PIT, puts
    /// the legacy devices on the port bus (the UART writing guest output to `serial_out`) and the
    /// virtio devices of `devices` on the MMIO bus, and creates the vCPUs (not yet configured).
    pub fn new(
        machine: &MachineConfig,
        devices: &DevicesConfig,
        serial_out: Box<dyn Write + Send>,
        timeline: Arc<Timeline>,
    ) -> Result<Self, Error> {
        let ram = GuestRam::new(machine.memory)?;
        if machine.transparent_huge_pages {
            ram.use_transparent_huge_pages();
        }
        Self::with_ram(machine, devices, serial_out, timeline, ram)
    }

    /// [`Vm::new`] with guest RAM the caller made (a snapshot's memory file, mapped).
    pub fn with_ram(
        machine: &MachineConfig,
        devices: &DevicesConfig,
        serial_out: Box<dyn Write + Send>,
        timeline: Arc<Timeline>,
        ram: GuestRam,
    ) -> Result<Self, Error> {
        let kvm = Arc::new(Kvm::new()?);
        let vm = Arc::new(kvm.create_vm()?);
        // RAM is registered first, before anything else touches the VM. KVM_CREATE_IRQCHIP (its
        // I/O bus devices) and the MSR filter leave an SRCU grace period pending inside KVM, and a
        // memory slot registered after them waits for it: 3-12 ms on this host against 0.2 ms
        // for a slot registered first (docs/architecture.md, "Starting fast").
        vm.add_guest_memory(ram.memory(), machine.track_dirty_pages)?;
        timeline.mark(Event::MemoryReady);
        let software_kvm = kvm.is_software_backend();
        let assist_on = machine.instruction_assist.enabled(software_kvm);
        // The system call bridge (docs/software-kvm.md) learns the SYSCALL entry point from the guest's
        // LSTAR write. Without the MSR filter guests still boot; their user space does not. KVM takes
        // 5-15 ms to install a filter here (it waits for an RCU grace period), so it is installed
        // on a thread of its own. A restored VM's or a Linux kernel's vCPUs do not wait for it (see
        // `trap_may_lag`): once it is in, each reads LSTAR on its next exit and arms the bridge if
        // the guest wrote LSTAR before the trap could see it.
        let msr_filter_ready = Arc::new(AtomicBool::new(false));
        let msr_filter = if assist_on && software_kvm {
            let (vm, ready) = (vm.clone(), msr_filter_ready.clone());
            Some(
                std::thread::Builder::new()
                    .name("kvmkit-msr-filter".into())
                    .spawn(move || {
                        // A short-lived helper that makes one KVM ioctl and ends; it handles
                        // nothing from the guest, so it installs no filter (that would compete
                        // with the vCPUs' start for the CPU).
                        match vm.trap_msr_writes(&[accel::x86::msr::LSTAR]) {
                            Ok(()) => ready.store(true, Ordering::Release),
                            Err(e) => log::warn!("system call bridge off: {e}"),
                        }
                    })
                    .map_err(|e| Error::Thread(e.to_string()))?,
            )
        } else {
            None
        };
        vm.create_irqchip(IrqChip::Full)?;
        vm.create_pit()?;

        let mut dm = DeviceManager::new(machine.acpi);
        let legacy = devices::place_legacy(&mut dm, &vm, serial_out, &timeline)?;
        devices::add_configured(&mut dm, &vm, ram.memory(), devices)?;

        let vcpus = (0..u64::from(machine.cpus))
            .map(|id| vm.create_vcpu(id))
            .collect::<Result<Vec<_>, _>>()?;
        let assist = assist_on.then(|| Arc::new(Assist::new(ram.memory().clone())));
        Ok(Self {
            kvm,
            vm,
            ram,
            devices: dm,
            legacy,
            vcpus,
            timeline,
            assist,
            restored_lstar: Vec::new(),
            msr_filter,
            msr_filter_ready,
            trap_may_lag: false,
        })
    }

    /// Waits for the MSR filter being installed in the background (before any vCPU runs).
    pub(crate) fn finish_msr_filter(&mut self) {
        if let Some(thread) = self.msr_filter.take()
            && thread.join().is_err()
        {
            log::warn!("system call bridge off: the MSR filter's thread panicked");
        }
    }

    /// What a snapshot of this VM reads and a restore writes, shared.
    pub fn parts(&self) -> crate::snapshot::VmParts {
        crate::snapshot::VmParts {
            kvm: self.kvm.clone(),
            vm: self.vm.clone(),
            ram: self.ram.clone(),
            serial: self.legacy.serial.clone(),
            i8042: self.legacy.i8042.clone(),
            rtc: self.legacy.rtc.clone(),
            ospm_seen: self.devices.ospm_seen().clone(),
            virtio: self
                .devices
                .virtio()
                .iter()
                .map(|s| (s.name.clone(), s.transport.clone()))
                .collect(),
        }
    }

    /// Puts the VM in the state a snapshot saved, instead of loading a kernel: devices, KVM's VM
    /// state, and each vCPU's (its RAM must be the snapshot's memory file).
    pub fn restore_snapshot(
        &mut self,
        state: &crate::snapshot::SnapshotState,
    ) -> Result<(), crate::snapshot::Error> {
        use crate::snapshot::Error as E;
        if state.vcpus.len() != self.vcpus.len() {
            return Err(E::Mismatch(format!(
                "{} vCPUs in the snapshot, {} created",
                state.vcpus.len(),
                self.vcpus.len()
            )));
        }
        self.parts().restore(state)?;
        self.trap_may_lag = true;
        self.restored_lstar.clear();
        for (vcpu, saved) in self.vcpus.iter().zip(&state.vcpus) {
            vcpu.restore_state(saved)?;
            let lstar = saved
                .msrs
                .iter()
                .find(|m| m.index == accel::x86::msr::LSTAR)
                .map(|m| m.data)
                .filter(|&v| v != 0);
            self.restored_lstar.push(lstar);
        }
        Ok(())
    }

    /// Loads a Linux kernel (and initramfs, command line) and configures every vCPU to boot it:
    /// CPUID, MSRs and LAPIC for all, entry registers for vCPU 0.
    pub fn load_linux(&mut self, spec: &BootSpec<'_>) -> Result<BootInfo, Error> {
        let cpus = self.vcpus.len() as u32;
        let platform = Platform {
            cpus,
            acpi: self.devices.acpi_config(cpus),
        };
        // A kernel without ACPI learns of the virtio devices from its command line; one with ACPI
        // takes them from the DSDT, and the command line's entries turn into placeholders for it.
        let mut cmdline = spec.cmdline.to_owned();
        for entry in self.devices.cmdline_entries() {
            cmdline.push(' ');
            cmdline.push_str(&entry);
        }
        let spec = BootSpec {
            cmdline: &cmdline,
            ..*spec
        };
        let boot = machine::load(&self.ram, &spec, &platform)?;
        self.trap_may_lag = true;
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

    /// The device manager: the buses (which take devices also while the VM runs) and the devices
    /// on them.
    pub fn devices(&self) -> &DeviceManager {
        &self.devices
    }

    /// The device manager, to add devices before the VM starts.
    pub fn devices_mut(&mut self) -> &mut DeviceManager {
        &mut self.devices
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
        &self.legacy.serial
    }
}
