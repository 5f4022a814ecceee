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
//!     Full: all of it, into a new file
//!     Diff: pages written since the last snapshot
//!           (KVM's log + the VMM's bitmap), in place
//!   state ──► format::save                            vCPUs started (or left paused)
//!   virtio devices resumed
//! ```
//!
//! [`format`](mod@format) is the file. The parts come from the layers that own them: `accel` (what KVM holds),
//! `legacy` and `virtio` (the devices), `memory` (the RAM file).

pub mod format;

use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use accel::{VcpuState, VmState};
use legacy::{I8042, I8042State, Rtc, RtcState, Serial, SerialState};
use memory::{DirtyPages, GuestRam, PAGE_SIZE};
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
    /// The VM to restore into could not be finished.
    #[error("cannot set up the VM: {0}")]
    Setup(String),
    /// A diff snapshot of a VM that does not log dirty pages.
    #[error("a diff snapshot needs dirty-page tracking (track_dirty_pages), which this VM lacks")]
    NotTracked,
    /// A diff cannot go into this file.
    #[error(
        "memory file {path} is {found} bytes: a diff goes into a new file, or over the memory \
         file of the snapshot it follows (or a copy of it), which is the RAM's {expected} bytes"
    )]
    DiffTarget {
        /// The file.
        path: String,
        /// The RAM's size.
        expected: u64,
        /// The file's.
        found: u64,
    },
    /// The pages could not be written.
    #[error("memory file {path}: {source}")]
    Diff {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: memory::DirtyWriteError,
    },
}

/// What a snapshot's memory file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// All of guest RAM, in a new file (written beside it, then renamed over it: a VM restored
    /// from the old file keeps its pages).
    Full,
    /// Only the pages the guest or the devices wrote since the last snapshot (or since the VM
    /// started), written in place: over the memory file of that snapshot (or a copy of it) the
    /// file becomes the RAM as it is now; in a new file, it is the diff alone, with holes
    /// elsewhere, for Firecracker's `rebase-snap` or a later merge. Needs dirty-page tracking.
    Diff,
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
    /// Saves the VM (whose vCPUs `vcpus` must be paused) to `snapshot` and its RAM, as `kind`
    /// says, to `memory`; returns the pages of RAM written. Its virtio devices stop while this
    /// runs, with nothing in flight, and start again after. With dirty-page tracking, the log
    /// restarts from here, whatever the kind, unless the snapshot fails.
    pub fn create(
        &self,
        vcpus: &crate::vcpu::VcpuGroup,
        config: (&BootConfig, &MachineConfig, &DevicesConfig),
        kind: Kind,
        snapshot: &Path,
        memory: &Path,
    ) -> Result<u64, Error> {
        if kind == Kind::Diff && !config.1.track_dirty_pages {
            return Err(Error::NotTracked);
        }
        for (_, t) in &self.virtio {
            lock(t).suspend();
        }
        let result = self.write(vcpus, config, kind, snapshot, memory);
        for (_, t) in &self.virtio {
            lock(t).resume();
        }
        result
    }

    fn write(
        &self,
        vcpus: &crate::vcpu::VcpuGroup,
        (boot, machine, devices): (&BootConfig, &MachineConfig, &DevicesConfig),
        kind: Kind,
        snapshot: &Path,
        memory: &Path,
    ) -> Result<u64, Error> {
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
        let dirty = if machine.track_dirty_pages {
            let mut pages = DirtyPages::from_bitmaps(self.vm.take_dirty_log()?);
            pages.union(&self.ram.take_vmm_dirty());
            Some(pages)
        } else {
            None
        };
        let written = match (kind, &dirty) {
            (Kind::Diff, Some(pages)) => self.write_diff(memory, pages),
            (Kind::Diff, None) => Err(Error::NotTracked),
            (Kind::Full, _) => self.write_full(memory),
        }
        .and_then(|n| {
            format::save(snapshot, &state)
                .map(|()| n)
                .map_err(Error::from)
        });
        if written.is_err()
            && let Some(pages) = &dirty
        {
            // The next diff must still hold these pages.
            self.ram.mark_dirty(pages);
        }
        written
    }

    /// Writes all of RAM to a new file beside `memory`, then renames it to `memory`.
    fn write_full(&self, memory: &Path) -> Result<u64, Error> {
        let mem_error = |source| Error::MemoryFile {
            path: memory.display().to_string(),
            source,
        };
        let mut name = memory.file_name().unwrap_or_default().to_owned();
        name.push(format!(".kvmkit-{}.tmp", std::process::id()));
        let temp = memory.with_file_name(name);
        let result = File::create(&temp)
            .and_then(|mut file| {
                self.ram.write_to(&mut file)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temp, memory));
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result.map_err(mem_error)?;
        Ok(self.ram.size() / PAGE_SIZE)
    }

    /// Writes the pages `pages` into `memory` in place (a new file if there is none).
    fn write_diff(&self, memory: &Path, pages: &DirtyPages) -> Result<u64, Error> {
        let path = || memory.display().to_string();
        let mem_error = |source| Error::MemoryFile {
            path: path(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(memory)
            .map_err(mem_error)?;
        let found = file.metadata().map_err(mem_error)?.len();
        if found != 0 && found != self.ram.size() {
            return Err(Error::DiffTarget {
                path: path(),
                expected: self.ram.size(),
                found,
            });
        }
        let bytes = self
            .ram
            .write_dirty_to(&file, pages)
            .map_err(|source| Error::Diff {
                path: path(),
                source,
            })?;
        file.sync_all().map_err(mem_error)?;
        Ok(bytes / PAGE_SIZE)
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
