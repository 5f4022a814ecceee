//! Ethernet MAC addresses: parsing, printing, and stable generated ones.

use std::fmt;
use std::str::FromStr;

/// A unicast Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct MacAddr(pub [u8; 6]);

/// Why a MAC address did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not six hexadecimal byte pairs separated by colons.
    #[error("invalid MAC address '{0}': expected six hex bytes like 52:54:00:12:34:56")]
    Syntax(String),
    /// A multicast (group) address, which no network card can have.
    #[error("invalid MAC address '{0}': it is a multicast address (the first byte is odd)")]
    Multicast(String),
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (the same seed always gives the
    /// same address), for a network card whose address the user did not choose.
    ///
    /// ```
    /// use kvmkit_virtio_devices::net::MacAddr;
    /// let a = MacAddr::local_from("tap0");
    /// assert_eq!(a, MacAddr::local_from("tap0"));
    /// assert_ne!(a, MacAddr::local_from("tap1"));
    /// assert_eq!(a.0[0] & 0b11, 0b10, "locally administered, unicast");
    /// ```
    pub fn local_from(seed: &str) -> Self {
        // FNV-1a, 64 bits: stable across runs and Rust versions (unlike std's hasher).
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        let b = hash.to_le_bytes();
        Self([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }
}

impl FromStr for MacAddr {
    type Err = Error;

    /// ```
    /// use kvmkit_virtio_devices::net::MacAddr;
    /// let m: MacAddr = "52:54:00:ab:CD:ef".parse().unwrap();
    /// assert_eq!(m.to_string(), "52:54:00:ab:cd:ef");
    /// assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
    /// assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err()); // multicast
    /// ```
    fn from_str(s: &str) -> Result<Self, Error> {
        let syntax = || Error::Syntax(s.to_owned());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(syntax)?;
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(syntax());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| syntax())?;
        }
        if parts.next().is_some() {
            return Err(syntax());
        }
        if out[0] & 1 != 0 {
            return Err(Error::Multicast(s.to_owned()));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_addresses() {
        for bad in [
            "",
            "1:2:3:4:5:6",
            "52:54:00:12:34:56:78",
            "52-54-00-12-34-56",
            "zz:54:00:12:34:56",
            "+5:54:00:12:34:56",
        ] {
            assert!(
                matches!(bad.parse::<MacAddr>(), Err(Error::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "ff:ff:ff:ff:ff:ff".parse::<MacAddr>(),
            Err(Error::Multicast(_))
        ));
    }
}
