//! Firecracker's JSON configuration objects, as its API (`PUT /boot-source`, `PUT /drives/{id}`...)
//! and its `--config-file` spell them: the same field names, unknown fields rejected. kvmkit reads
//! both through these types, and answers `GET /vm/config` with them.
//!
//! What Firecracker has and kvmkit does not (rate limiters, CPU templates, SMT, huge pages, vhost-user
//! drives, balloon, vsock, MMDS) parses, and is refused with a clear error by
//! the checks of [`super::resources`] unless it is absent, `null` or its default: a Firecracker
//! configuration that does not use them works unchanged.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `PUT /boot-source`: the kernel, its command line and an initrd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// The kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: PathBuf,
    /// The kernel command line (kvmkit's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// An initrd / initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// `huge_pages` of [`MachineConfiguration`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary pages.
    #[default]
    None,
    /// Transparent huge pages.
    Transparent,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Huge2M,
}

/// `PUT /machine-config` and `GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfiguration {
    /// Number of vCPUs.
    pub vcpu_count: u32,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (two threads per core).
    #[serde(default)]
    pub smt: bool,
    /// A Firecracker CPU template (`None` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<String>,
    /// Dirty-page tracking for diff snapshots.
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// The page kind that backs guest memory.
    #[serde(default)]
    pub huge_pages: HugePages,
}

impl Default for MachineConfiguration {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: super::DEFAULT_MEMORY >> 20,
            smt: false,
            cpu_template: None,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
        }
    }
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigurationUpdate {
    /// Number of vCPUs.
    pub vcpu_count: Option<u32>,
    /// Guest memory in MiB.
    pub mem_size_mib: Option<u64>,
    /// Simultaneous multithreading.
    pub smt: Option<bool>,
    /// A Firecracker CPU template.
    pub cpu_template: Option<String>,
    /// Dirty-page tracking.
    pub track_dirty_pages: Option<bool>,
    /// The page kind.
    pub huge_pages: Option<HugePages>,
}

impl MachineConfigurationUpdate {
    /// True if the update names no field.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with this update's fields applied.
    pub fn apply(&self, base: &MachineConfiguration) -> MachineConfiguration {
        MachineConfiguration {
            vcpu_count: self.vcpu_count.unwrap_or(base.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(base.mem_size_mib),
            smt: self.smt.unwrap_or(base.smt),
            cpu_template: self
                .cpu_template
                .clone()
                .or_else(|| base.cpu_template.clone()),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(base.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(base.huge_pages),
        }
    }
}

/// A rate limiter (kvmkit has none: only its absence is accepted). Kept as raw JSON so that
/// `GET /vm/config` shows what was given.
pub type RateLimiter = serde_json::Value;

/// `cache_type` of a [`Drive`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Firecracker's default: flushes are not forwarded to the host.
    #[default]
    Unsafe,
    /// Flushes reach the host's disk.
    Writeback,
}

/// `io_engine` of a [`Drive`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes on a worker thread.
    #[default]
    Sync,
    /// io_uring (kvmkit serves it with its synchronous engine).
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The drive's id (also the disk's virtio-blk serial, as in Firecracker).
    pub drive_id: String,
    /// The image file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Whether the guest boots from it (`root=` on the command line; it becomes `/dev/vda`).
    pub is_root_device: bool,
    /// Open the image read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_read_only: Option<bool>,
    /// The root partition's UUID (`root=PARTUUID=...`), for a root device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Whether guest flushes reach the host's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// Unsupported: only `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
    /// The I/O engine.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// vhost-user-blk socket: unsupported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net card on a host tap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The interface's id.
    pub iface_id: String,
    /// The host tap device.
    pub host_dev_name: String,
    /// The guest's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// Unsupported: only `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Unsupported: only `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
    /// Unsupported: only absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
}

/// `PUT /entropy`: the virtio-rng device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyDevice {
    /// Unsupported: only `null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`: the virtio socket device, its host side a Unix socket ("hybrid vsock").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Firecracker's old device name; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context ID (3 or more).
    pub guest_cid: u32,
    /// The Unix socket host clients connect to (`CONNECT <port>\n`); the guest's connections to
    /// host port P go to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// `PUT /logger`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// Where log lines go (a file or FIFO, appended to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// `Error`, `Warning`, `Info`, `Debug`, `Trace` or `Off` (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// Whether lines name their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Whether lines name the source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// A module filter: unsupported, only absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Where the metrics lines go (a file or FIFO, appended to).
    pub metrics_path: PathBuf,
}

/// `PUT /actions`' action types: Firecracker's, and kvmkit's own `SendPowerButton`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's i8042 keyboard.
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
    /// kvmkit: press the ACPI power button (the guest shuts down in order, if it handles it).
    SendPowerButton,
}

/// `PUT /actions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceActionInfo {
    /// What to do.
    pub action_type: ActionType,
}

/// `PATCH /vm`'s states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    /// Stop the vCPUs.
    Paused,
    /// Let them run again.
    Resumed,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    /// The state asked for.
    pub state: VmState,
}

/// The whole configuration: a `--config-file` and `GET /vm/config`, in Firecracker's layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    /// Unsupported: only `null`.
    #[serde(default)]
    pub balloon: Option<serde_json::Value>,
    /// The disks.
    #[serde(default)]
    pub drives: Vec<Drive>,
    /// The kernel.
    #[serde(rename = "boot-source", default)]
    pub boot_source: Option<BootSource>,
    /// Unsupported: only `null`.
    #[serde(rename = "cpu-config", default)]
    pub cpu_config: Option<serde_json::Value>,
    /// The logger.
    #[serde(default)]
    pub logger: Option<Logger>,
    /// vCPUs and memory.
    #[serde(rename = "machine-config", default)]
    pub machine_config: Option<MachineConfiguration>,
    /// The metrics file.
    #[serde(default)]
    pub metrics: Option<Metrics>,
    /// Unsupported: only `null`.
    #[serde(rename = "mmds-config", default)]
    pub mmds_config: Option<serde_json::Value>,
    /// The network cards.
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    /// The virtio socket device.
    #[serde(default)]
    pub vsock: Option<Vsock>,
    /// The entropy device.
    #[serde(default)]
    pub entropy: Option<EntropyDevice>,
    /// Unsupported: only absent or empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmem: Vec<serde_json::Value>,
    /// Unsupported: only `null`.
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub memory_hotplug: Option<serde_json::Value>,
}

/// `snapshot_type` of [`SnapshotCreateParams`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: Option<SnapshotType>,
    /// Where the state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
    /// Deprecated in Firecracker; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `backend_type` of [`MemBackend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped.
    File,
    /// A userfaultfd page server (unsupported).
    Uffd,
}

/// Where a restored VM's memory comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// File (or Uffd, unsupported).
    pub backend_type: MemBackendType,
    /// The memory file.
    pub backend_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// Deprecated form of `mem_backend` (a File).
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// The memory.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated form of `track_dirty_pages`.
    #[serde(default)]
    pub enable_diff_snapshots: Option<bool>,
    /// Log dirty pages in the restored VM (for diff snapshots of it); a VM that logged them when
    /// it was snapshotted logs them again whatever this says.
    #[serde(default)]
    pub track_dirty_pages: Option<bool>,
    /// Run the VM at once (else it stays paused).
    #[serde(default)]
    pub resume_vm: Option<bool>,
    /// Unsupported: only absent or empty.
    #[serde(default)]
    pub network_overrides: Option<Vec<serde_json::Value>>,
    /// Unsupported: only absent.
    #[serde(default)]
    pub vsock_override: Option<serde_json::Value>,
    /// Unsupported: only absent or false.
    #[serde(default)]
    pub clock_realtime: Option<bool>,
}

impl SnapshotLoadParams {
    /// Whether the load asks for dirty-page tracking (either field's name).
    pub fn tracks_dirty_pages(&self) -> bool {
        self.enable_diff_snapshots == Some(true) || self.track_dirty_pages == Some(true)
    }

    /// The memory file, or why these parameters cannot be used.
    pub fn memory_file(&self) -> Result<&std::path::Path, String> {
        let unsupported = |what: &str| Err(format!("{what} is not supported by kvmkit"));
        if self
            .network_overrides
            .as_ref()
            .is_some_and(|n| !n.is_empty())
        {
            return unsupported("network_overrides");
        }
        if self.vsock_override.is_some() {
            return unsupported("vsock_override");
        }
        if self.clock_realtime == Some(true) {
            return unsupported("clock_realtime");
        }
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(path), None) => Ok(path),
            (None, Some(b)) if b.backend_type == MemBackendType::File => Ok(&b.backend_path),
            (None, Some(_)) => unsupported("the Uffd memory backend"),
            (None, None) => {
                Err("missing field: either `mem_backend` or `mem_file_path` is required".into())
            }
            (Some(_), Some(_)) => Err(
                "too many fields: either `mem_backend` or `mem_file_path` exclusively is required"
                    .into(),
            ),
        }
    }
}
