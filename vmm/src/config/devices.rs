//! The VM's devices as the user asked for them: `--disk`, `--net` and `--rng` values parsed into the
//! device models' own configuration types (one per kind; no copies of their fields here).

use std::path::PathBuf;

use virtio_devices::net::MacAddr;
use virtio_devices::{BlockConfig, NetConfig, RngConfig, VsockConfig};

use super::Error;

/// The longest disk serial virtio-blk can carry.
pub const MAX_SERIAL_LEN: usize = 20;

/// The virtio devices of a VM, in the order the guest finds them: disks, network cards, the
/// entropy source.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DevicesConfig {
    /// virtio-blk disks (the guest sees vda, vdb, ...).
    pub disks: Vec<BlockConfig>,
    /// virtio-net cards on host taps (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// The virtio-rng entropy source, if any.
    pub rng: Option<RngConfig>,
    /// The virtio console (`hvc0`), if any, and where it goes.
    #[serde(default)]
    pub console: Option<ConsoleMode>,
    /// The virtio socket device, if any: the guest's context ID and the host socket.
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
}

/// Where the virtio console (`--console`) goes. Its output never blocks the guest: it goes through
/// a bounded buffer and a thread of its own, as the UART's does.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ConsoleMode {
    /// Output discarded, no input: the guest still has the device.
    Null,
    /// kvmkit's own terminal: output to stdout, input from stdin (raw mode when stdin is a
    /// terminal).
    Tty,
    /// A new pseudo-terminal, whose path kvmkit prints (`screen`, `minicom` or a test attach to
    /// it).
    Pty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// A Unix socket kvmkit listens on: one client at a time attaches (and detaches) for output
    /// and input; while none is attached the output is discarded.
    Socket(PathBuf),
}

/// Parses `--vsock cid=N,socket=PATH` (Cloud Hypervisor's syntax).
///
/// ```
/// use kvmkit::config::devices::parse_vsock;
/// let v = parse_vsock("cid=3,socket=/run/v.sock").unwrap();
/// assert_eq!((v.cid, v.socket.to_str()), (3, Some("/run/v.sock")));
/// assert!(parse_vsock("cid=2,socket=/run/v.sock").is_err());
/// assert!(parse_vsock("cid=3").is_err());
/// ```
pub fn parse_vsock(s: &str) -> Result<VsockConfig, Error> {
    let bad = |why: String| Error::Vsock(s.to_owned(), why);
    let (mut cid, mut socket) = (None, None);
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse::<u64>()
                        .map_err(|_| bad(format!("cid '{v}' is not a number")))?,
                );
            }
            Some(("socket", v)) if !v.is_empty() => socket = Some(PathBuf::from(v)),
            _ => return Err(bad(format!("unknown or empty option '{part}'"))),
        }
    }
    let cid = cid.ok_or_else(|| bad("cid is missing".into()))?;
    let socket = socket.ok_or_else(|| bad("socket is missing".into()))?;
    let config = VsockConfig::new(cid, socket);
    config.validate().map_err(|e| bad(e.to_string()))?;
    Ok(config)
}

/// Parses `--console off|null|tty|pty|file=PATH|socket=PATH` (Cloud Hypervisor's syntax); `off` is
/// no device.
///
/// ```
/// use kvmkit::config::devices::{ConsoleMode, parse_console};
/// assert_eq!(parse_console("pty").unwrap(), Some(ConsoleMode::Pty));
/// assert_eq!(parse_console("off").unwrap(), None);
/// assert!(parse_console("file=").is_err());
/// ```
pub fn parse_console(s: &str) -> Result<Option<ConsoleMode>, Error> {
    match s {
        "off" => Ok(None),
        "null" => Ok(Some(ConsoleMode::Null)),
        "tty" => Ok(Some(ConsoleMode::Tty)),
        "pty" => Ok(Some(ConsoleMode::Pty)),
        _ => match s.split_once('=') {
            Some(("file", path)) if !path.is_empty() => {
                Ok(Some(ConsoleMode::File(PathBuf::from(path))))
            }
            Some(("socket", path)) if !path.is_empty() => {
                Ok(Some(ConsoleMode::Socket(PathBuf::from(path))))
            }
            _ => Err(Error::Console(s.to_owned())),
        },
    }
}

impl DevicesConfig {
    /// Fails if two network cards share an id or a tap.
    pub fn validate(&self) -> Result<(), Error> {
        for (i, a) in self.nets.iter().enumerate() {
            for b in &self.nets[..i] {
                if a.tap == b.tap {
                    return Err(Error::NetTwice("tap", a.tap.clone()));
                }
                if a.id.is_some() && a.id == b.id {
                    return Err(Error::NetTwice("id", a.id.clone().unwrap_or_default()));
                }
            }
        }
        Ok(())
    }
}

/// Splits `key=value,key=value`; `None` if an item has no `=`.
fn items(s: &str) -> Option<Vec<(&str, &str)>> {
    s.split(',').map(|item| item.split_once('=')).collect()
}

/// Parses `--disk path=FILE[,readonly=on|off][,serial=ID]`.
///
/// ```
/// use kvmkit::config::devices::parse_disk;
/// let d = parse_disk("path=/img/root.ext4,readonly=on,serial=root").unwrap();
/// assert_eq!((d.path.to_str(), d.read_only, d.serial.as_deref()), (Some("/img/root.ext4"), true, Some("root")));
/// assert!(parse_disk("readonly=on").is_err());
/// ```
pub fn parse_disk(s: &str) -> Result<BlockConfig, Error> {
    let err = |why| Error::Disk(s.to_owned(), why);
    let (mut path, mut read_only, mut serial) = (None, false, None);
    for (key, value) in items(s).ok_or_else(|| err("each item is key=value"))? {
        match key {
            "path" if !value.is_empty() => path = Some(PathBuf::from(value)),
            "path" => return Err(err("empty path")),
            "readonly" | "ro" => {
                read_only = match value {
                    "on" | "true" => true,
                    "off" | "false" => false,
                    _ => return Err(err("readonly is on or off")),
                }
            }
            "serial" if value.len() <= MAX_SERIAL_LEN && value.is_ascii() => {
                serial = Some(value.to_owned())
            }
            "serial" => return Err(err("serial is at most 20 ASCII characters")),
            _ => return Err(err("unknown key")),
        }
    }
    Ok(
        BlockConfig::new(path.ok_or_else(|| err("path= is missing"))?)
            .read_only(read_only)
            .serial(serial),
    )
}

/// Parses `--net tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,id=ID]` (Cloud Hypervisor's syntax).
///
/// ```
/// use kvmkit::config::devices::parse_net;
/// let n = parse_net("tap=tap0,mac=52:54:00:12:34:56,id=eth0").unwrap();
/// assert_eq!((n.tap.as_str(), n.mac.unwrap().to_string().as_str(), n.id.as_deref()),
///            ("tap0", "52:54:00:12:34:56", Some("eth0")));
/// assert!(parse_net("tap=tap0,mac=01:00:5e:00:00:01").is_err()); // multicast
/// ```
pub fn parse_net(s: &str) -> Result<NetConfig, Error> {
    let err = |why: &str| Error::Net(s.to_owned(), why.to_owned());
    let (mut tap, mut mac, mut id) = (None, None, None);
    for (key, value) in items(s).ok_or_else(|| err("each item is key=value"))? {
        match key {
            "tap" if !value.is_empty() => tap = Some(value.to_owned()),
            "tap" => return Err(err("empty tap name")),
            "mac" => mac = Some(value.parse::<MacAddr>().map_err(|e| err(&e.to_string()))?),
            "id" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic()) => {
                id = Some(value.to_owned())
            }
            "id" => return Err(err("id is printable ASCII without spaces")),
            _ => return Err(err("unknown key")),
        }
    }
    Ok(NetConfig::new(tap.ok_or_else(|| err("tap= is missing"))?)
        .mac(mac)
        .id(id))
}

/// Parses `--rng on|off`: the entropy device with its defaults, or none.
pub fn parse_rng(s: &str) -> Result<Option<RngConfig>, Error> {
    match s {
        "on" => Ok(Some(RngConfig::default())),
        "off" => Ok(None),
        _ => Err(Error::Rng(s.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks() {
        let d = parse_disk("path=a.img").unwrap();
        assert_eq!((d.read_only, d.serial), (false, None));
        for bad in [
            "",
            "a.img",
            "path=",
            "path=a,readonly=maybe",
            "path=a,serial=123456789012345678901",
            "path=a,color=red",
            "serial=x",
        ] {
            let e = parse_disk(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid --disk") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn nets() {
        let n = parse_net("tap=tap0").unwrap();
        assert_eq!((n.mac, n.id), (None, None));
        for bad in [
            "",
            "tap0",
            "tap=",
            "tap=tap0,mac=52:54:00:12:34",
            "tap=tap0,mac=ff:ff:ff:ff:ff:ff",
            "tap=tap0,id=",
            "tap=tap0,speed=10G",
            "mac=52:54:00:12:34:56",
        ] {
            let e = parse_net(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid --net") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        let twice = |a: &str, b: &str| DevicesConfig {
            nets: vec![parse_net(a).unwrap(), parse_net(b).unwrap()],
            ..Default::default()
        };
        assert!(twice("tap=a", "tap=b").validate().is_ok());
        assert!(twice("tap=a", "tap=a").validate().is_err());
        assert!(twice("tap=a,id=x", "tap=b,id=x").validate().is_err());
    }

    #[test]
    fn rng() {
        assert_eq!(parse_rng("on").unwrap(), Some(RngConfig::default()));
        assert_eq!(parse_rng("off").unwrap(), None);
        assert!(parse_rng("maybe").is_err());
    }
}
