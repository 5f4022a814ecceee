//! Which paths the ruleset names: those the configuration gives, the host files every VM needs,
//! and the user's `--landlock-rules`.

use std::path::{Path, PathBuf};

use super::{Permission, Rule};
use crate::config::devices::ConsoleMode;
use crate::config::firecracker::VmResources;
use crate::config::{SerialMode, VmConfig};

/// Host files kvmkit opens for every VM: KVM, the host's memory size (to refuse a guest larger than
/// the host), and its own page map (to skip untouched RAM in a snapshot).
const ALWAYS: [(&str, Permission); 4] = [
    ("/dev/kvm", Permission::ReadWrite),
    ("/proc/meminfo", Permission::Read),
    ("/proc/self/maps", Permission::Read),
    ("/proc/self/pagemap", Permission::Read),
];

/// The TUN/TAP device, for virtio-net.
const TUN: &str = "/dev/net/tun";

/// The rules for one run of kvmkit, built up from what it was asked to do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    rules: Vec<Rule>,
}

impl Plan {
    /// The host files every VM needs, and the user's `extra` rules (whose paths must exist).
    pub fn new(extra: &[Rule]) -> Self {
        let mut plan = Self::default();
        for (path, permission) in ALWAYS {
            plan.existing(Path::new(path), permission);
        }
        plan.rules.extend_from_slice(extra);
        plan
    }

    /// The rules so far.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Adds `path` if it exists (a missing kernel or disk is reported, as without Landlock, when
    /// kvmkit opens it).
    fn existing(&mut self, path: &Path, permission: Permission) {
        if path.exists() {
            self.rules.push(Rule {
                path: path.to_owned(),
                access: permission,
            });
        }
    }

    /// Adds a file kvmkit appends to, creating it first if there is none (Landlock would otherwise
    /// need the right to create any file in its directory).
    fn output(&mut self, path: &Path) {
        if !path.exists() {
            // An error here (a missing directory, say) is reported when kvmkit opens it for real.
            let _ = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path);
        }
        self.existing(path, Permission::ReadWrite);
    }

    /// What `config` opens: kernel, initramfs, disks (read-only ones for reading), the TUN device
    /// for its network cards, its serial and console files, a console's pseudo-terminal, the
    /// vsock device's socket.
    pub fn vm(&mut self, config: &VmConfig) {
        self.existing(&config.boot.kernel, Permission::Read);
        if let Some(initramfs) = &config.boot.initramfs {
            self.existing(initramfs, Permission::Read);
        }
        for disk in &config.devices.disks {
            let permission = if disk.read_only {
                Permission::Read
            } else {
                Permission::ReadWrite
            };
            self.existing(&disk.path, permission);
        }
        if !config.devices.nets.is_empty() {
            self.existing(Path::new(TUN), Permission::ReadWrite);
        }
        match &config.serial {
            SerialMode::File(path) => self.output(path),
            SerialMode::Socket(path) => self.socket(path),
            SerialMode::Pty => self.pty(),
            SerialMode::Stdio | SerialMode::Off => {}
        }
        match &config.devices.console {
            Some(ConsoleMode::File(path)) => self.output(path),
            Some(ConsoleMode::Socket(path)) => self.socket(path),
            Some(ConsoleMode::Pty) => self.pty(),
            Some(ConsoleMode::Tty | ConsoleMode::Null) | None => {}
        }
        // The vsock device's socket is made; the guest's connections to `<socket>_P` are
        // connects, which Landlock (up to ABI 7) does not restrict.
        if let Some(vsock) = &config.devices.vsock {
            self.socket(&vsock.socket);
        }
    }

    /// A socket kvmkit makes at `path`: making it needs a right on its directory (a stale socket
    /// there cannot be removed under Landlock: docs/security.md).
    fn socket(&mut self, path: &Path) {
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        self.existing(dir, Permission::MakeSocket);
    }

    /// A new pseudo-terminal: the multiplexer, and the terminal it makes.
    fn pty(&mut self) {
        self.existing(Path::new("/dev/ptmx"), Permission::ReadWrite);
        self.existing(Path::new("/dev/pts"), Permission::ReadWrite);
    }

    /// What a config file adds to `base`: its VM, and its log and metrics files.
    pub fn resources(&mut self, r: &VmResources, base: &VmConfig) {
        // Resources that do not make a VM are refused later, with their own error.
        if let Ok(config) = r.vm_config(base) {
            self.vm(&config);
        }
        if let Some(path) = r.logger.as_ref().and_then(|l| l.log_path.as_ref()) {
            self.output(path);
        }
        if let Some(metrics) = &r.metrics {
            self.output(&metrics.metrics_path);
        }
    }

    /// A snapshot to restore: its state file and its memory file, both read.
    pub fn restore(&mut self, snapshot: &Path, memory: &Path) {
        self.existing(snapshot, Permission::Read);
        self.existing(memory, Permission::Read);
    }

    /// The API can add network cards before the VM starts: the TUN device.
    pub fn api(&mut self) {
        self.existing(Path::new(TUN), Permission::ReadWrite);
    }

    /// The paths, for messages and tests.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.rules.iter().map(|r| r.path.clone()).collect()
    }
}
