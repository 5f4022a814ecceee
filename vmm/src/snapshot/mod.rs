//! Snapshots: a paused VM's state saved to a file and its memory to another, to be restored in
//! another kvmkit process, which goes on where the VM was.
//!
//! ```text
//!  create (the VM paused):                          restore (a new process):
//!   virtio devices suspended (nothing in flight)      state ◄── format::load (version, checksum)
//!   each vCPU, on its thread: accel::VcpuState        RAM   ◄── memory file, MAP_PRIVATE
//!   accel::VmState: clock, PIC/IOAPIC, PIT            the VM built from the saved configuration
//!   UART, i8042, RTC, OSPM flag, virtio registers     device, VM and vCPU state written back
//!   RAM ──► memory file (sparse)                      virtio devices resumed at their used rings
//!   state ──► format::save                            vCPUs started (or left paused)
//!   virtio devices resumed
//! ```
//!
//! [`format`] is the file. The parts come from the layers that own them: `accel` (what KVM holds),
//! `legacy` and `virtio` (the devices), `memory` (the RAM file).

pub mod format;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use accel::{VcpuState, VmState};
use legacy::{I8042, I8042State, Rtc, RtcState, Serial, SerialState};
use memory::GuestRam;
use serde::{Deserialize, Serialize};
use virtio::MmioTransport;
use virtio::mmio::MmioState;

use crate::config::{BootConfig, DevicesConfig, MachineConfig};
use crate::vcpu::JobError;

/// Why a snapshot could not be made or restored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot file.
    #[error(transparent)]
    Format(#[from] format::Error),
    /// The VM must be paused first.
    #[error("the microVM must be paused to snapshot it")]
    NotPaused,
    /// The vCPU threads did not hand over their state.
    #[error("cannot read the vCPUs' state: {0}")]
    Vcpus(#[from] JobError),
    /// KVM refused to read or write some state.
    #[error("KVM: {0}")]
    Kvm(#[from] accel::Error),
    /// The memory file could not be written or opened.
    #[error("memory file {path}: {source}")]
    MemoryFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The memory file is not the snapshot's guest RAM.
    #[error("memory file {path}: {source}")]
    Memory {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: memory::FileError,
    },
    /// A device's state does not fit the restored machine.
    #[error("snapshot state does not fit the machine: {0}")]
    Mismatch(String),
}

/// Everything a running VM's snapshot reads, shared with the VM's threads.
#[derive(Debug)]
pub struct VmParts {
    /// KVM itself (the list of MSRs to save, read when a snapshot is made).
    pub kvm: Arc<accel::Kvm>,
    /// The KVM VM (clock, irqchips, PIT).
    pub vm: Arc<accel::Vm>,
    /// Guest RAM.
    pub ram: GuestRam,
    /// COM1.
    pub serial: Arc<Mutex<Serial>>,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS RTC.
    pub rtc: Arc<Mutex<Rtc>>,
    /// Whether the guest's ACPI interpreter has run.
    pub ospm_seen: Arc<AtomicBool>,
    /// Each virtio device's name and transport, in placement order.
    pub virtio: Vec<(String, Arc<Mutex<MmioTransport>>)>,
}

/// A snapshot's state: the VM's configuration and everything that is not guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// The kvmkit that wrote it.
    pub kvmkit_version: String,
    /// What the VM booted (for `GET /vm/config`; a restore loads no kernel).
    pub boot: BootConfig,
    /// Memory, vCPUs, ACPI, instruction assist.
    pub machine: MachineConfig,
    /// The virtio devices, as configured.
    pub devices: DevicesConfig,
    /// What KVM holds of the VM.
    pub vm: VmState,
    /// What KVM holds of each vCPU, in vCPU order.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: SerialState,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// The CMOS RTC.
    pub rtc: RtcState,
    /// Whether the guest's ACPI interpreter had run.
    pub ospm_seen: bool,
    /// Each virtio device's name and transport registers, in placement order.
    pub virtio: Vec<(String, MmioState)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl VmParts {
    /// Saves the VM (whose vCPUs `vcpus` must be paused) to `snapshot` and its RAM to `memory`.
    /// Its virtio devices stop while this runs, with nothing in flight, and start again after.
    pub fn create(
        &self,
        vcpus: &crate::vcpu::VcpuGroup,
        config: (&BootConfig, &MachineConfig, &DevicesConfig),
        snapshot: &Path,
        memory: &Path,
    ) -> Result<(), Error> {
        for (_, t) in &self.virtio {
            lock(t).suspend();
        }
        let result = self.write(vcpus, config, snapshot, memory);
        for (_, t) in &self.virtio {
            lock(t).resume();
        }
        result
    }

    fn write(
        &self,
        vcpus: &crate::vcpu::VcpuGroup,
        (boot, machine, devices): (&BootConfig, &MachineConfig, &DevicesConfig),
        snapshot: &Path,
        memory: &Path,
    ) -> Result<(), Error> {
        let msrs = self.kvm.msr_index_list()?.as_slice().to_vec();
        let vcpu_states = vcpus
            .on_each_paused(move |vcpu| vcpu.save_state(&msrs))?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        let state = SnapshotState {
            kvmkit_version: env!("CARGO_PKG_VERSION").to_owned(),
            boot: boot.clone(),
            machine: machine.clone(),
            devices: devices.clone(),
            vm: self.vm.save_state()?,
            vcpus: vcpu_states,
            serial: lock(&self.serial).state(),
            i8042: lock(&self.i8042).state(),
            rtc: lock(&self.rtc).state(),
            ospm_seen: self.ospm_seen.load(Ordering::SeqCst),
            virtio: self
                .virtio
                .iter()
                .map(|(name, t)| (name.clone(), lock(t).state()))
                .collect(),
        };
        let mem_error = |source| Error::MemoryFile {
            path: memory.display().to_string(),
            source,
        };
        let mut file = File::create(memory).map_err(mem_error)?;
        self.ram.write_to(&mut file).map_err(mem_error)?;
        file.sync_all().map_err(mem_error)?;
        format::save(snapshot, &state)?;
        Ok(())
    }

    /// Writes back the devices' and the VM's state of `state` (before any vCPU runs); the
    /// virtio devices start at their used rings.
    pub fn restore(&self, state: &SnapshotState) -> Result<(), Error> {
        if state.virtio.len() != self.virtio.len() {
            return Err(Error::Mismatch(format!(
                "{} virtio devices in the snapshot, {} configured",
                state.virtio.len(),
                self.virtio.len()
            )));
        }
        lock(&self.serial)
            .restore(&state.serial)
            .map_err(|e| Error::Mismatch(e.to_string()))?;
        lock(&self.i8042).restore(&state.i8042);
        lock(&self.rtc).restore(&state.rtc);
        self.ospm_seen.store(state.ospm_seen, Ordering::SeqCst);
        self.vm.restore_state(&state.vm)?;
        for ((name, saved), (_, t)) in state.virtio.iter().zip(&self.virtio) {
            let mut t = lock(t);
            t.restore(saved)
                .map_err(|e| Error::Mismatch(format!("{name}: {e}")))?;
            t.resume();
        }
        Ok(())
    }
}

/// Maps the guest RAM of a snapshot of `size` bytes from `memory`.
pub fn map_memory(memory: &Path, size: u64) -> Result<GuestRam, Error> {
    let path = memory.display().to_string();
    let file = File::open(memory).map_err(|source| Error::MemoryFile {
        path: path.clone(),
        source,
    })?;
    GuestRam::from_file(size, &file).map_err(|source| Error::Memory { path, source })
}
