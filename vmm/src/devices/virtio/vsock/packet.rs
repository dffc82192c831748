//! vsock packet header and the guest-facing parsing of tx/rx descriptor chains.

use std::io::{Read, Write};

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;
/// Largest payload accepted in one packet (Linux uses at most 64 KiB).
pub const MAX_PKT_DATA: usize = 64 * 1024;

/// `struct virtio_vsock_hdr` (little endian, packed, 44 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: plain old data, packed, every bit pattern is a valid value.
unsafe impl ByteValued for Header {}

pub const HDR_SIZE: usize = std::mem::size_of::<Header>();

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("descriptor chain is invalid or outside guest memory")]
    BadChain,
    #[error("packet shorter than its header")]
    Short,
    #[error("packet claims {0} bytes of payload, more than allowed or present")]
    BadLength(u32),
}

/// A packet the guest sent: header plus payload copied out of guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub hdr: Header,
    pub data: Vec<u8>,
}

/// Parses a tx chain: header then `hdr.len` payload bytes from the readable descriptors.
pub fn parse_tx<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<TxPacket, PacketError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let mut reader = Reader::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    let hdr: Header = reader.read_obj().map_err(|_| PacketError::Short)?;
    let len = hdr.len;
    if len as usize > MAX_PKT_DATA || len as usize > reader.available_bytes() {
        return Err(PacketError::BadLength(len));
    }
    // Bounded above, and read without zero-filling first.
    let mut data = Vec::with_capacity(len as usize);
    let n = (&mut reader)
        .take(len as u64)
        .read_to_end(&mut data)
        .map_err(|_| PacketError::BadLength(len))?;
    if n != len as usize {
        return Err(PacketError::BadLength(len));
    }
    Ok(TxPacket { hdr, data })
}

/// Room in an rx chain: how many payload bytes fit after the header.
pub fn rx_writer<'a, M>(
    mem: &'a GuestMemoryMmap,
    chain: DescriptorChain<M>,
) -> Result<Writer<'a>, PacketError>
where
    M: std::ops::Deref,
    M::Target: vm_memory::GuestMemory + Sized,
{
    let w = Writer::new(mem, chain).map_err(|_| PacketError::BadChain)?;
    if w.available_bytes() < HDR_SIZE {
        return Err(PacketError::Short);
    }
    Ok(w)
}

/// Writes header and payload into an rx chain; returns the bytes written.
pub fn write_rx(w: &mut Writer<'_>, hdr: &Header, data: &[u8]) -> Result<u32, PacketError> {
    let mut hdr = *hdr;
    hdr.len = data.len() as u32;
    w.write_all(hdr.as_slice())
        .map_err(|_| PacketError::Short)?;
    w.write_all(data)
        .map_err(|_| PacketError::BadLength(data.len() as u32))?;
    Ok((HDR_SIZE + data.len()) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_44_bytes() {
        assert_eq!(HDR_SIZE, 44);
    }
}
