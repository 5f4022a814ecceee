//! Carrying out a parsed request on the disk image, and the status the guest gets back.

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use vm_memory::{Bytes, GuestMemory};

use super::disk::{DiskImage, SECTOR_SIZE};
use super::request::{Request, RequestType, Segment};

/// Bytes copied between guest memory and the image per step: a guest's 4 GiB buffer never becomes a
/// 4 GiB allocation.
const CHUNK: usize = 64 << 10;
/// The size of one discard / write-zeroes range in the data.
const RANGE_SIZE: u64 = 16;
/// The most ranges one discard or write-zeroes request may carry (the config's `max_*_seg`).
pub const MAX_RANGES: u32 = 16;
/// The most sectors one discard or write-zeroes range may cover (the config's
/// `max_discard_sectors` and `max_write_zeroes_sectors`): 2 GiB.
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;

/// Why a request failed (the guest gets `VIRTIO_BLK_S_IOERR` or `VIRTIO_BLK_S_UNSUPP`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sectors are past the end of the disk.
    #[error("sectors {sector}+{bytes} bytes are past the end of the disk")]
    OutOfRange {
        /// The first sector.
        sector: u64,
        /// The length.
        bytes: u64,
    },
    /// A read or write is not whole sectors.
    #[error("data of {0} bytes is not whole sectors")]
    Unaligned(u64),
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A malformed discard / write-zeroes payload.
    #[error("bad discard/write-zeroes ranges: {0}")]
    Ranges(&'static str),
    /// The type is not implemented.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
    /// A discard or write-zeroes range with flags the device does not know, or a discard asking
    /// to unmap (the spec has the device answer both `VIRTIO_BLK_S_UNSUPP`).
    #[error("unsupported {kind} flags {flags:#x}")]
    UnsupportedFlags {
        /// "discard" or "write-zeroes".
        kind: &'static str,
        /// The range's flags.
        flags: u32,
    },
    /// Guest memory could not be accessed.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The image could not be read or written.
    #[error("disk image: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The virtio-blk status for this error.
    pub fn status(&self) -> u8 {
        match self {
            Self::Unsupported(_) | Self::UnsupportedFlags { .. } => VIRTIO_BLK_S_UNSUPP as u8,
            _ => STATUS_IOERR,
        }
    }
}

/// The status byte for success.
pub const STATUS_OK: u8 = VIRTIO_BLK_S_OK as u8;
/// The status byte for an I/O error (also what a malformed request gets).
pub const STATUS_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

/// Carries out `req`. Returns how many bytes the device wrote into the data buffers (the used
/// length, without the status byte).
pub fn execute<M: GuestMemory>(
    req: &Request,
    mem: &M,
    disk: &DiskImage,
    serial: &[u8],
) -> Result<u32, Error> {
    match req.kind {
        RequestType::In => {
            let offset = sector_range(req, disk)?;
            copy_segments(&req.data, offset, |buf, seg_addr, disk_off| {
                disk.read_at(buf, disk_off)?;
                mem.write_slice(buf, seg_addr)?;
                Ok(())
            })?;
            // data_len fits: a chain carries less than 2^32 bytes.
            Ok(u32::try_from(req.data_len).unwrap_or(u32::MAX))
        }
        RequestType::Out => {
            if disk.read_only() {
                return Err(Error::ReadOnly);
            }
            let offset = sector_range(req, disk)?;
            copy_segments(&req.data, offset, |buf, seg_addr, disk_off| {
                mem.read_slice(buf, seg_addr)?;
                disk.write_at(buf, disk_off)?;
                Ok(())
            })?;
            Ok(0)
        }
        RequestType::Flush => {
            disk.flush()?;
            Ok(0)
        }
        RequestType::GetId => {
            let mut id = [0u8; VIRTIO_BLK_ID_BYTES as usize];
            let n = serial.len().min(id.len());
            id[..n].copy_from_slice(&serial[..n]);
            let mut written = 0usize;
            for seg in &req.data {
                let take = (seg.len as usize).min(id.len() - written);
                mem.write_slice(&id[written..written + take], seg.addr)?;
                written += take;
            }
            Ok(written as u32)
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if disk.read_only() {
                return Err(Error::ReadOnly);
            }
            // Every range is checked before any is carried out: a bad one fails the request
            // without half of it done.
            let ranges = ranges(req, mem)?
                .into_iter()
                .map(|r| checked_range(req.kind, r, disk))
                .collect::<Result<Vec<_>, _>>()?;
            for (offset, len, unmap) in ranges.into_iter().filter(|r| r.1 > 0) {
                if req.kind == RequestType::Discard {
                    disk.discard(offset, len)?;
                } else {
                    disk.write_zeroes(offset, len, unmap)?;
                }
            }
            Ok(0)
        }
        RequestType::Unsupported(t) => Err(Error::Unsupported(t)),
    }
}

/// The byte offset of an IN/OUT request, checked: whole sectors, inside the disk.
fn sector_range(req: &Request, disk: &DiskImage) -> Result<u64, Error> {
    if !req.data_len.is_multiple_of(SECTOR_SIZE) {
        return Err(Error::Unaligned(req.data_len));
    }
    req.sector
        .checked_mul(SECTOR_SIZE)
        .filter(|&offset| disk.contains(offset, req.data_len))
        .ok_or(Error::OutOfRange {
            sector: req.sector,
            bytes: req.data_len,
        })
}

/// The byte offset, length and unmap flag of one discard / write-zeroes range, checked: flags the
/// spec allows, at most [`MAX_RANGE_SECTORS`], no overflow, inside the disk.
fn checked_range(
    kind: RequestType,
    (sector, sectors, flags): (u64, u32, u32),
    disk: &DiskImage,
) -> Result<(u64, u64, bool), Error> {
    let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
    let (name, allowed) = match kind {
        RequestType::Discard => ("discard", 0),
        _ => ("write-zeroes", VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP),
    };
    if flags & !allowed != 0 {
        return Err(Error::UnsupportedFlags { kind: name, flags });
    }
    if sectors > MAX_RANGE_SECTORS {
        return Err(Error::Ranges("a range is larger than the device's maximum"));
    }
    let len = u64::from(sectors) * SECTOR_SIZE;
    sector
        .checked_mul(SECTOR_SIZE)
        .filter(|&offset| disk.contains(offset, len))
        .map(|offset| (offset, len, unmap))
        .ok_or(Error::OutOfRange { sector, bytes: len })
}

/// Walks the segments in chunks of at most [`CHUNK`] bytes, calling `step(buffer, guest address,
/// disk offset)` for each.
fn copy_segments(
    segments: &[Segment],
    mut disk_off: u64,
    mut step: impl FnMut(&mut [u8], vm_memory::GuestAddress, u64) -> Result<(), Error>,
) -> Result<(), Error> {
    // As large as the largest segment needs, at most CHUNK: a 4 KiB read zeroes 4 KiB, not 64.
    let largest = segments.iter().map(|s| s.len as usize).max().unwrap_or(0);
    let mut buf = vec![0u8; largest.min(CHUNK)];
    for seg in segments {
        let mut done = 0usize;
        let len = seg.len as usize;
        while done < len {
            let n = (len - done).min(CHUNK);
            // Segments were checked to lie inside guest memory, so this cannot overflow.
            let addr = vm_memory::GuestAddress(seg.addr.0 + done as u64);
            step(&mut buf[..n], addr, disk_off)?;
            done += n;
            disk_off += n as u64;
        }
    }
    Ok(())
}

/// The `(sector, num_sectors, flags)` ranges of a discard or write-zeroes request.
fn ranges<M: GuestMemory>(req: &Request, mem: &M) -> Result<Vec<(u64, u32, u32)>, Error> {
    if req.data_len == 0 || !req.data_len.is_multiple_of(RANGE_SIZE) {
        return Err(Error::Ranges("payload is not whole 16-byte ranges"));
    }
    if req.data_len / RANGE_SIZE > u64::from(MAX_RANGES) {
        return Err(Error::Ranges("too many ranges"));
    }
    let mut payload = Vec::with_capacity(req.data_len as usize);
    for seg in &req.data {
        let start = payload.len();
        payload.resize(start + seg.len as usize, 0);
        mem.read_slice(&mut payload[start..], seg.addr)?;
    }
    Ok(payload
        .chunks_exact(RANGE_SIZE as usize)
        .map(|r| {
            let u32_at = |at: usize| u32::from_le_bytes([r[at], r[at + 1], r[at + 2], r[at + 3]]);
            let sector = u64::from(u32_at(0)) | u64::from(u32_at(4)) << 32;
            (sector, u32_at(8), u32_at(12))
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::disk::tests_support::image;
    use memory::GuestMemoryMmap;
    use vm_memory::GuestAddress;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn req(kind: RequestType, sector: u64, data: &[(u64, u32)]) -> Request {
        Request {
            kind,
            sector,
            data: data
                .iter()
                .map(|&(a, l)| Segment {
                    addr: GuestAddress(a),
                    len: l,
                })
                .collect(),
            data_len: data.iter().map(|&(_, l)| u64::from(l)).sum(),
            status: GuestAddress(0x8000),
        }
    }

    #[test]
    fn write_then_read_back_across_segments() {
        let (_d, p) = image(64 << 10);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        let data: Vec<u8> = (0..1024u32).map(|i| i as u8).collect();
        m.write_slice(&data, GuestAddress(0x1000)).unwrap();
        let w = req(RequestType::Out, 4, &[(0x1000, 512), (0x1200, 512)]);
        assert_eq!(execute(&w, &m, &disk, b"").unwrap(), 0);
        let r = req(RequestType::In, 4, &[(0x4000, 1024)]);
        assert_eq!(execute(&r, &m, &disk, b"").unwrap(), 1024);
        let mut back = vec![0u8; 1024];
        m.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
        assert_eq!(back, data);
        let mut on_disk = vec![0u8; 1024];
        disk.read_at(&mut on_disk, 4 * 512).unwrap();
        assert_eq!(on_disk, data, "the bytes are in the image file");
    }

    #[test]
    fn out_of_range_unaligned_and_overflowing_sectors_are_ioerr() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        for r in [
            req(RequestType::In, 8, &[(0x1000, 512)]),
            req(RequestType::In, 7, &[(0x1000, 1024)]),
            req(RequestType::Out, u64::MAX / 256, &[(0x1000, 512)]),
            req(RequestType::In, 0, &[(0x1000, 100)]),
        ] {
            let e = execute(&r, &m, &disk, b"").unwrap_err();
            assert_eq!(e.status(), VIRTIO_BLK_S_IOERR as u8, "{e}");
        }
    }

    #[test]
    fn read_only_disks_refuse_writes_discards_and_zeroes_but_read_and_flush() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, true).unwrap();
        let m = mem();
        for kind in [
            RequestType::Out,
            RequestType::Discard,
            RequestType::WriteZeroes,
        ] {
            let e = execute(&req(kind, 0, &[(0x1000, 512)]), &m, &disk, b"").unwrap_err();
            assert!(matches!(e, Error::ReadOnly), "{kind:?}");
        }
        execute(&req(RequestType::In, 0, &[(0x1000, 512)]), &m, &disk, b"").unwrap();
        execute(&req(RequestType::Flush, 0, &[]), &m, &disk, b"").unwrap();
        let mut b = [0u8; 4096];
        disk.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0x5a), "the image is untouched");
    }

    #[test]
    fn get_id_is_the_serial_zero_padded() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, true).unwrap();
        let m = mem();
        m.write_slice(&[0xff; 20], GuestAddress(0x1000)).unwrap();
        let n = execute(
            &req(RequestType::GetId, 0, &[(0x1000, 20)]),
            &m,
            &disk,
            b"disk-7",
        )
        .unwrap();
        assert_eq!(n, 20);
        let mut id = [0u8; 20];
        m.read_slice(&mut id, GuestAddress(0x1000)).unwrap();
        assert_eq!(&id[..6], b"disk-7");
        assert!(id[6..].iter().all(|&x| x == 0));
    }

    #[test]
    fn discard_and_write_zeroes_ranges() {
        let (_d, p) = image(8192);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        let range = |sector: u64, n: u32, flags: u32| {
            let mut r = sector.to_le_bytes().to_vec();
            r.extend_from_slice(&n.to_le_bytes());
            r.extend_from_slice(&flags.to_le_bytes());
            r
        };
        m.write_slice(&range(0, 2, 0), GuestAddress(0x1000))
            .unwrap();
        execute(
            &req(RequestType::Discard, 0, &[(0x1000, 16)]),
            &m,
            &disk,
            b"",
        )
        .unwrap();
        m.write_slice(&range(4, 1, 1), GuestAddress(0x1000))
            .unwrap();
        execute(
            &req(RequestType::WriteZeroes, 0, &[(0x1000, 16)]),
            &m,
            &disk,
            b"",
        )
        .unwrap();
        let mut b = vec![0u8; 8192];
        disk.read_at(&mut b, 0).unwrap();
        assert!(b[..1024].iter().all(|&x| x == 0));
        assert!(b[1024..2048].iter().all(|&x| x == 0x5a));
        assert!(b[2048..2560].iter().all(|&x| x == 0));
        // Ranges past the end, short payloads and too many ranges are errors.
        m.write_slice(&range(15, 2, 0), GuestAddress(0x1000))
            .unwrap();
        for len in [16, 15, 16 * 17] {
            let r = req(RequestType::Discard, 0, &[(0x1000, len)]);
            assert!(
                execute(&r, &m, &disk, b"").is_err(),
                "payload of {len} bytes"
            );
        }
    }

    /// One 16-byte discard / write-zeroes range at 0x1000.
    fn put_range(m: &GuestMemoryMmap, sector: u64, sectors: u32, flags: u32) {
        let mut r = sector.to_le_bytes().to_vec();
        r.extend_from_slice(&sectors.to_le_bytes());
        r.extend_from_slice(&flags.to_le_bytes());
        m.write_slice(&r, GuestAddress(0x1000)).unwrap();
    }

    #[test]
    fn ranges_whose_byte_offset_wraps_are_refused_and_touch_nothing() {
        // 2^55 sectors * 512 wraps to byte 0 in a u64: without checked arithmetic the request
        // zeroed sectors 0-7 and said OK.
        let (_d, p) = image(8192);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        for sector in [1u64 << 55, u64::MAX, (u64::MAX / 512) + 1] {
            for kind in [RequestType::Discard, RequestType::WriteZeroes] {
                put_range(&m, sector, 8, 0);
                let e = execute(&req(kind, 0, &[(0x1000, 16)]), &m, &disk, b"").unwrap_err();
                assert!(
                    matches!(e, Error::OutOfRange { .. }),
                    "{kind:?} {sector}: {e}"
                );
                assert_eq!(e.status(), STATUS_IOERR);
            }
        }
        let mut b = vec![0u8; 8192];
        disk.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0x5a), "the image is untouched");
    }

    #[test]
    fn range_limits_and_flags_follow_the_spec() {
        let (_d, p) = image(8192);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        let run = |kind, sector, sectors, flags| {
            put_range(&m, sector, sectors, flags);
            execute(&req(kind, 0, &[(0x1000, 16)]), &m, &disk, b"")
        };
        let (d, z) = (RequestType::Discard, RequestType::WriteZeroes);
        // Larger than max_discard_sectors / max_write_zeroes_sectors: IOERR.
        for kind in [d, z] {
            let e = run(kind, 0, MAX_RANGE_SECTORS + 1, 0).unwrap_err();
            assert!(matches!(e, Error::Ranges(_)), "{e}");
        }
        // A discard with the unmap flag, or either with an unknown flag: UNSUPP.
        for (kind, flags) in [(d, 1), (d, 2), (z, 2), (z, 1 << 31)] {
            let e = run(kind, 0, 1, flags).unwrap_err();
            assert_eq!(
                e.status(),
                VIRTIO_BLK_S_UNSUPP as u8,
                "{kind:?} {flags:#x}: {e}"
            );
        }
        let mut b = vec![0u8; 8192];
        disk.read_at(&mut b, 0).unwrap();
        assert!(b.iter().all(|&x| x == 0x5a), "nothing was done");
        // Write-zeroes with unmap is fine; so is a range of zero sectors.
        run(z, 1, 1, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP).unwrap();
        run(d, 3, 0, 0).unwrap();
        disk.read_at(&mut b, 0).unwrap();
        assert!(b[512..1024].iter().all(|&x| x == 0));
        assert!(b[..512].iter().chain(&b[1024..]).all(|&x| x == 0x5a));
    }

    #[test]
    fn a_bad_range_fails_the_request_before_any_range_is_done() {
        let (_d, p) = image(8192);
        let disk = DiskImage::open(&p, false).unwrap();
        let m = mem();
        let mut two = Vec::new();
        for (sector, n) in [(0u64, 2u32), (1 << 55, 8)] {
            two.extend_from_slice(&sector.to_le_bytes());
            two.extend_from_slice(&n.to_le_bytes());
            two.extend_from_slice(&0u32.to_le_bytes());
        }
        m.write_slice(&two, GuestAddress(0x1000)).unwrap();
        let r = req(RequestType::WriteZeroes, 0, &[(0x1000, 32)]);
        execute(&r, &m, &disk, b"").unwrap_err();
        let mut b = vec![0u8; 1024];
        disk.read_at(&mut b, 0).unwrap();
        assert!(
            b.iter().all(|&x| x == 0x5a),
            "the first range was not done either"
        );
    }

    #[test]
    fn unsupported_types_say_so() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, false).unwrap();
        let e = execute(
            &req(RequestType::Unsupported(99), 0, &[]),
            &mem(),
            &disk,
            b"",
        )
        .unwrap_err();
        assert_eq!(e.status(), VIRTIO_BLK_S_UNSUPP as u8);
    }
}
