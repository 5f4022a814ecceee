//! Parsing a virtio-blk request out of a descriptor chain, trusting nothing in it.
//!
//! A request is a device-readable 16-byte header (type, reserved, sector), data buffers (written by
//! the device for reads, read by it for writes), and a device-writable status byte at the end:
//!
//! ```text
//! [ header: R, 16 bytes ] [ data: W (IN, GET_ID) or R (OUT, DISCARD, WRITE_ZEROES) ]* [ status: W, 1 byte ]
//! ```
//!
//! Every way a guest can get this wrong is a [`ParseError`]: a chain that loops or leaves the
//! descriptor table, a header that is write-only or short, buffers that run in the wrong direction or
//! outside guest memory, lengths that overflow.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// The size of the request header.
pub const HEADER_SIZE: u32 = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into the data buffers.
    In,
    /// Write the data buffers to sectors.
    Out,
    /// Make completed writes durable.
    Flush,
    /// Return the device serial (up to 20 bytes).
    GetId,
    /// Deallocate sector ranges (the data holds 16-byte segments).
    Discard,
    /// Zero sector ranges (the data holds 16-byte segments).
    WriteZeroes,
    /// A type this device does not implement.
    Unsupported(u32),
}

impl RequestType {
    fn from_raw(t: u32) -> Self {
        match t {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }

    /// Whether the request changes the image (write, discard, write-zeroes).
    pub fn writes(self) -> bool {
        matches!(self, Self::Out | Self::Discard | Self::WriteZeroes)
    }

    /// Whether the device writes the data buffers (rather than reading them).
    fn device_writes_data(self) -> bool {
        matches!(self, Self::In | Self::GetId)
    }
}

/// One data buffer in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Where it is.
    pub addr: GuestAddress,
    /// How long it is.
    pub len: u32,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What it asks for.
    pub kind: RequestType,
    /// The first sector (IN and OUT).
    pub sector: u64,
    /// The data buffers, all inside guest memory and all in the direction `kind` needs.
    pub data: Vec<Segment>,
    /// Their total length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

/// Why a chain is not a request. The chain is returned to the guest unanswered when there is no
/// status byte to write, or with `VIRTIO_BLK_S_IOERR` when there is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The chain has no descriptors at all (its head is outside the descriptor table).
    #[error("empty descriptor chain")]
    Empty,
    /// The chain loops, leaves the descriptor table, or is longer than the queue.
    #[error("descriptor chain loops, leaves its table or exceeds the queue size")]
    Truncated,
    /// Header and status need at least two descriptors.
    #[error("descriptor chain of {0} descriptor(s) cannot hold a header and a status")]
    TooShort(usize),
    /// The header descriptor is device-writable.
    #[error("request header is in a write-only descriptor")]
    HeaderWriteOnly,
    /// The header descriptor is shorter than 16 bytes.
    #[error("request header descriptor is {0} bytes, not 16")]
    HeaderTooShort(u32),
    /// The header is not in guest memory.
    #[error("request header at {0:#x} is outside guest memory")]
    HeaderUnreadable(u64),
    /// The status descriptor is not device-writable or is empty.
    #[error("status descriptor is not a writable byte")]
    BadStatus,
    /// The status byte is not in guest memory.
    #[error("status byte at {0:#x} is outside guest memory")]
    StatusOutOfMemory(u64),
    /// A data buffer runs in the wrong direction for the request type.
    #[error("data descriptor {index} is {found} for a {kind:?} request")]
    Direction {
        /// Its position in the chain.
        index: usize,
        /// "write-only" or "read-only".
        found: &'static str,
        /// The request type.
        kind: RequestType,
    },
    /// A data buffer is not (wholly) in guest memory.
    #[error("data buffer {addr:#x}+{len} is outside guest memory")]
    DataOutOfMemory {
        /// Its address.
        addr: u64,
        /// Its length.
        len: u32,
    },
}

/// Parses the descriptors of one chain. `Err` carries the address of a usable status byte, if the
/// chain has one, so the caller can still answer `VIRTIO_BLK_S_IOERR`.
pub fn parse<M: GuestMemory>(
    descriptors: impl Iterator<Item = Descriptor>,
    mem: &M,
) -> Result<Request, (ParseError, Option<GuestAddress>)> {
    let descs: Vec<Descriptor> = descriptors.collect();
    let last = descs.last().ok_or((ParseError::Empty, None))?;
    // The iterator stops early (on a loop, an index outside the table, an unreadable descriptor, or
    // more descriptors than the queue has) and then its last descriptor still says "next".
    if last.has_next() {
        return Err((ParseError::Truncated, None));
    }
    // From here on the status byte, if usable, gets the error.
    let status = (last.is_write_only()
        && last.len() >= 1
        && mem.check_range(last.addr(), 1, Permissions::Write))
    .then_some(last.addr());
    let fail = |e| Err((e, status));
    if descs.len() < 2 {
        return fail(ParseError::TooShort(descs.len()));
    }
    if !last.is_write_only() || last.len() == 0 {
        return fail(ParseError::BadStatus);
    }
    let Some(status_addr) = status else {
        return fail(ParseError::StatusOutOfMemory(last.addr().0));
    };

    let header = descs[0];
    if header.is_write_only() {
        return fail(ParseError::HeaderWriteOnly);
    }
    if header.len() < HEADER_SIZE {
        return fail(ParseError::HeaderTooShort(header.len()));
    }
    let mut raw = [0u8; HEADER_SIZE as usize];
    if mem.read_slice(&mut raw, header.addr()).is_err() {
        return fail(ParseError::HeaderUnreadable(header.addr().0));
    }
    let kind = RequestType::from_raw(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
    let sector = u64::from_le_bytes([
        raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15],
    ]);

    let mut data = Vec::with_capacity(descs.len() - 2);
    let mut data_len = 0u64;
    for (i, d) in descs[1..descs.len() - 1].iter().enumerate() {
        let index = i + 1;
        if d.is_write_only() != kind.device_writes_data() && kind != RequestType::Flush {
            return fail(ParseError::Direction {
                index,
                found: if d.is_write_only() {
                    "write-only"
                } else {
                    "read-only"
                },
                kind,
            });
        }
        let access = if d.is_write_only() {
            Permissions::Write
        } else {
            Permissions::Read
        };
        if !mem.check_range(d.addr(), d.len() as usize, access) {
            return fail(ParseError::DataOutOfMemory {
                addr: d.addr().0,
                len: d.len(),
            });
        }
        // At most 2^16 descriptors of at most 2^32 bytes: a u64 cannot overflow.
        data_len += u64::from(d.len());
        data.push(Segment {
            addr: d.addr(),
            len: d.len(),
        });
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status: status_addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use memory::GuestMemoryMmap;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    const R: u16 = 0;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    /// A chain of `(addr, len, flags)`; every descriptor but the last says NEXT.
    fn chain(descs: &[(u64, u32, u16)]) -> Vec<Descriptor> {
        descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let next = if i + 1 < descs.len() {
                    VRING_DESC_F_NEXT as u16
                } else {
                    0
                };
                Descriptor::new(addr, len, flags | next, (i + 1) as u16)
            })
            .collect()
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn a_read_request() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 7);
        let req = parse(
            chain(&[
                (0x1000, 16, R),
                (0x2000, 512, W),
                (0x3000, 1024, W),
                (0x4000, 1, W),
            ])
            .into_iter(),
            &m,
        )
        .unwrap();
        assert_eq!(req.kind, RequestType::In);
        assert_eq!(req.sector, 7);
        assert_eq!(req.data_len, 1536);
        assert_eq!(req.data.len(), 2);
        assert_eq!(req.status, GuestAddress(0x4000));
    }

    #[test]
    fn a_flush_has_no_data_and_unknown_types_parse_as_unsupported() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_FLUSH, 0);
        let req = parse(chain(&[(0x1000, 16, R), (0x4000, 1, W)]).into_iter(), &m).unwrap();
        assert_eq!((req.kind, req.data_len), (RequestType::Flush, 0));
        header(&m, 0x1000, 99, 0);
        let req = parse(chain(&[(0x1000, 16, R), (0x4000, 1, W)]).into_iter(), &m).unwrap();
        assert_eq!(req.kind, RequestType::Unsupported(99));
    }

    #[test]
    fn broken_chains_are_errors_with_the_status_when_it_is_usable() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        let status = Some(GuestAddress(0x4000));
        let cases: Vec<(Vec<Descriptor>, ParseError, Option<GuestAddress>)> = vec![
            (vec![], ParseError::Empty, None),
            (chain(&[(0x4000, 1, W)]), ParseError::TooShort(1), status),
            (
                chain(&[(0x1000, 16, W), (0x4000, 1, W)]),
                ParseError::HeaderWriteOnly,
                status,
            ),
            (
                chain(&[(0x1000, 8, R), (0x4000, 1, W)]),
                ParseError::HeaderTooShort(8),
                status,
            ),
            (
                chain(&[(0xffff_ffff_0000, 16, R), (0x4000, 1, W)]),
                ParseError::HeaderUnreadable(0xffff_ffff_0000),
                status,
            ),
            (
                chain(&[(0x1000, 16, R), (0x4000, 1, R)]),
                ParseError::BadStatus,
                None,
            ),
            (
                chain(&[(0x1000, 16, R), (0x4000, 0, W)]),
                ParseError::BadStatus,
                None,
            ),
            (
                chain(&[(0x1000, 16, R), (1 << 20, 1, W)]),
                ParseError::StatusOutOfMemory(1 << 20),
                None,
            ),
            (
                chain(&[(0x1000, 16, R), (0x2000, 512, R), (0x4000, 1, W)]),
                ParseError::Direction {
                    index: 1,
                    found: "read-only",
                    kind: RequestType::In,
                },
                status,
            ),
            (
                chain(&[(0x1000, 16, R), (0xf_f000, 0x2000, W), (0x4000, 1, W)]),
                ParseError::DataOutOfMemory {
                    addr: 0xf_f000,
                    len: 0x2000,
                },
                status,
            ),
            (
                chain(&[(0x1000, 16, R), (u64::MAX - 10, 512, W), (0x4000, 1, W)]),
                ParseError::DataOutOfMemory {
                    addr: u64::MAX - 10,
                    len: 512,
                },
                status,
            ),
        ];
        for (descs, err, st) in cases {
            assert_eq!(
                parse(descs.into_iter(), &m),
                Err((err.clone(), st)),
                "{err}"
            );
        }
    }

    #[test]
    fn a_chain_cut_short_by_the_queue_walk_is_truncated() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_IN, 0);
        // The walk stopped (a loop, say) on a descriptor that still says NEXT.
        let mut descs = chain(&[(0x1000, 16, R), (0x2000, 512, W), (0x4000, 1, W)]);
        descs.truncate(2);
        assert_eq!(
            parse(descs.into_iter(), &m),
            Err((ParseError::Truncated, None))
        );
    }

    #[test]
    fn a_write_needs_readable_data() {
        let m = mem();
        header(&m, 0x1000, VIRTIO_BLK_T_OUT, 3);
        let ok = parse(
            chain(&[(0x1000, 16, R), (0x2000, 512, R), (0x4000, 1, W)]).into_iter(),
            &m,
        )
        .unwrap();
        assert_eq!(
            (ok.kind, ok.sector, ok.data_len),
            (RequestType::Out, 3, 512)
        );
        assert!(matches!(
            parse(
                chain(&[(0x1000, 16, R), (0x2000, 512, W), (0x4000, 1, W)]).into_iter(),
                &m
            ),
            Err((ParseError::Direction { .. }, Some(_)))
        ));
    }
}
