//! The snapshot file: a fixed header, then the state as JSON.
//!
//! ```text
//! offset  size  field
//!      0     8  magic "KVMKITSN"
//!      8     4  format version (little endian), FORMAT_VERSION
//!     12     4  flags, 0
//!     16     8  body length in bytes
//!     24     4  CRC-32 (IEEE) of the body
//!     28     4  reserved, 0
//!     32     …  body: the state, serialized as JSON
//! ```
//!
//! A file from another format version, a truncated or corrupted one, is an error that says which;
//! a state is never read from a body that fails its checksum. The body is one self-contained object
//! so that a migration stream can carry the same bytes after the memory pages.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first eight bytes of every kvmkit snapshot.
pub const MAGIC: [u8; 8] = *b"KVMKITSN";
/// The format this kvmkit writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The header's size.
pub const HEADER_LEN: usize = 32;
/// The largest body kvmkit reads (the state, not guest memory: a few hundred KiB per vCPU at most).
pub const MAX_BODY: u64 = 256 << 20;

/// Why a snapshot file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be opened, read or written.
    #[error("snapshot {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a kvmkit snapshot.
    #[error("snapshot {0}: not a kvmkit snapshot (bad magic)")]
    Magic(String),
    /// Written by a kvmkit with another format.
    #[error("snapshot {path}: format version {found}, this kvmkit reads version {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: String,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("snapshot {path}: truncated ({found} of {expected} bytes)")]
    Truncated {
        /// The file.
        path: String,
        /// Bytes the header and body need.
        expected: u64,
        /// Bytes there are.
        found: u64,
    },
    /// The body does not match its checksum.
    #[error("snapshot {0}: corrupted (checksum mismatch)")]
    Checksum(String),
    /// The body is not the state this kvmkit expects.
    #[error("snapshot {path}: unreadable state: {message}")]
    Body {
        /// The file.
        path: String,
        /// serde's message.
        message: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `state` to `path` (created or truncated), header first.
pub fn save<T: Serialize>(path: &Path, state: &T) -> Result<(), Error> {
    let body = serde_json::to_vec(state).map_err(|e| Error::Body {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&MAGIC);
    header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[16..24].copy_from_slice(&(body.len() as u64).to_le_bytes());
    header[24..28].copy_from_slice(&crc32fast::hash(&body).to_le_bytes());
    let mut file = std::fs::File::create(path).map_err(io(path))?;
    file.write_all(&header).map_err(io(path))?;
    file.write_all(&body).map_err(io(path))?;
    file.sync_all().map_err(io(path))
}

/// Reads the state at `path`, checking magic, version, length and checksum before parsing.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let name = || path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let found = file.metadata().map_err(io(path))?.len();
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match file.read(&mut header[got..]).map_err(io(path))? {
            0 => break,
            n => got += n,
        }
    }
    if got < MAGIC.len() || header[..8] != MAGIC {
        return Err(Error::Magic(name()));
    }
    if got < HEADER_LEN {
        return Err(Error::Truncated {
            path: name(),
            expected: HEADER_LEN as u64,
            found,
        });
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(Error::Version {
            path: name(),
            found: version,
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&header[16..24]);
    let len = u64::from_le_bytes(len);
    // A hostile length (up to 2^64 - 1) must not overflow the sum (found by the snapshot_file
    // fuzz target).
    let expected = (HEADER_LEN as u64).saturating_add(len);
    if len > MAX_BODY || found < expected {
        return Err(Error::Truncated {
            path: name(),
            expected,
            found,
        });
    }
    let mut body = vec![0u8; len as usize];
    file.read_exact(&mut body).map_err(io(path))?;
    if crc32fast::hash(&body) != word(24) {
        return Err(Error::Checksum(name()));
    }
    serde_json::from_slice(&body).map_err(|e| Error::Body {
        path: name(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        counter: u64,
        name: String,
    }

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("kvmkit-snapfmt-{}-{name}", std::process::id()))
    }

    #[test]
    fn a_length_near_2_to_the_64_is_a_truncated_file_not_an_overflow() {
        // The snapshot_file fuzz target's crash: a header whose length field is all ones.
        let p = temp("huge-length");
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        std::fs::write(&p, header).unwrap();
        let e = load::<State>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        assert!(matches!(e, Error::Truncated { .. }), "{e}");
    }

    #[test]
    fn a_state_round_trips_and_every_damage_is_named() {
        let p = temp("ok");
        let state = State {
            counter: 42,
            name: "vm".into(),
        };
        save(&p, &state).unwrap();
        assert_eq!(load::<State>(&p).unwrap(), state);
        let good = std::fs::read(&p).unwrap();

        let damaged = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut bytes = good.clone();
            f(&mut bytes);
            std::fs::write(&p, &bytes).unwrap();
            load::<State>(&p).unwrap_err().to_string()
        };
        assert!(damaged(&|b| b[0] = b'X').contains("not a kvmkit snapshot"));
        assert!(damaged(&|b| b[8] = 2).contains("format version 2, this kvmkit reads version 1"));
        assert!(damaged(&|b| b.truncate(b.len() - 3)).contains("truncated"));
        assert!(damaged(&|b| b.truncate(20)).contains("truncated"));
        assert!(damaged(&|b| b.truncate(0)).contains("not a kvmkit snapshot"));
        let last = good.len() - 2;
        assert!(damaged(&|b| b[last] ^= 1).contains("corrupted (checksum mismatch)"));
        assert!(
            load::<Vec<u8>>(&{
                std::fs::write(&p, &good).unwrap();
                p.clone()
            })
            .unwrap_err()
            .to_string()
            .contains("unreadable state")
        );
        let _ = std::fs::remove_file(&p);
        assert!(
            load::<State>(&p)
                .unwrap_err()
                .to_string()
                .contains("snapshot")
        );
    }
}
