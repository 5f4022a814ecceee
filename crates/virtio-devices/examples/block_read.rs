//! A virtio-blk disk on a small image file, driven by the fake driver device tests use: the driver
//! reads sector 1 and writes sector 2 as a guest's virtio_blk would (a request header, the data, a
//! status byte), and the example checks what reached the guest's buffer and the image.
//!
//! `cargo run -p kvmkit-virtio-devices --example block_read` (no /dev/kvm needed).

use kvmkit_virtio_devices::{Block, BlockConfig};
use virtio::testing::{FakeDriver, R, W};

const HEADER: u64 = 0x4_0000;
const DATA: u64 = 0x5_0000;
const STATUS: u64 = 0x6_0000;

/// A request header: type (0 read, 1 write), reserved, sector.
fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let image = std::env::temp_dir().join(format!("kvmkit-example-{}.img", std::process::id()));
    let mut bytes = vec![0u8; 4 * 512];
    bytes[512..1024].fill(b'B');
    std::fs::write(&image, &bytes)?;
    let disk = Block::new(
        "vda",
        &BlockConfig::new(image.clone()).serial(Some("example".into())),
    )?;
    println!("vda: {} sectors", disk.sectors());

    let mut d = FakeDriver::new(Box::new(disk), 1 << 20, 16);
    d.start(virtio::VIRTIO_F_VERSION_1);

    d.write(HEADER, &header(0, 1));
    d.add(0, &[(HEADER, 16, R), (DATA, 512, W), (STATUS, 1, W)]);
    d.kick(0);
    let (_, len) = d.wait_used(0, 1)[0];
    let data = d.read(DATA, 512);
    println!(
        "read sector 1: status {}, {len} bytes used, first bytes {:?}",
        d.read(STATUS, 1)[0],
        String::from_utf8_lossy(&data[..8])
    );
    assert!(data.iter().all(|&b| b == b'B'));

    d.write(HEADER, &header(1, 2));
    d.write(DATA, &[b'W'; 512]);
    d.add(0, &[(HEADER, 16, R), (DATA, 512, R), (STATUS, 1, W)]);
    d.kick(0);
    d.wait_used(0, 1);
    let on_disk = std::fs::read(&image)?;
    println!(
        "wrote sector 2: status {}, the image holds {:?}",
        d.read(STATUS, 1)[0],
        String::from_utf8_lossy(&on_disk[1024..1032])
    );
    assert!(on_disk[1024..1536].iter().all(|&b| b == b'W'));
    std::fs::remove_file(&image)?;
    Ok(())
}
