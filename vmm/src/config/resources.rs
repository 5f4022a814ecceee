//! Firecracker's configuration objects ([`super::firecracker`]) turned into a [`VmConfig`], each
//! checked the way Firecracker checks it, and a [`VmConfig`] described in that layout for
//! `GET /vm/config`.

use std::path::Path;

use virtio_devices::net::MacAddr;
use virtio_devices::{BlockConfig, NetConfig, RngConfig, VsockConfig};

use super::firecracker::{
    BootSource, Drive, EntropyDevice, HugePages, Logger, MachineConfiguration, NetworkInterface,
    VmResources, Vsock,
};
use super::{BootConfig, DEFAULT_CMDLINE, DevicesConfig, VmConfig, devices::MAX_SERIAL_LEN};

/// The most vCPUs a configuration may ask for.
pub const MAX_VCPUS: u32 = machine::mptable::MAX_CPUS;

/// Why a Firecracker-style configuration cannot be used. The messages follow Firecracker's where it
/// has one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A vsock device that cannot be.
    #[error("Vsock error: {0}")]
    Vsock(String),
    /// A feature Firecracker has and kvmkit does not.
    #[error("{0} is not supported by kvmkit")]
    Unsupported(String),
    /// vCPU count out of range.
    #[error("Machine config error: the number of vCPUs must be from 1 to {MAX_VCPUS}, not {0}")]
    Vcpus(u32),
    /// Memory size out of range.
    #[error(
        "Machine config error: the memory size (MiB) must be at least 1 and fit in 64 bits, not {0}"
    )]
    Memory(u64),
    /// A file the configuration names cannot be opened.
    #[error("{what} error: the file {path} cannot be opened: {reason}")]
    File {
        /// Which object names it ("Boot source", "Drive").
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A drive without a file.
    #[error("Drive error: drive {0} has no path_on_host")]
    NoPath(String),
    /// Two root drives.
    #[error("A root block device already exists!")]
    SecondRoot,
    /// A `partuuid` on a drive that is not the root device, or one with odd characters.
    #[error("Drive error: invalid partuuid '{0}'")]
    PartUuid(String),
    /// A guest MAC that does not parse, or is multicast.
    #[error("Network interface error: invalid guest_mac '{0}': {1}")]
    Mac(String, String),
    /// Two network cards with one MAC.
    #[error("The guest MAC address {0} is already in use.")]
    MacInUse(String),
    /// Two network cards on one tap.
    #[error("Network interface error: the tap {0} is already used by another interface")]
    TapInUse(String),
    /// A tap that does not exist.
    #[error("Network interface error: no tap device named '{0}' exists")]
    NoTap(String),
    /// A tap name the kernel would not take.
    #[error("Network interface error: invalid host_dev_name '{0}'")]
    TapName(String),
    /// A log level that does not parse.
    #[error("Logger error: {0}")]
    Logger(String),
    /// Starting without a kernel.
    #[error("Start microvm error: Cannot start microvm without kernel configuration.")]
    NoKernel,
}

/// Why a config file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// It cannot be read.
    #[error("config file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not the JSON expected; `field` says where.
    #[error("config file {path}: {field}: {message}")]
    Json {
        /// The file.
        path: String,
        /// Where in the document (`drives[0].is_root_device`, `.` for the top).
        field: String,
        /// What is wrong there, with the line and column.
        message: String,
    },
}

/// Reads a `--config-file`: Firecracker's layout, unknown fields refused with their place named.
pub fn from_file(path: &Path) -> Result<VmResources, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let de = &mut serde_json::Deserializer::from_str(&text);
    serde_path_to_error::deserialize(de).map_err(|e| FileError::Json {
        path: path.display().to_string(),
        field: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

fn unsupported(what: &str) -> Error {
    Error::Unsupported(what.to_owned())
}

/// Checks that `path` is a regular file kvmkit can open. A FIFO or device is refused before it is
/// opened: opening a FIFO would hold the API connection until something writes to it.
fn readable(what: &'static str, path: &Path) -> Result<(), Error> {
    let error = |reason: String| Error::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| error(e.to_string()))?;
    if !meta.is_file() {
        return Err(error("not a regular file".to_owned()));
    }
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| error(e.to_string()))
}

/// Checks `PUT /boot-source`: the kernel and initrd can be opened.
pub fn check_boot_source(b: &BootSource) -> Result<(), Error> {
    readable("Boot source", &b.kernel_image_path)?;
    if let Some(initrd) = &b.initrd_path {
        readable("Boot source", initrd)?;
    }
    Ok(())
}

/// The vCPU count and memory size (bytes) of `m`, or why kvmkit cannot give them.
pub fn machine(m: &MachineConfiguration) -> Result<(u32, u64), Error> {
    if m.smt {
        return Err(unsupported("smt"));
    }
    if m.cpu_template.as_deref().is_some_and(|t| t != "None") {
        return Err(unsupported("cpu_template other than None"));
    }
    if m.huge_pages == HugePages::Huge2M {
        return Err(unsupported("huge_pages 2M (hugetlbfs)"));
    }
    if !(1..=MAX_VCPUS).contains(&m.vcpu_count) {
        return Err(Error::Vcpus(m.vcpu_count));
    }
    let bytes = m
        .mem_size_mib
        .checked_mul(1 << 20)
        .filter(|&b| b > 0)
        .ok_or(Error::Memory(m.mem_size_mib))?;
    Ok((m.vcpu_count, bytes))
}

/// The disk `d` describes (its serial is its id, as in Firecracker).
pub fn drive(d: &Drive) -> Result<BlockConfig, Error> {
    if d.socket.is_some() {
        return Err(unsupported("vhost-user block (socket)"));
    }
    if d.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(unsupported("rate_limiter"));
    }
    if let Some(uuid) = &d.partuuid
        && (!d.is_root_device
            || uuid.is_empty()
            || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    {
        return Err(Error::PartUuid(uuid.clone()));
    }
    let path = d
        .path_on_host
        .clone()
        .ok_or_else(|| Error::NoPath(d.drive_id.clone()))?;
    readable("Drive", &path)?;
    let serial: String = d.drive_id.chars().take(MAX_SERIAL_LEN).collect();
    Ok(BlockConfig::new(path)
        .read_only(d.is_read_only.unwrap_or(false))
        .serial(Some(serial)))
}

/// The network card `n` describes.
pub fn network_interface(n: &NetworkInterface) -> Result<NetConfig, Error> {
    if [&n.rx_rate_limiter, &n.tx_rate_limiter]
        .iter()
        .any(|r| r.as_ref().is_some_and(|r| !r.is_null()))
    {
        return Err(unsupported("rate_limiter"));
    }
    if n.mtu.is_some() {
        return Err(unsupported("mtu"));
    }
    let tap = &n.host_dev_name;
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ || tap.contains(['/', '\0', ' ']) {
        return Err(Error::TapName(tap.clone()));
    }
    if !virtio_devices::net::tap_exists(tap) {
        return Err(Error::NoTap(tap.clone()));
    }
    let mac = n
        .guest_mac
        .as_deref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| Error::Mac(m.to_owned(), e.to_string()))
        })
        .transpose()?;
    Ok(NetConfig::new(tap.clone())
        .mac(mac)
        .id(Some(n.iface_id.clone())))
}

/// The entropy device `e` describes.
pub fn entropy(e: &EntropyDevice) -> Result<RngConfig, Error> {
    if e.rate_limiter.as_ref().is_some_and(|r| !r.is_null()) {
        return Err(unsupported("rate_limiter"));
    }
    Ok(RngConfig::default())
}

/// The vsock device `v` describes.
pub fn vsock(v: &Vsock) -> Result<VsockConfig, Error> {
    let config = VsockConfig::new(u64::from(v.guest_cid), v.uds_path.clone());
    config.validate().map_err(|e| Error::Vsock(e.to_string()))?;
    Ok(config)
}

/// Checks `PUT /logger`: a known level, no module filter.
pub fn check_logger(l: &Logger) -> Result<(), Error> {
    if l.module.is_some() {
        return Err(unsupported("the logger's module filter"));
    }
    if let Some(level) = &l.level {
        crate::logger::parse_level(level).map_err(|e| Error::Logger(e.to_string()))?;
    }
    Ok(())
}

/// Checks that `drives` has at most one root device, and `nets` no MAC or tap twice.
pub fn check_together(drives: &[Drive], nets: &[NetworkInterface]) -> Result<(), Error> {
    if drives.iter().filter(|d| d.is_root_device).count() > 1 {
        return Err(Error::SecondRoot);
    }
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[..i] {
            if a.host_dev_name == b.host_dev_name {
                return Err(Error::TapInUse(a.host_dev_name.clone()));
            }
            if let (Some(x), Some(y)) = (&a.guest_mac, &b.guest_mac)
                && x.eq_ignore_ascii_case(y)
            {
                return Err(Error::MacInUse(x.clone()));
            }
        }
    }
    Ok(())
}

/// Refuses the sections kvmkit does not have, unless they are `null` or empty.
fn check_sections(r: &VmResources) -> Result<(), Error> {
    let sections = [
        ("balloon", &r.balloon),
        ("cpu-config", &r.cpu_config),
        ("mmds-config", &r.mmds_config),
        ("memory-hotplug", &r.memory_hotplug),
    ];
    for (name, value) in sections {
        if value.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(unsupported(name));
        }
    }
    if !r.pmem.is_empty() {
        return Err(unsupported("pmem"));
    }
    Ok(())
}

impl VmResources {
    /// The VM these resources describe. `base` gives what Firecracker's layout has no place for
    /// (serial console, ACPI, instruction assist, boot timeline).
    pub fn vm_config(&self, base: &VmConfig) -> Result<VmConfig, Error> {
        check_sections(self)?;
        check_together(&self.drives, &self.network_interfaces)?;
        let boot = self.boot_source.as_ref().ok_or(Error::NoKernel)?;
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
        // The root device goes first (vda), as in Firecracker, and the command line names it.
        let mut drives: Vec<&Drive> = self.drives.iter().filter(|d| d.is_root_device).collect();
        drives.extend(self.drives.iter().filter(|d| !d.is_root_device));
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            match &root.partuuid {
                Some(uuid) => cmdline.push_str(&format!(" root=PARTUUID={uuid}")),
                None => cmdline.push_str(" root=/dev/vda"),
            }
            cmdline.push_str(if root.is_read_only.unwrap_or(false) {
                " ro"
            } else {
                " rw"
            });
        }
        let (cpus, memory) = machine(&self.machine_config.clone().unwrap_or_default())?;
        if let Some(logger) = &self.logger {
            check_logger(logger)?;
        }
        let devices = DevicesConfig {
            disks: drives.into_iter().map(drive).collect::<Result<_, _>>()?,
            nets: self
                .network_interfaces
                .iter()
                .map(network_interface)
                .collect::<Result<_, _>>()?,
            rng: self.entropy.as_ref().map(entropy).transpose()?,
            // Firecracker's configuration has no console: the command line's.
            console: base.devices.console.clone(),
            vsock: match &self.vsock {
                Some(v) => Some(vsock(v)?),
                None => base.devices.vsock.clone(),
            },
        };
        let mut config = base.clone();
        config.boot = BootConfig {
            kernel: boot.kernel_image_path.clone(),
            initramfs: boot.initrd_path.clone(),
            cmdline,
        };
        config.machine.cpus = cpus;
        config.machine.memory = memory;
        // Firecracker's default is no huge pages; Transparent asks for them.
        config.machine.transparent_huge_pages = self
            .machine_config
            .as_ref()
            .is_some_and(|m| m.huge_pages == HugePages::Transparent);
        config.machine.track_dirty_pages = self
            .machine_config
            .as_ref()
            .is_some_and(|m| m.track_dirty_pages);
        config.devices = devices;
        Ok(config)
    }

    /// `config` in Firecracker's layout: a VM given on kvmkit's command line, for `GET /vm/config`.
    pub fn describe(config: &VmConfig) -> Self {
        let drives = config
            .devices
            .disks
            .iter()
            .enumerate()
            .map(|(i, d)| Drive {
                drive_id: d
                    .serial
                    .clone()
                    .unwrap_or_else(|| crate::devices::disk_name(i)),
                path_on_host: Some(d.path.clone()),
                is_root_device: false,
                is_read_only: Some(d.read_only),
                partuuid: None,
                cache_type: None,
                rate_limiter: None,
                io_engine: None,
                socket: None,
            })
            .collect();
        let network_interfaces = config
            .devices
            .nets
            .iter()
            .enumerate()
            .map(|(i, n)| NetworkInterface {
                iface_id: n.id.clone().unwrap_or_else(|| format!("net{i}")),
                host_dev_name: n.tap.clone(),
                guest_mac: Some(
                    n.mac
                        .unwrap_or_else(|| MacAddr::local_from(&n.tap))
                        .to_string(),
                ),
                rx_rate_limiter: None,
                tx_rate_limiter: None,
                mtu: None,
            })
            .collect();
        Self {
            drives,
            boot_source: Some(BootSource {
                kernel_image_path: config.boot.kernel.clone(),
                boot_args: Some(config.boot.cmdline.clone()),
                initrd_path: config.boot.initramfs.clone(),
            }),
            machine_config: Some(MachineConfiguration {
                vcpu_count: config.machine.cpus,
                mem_size_mib: config.machine.memory >> 20,
                huge_pages: if config.machine.transparent_huge_pages {
                    HugePages::Transparent
                } else {
                    HugePages::None
                },
                track_dirty_pages: config.machine.track_dirty_pages,
                ..MachineConfiguration::default()
            }),
            network_interfaces,
            entropy: config
                .devices
                .rng
                .as_ref()
                .map(|_| EntropyDevice::default()),
            vsock: config.devices.vsock.as_ref().map(|v| Vsock {
                vsock_id: None,
                // A configuration's CID was checked to fit.
                guest_cid: u32::try_from(v.cid).unwrap_or(u32::MAX),
                uds_path: v.socket.clone(),
            }),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VmConfig {
        VmConfig {
            boot: BootConfig {
                kernel: "unused".into(),
                initramfs: None,
                cmdline: String::new(),
            },
            machine: Default::default(),
            devices: Default::default(),
            serial: super::super::SerialMode::Off,
            boot_timeline: None,
        }
    }

    fn temp_file(name: &str) -> std::path::PathBuf {
        let p = std::env::temp_dir().join(format!("kvmkit-res-{}-{name}", std::process::id()));
        std::fs::write(&p, [0u8; 512]).unwrap();
        p
    }

    fn drive_at(id: &str, path: &Path, root: bool) -> Drive {
        Drive {
            drive_id: id.into(),
            path_on_host: Some(path.to_owned()),
            is_root_device: root,
            is_read_only: Some(false),
            partuuid: None,
            cache_type: None,
            rate_limiter: None,
            io_engine: None,
            socket: None,
        }
    }

    #[test]
    fn a_fifo_is_refused_without_waiting_for_a_writer() {
        let fifo = std::env::temp_dir().join(format!("kvmkit-config-fifo-{}", std::process::id()));
        let _ = std::fs::remove_file(&fifo);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo reads a NUL-terminated path that lives through the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let boot = BootSource {
            kernel_image_path: fifo.clone(),
            boot_args: None,
            initrd_path: None,
        };
        let e = check_boot_source(&boot).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = drive(&drive_at("data", &fifo, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a regular file"), "{e}");
        std::fs::remove_file(fifo).unwrap();
    }

    #[test]
    fn the_root_drive_goes_first_and_the_command_line_names_it() {
        let (k, a, b) = (temp_file("k"), temp_file("a"), temp_file("b"));
        let r = VmResources {
            boot_source: Some(BootSource {
                kernel_image_path: k.clone(),
                boot_args: Some("console=ttyS0".into()),
                initrd_path: None,
            }),
            drives: vec![drive_at("data", &a, false), drive_at("rootfs", &b, true)],
            machine_config: Some(MachineConfiguration {
                vcpu_count: 2,
                mem_size_mib: 128,
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = r.vm_config(&base()).unwrap();
        assert_eq!(c.boot.cmdline, "console=ttyS0 root=/dev/vda rw");
        assert_eq!(c.devices.disks[0].path, b);
        assert_eq!(c.devices.disks[0].serial.as_deref(), Some("rootfs"));
        assert_eq!((c.machine.cpus, c.machine.memory), (2, 128 << 20));
        assert_eq!(c.devices.rng, None, "no entropy device unless configured");
        for p in [k, a, b] {
            let _ = std::fs::remove_file(p);
        }
    }

    #[test]
    fn unsupported_features_are_refused_by_name() {
        let m = |f: fn(&mut MachineConfiguration)| {
            let mut m = MachineConfiguration::default();
            f(&mut m);
            machine(&m).unwrap_err().to_string()
        };
        assert!(m(|m| m.smt = true).contains("smt"));
        assert!(
            machine(&MachineConfiguration {
                track_dirty_pages: true,
                ..Default::default()
            })
            .is_ok()
        );
        assert!(m(|m| m.cpu_template = Some("T2".into())).contains("cpu_template"));
        assert!(m(|m| m.vcpu_count = 0).contains("vCPUs"));
        assert!(m(|m| m.mem_size_mib = 0).contains("memory"));
        assert!(m(|m| m.mem_size_mib = u64::MAX).contains("memory"));
        let r = VmResources {
            balloon: Some(serde_json::json!({"amount_mib": 3})),
            ..Default::default()
        };
        assert_eq!(
            r.vm_config(&base()).unwrap_err(),
            Error::Unsupported("balloon".into())
        );
        let r = VmResources {
            balloon: Some(serde_json::Value::Null),
            ..Default::default()
        };
        assert_eq!(r.vm_config(&base()).unwrap_err(), Error::NoKernel);
    }

    #[test]
    fn a_config_file_error_names_the_file_and_the_field() {
        let p = std::env::temp_dir().join(format!("kvmkit-cfg-{}.json", std::process::id()));
        std::fs::write(
            &p,
            r#"{"boot-source": {"kernel_image_path": "/k"},
                "drives": [{"drive_id": "root", "path_on_host": "/r", "is_root_devic": true}]}"#,
        )
        .unwrap();
        let e = from_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
        assert!(
            e.contains("drives[0]") && e.contains("unknown field `is_root_devic`"),
            "{e}"
        );
        std::fs::write(
            &p,
            r#"{"machine-config": {"vcpu_count": "two", "mem_size_mib": 1}}"#,
        )
        .unwrap();
        let e = from_file(&p).unwrap_err().to_string();
        assert!(e.contains("machine-config.vcpu_count"), "{e}");
        std::fs::write(
            &p,
            r#"{"boot-source": {"kernel_image_path": "/k"}, "balloon": null}"#,
        )
        .unwrap();
        let r = from_file(&p).unwrap();
        assert_eq!(r.boot_source.unwrap().kernel_image_path, Path::new("/k"));
        let _ = std::fs::remove_file(&p);
        assert!(
            from_file(&p)
                .unwrap_err()
                .to_string()
                .contains("config file")
        );
    }

    #[test]
    fn drives_and_interfaces_are_checked() {
        let a = temp_file("c");
        let mut d = drive_at("d1", &a, false);
        d.partuuid = Some("0eaa91a0-01".into());
        assert!(matches!(drive(&d), Err(Error::PartUuid(_))));
        d.is_root_device = true;
        assert!(drive(&d).is_ok());
        d.path_on_host = Some("/nonexistent/kvmkit.img".into());
        assert!(
            drive(&d)
                .unwrap_err()
                .to_string()
                .contains("cannot be opened")
        );
        d.path_on_host = None;
        assert_eq!(drive(&d).unwrap_err(), Error::NoPath("d1".into()));
        let roots = [drive_at("a", &a, true), drive_at("b", &a, true)];
        assert_eq!(check_together(&roots, &[]).unwrap_err(), Error::SecondRoot);
        let nic = NetworkInterface {
            iface_id: "eth0".into(),
            host_dev_name: "kvmkit-none0".into(),
            guest_mac: None,
            rx_rate_limiter: None,
            tx_rate_limiter: None,
            mtu: None,
        };
        assert!(matches!(network_interface(&nic), Err(Error::NoTap(_))));
        let bad = NetworkInterface {
            host_dev_name: "a/b".into(),
            ..nic.clone()
        };
        assert!(matches!(network_interface(&bad), Err(Error::TapName(_))));
        let two = [
            NetworkInterface {
                guest_mac: Some("52:54:00:00:00:01".into()),
                ..nic.clone()
            },
            NetworkInterface {
                iface_id: "eth1".into(),
                host_dev_name: "other".into(),
                guest_mac: Some("52:54:00:00:00:01".into()),
                ..nic
            },
        ];
        assert!(matches!(check_together(&[], &two), Err(Error::MacInUse(_))));
        let _ = std::fs::remove_file(a);
    }
}
