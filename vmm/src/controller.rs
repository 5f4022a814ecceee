//! The VMM's state as its control plane sees it: the configuration being assembled before the VM
//! starts, then the running (or paused) VM. The API server calls it from its connection threads;
//! the main thread starts the VM through it (command line, config file) or waits until the API
//! does (`InstanceStart`), then waits for the VM's end.
//!
//! ```text
//!   Not started ──InstanceStart──► Running ◄──Resumed── Paused
//!     PUT /boot-source, /drives...    └──────Paused──────►┘
//!                                     (the VM ends) ──► Ended
//! ```

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;

use crate::config::VmConfig;
use crate::config::firecracker::{
    BootSource, Drive, EntropyDevice, Logger, MachineConfiguration, MachineConfigurationUpdate,
    Metrics, NetworkInterface, SnapshotCreateParams, SnapshotLoadParams, SnapshotType, VmResources,
    Vsock,
};
use crate::config::resources;
use crate::launch::{LaunchError, Launched, launch};
use crate::metrics::{Group, MetricsFile, PERIOD, Ticker};
use crate::run::{ControlError, VmHandle};
use crate::signals::StopSignals;
use crate::timeline::Timeline;

/// The name `GET /` gives (Firecracker's field, kvmkit's value).
pub const APP_NAME: &str = "kvmkit";

/// Why the control plane refused a request. The messages are Firecracker's where it has one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration change once the VM runs.
    #[error("The requested operation is not supported after starting the microVM.")]
    AfterStart,
    /// A VM operation before it runs.
    #[error("The requested operation is not supported before starting the microVM.")]
    BeforeStart,
    /// The VM has ended.
    #[error("The microVM has ended.")]
    Ended,
    /// A configuration object kvmkit cannot use.
    #[error(transparent)]
    Config(#[from] resources::Error),
    /// The VM could not be built or started.
    #[error("Start microvm error: {0}")]
    Launch(#[from] LaunchError),
    /// The running VM refused.
    #[error(transparent)]
    Control(#[from] ControlError),
    /// Paused when paused, resumed when running.
    #[error("The microVM is already {0}.")]
    Already(&'static str),
    /// The logger could not be set up.
    #[error("Logger error: {0}")]
    Logger(#[from] crate::logger::Error),
    /// Metrics could not be set up or written.
    #[error("Metrics error: {0}")]
    Metrics(String),
    /// A snapshot could not be made.
    #[error("Create snapshot error: {0}")]
    CreateSnapshot(String),
    /// A snapshot could not be loaded.
    #[error("Load snapshot error: {0}")]
    LoadSnapshot(String),
    /// A snapshot's VM could not be restored.
    #[error("Load snapshot error: {0}")]
    Restore(LaunchError),
}

/// Where the VM is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being configured.
    NotStarted,
    /// Running.
    Running,
    /// Its vCPUs are paused.
    Paused,
    /// It has ended.
    Ended,
}

impl Phase {
    /// The state as `GET /` names it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::NotStarted => "Not started",
            Phase::Running => "Running",
            Phase::Paused => "Paused",
            Phase::Ended => "Ended",
        }
    }
}

/// `GET /`: Firecracker's `InstanceInfo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// The instance id (`--id`).
    pub id: String,
    /// `Not started`, `Running`, `Paused` (or kvmkit's `Ended`).
    pub state: &'static str,
    /// kvmkit's version.
    pub vmm_version: &'static str,
    /// `kvmkit`.
    pub app_name: &'static str,
}

struct State {
    phase: Phase,
    resources: VmResources,
    /// The running VM's configuration.
    config: Option<VmConfig>,
    vm: Option<Arc<VmHandle>>,
    /// A VM the API started, for the main thread to take.
    started: Option<Launched>,
    metrics: Option<MetricsFile>,
    ticker: Option<Ticker>,
    requests: u64,
    failed_requests: u64,
}

/// The control plane's view of one VM.
pub struct Controller {
    id: String,
    base: VmConfig,
    timeline: Arc<Timeline>,
    state: Mutex<State>,
    changed: Condvar,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("id", &self.id)
            .field("phase", &self.lock().phase)
            .finish()
    }
}

impl Controller {
    /// A VM not started yet. `base` gives what Firecracker's configuration has no place for (serial
    /// console, ACPI, instruction assist, boot timeline); `timeline` records its boot.
    pub fn new(id: &str, base: VmConfig, timeline: Arc<Timeline>) -> Arc<Self> {
        Arc::new(Self {
            id: id.to_owned(),
            base,
            timeline,
            state: Mutex::new(State {
                phase: Phase::NotStarted,
                resources: VmResources::default(),
                config: None,
                vm: None,
                started: None,
                metrics: None,
                ticker: None,
                requests: 0,
                failed_requests: 0,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Locks the state for a configuration change: only before the VM starts.
    fn configuring(&self) -> Result<MutexGuard<'_, State>, Error> {
        let state = self.lock();
        match state.phase {
            Phase::NotStarted => Ok(state),
            Phase::Ended => Err(Error::Ended),
            _ => Err(Error::AfterStart),
        }
    }

    /// Locks the state for an operation on the VM: only while it runs (or is paused).
    fn running(&self) -> Result<(MutexGuard<'_, State>, Arc<VmHandle>), Error> {
        let state = self.lock();
        match (state.phase, &state.vm) {
            (Phase::Running | Phase::Paused, Some(vm)) => {
                let vm = vm.clone();
                Ok((state, vm))
            }
            (Phase::Ended, _) => Err(Error::Ended),
            _ => Err(Error::BeforeStart),
        }
    }

    /// Counts an API request and whether it failed (for the metrics).
    pub fn count_request(&self, failed: bool) {
        let mut state = self.lock();
        state.requests += 1;
        if failed {
            state.failed_requests += 1;
        }
    }

    /// `GET /`.
    pub fn info(&self) -> InstanceInfo {
        InstanceInfo {
            id: self.id.clone(),
            state: self.lock().phase.name(),
            vmm_version: env!("CARGO_PKG_VERSION"),
            app_name: APP_NAME,
        }
    }

    /// Where the VM is in its life.
    pub fn phase(&self) -> Phase {
        self.lock().phase
    }

    /// `GET /machine-config`.
    pub fn machine_config(&self) -> MachineConfiguration {
        self.lock()
            .resources
            .machine_config
            .clone()
            .unwrap_or_default()
    }

    /// `GET /vm/config`: the whole configuration, in Firecracker's layout.
    pub fn vm_config(&self) -> VmResources {
        self.lock().resources.clone()
    }

    /// `GET /vm/boot-timeline`: the boot's timeline as JSON.
    pub fn boot_timeline(&self) -> String {
        self.timeline.json()
    }

    /// `PUT /boot-source`.
    pub fn put_boot_source(&self, boot: BootSource) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::check_boot_source(&boot)?;
        state.resources.boot_source = Some(boot);
        Ok(())
    }

    /// `PUT /machine-config`.
    pub fn put_machine_config(&self, machine: MachineConfiguration) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::machine(&machine)?;
        state.resources.machine_config = Some(machine);
        Ok(())
    }

    /// `PATCH /machine-config`.
    pub fn patch_machine_config(&self, update: &MachineConfigurationUpdate) -> Result<(), Error> {
        let mut state = self.configuring()?;
        let machine = update.apply(&state.resources.machine_config.clone().unwrap_or_default());
        resources::machine(&machine)?;
        state.resources.machine_config = Some(machine);
        Ok(())
    }

    /// `PUT /drives/{id}`: adds the drive, or replaces the one with its id.
    pub fn put_drive(&self, drive: Drive) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::drive(&drive)?;
        let mut drives = state.resources.drives.clone();
        match drives.iter_mut().find(|d| d.drive_id == drive.drive_id) {
            Some(d) => *d = drive,
            None => drives.push(drive),
        }
        resources::check_together(&drives, &state.resources.network_interfaces)?;
        state.resources.drives = drives;
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: adds the card, or replaces the one with its id.
    pub fn put_network_interface(&self, net: NetworkInterface) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::network_interface(&net)?;
        let mut nets = state.resources.network_interfaces.clone();
        match nets.iter_mut().find(|n| n.iface_id == net.iface_id) {
            Some(n) => *n = net,
            None => nets.push(net),
        }
        resources::check_together(&state.resources.drives, &nets)?;
        state.resources.network_interfaces = nets;
        Ok(())
    }

    /// `PUT /entropy`.
    pub fn put_entropy(&self, entropy: EntropyDevice) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::entropy(&entropy)?;
        state.resources.entropy = Some(entropy);
        Ok(())
    }

    /// `PUT /vsock`.
    pub fn put_vsock(&self, vsock: Vsock) -> Result<(), Error> {
        let mut state = self.configuring()?;
        resources::vsock(&vsock)?;
        state.resources.vsock = Some(vsock);
        Ok(())
    }

    /// `PUT /logger`: takes effect at once.
    pub fn put_logger(&self, logger: Logger) -> Result<(), Error> {
        let mut state = self.configuring()?;
        apply_logger(&logger)?;
        state.resources.logger = Some(logger);
        Ok(())
    }

    /// `PUT /metrics`: opens the file; lines follow every minute and on `FlushMetrics`.
    pub fn put_metrics(self: &Arc<Self>, metrics: Metrics) -> Result<(), Error> {
        let mut state = self.configuring()?;
        if state.metrics.is_some() {
            return Err(Error::Metrics(
                "Reinitialization of metrics not allowed.".into(),
            ));
        }
        let file = MetricsFile::open(&metrics.metrics_path).map_err(|e| {
            Error::Metrics(format!(
                "cannot open {}: {e}",
                metrics.metrics_path.display()
            ))
        })?;
        let ticker = Ticker::start(Arc::downgrade(self), PERIOD, |c: &Controller| {
            if let Err(e) = c.write_metrics() {
                log::warn!("{e}");
            }
        })
        .map_err(|e| Error::Metrics(e.to_string()))?;
        state.metrics = Some(file);
        state.ticker = Some(ticker);
        state.resources.metrics = Some(metrics);
        Ok(())
    }

    /// A whole configuration at once (a `--config-file`): checked as the API would check each
    /// object, logger and metrics applied.
    pub fn configure(self: &Arc<Self>, r: VmResources) -> Result<(), Error> {
        let VmResources {
            boot_source,
            machine_config,
            drives,
            network_interfaces,
            entropy,
            vsock,
            logger,
            metrics,
            ..
        } = r.clone();
        if let Some(logger) = logger {
            self.put_logger(logger)?;
        }
        if let Some(metrics) = metrics {
            self.put_metrics(metrics)?;
        }
        if let Some(machine) = machine_config {
            self.put_machine_config(machine)?;
        }
        if let Some(boot) = boot_source {
            self.put_boot_source(boot)?;
        }
        for drive in drives {
            self.put_drive(drive)?;
        }
        for net in network_interfaces {
            self.put_network_interface(net)?;
        }
        if let Some(entropy) = entropy {
            self.put_entropy(entropy)?;
        }
        if let Some(vsock) = vsock {
            self.put_vsock(vsock)?;
        }
        // The sections kvmkit lacks: refused unless empty (checked with the rest).
        let mut state = self.configuring()?;
        state.resources.balloon = r.balloon;
        state.resources.cpu_config = r.cpu_config;
        state.resources.mmds_config = r.mmds_config;
        state.resources.pmem = r.pmem;
        state.resources.memory_hotplug = r.memory_hotplug;
        state.resources.vm_config(&self.base)?;
        Ok(())
    }

    /// Starts the VM: `config` if given (the command line's), else the configuration assembled
    /// through the API or a config file. Returns it for the caller to wait on.
    pub fn start_now(&self, config: Option<&VmConfig>) -> Result<Launched, Error> {
        let mut state = self.configuring()?;
        let config = match config {
            Some(c) => {
                state.resources = VmResources::describe(c);
                c.clone()
            }
            None => state.resources.vm_config(&self.base)?,
        };
        let launched = launch(&config, self.timeline.clone())?;
        state.vm = Some(launched.running.handle().clone());
        state.config = Some(config);
        state.phase = Phase::Running;
        self.changed.notify_all();
        Ok(launched)
    }

    /// Restores the VM `snapshot` (and its RAM in `memory`) saved, running unless `resume` is false
    /// (then it starts paused), logging dirty pages if it did or `track_dirty_pages`. Returns it
    /// for the caller to wait on.
    pub fn restore_now(
        &self,
        snapshot: &std::path::Path,
        memory: &std::path::Path,
        resume: bool,
        track_dirty_pages: bool,
    ) -> Result<Launched, Error> {
        let mut state = self.configuring()?;
        if state.resources.boot_source.is_some() {
            return Err(Error::LoadSnapshot(
                "Loading a microVM snapshot not allowed after configuring boot-specific resources."
                    .into(),
            ));
        }
        let (launched, config) = crate::launch::launch_restore(
            snapshot,
            memory,
            &self.base,
            self.timeline.clone(),
            resume,
            track_dirty_pages,
        )
        .map_err(Error::Restore)?;
        state.resources = VmResources::describe(&config);
        state.vm = Some(launched.running.handle().clone());
        state.config = Some(config);
        state.phase = if resume {
            Phase::Running
        } else {
            Phase::Paused
        };
        log::info!("VM restored from {}", snapshot.display());
        self.changed.notify_all();
        Ok(launched)
    }

    /// `PUT /snapshot/load`: restores a VM for the main thread to wait on.
    pub fn snapshot_load(&self, params: &SnapshotLoadParams) -> Result<(), Error> {
        let memory = params.memory_file().map_err(Error::LoadSnapshot)?;
        let launched = self.restore_now(
            &params.snapshot_path,
            memory,
            params.resume_vm.unwrap_or(false),
            params.tracks_dirty_pages(),
        )?;
        self.lock().started = Some(launched);
        self.changed.notify_all();
        Ok(())
    }

    /// `PUT /snapshot/create`: saves the paused VM.
    pub fn snapshot_create(&self, params: &SnapshotCreateParams) -> Result<(), Error> {
        let (state, vm) = self.running()?;
        if state.phase != Phase::Paused {
            return Err(Error::CreateSnapshot(
                "the microVM must be paused first (PATCH /vm {\"state\": \"Paused\"})".into(),
            ));
        }
        let Some(config) = state.config.clone() else {
            return Err(Error::BeforeStart);
        };
        let kind = match params.snapshot_type {
            Some(SnapshotType::Diff) if !config.machine.track_dirty_pages => {
                return Err(Error::CreateSnapshot(
                    "Diff snapshots need dirty-page tracking: set track_dirty_pages in \
                     /machine-config (or on /snapshot/load), or --memory ...,track_dirty_pages=on"
                        .into(),
                ));
            }
            Some(SnapshotType::Diff) => crate::snapshot::Kind::Diff,
            _ => crate::snapshot::Kind::Full,
        };
        let started = std::time::Instant::now();
        let pages = vm
            .snapshot(&config, kind, &params.snapshot_path, &params.mem_file_path)
            .map_err(|e| Error::CreateSnapshot(e.to_string()))?;
        log::info!(
            "{kind:?} snapshot {} written in {:.1} ms ({pages} pages of memory)",
            params.snapshot_path.display(),
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(())
    }

    /// `PUT /actions` `InstanceStart`: starts the VM for the main thread to wait on.
    pub fn instance_start(&self) -> Result<(), Error> {
        let launched = self.start_now(None)?;
        self.lock().started = Some(launched);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits until the API starts the VM, and takes it; `None` if a stop signal (its number) came
    /// first.
    pub fn wait_for_start(&self, signals: &StopSignals) -> Result<Launched, i32> {
        let mut state = self.lock();
        loop {
            if let Some(launched) = state.started.take() {
                return Ok(launched);
            }
            if let Some(sig) = signals.received() {
                return Err(sig);
            }
            state = self
                .changed
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Marks the VM ended (the main thread saw it end).
    pub fn ended(&self) {
        let ticker = {
            let mut state = self.lock();
            state.phase = Phase::Ended;
            state.vm = None;
            state.ticker.take()
        };
        // Outside the lock: the ticker's thread may be waiting for it.
        drop(ticker);
    }

    /// `PATCH /vm` `Paused`: returns once no vCPU runs the guest.
    pub fn pause(&self) -> Result<(), Error> {
        let (mut state, vm) = self.running()?;
        if state.phase == Phase::Paused {
            return Err(Error::Already("paused"));
        }
        vm.pause();
        state.phase = Phase::Paused;
        log::info!("VM paused");
        Ok(())
    }

    /// `PATCH /vm` `Resumed`.
    pub fn resume(&self) -> Result<(), Error> {
        let (mut state, vm) = self.running()?;
        if state.phase == Phase::Running {
            return Err(Error::Already("running"));
        }
        vm.resume();
        state.phase = Phase::Running;
        log::info!("VM resumed");
        Ok(())
    }

    /// `PUT /actions` `SendCtrlAltDel`.
    pub fn ctrl_alt_del(&self) -> Result<(), Error> {
        let (_state, vm) = self.running()?;
        Ok(vm.ctrl_alt_del()?)
    }

    /// `PUT /actions` `SendPowerButton` (kvmkit's): presses the ACPI power button.
    pub fn power_button(&self) -> Result<(), Error> {
        let (_state, vm) = self.running()?;
        Ok(vm.press_power_button()?)
    }

    /// `PUT /actions` `FlushMetrics`.
    pub fn flush_metrics(&self) -> Result<(), Error> {
        drop(self.running()?);
        self.write_metrics()
    }

    /// Writes a metrics line now, if there is a metrics file.
    fn write_metrics(&self) -> Result<(), Error> {
        let mut state = self.lock();
        let mut groups: Vec<Group> = vec![(
            "api_server".to_owned(),
            vec![
                ("requests_count", state.requests),
                ("requests_fails", state.failed_requests),
            ],
        )];
        if let Some(vm) = &state.vm {
            groups.extend(vm.counters());
        }
        let Some(file) = state.metrics.as_mut() else {
            return Err(Error::Metrics("no metrics file: PUT /metrics first".into()));
        };
        file.write(&groups)
            .map_err(|e| Error::Metrics(format!("cannot write: {e}")))
    }
}

fn apply_logger(logger: &Logger) -> Result<(), Error> {
    resources::check_logger(logger)?;
    let level = logger
        .level
        .as_deref()
        .map(crate::logger::parse_level)
        .transpose()?;
    crate::logger::configure(&crate::logger::Settings {
        path: logger.log_path.as_deref(),
        level,
        show_level: logger.show_level,
        show_origin: logger.show_log_origin,
    })?;
    Ok(())
}
