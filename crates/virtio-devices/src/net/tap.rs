//! A host tap device, opened by name, as the network device's backend.
//!
//! kvmkit opens a tap that already exists (`ip tuntap add dev tap0 mode tap`); it never creates or
//! configures host interfaces. The tap is opened non-blocking with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR` and a 12-byte vnet header (`struct virtio_net_hdr_v1`), so frames cross it with
//! the same header the guest's driver uses, and the device copies them without translating.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::Backend;

/// `_IOW('T', nr, size)` (linux/if_tun.h): direction "write" in bits 30-31, the argument's size in
/// bits 16-29, the type 'T' in bits 8-15, the number in bits 0-7.
const fn tun_iow(nr: u32, size: usize) -> libc::c_ulong {
    ((1 << 30) | ((size as u32) << 16) | ((b'T' as u32) << 8) | nr) as libc::c_ulong
}
const TUNSETIFF: libc::c_ulong = tun_iow(202, std::mem::size_of::<libc::c_int>());
const TUNSETOFFLOAD: libc::c_ulong = tun_iow(208, std::mem::size_of::<libc::c_uint>());
const TUNSETVNETHDRSZ: libc::c_ulong = tun_iow(216, std::mem::size_of::<libc::c_int>());

/// `IFF_TAP`: an Ethernet (layer 2) device.
const IFF_TAP: u16 = 0x0002;
/// `IFF_NO_PI`: no packet-information prefix on each frame.
const IFF_NO_PI: u16 = 0x1000;
/// `IFF_VNET_HDR`: each frame carries a virtio-net header.
const IFF_VNET_HDR: u16 = 0x4000;

/// `TUN_F_CSUM`: the tap may hand us frames with a partial checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUN_F_TSO4`: ... TCPv4 segmentation offload.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUN_F_TSO6`: ... TCPv6 segmentation offload.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUN_F_UFO`: ... UDP fragmentation offload.
pub const TUN_F_UFO: u32 = 0x10;

/// The vnet header size set on the tap: `struct virtio_net_hdr_v1`.
pub const VNET_HDR_LEN: usize = 12;
/// The longest interface name Linux takes (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Why a tap could not be opened. Each names the tap and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The name cannot be an interface name.
    #[error("invalid tap name '{0}': 1 to 15 characters, no '/' or whitespace")]
    Name(String),
    /// No interface of that name exists (in this network namespace).
    #[error(
        "tap '{0}' does not exist: create it first (ip tuntap add dev {0} mode tap), kvmkit does not create host interfaces"
    )]
    Missing(String),
    /// The interface exists but is not a tap.
    #[error("'{0}' is not a tap device (it is not a tun/tap interface in TAP mode)")]
    NotATap(String),
    /// The tap is multi-queue; kvmkit opens it with one queue.
    #[error(
        "tap '{0}' is multi-queue (ip tuntap ... multi_queue); kvmkit needs a single-queue tap"
    )]
    MultiQueue(String),
    /// /dev/net/tun could not be opened.
    #[error("cannot open /dev/net/tun for tap '{tap}': {source}")]
    OpenTun {
        /// The tap.
        tap: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused to attach to the tap (not its owner, already in use...).
    #[error("cannot attach to tap '{tap}': {source}{hint}")]
    Attach {
        /// The tap.
        tap: String,
        /// The kernel's answer.
        #[source]
        source: std::io::Error,
        /// What may help.
        hint: &'static str,
    },
    /// The vnet header could not be set up.
    #[error("tap '{tap}' refused the virtio-net header: {source}")]
    VnetHeader {
        /// The tap.
        tap: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// `struct ifreq` with the name and flags members (40 bytes on x86_64).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: u16,
    _pad: [u8; 22],
}

/// An open tap: frames in and out, each with its 12-byte vnet header first.
#[derive(Debug)]
pub struct Tap {
    name: String,
    file: File,
}

impl Tap {
    /// Opens the existing tap `name` (in the caller's network namespace).
    pub fn open(name: &str) -> Result<Self, Error> {
        if name.is_empty()
            || name.len() > MAX_NAME_LEN
            || name.contains('/')
            || name.chars().any(char::is_whitespace)
            || name == "."
            || name == ".."
        {
            return Err(Error::Name(name.to_owned()));
        }
        if !exists(name) {
            return Err(Error::Missing(name.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| Error::OpenTun {
                tap: name.to_owned(),
                source,
            })?;
        let mut req = IfReq {
            name: [0; 16],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads (and may write back) one `struct ifreq`, which `req` is (repr(C),
        // the size of the kernel's); `file` is an open /dev/net/tun.
        let ret = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF, &mut req) };
        if ret < 0 {
            let source = std::io::Error::last_os_error();
            let hint = match source.raw_os_error() {
                Some(libc::EPERM) => {
                    " (the tap belongs to another user or group: run as its owner, or with CAP_NET_ADMIN)"
                }
                Some(libc::EINVAL) => return Err(Error::NotATap(name.to_owned())),
                Some(libc::EBUSY) => " (another process has it open)",
                _ => "",
            };
            return Err(Error::Attach {
                tap: name.to_owned(),
                source,
                hint,
            });
        }
        let hdr_len = VNET_HDR_LEN as std::os::raw::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which points at `hdr_len`.
        let ret = unsafe { ioctl_with_ref(&file, TUNSETVNETHDRSZ, &hdr_len) };
        if ret < 0 {
            return Err(Error::VnetHeader {
                tap: name.to_owned(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Whether an interface `name` exists in the caller's network namespace. Opening a tap that does
/// not exist would create it, which kvmkit never does.
pub fn exists(name: &str) -> bool {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: `c_name` is a NUL-terminated string that outlives the call; if_nametoindex only reads it.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) != 0 }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Backend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.file.write(frame)
    }

    fn set_offload(&mut self, flags: u32) -> std::io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value; `file` is an attached tap.
        let ret = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD, libc::c_ulong::from(flags)) };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn try_clone(&self) -> std::io::Result<Box<dyn Backend>> {
        Ok(Box::new(Self {
            name: self.name.clone(),
            file: self.file.try_clone()?,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        assert_eq!(TUNSETIFF, 0x4004_54ca);
        assert_eq!(TUNSETOFFLOAD, 0x4004_54d0);
        assert_eq!(TUNSETVNETHDRSZ, 0x4004_54d8);
        assert_eq!(std::mem::size_of::<IfReq>(), 40);
    }

    #[test]
    fn bad_names_and_missing_taps_are_clear_errors() {
        for bad in ["", "a/b", "sixteen-chars-xx", "tap 0", ".."] {
            let e = Tap::open(bad).unwrap_err();
            assert!(matches!(e, Error::Name(_)), "{bad:?}: {e}");
        }
        let e = Tap::open("kvmkit-nosuch").unwrap_err().to_string();
        assert!(
            e.contains("does not exist") && e.contains("ip tuntap add"),
            "{e}"
        );
        // The loopback interface exists but is no tap.
        let e = Tap::open("lo").unwrap_err();
        assert!(matches!(e, Error::NotATap(_)), "{e}");
    }
}
