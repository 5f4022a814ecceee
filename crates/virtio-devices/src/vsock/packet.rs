//! The vsock packet (virtio 1.2, section 5.10.6): the header's operations and flags, and reading a
//! packet from a transmit chain or writing one into a receive chain with the virtio-vsock crate's
//! [`VsockPacket`].

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::VsockPacket;
use vm_memory::bitmap::{BS, BitmapSlice};
use vm_memory::{Bytes, GuestMemory, VolatileSlice};

/// The host's context ID: what the guest connects to.
pub const HOST_CID: u64 = 2;
/// The only socket type kvmkit carries: a stream.
pub const TYPE_STREAM: u16 = 1;
/// Operation: open a connection.
pub const OP_REQUEST: u16 = 1;
/// Operation: accept a connection.
pub const OP_RESPONSE: u16 = 2;
/// Operation: refuse or abort a connection.
pub const OP_RST: u16 = 3;
/// Operation: stop receiving and/or sending (flags [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
pub const OP_SHUTDOWN: u16 = 4;
/// Operation: data.
pub const OP_RW: u16 = 5;
/// Operation: the sender's receive buffer and how much of it it has consumed.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Operation: asks for an [`OP_CREDIT_UPDATE`].
pub const OP_CREDIT_REQUEST: u16 = 7;
/// Shutdown flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// Shutdown flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;
/// The largest payload of one packet, either way (what Linux sends at most).
pub const MAX_PAYLOAD: u32 = 64 << 10;
/// The size of the header.
pub const HEADER_SIZE: u32 = virtio_vsock::packet::PKT_HEADER_SIZE as u32;

/// The header of a packet the guest sent, read once from guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// The sender's context ID.
    pub src_cid: u64,
    /// The receiver's context ID.
    pub dst_cid: u64,
    /// The sender's port.
    pub src_port: u32,
    /// The receiver's port.
    pub dst_port: u32,
    /// The payload's length.
    pub len: u32,
    /// The socket type ([`TYPE_STREAM`]).
    pub type_: u16,
    /// The operation (`OP_*`).
    pub op: u16,
    /// The operation's flags.
    pub flags: u32,
    /// The sender's receive buffer size.
    pub buf_alloc: u32,
    /// How many bytes the sender has consumed of what it received.
    pub fwd_cnt: u32,
}

/// Why a chain did not hold a packet.
#[derive(Debug, thiserror::Error)]
#[error("vsock: not a packet: {0:?}")]
pub struct PacketError(pub virtio_vsock::packet::Error);

fn header_of<B: BitmapSlice>(p: &VsockPacket<'_, B>) -> Header {
    Header {
        src_cid: p.src_cid(),
        dst_cid: p.dst_cid(),
        src_port: p.src_port(),
        dst_port: p.dst_port(),
        len: p.len(),
        type_: p.type_(),
        op: p.op(),
        flags: p.flags(),
        buf_alloc: p.buf_alloc(),
        fwd_cnt: p.fwd_cnt(),
    }
}

/// Reads the packet in a transmit chain: its header, and its payload into `payload` (cleared
/// first; at most [`MAX_PAYLOAD`] bytes).
pub fn read_tx<M: GuestMemory>(
    mem: &M,
    mut chain: DescriptorChain<&M>,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    let packet =
        VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PAYLOAD).map_err(PacketError)?;
    let header = header_of(&packet);
    if let Some(data) = packet.data_slice() {
        payload.resize(data.len(), 0);
        data.copy_to(payload.as_mut_slice());
    }
    Ok(header)
}

/// A receive chain the device fills: its header and payload slices in guest memory `M`.
pub struct RxBuffer<'a, M: GuestMemory + 'a> {
    packet: VsockPacket<'a, BS<'a, M::Bitmap>>,
}

impl<'a, M: GuestMemory + 'a> RxBuffer<'a, M> {
    /// The receive chain's buffers, if they can hold a packet.
    pub fn new(mem: &'a M, chain: &mut DescriptorChain<&'a M>) -> Result<Self, PacketError> {
        let packet =
            VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PAYLOAD).map_err(PacketError)?;
        Ok(Self { packet })
    }

    /// How many payload bytes fit (at most [`MAX_PAYLOAD`]).
    pub fn room(&self) -> usize {
        self.packet
            .data_slice()
            .map_or(0, VolatileSlice::len)
            .min(MAX_PAYLOAD as usize)
    }

    /// Writes `header` (its `len` set to the payload's) and `payload` (at most [`RxBuffer::room`]
    /// bytes); returns the chain's used length.
    pub fn fill(&mut self, header: &Header, payload: &[u8]) -> u32 {
        let n = payload.len().min(self.room());
        if n > 0
            && let Some(data) = self.packet.data_slice()
        {
            // The slice is at least `room()` bytes: this cannot fall short.
            let _ = data.write_slice(&payload[..n], 0);
        }
        self.packet
            .set_src_cid(header.src_cid)
            .set_dst_cid(header.dst_cid)
            .set_src_port(header.src_port)
            .set_dst_port(header.dst_port)
            .set_len(n as u32)
            .set_type(header.type_)
            .set_op(header.op)
            .set_flags(header.flags)
            .set_buf_alloc(header.buf_alloc)
            .set_fwd_cnt(header.fwd_cnt);
        HEADER_SIZE + n as u32
    }
}
