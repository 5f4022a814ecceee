//! A raw disk image file: its size in sectors, and reads, writes, flushes and discards at byte offsets.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

/// The sector size of the virtio-blk protocol.
pub const SECTOR_SIZE: u64 = 512;

/// Errors from opening a disk image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The file cannot be opened.
    #[error("cannot open disk image {path}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file.
    #[error("disk image {0} is not a regular file")]
    NotAFile(PathBuf),
    /// Another process (or another disk of this VM) holds the image: a writable image is locked
    /// exclusively, a read-only one shared, as QEMU does, so two VMs never write one image.
    #[error("disk image {path} is in use: {how}")]
    Locked {
        /// The image.
        path: PathBuf,
        /// What holds it.
        how: &'static str,
    },
    /// The size is not whole sectors.
    #[error("disk image {path} is {size} bytes, not a multiple of 512")]
    Size {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
}

/// An open disk image.
#[derive(Debug)]
pub struct DiskImage {
    file: File,
    sectors: u64,
    read_only: bool,
    /// The errno of the first failed `fdatasync`, 0 while none has failed. Once one has, every
    /// later flush fails too: the kernel reports a lost write-back once, and a flush that then
    /// said OK would tell the guest that data it never wrote is safe.
    flush_error: AtomicI32,
}

impl DiskImage {
    /// Opens `path` (read-only if asked: the file is then opened `O_RDONLY`). The file must be a
    /// regular file whose size is a whole number of 512-byte sectors.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, Error> {
        let open_err = |source| Error::Open {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(open_err)?;
        if !meta.is_file() {
            return Err(Error::NotAFile(path.to_owned()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        let locked = if read_only {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::Locked {
                    path: path.to_owned(),
                    how: if read_only {
                        "another VM has it open writable"
                    } else {
                        "another VM has it open"
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(open_err(e)),
        }
        let size = file.metadata().map_err(open_err)?.len();
        if !size.is_multiple_of(SECTOR_SIZE) {
            return Err(Error::Size {
                path: path.to_owned(),
                size,
            });
        }
        Ok(Self {
            file,
            sectors: size / SECTOR_SIZE,
            read_only,
            flush_error: AtomicI32::new(0),
        })
    }

    /// The capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Whether the image is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// True if `len` bytes at `offset` lie inside the image.
    pub fn contains(&self, offset: u64, len: u64) -> bool {
        offset
            .checked_add(len)
            .is_some_and(|end| end <= self.sectors * SECTOR_SIZE)
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes `buf` at `offset`.
    pub fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Makes every completed write durable (`fdatasync`). Once a flush has failed, every later one
    /// fails too, naming the first error: writes before it may be lost.
    pub fn flush(&self) -> std::io::Result<()> {
        self.flush_with(File::sync_data)
    }

    /// Makes this image behave as if a flush had failed with `errno` (tests of what the guest sees).
    #[cfg(test)]
    pub(crate) fn poison_flush(&self, errno: i32) {
        let _ = self.flush_with(|_| Err(std::io::Error::from_raw_os_error(errno)));
    }

    fn flush_with(&self, sync: impl FnOnce(&File) -> std::io::Result<()>) -> std::io::Result<()> {
        let earlier = self.flush_error.load(Ordering::Acquire);
        if earlier != 0 {
            let first = std::io::Error::from_raw_os_error(earlier);
            return Err(std::io::Error::new(
                first.kind(),
                format!("an earlier flush failed ({first}): writes may have been lost"),
            ));
        }
        sync(&self.file).inspect_err(|e| {
            let errno = e.raw_os_error().filter(|&n| n != 0).unwrap_or(libc::EIO);
            let _ =
                self.flush_error
                    .compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire);
        })
    }

    /// Deallocates `len` bytes at `offset`; they read back as zeros. Where the host filesystem cannot
    /// punch holes, writes zeros instead.
    pub fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    /// Makes `len` bytes at `offset` read as zeros (deallocating them when `unmap`).
    pub fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> std::io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        self.fallocate(mode, offset, len)
    }

    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> std::io::Result<()> {
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate on a file descriptor this struct owns, with plain integer arguments; it
        // touches no memory of this process.
        let ret = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, off, n) };
        if ret == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EOPNOTSUPP) => self.write_zeros_by_hand(offset, len),
            _ => Err(err),
        }
    }

    fn write_zeros_by_hand(&self, mut offset: u64, mut len: u64) -> std::io::Result<()> {
        const CHUNK: u64 = 64 << 10;
        let zeros = [0u8; CHUNK as usize];
        while len > 0 {
            let n = len.min(CHUNK);
            self.write_at(&zeros[..n as usize], offset)?;
            offset += n;
            len -= n;
        }
        Ok(())
    }
}

/// Temporary disk images for tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use std::fs::File;
    use std::io::Write;
    use std::path::PathBuf;

    /// A directory removed when dropped.
    pub(crate) struct Dir(pub PathBuf);

    impl Dir {
        pub(crate) fn new() -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "kvmkit-disk-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An image of `bytes` bytes of 0x5a.
    pub(crate) fn image(bytes: usize) -> (Dir, PathBuf) {
        let dir = Dir::new();
        let path = dir.0.join("disk.img");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0x5a; bytes]).unwrap();
        (dir, path)
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::image;
    use super::*;

    #[test]
    fn capacity_and_bounds() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, false).unwrap();
        assert_eq!(disk.sectors(), 8);
        assert!(disk.contains(0, 4096));
        assert!(!disk.contains(512, 4096));
        assert!(!disk.contains(u64::MAX, 2));
    }

    #[test]
    fn bad_images_are_clear_errors() {
        let (d, p) = image(1000);
        assert!(matches!(
            DiskImage::open(&p, false),
            Err(Error::Size { size: 1000, .. })
        ));
        assert!(matches!(
            DiskImage::open(&d.0, false),
            Err(Error::NotAFile(_))
        ));
        assert!(matches!(
            DiskImage::open(&d.0.join("missing"), true),
            Err(Error::Open { .. })
        ));
        assert!(
            DiskImage::open(&p, true)
                .unwrap_err()
                .to_string()
                .contains("not a multiple of 512")
        );
    }

    #[test]
    fn write_read_discard_zeroes() {
        let (_d, p) = image(8192);
        let disk = DiskImage::open(&p, false).unwrap();
        disk.write_at(b"hello", 1024).unwrap();
        let mut b = [0u8; 5];
        disk.read_at(&mut b, 1024).unwrap();
        assert_eq!(&b, b"hello");
        disk.discard(0, 4096).unwrap();
        disk.write_zeroes(4096, 512, false).unwrap();
        let mut all = vec![0xffu8; 8192];
        disk.read_at(&mut all, 0).unwrap();
        assert!(all[..4608].iter().all(|&x| x == 0));
        assert!(all[4608..].iter().all(|&x| x == 0x5a));
        disk.flush().unwrap();
    }

    #[test]
    fn a_writable_image_is_locked_against_any_other_opener() {
        let (_d, p) = image(4096);
        let writer = DiskImage::open(&p, false).unwrap();
        for read_only in [false, true] {
            let e = DiskImage::open(&p, read_only).unwrap_err();
            assert!(matches!(e, Error::Locked { .. }), "{e}");
            assert!(e.to_string().contains("in use"), "{e}");
        }
        drop(writer);
        // Readers share; a writer waits for them all to go.
        let (r1, r2) = (
            DiskImage::open(&p, true).unwrap(),
            DiskImage::open(&p, true).unwrap(),
        );
        assert!(matches!(
            DiskImage::open(&p, false),
            Err(Error::Locked { .. })
        ));
        drop((r1, r2));
        DiskImage::open(&p, false).unwrap();
    }

    #[test]
    fn after_a_failed_flush_every_later_flush_fails() {
        let (_d, p) = image(4096);
        let disk = DiskImage::open(&p, false).unwrap();
        disk.flush().unwrap();
        let e = disk
            .flush_with(|_| Err(std::io::Error::from_raw_os_error(libc::EIO)))
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        // The kernel would now report success for fdatasync: kvmkit must not.
        for _ in 0..2 {
            let later = disk.flush().unwrap_err();
            assert!(
                later.to_string().contains("earlier flush failed"),
                "{later}"
            );
        }
    }
}
