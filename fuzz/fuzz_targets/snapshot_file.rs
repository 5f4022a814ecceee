//! Fuzzes snapshot files as `--restore` and `PUT /snapshot/load` read them: the header (magic,
//! version, length, checksum) and the JSON state of every vCPU, KVM's VM state and every device.
//! Half the inputs get a correct header and checksum around the fuzzed body, so the state parser is
//! reached. A panic is a finding: a damaged or hostile file must be a clear error.

#![no_main]

use std::io::Write;

use kvmkit::snapshot::SnapshotState;
use kvmkit::snapshot::format::{FORMAT_VERSION, HEADER_LEN, MAGIC, load};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let path = std::env::temp_dir().join(format!("kvmkit-fuzz-snap-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).unwrap();
    if mode & 1 == 1 {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        header[16..24].copy_from_slice(&(rest.len() as u64).to_le_bytes());
        header[24..28].copy_from_slice(&crc32fast::hash(rest).to_le_bytes());
        file.write_all(&header).unwrap();
    }
    file.write_all(rest).unwrap();
    drop(file);
    let _ = load::<SnapshotState>(&path);
    let _ = std::fs::remove_file(&path);
});
