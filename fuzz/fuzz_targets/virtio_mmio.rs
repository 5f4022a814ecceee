//! Fuzzes the virtio-mmio transport's register window as a guest drives it: any sequence of reads
//! and writes of any width at any offset (status handshake in any order, feature selectors, queue
//! selection and addresses, notifications, config space, interrupt acknowledge). The device behind
//! it is a stand-in that activates without a thread. A panic is a finding; so is a device that
//! activates with a queue the transport did not check.
//!
//! Input: a list of 10-byte operations: 1 byte kind (even: read, odd: write), 1 byte width (1, 2, 4
//! or 8 by its low two bits), 4 bytes offset (within 0x200), 4 bytes value.

#![no_main]

use bus::BusDevice;
use kvmkit_memory::GuestMemoryMmap;
use kvmkit_virtio::{
    ActivateError, Activation, DeviceModel, MmioTransport, VIRTIO_F_VERSION_1, VirtioDevice,
};
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// A device with two queues and 16 bytes of config, which checks what it is activated with.
struct StandIn {
    config: [u8; 16],
    mem: GuestMemoryMmap,
}

impl DeviceModel for StandIn {
    fn device_type(&self) -> u32 {
        4
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[64, 256]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | 1
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(src) = usize::try_from(offset).ok().and_then(|o| self.config.get(o..)) {
            let n = src.len().min(data.len());
            data[..n].copy_from_slice(&src[..n]);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset).ok().and_then(|o| self.config.get_mut(o..)) {
            let n = dst.len().min(data.len());
            dst[..n].copy_from_slice(&data[..n]);
        }
    }
    fn reset(&mut self) {}
}

impl VirtioDevice for StandIn {
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        assert_eq!(a.features & !self.features(), 0, "features the device did not offer");
        for q in &a.queues {
            // The transport only activates queues whose rings lie in guest memory.
            assert!(q.queue.is_valid(&self.mem), "a queue with rings outside memory");
        }
        Ok(())
    }
}

const MEM: usize = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let device = StandIn {
        config: [0; 16],
        mem: mem.clone(),
    };
    let Ok(mut t) = MmioTransport::new(Box::new(device), mem, irq) else {
        return;
    };
    for op in data.chunks_exact(10) {
        let width = 1usize << (op[1] & 3);
        let offset = u64::from(u32::from_le_bytes([op[2], op[3], op[4], op[5]]) % 0x200);
        let value = u64::from(u32::from_le_bytes([op[6], op[7], op[8], op[9]]));
        let mut buf = value.to_le_bytes();
        if op[0] & 1 == 0 {
            t.read(0, offset, &mut buf[..width]);
        } else {
            t.write(0, offset, &buf[..width]);
        }
    }
});
