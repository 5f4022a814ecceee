//! What the user asked for, validated: the VM's configuration, independent of how it was given
//! (the command line today). Each device kind has one configuration type, the device model's own
//! (`virtio_devices::BlockConfig`, `NetConfig`, `RngConfig`); [`devices`] parses them.

pub mod devices;
pub mod firecracker;
pub mod resources;

use std::path::PathBuf;

pub use devices::DevicesConfig;

/// The default kernel command line: a serial console and a reboot through the i8042.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// The default guest memory size.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

/// Errors in the configuration. Each is reported on one line, and kvmkit exits with code 2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A size that does not parse.
    #[error(
        "invalid memory size '{0}': expected a number with an optional K, M, G or T suffix (a bare number is MiB), e.g. 256M or size=256M"
    )]
    Size(String),
    /// A vCPU count that does not parse or is out of range.
    #[error("invalid --cpus '{0}': expected a number of vCPUs from 1 to {1}, or boot=N")]
    Cpus(String, u32),
    /// A `--serial` value that is not `stdio` (`tty`), `off` (`null`), `pty`, `file=PATH` or
    /// `socket=PATH`.
    #[error(
        "invalid --serial '{0}': expected stdio (or tty), off (or null), pty, file=PATH or socket=PATH"
    )]
    Serial(String),
    /// A `--disk` value that does not parse.
    #[error("invalid --disk '{0}': {1}; expected path=FILE[,readonly=on|off][,serial=ID]")]
    Disk(String, &'static str),
    /// A `--net` value that does not parse.
    #[error("invalid --net '{0}': {1}; expected tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]")]
    Net(String, String),
    /// Two network devices with the same id or tap.
    #[error("--net: {0} '{1}' is given twice")]
    NetTwice(&'static str, String),
    /// A `--console` value that is not off, null, tty, pty, file=PATH or socket=PATH.
    #[error("invalid --console '{0}': expected off, null, tty, pty, file=PATH or socket=PATH")]
    Console(String),
    /// A `--vsock` value that does not parse.
    #[error("invalid --vsock '{0}': {1}; expected cid=N,socket=PATH (N from 3)")]
    Vsock(String, String),
    /// The serial console and the virtio console both asked for kvmkit's terminal.
    #[error(
        "--serial stdio and --console tty both want kvmkit's terminal: give one of them another \
         mode (e.g. --serial off --console tty)"
    )]
    TerminalTwice,
    /// A `--rng` value that is not on or off.
    #[error("invalid --rng '{0}': expected on or off")]
    Rng(String),
    /// A `--restore` value that does not parse.
    #[error(
        "invalid --restore '{0}': expected SNAPSHOT,mem=MEMORY_FILE[,track_dirty_pages=on|off]"
    )]
    Restore(String),
    /// Guest memory larger than the host's.
    #[error("guest memory {req} MiB is more than the host's {host} MiB", req = .0 >> 20, host = .1 >> 20)]
    MoreThanHost(u64, u64),
}

/// Where the guest's serial console goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialMode {
    /// Output to stdout, input from stdin (raw mode when stdin is a terminal).
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// No output (the UART still exists for the guest).
    Off,
    /// A new pseudo-terminal, whose path kvmkit prints.
    Pty,
    /// A Unix socket one client at a time attaches to.
    Socket(PathBuf),
}

impl std::str::FromStr for SerialMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "stdio" | "tty" => Ok(Self::Stdio),
            "off" | "null" => Ok(Self::Off),
            "pty" => Ok(Self::Pty),
            _ => match s.split_once('=') {
                Some(("file", path)) if !path.is_empty() => Ok(Self::File(PathBuf::from(path))),
                Some(("socket", path)) if !path.is_empty() => Ok(Self::Socket(PathBuf::from(path))),
                _ => Err(Error::Serial(s.to_owned())),
            },
        }
    }
}

/// The machine itself: memory, vCPUs, firmware tables, and how kvmkit runs it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MachineConfig {
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub cpus: u32,
    /// Whether the guest gets ACPI tables (and with them an ACPI power-off) besides the MP table.
    pub acpi: bool,
    /// When to finish instructions a software KVM backend cannot run.
    pub instruction_assist: crate::software_kvm::AssistMode,
    /// Back guest RAM with transparent huge pages (`--memory size=...,thp=on`; off by default, as
    /// in Firecracker: here a huge page's first touch often waits for the host to compact memory).
    #[serde(default)]
    pub transparent_huge_pages: bool,
    /// Log the pages the guest and the devices write, for diff snapshots (`--memory
    /// size=...,track_dirty_pages=on`, Firecracker's `track_dirty_pages`; off by default: KVM then
    /// write-protects every page after each snapshot, and the guest's next write to it faults).
    #[serde(default)]
    pub track_dirty_pages: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            memory: DEFAULT_MEMORY,
            cpus: 1,
            acpi: true,
            instruction_assist: Default::default(),
            transparent_huge_pages: false,
            track_dirty_pages: false,
        }
    }
}

/// What to boot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootConfig {
    /// Kernel image: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// Optional initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
}

/// A VM to boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// The kernel, initramfs and command line.
    pub boot: BootConfig,
    /// Memory, vCPUs, ACPI, instruction assist.
    pub machine: MachineConfig,
    /// The virtio devices.
    pub devices: DevicesConfig,
    /// Serial console.
    pub serial: SerialMode,
    /// Print the boot timeline on stderr at exit, in this format.
    pub boot_timeline: Option<crate::timeline::Format>,
}

/// Parses a size like `256M`, `1G`, `512MiB`, `4096K` or a plain byte count (binary units).
///
/// ```
/// use kvmkit::config::parse_size;
/// assert_eq!(parse_size("256M").unwrap(), 256 << 20);
/// assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
/// assert!(parse_size("12X").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let err = || Error::Size(s.to_owned());
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| err())?;
    n.checked_mul(1u64 << shift).ok_or_else(err)
}

/// `--memory`: the size, and whether to back it with transparent huge pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryOption {
    /// Bytes.
    pub size: u64,
    /// `thp=on`, or `off` (the default).
    pub transparent_huge_pages: bool,
    /// `track_dirty_pages=on`, or `off` (the default).
    pub track_dirty_pages: bool,
}

/// Parses `--memory`: a size ([`parse_size`]), or Cloud Hypervisor's `size=SIZE[,thp=on|off]`, with
/// kvmkit's `track_dirty_pages=on|off` (Firecracker's machine-config field of that name). A bare
/// number is MiB, as QEMU's `-m` and Firecracker's `mem_size_mib` read it.
///
/// ```
/// use kvmkit::config::parse_memory;
/// assert_eq!(parse_memory("512").unwrap().size, 512 << 20);
/// assert_eq!(parse_memory("size=2G").unwrap().size, 2 << 30);
/// assert_eq!(parse_memory("4096K").unwrap().size, 4 << 20);
/// assert!(parse_memory("size=1G,thp=on").unwrap().transparent_huge_pages);
/// assert!(parse_memory("size=1G,track_dirty_pages=on").unwrap().track_dirty_pages);
/// assert!(parse_memory("size=2G,shared=on").is_err());
/// ```
pub fn parse_memory(s: &str) -> Result<MemoryOption, Error> {
    let err = || Error::Size(s.to_owned());
    let mut items = s.trim().split(',');
    let first = items.next().unwrap_or_default();
    let value = first.strip_prefix("size=").unwrap_or(first);
    let size = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let mib: u64 = value.parse().map_err(|_| err())?;
        mib.checked_mul(1 << 20).ok_or_else(err)?
    } else {
        parse_size(value).map_err(|_| err())?
    };
    let (mut transparent_huge_pages, mut track_dirty_pages) = (false, false);
    for item in items {
        match item {
            "thp=on" => transparent_huge_pages = true,
            "thp=off" => transparent_huge_pages = false,
            "track_dirty_pages=on" => track_dirty_pages = true,
            "track_dirty_pages=off" => track_dirty_pages = false,
            _ => return Err(err()),
        }
    }
    Ok(MemoryOption {
        size,
        transparent_huge_pages,
        track_dirty_pages,
    })
}

/// `--restore`: the snapshot to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreOption {
    /// The state file.
    pub snapshot: PathBuf,
    /// The memory file.
    pub memory: PathBuf,
    /// Log dirty pages in the restored VM (for diff snapshots of it), as `PUT /snapshot/load`'s
    /// `track_dirty_pages`; a VM that logged them when saved logs them again anyway.
    pub track_dirty_pages: bool,
}

/// Parses `--restore SNAPSHOT,mem=MEMORY_FILE[,track_dirty_pages=on|off]`.
///
/// ```
/// use kvmkit::config::parse_restore;
/// let r = parse_restore("vm.snap,mem=vm.mem").unwrap();
/// assert_eq!((r.snapshot.to_str(), r.memory.to_str()), (Some("vm.snap"), Some("vm.mem")));
/// assert!(!r.track_dirty_pages);
/// assert!(parse_restore("a,mem=b,track_dirty_pages=on").unwrap().track_dirty_pages);
/// assert!(parse_restore("vm.snap").is_err());
/// assert!(parse_restore("a,mem=b,thp=on").is_err());
/// ```
pub fn parse_restore(s: &str) -> Result<RestoreOption, Error> {
    let err = || Error::Restore(s.to_owned());
    let (snapshot, rest) = s.split_once(",mem=").ok_or_else(err)?;
    let mut items = rest.split(',');
    let memory = items.next().unwrap_or_default();
    if snapshot.is_empty() || memory.is_empty() {
        return Err(err());
    }
    let mut track_dirty_pages = false;
    for item in items {
        track_dirty_pages = match item {
            "track_dirty_pages=on" => true,
            "track_dirty_pages=off" => false,
            _ => return Err(err()),
        };
    }
    Ok(RestoreOption {
        snapshot: PathBuf::from(snapshot),
        memory: PathBuf::from(memory),
        track_dirty_pages,
    })
}

/// Parses a vCPU count in `1..=max`: `N`, or Cloud Hypervisor's `boot=N`.
pub fn parse_cpus(s: &str, max: u32) -> Result<u32, Error> {
    let value = s.trim();
    let value = value.strip_prefix("boot=").unwrap_or(value);
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(Error::Cpus(s.to_owned(), max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("3MB").unwrap(), 3 << 20);
        for bad in ["", "M", "-1M", "1.5G", "99999999999999999999", "16777216T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn memory_sizes_take_mib_by_default_and_cloud_hypervisors_form() {
        let size = |s| parse_memory(s).unwrap().size;
        assert_eq!(size("256"), 256 << 20);
        assert_eq!(size("256M"), 256 << 20);
        assert_eq!(size("size=512M"), 512 << 20);
        assert_eq!(size("size=1024"), 1 << 30);
        assert_eq!(size("1G"), 1 << 30);
        assert!(!parse_memory("1G").unwrap().transparent_huge_pages);
        assert!(
            parse_memory("size=1G,thp=on")
                .unwrap()
                .transparent_huge_pages
        );
        assert!(parse_memory("size=1G,thp=maybe").is_err());
        for bad in [
            "",
            "size=",
            "size=lots",
            "-1",
            "99999999999999999",
            "2G,shared=on",
        ] {
            assert!(parse_memory(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpus_and_serial() {
        assert_eq!(parse_cpus("boot=2", 254).unwrap(), 2);
        assert!(parse_cpus("boot=0", 254).is_err());
        assert!(parse_cpus("max=2", 254).is_err());
        assert_eq!(parse_cpus("4", 254).unwrap(), 4);
        assert!(parse_cpus("0", 254).is_err());
        assert!(parse_cpus("255", 254).is_err());
        assert!(parse_cpus("two", 254).is_err());
        assert_eq!("stdio".parse::<SerialMode>().unwrap(), SerialMode::Stdio);
        assert_eq!(
            "file=/tmp/x".parse::<SerialMode>().unwrap(),
            SerialMode::File("/tmp/x".into())
        );
        assert!("file=".parse::<SerialMode>().is_err());
        assert!("tcp".parse::<SerialMode>().is_err());
    }
}
