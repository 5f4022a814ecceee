//! The block device's requests: what the device's [`virtio::QueueHandler`] does with each descriptor
//! chain, on the device's worker thread, off the vCPU threads: parse it, carry it out on the image,
//! write the status byte.

use std::sync::Arc;

use virtio::ChainHandler;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::disk::DiskImage;
use super::execute::{STATUS_IOERR, STATUS_OK, execute};
use super::request::parse;

/// Answers virtio-blk requests on one disk image.
#[derive(Debug)]
pub struct Requests {
    name: String,
    disk: Arc<DiskImage>,
    serial: Vec<u8>,
}

impl Requests {
    /// Requests to `disk`, whose GET_ID answer is `serial`; `name` prefixes log lines.
    pub fn new(name: &str, disk: Arc<DiskImage>, serial: Vec<u8>) -> Self {
        Self {
            name: name.to_owned(),
            disk,
            serial,
        }
    }
}

impl ChainHandler for Requests {
    /// Answers one request; returns the used length (bytes written into the chain, status included).
    fn handle(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
        match parse(chain, mem) {
            Ok(req) => {
                let (status, written) = match execute(&req, mem, &self.disk, &self.serial) {
                    Ok(n) => (STATUS_OK, n),
                    Err(e) => {
                        log::warn!(
                            "{}: {:?} request at sector {}: {e}",
                            self.name,
                            req.kind,
                            req.sector
                        );
                        (e.status(), 0)
                    }
                };
                self.write_status(mem, req.status, status);
                written.saturating_add(1)
            }
            Err((e, Some(status))) => {
                log::warn!("{}: malformed request: {e}", self.name);
                self.write_status(mem, status, STATUS_IOERR);
                1
            }
            Err((e, None)) => {
                log::warn!("{}: malformed request dropped: {e}", self.name);
                0
            }
        }
    }
}

impl Requests {
    fn write_status(&self, mem: &GuestMemoryMmap, at: vm_memory::GuestAddress, status: u8) {
        // The parser checked the status byte is in guest memory.
        if let Err(e) = mem.write_obj(status, at) {
            log::warn!("{}: cannot write the request status: {e}", self.name);
        }
    }
}
