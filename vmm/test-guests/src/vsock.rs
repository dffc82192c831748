//! Minimal polling virtio-vsock driver for the guests: one stream connection at a time.

use crate::virtio::{find_device, Arena, Buf, Device};
use crate::zero_page::ZeroPage;

pub const HOST_CID: u64 = 2;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const HDR: usize = 44;
const RX_BUFS: usize = 16;
const TX_SLOTS: usize = 8;
pub const MAX_DATA: usize = 64 * 1024;
/// Our receive buffer as advertised to the host.
pub const BUF_ALLOC: u32 = 1 << 20;

#[derive(Clone, Copy, Debug, Default)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    buf[off..off + v.len()].copy_from_slice(v);
}

impl Hdr {
    fn write(&self, b: &mut [u8]) {
        put(b, 0, &self.src_cid.to_le_bytes());
        put(b, 8, &self.dst_cid.to_le_bytes());
        put(b, 16, &self.src_port.to_le_bytes());
        put(b, 20, &self.dst_port.to_le_bytes());
        put(b, 24, &self.len.to_le_bytes());
        put(b, 28, &1u16.to_le_bytes());
        put(b, 30, &self.op.to_le_bytes());
        put(b, 32, &self.flags.to_le_bytes());
        put(b, 36, &self.buf_alloc.to_le_bytes());
        put(b, 40, &self.fwd_cnt.to_le_bytes());
    }

    fn read(b: &[u8]) -> Hdr {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Hdr {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            op: u16::from_le_bytes([b[30], b[31]]),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }
}

fn slice_at(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: addresses come from our arena allocations of at least `len` bytes; each buffer
    // is only touched while the device does not own it.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

/// One stream connection's credit state.
#[derive(Default, Clone, Copy)]
pub struct Conn {
    pub local_port: u32,
    pub peer_port: u32,
    pub peer_buf_alloc: u32,
    pub peer_fwd_cnt: u32,
    pub tx_cnt: u32,
    pub fwd_cnt: u32,
}

impl Conn {
    pub fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

pub struct Vsock {
    dev: Device,
    pub cid: u64,
    rx_addr: [u64; 256],
    tx_slots: [u64; TX_SLOTS],
    tx_busy: [Option<u16>; TX_SLOTS],
    /// Scratch payload buffer for echoing.
    scratch: u64,
}

impl Vsock {
    pub fn init(zp: &ZeroPage, arena: &mut Arena) -> Option<Vsock> {
        let base = find_device(zp, 19)?;
        let mut dev = Device::init(arena, base, 3, 64);
        let cid = dev.config_read32(0) as u64 | ((dev.config_read32(4) as u64) << 32);
        let mut rx_addr = [0u64; 256];
        for _ in 0..RX_BUFS {
            let a = arena.alloc((HDR + MAX_DATA) as u64, 64);
            let head = dev
                .q(0)
                .submit(&[Buf {
                    addr: a,
                    len: (HDR + MAX_DATA) as u32,
                    writable: true,
                }])
                .unwrap();
            rx_addr[head as usize] = a;
        }
        dev.q(0).notify();
        let mut tx_slots = [0u64; TX_SLOTS];
        for s in tx_slots.iter_mut() {
            *s = arena.alloc((HDR + MAX_DATA) as u64, 64);
        }
        let scratch = arena.alloc(MAX_DATA as u64, 64);
        Some(Vsock {
            dev,
            cid,
            rx_addr,
            tx_slots,
            tx_busy: [None; TX_SLOTS],
            scratch,
        })
    }

    fn reap_tx(&mut self) {
        while let Some((head, _)) = self.dev.q(1).poll_used() {
            for b in self.tx_busy.iter_mut() {
                if *b == Some(head) {
                    *b = None;
                }
            }
        }
    }

    /// Sends one packet (blocking until a tx slot is free).
    pub fn send(&mut self, c: &Conn, op: u16, flags: u32, data: &[u8]) {
        assert!(data.len() <= MAX_DATA);
        let slot = loop {
            self.reap_tx();
            if let Some(i) = self.tx_busy.iter().position(|b| b.is_none()) {
                break i;
            }
            core::hint::spin_loop();
        };
        let addr = self.tx_slots[slot];
        let buf = slice_at(addr, HDR + data.len());
        Hdr {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.local_port,
            dst_port: c.peer_port,
            len: data.len() as u32,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        }
        .write(buf);
        buf[HDR..].copy_from_slice(data);
        let head = self
            .dev
            .q(1)
            .submit(&[Buf {
                addr,
                len: (HDR + data.len()) as u32,
                writable: false,
            }])
            .expect("tx ring has room for every slot");
        self.tx_busy[slot] = Some(head);
        self.dev.q(1).notify();
    }

    /// Polls for one received packet; its payload is copied into `out`.
    pub fn poll_recv(&mut self, out: &mut [u8]) -> Option<(Hdr, usize)> {
        let (head, _len) = self.dev.q(0).poll_used()?;
        let addr = self.rx_addr[head as usize];
        let buf = slice_at(addr, HDR + MAX_DATA);
        let h = Hdr::read(buf);
        let n = (h.len as usize).min(MAX_DATA).min(out.len());
        out[..n].copy_from_slice(&buf[HDR..HDR + n]);
        let new_head = self
            .dev
            .q(0)
            .submit(&[Buf {
                addr,
                len: (HDR + MAX_DATA) as u32,
                writable: true,
            }])
            .unwrap();
        self.rx_addr[new_head as usize] = addr;
        self.dev.q(0).notify();
        Some((h, n))
    }

    /// Blocks for the next packet.
    pub fn recv(&mut self, out: &mut [u8]) -> (Hdr, usize) {
        loop {
            if let Some(p) = self.poll_recv(out) {
                return p;
            }
            core::hint::spin_loop();
        }
    }

    /// Connects to host `port`; returns the connection once the host answered RESPONSE.
    pub fn connect(&mut self, local_port: u32, port: u32) -> Result<Conn, u16> {
        let mut c = Conn {
            local_port,
            peer_port: port,
            ..Default::default()
        };
        self.send(&c, OP_REQUEST, 0, &[]);
        let mut scratch = [0u8; 0];
        let (h, _) = self.recv(&mut scratch);
        if h.op != OP_RESPONSE || h.src_port != port || h.dst_port != local_port {
            return Err(h.op);
        }
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        Ok(c)
    }

    /// Waits for a host REQUEST to `port` and accepts it.
    pub fn accept(&mut self, port: u32) -> Conn {
        let mut scratch = [0u8; 0];
        loop {
            let (h, _) = self.recv(&mut scratch);
            if h.op == OP_REQUEST && h.dst_port == port {
                let c = Conn {
                    local_port: port,
                    peer_port: h.src_port,
                    peer_buf_alloc: h.buf_alloc,
                    peer_fwd_cnt: h.fwd_cnt,
                    ..Default::default()
                };
                self.send(&c, OP_RESPONSE, 0, &[]);
                return c;
            }
        }
    }

    /// Echoes everything the host sends on `c` until it shuts down; returns the bytes echoed.
    pub fn echo_until_shutdown(&mut self, c: &mut Conn) -> u64 {
        let buf = slice_at(self.scratch, MAX_DATA);
        let mut total = 0u64;
        loop {
            let (h, n) = self.recv(buf);
            if h.src_port != c.peer_port || h.dst_port != c.local_port {
                continue;
            }
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
            match h.op {
                OP_RW => {
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(n as u32);
                    self.send(c, OP_RW, 0, &buf[..n]);
                    c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                    total += n as u64;
                }
                OP_SHUTDOWN | OP_RST => {
                    if h.op == OP_SHUTDOWN {
                        self.send(c, OP_RST, 0, &[]);
                    }
                    return total;
                }
                OP_CREDIT_REQUEST => self.send(c, OP_CREDIT_UPDATE, 0, &[]),
                _ => {}
            }
        }
    }

    /// Waits until the host has forwarded everything sent on `c` (asks with CREDIT_REQUEST).
    pub fn wait_drained(&mut self, c: &mut Conn) {
        let mut scratch = [0u8; 0];
        while c.peer_fwd_cnt != c.tx_cnt {
            self.send(c, OP_CREDIT_REQUEST, 0, &[]);
            loop {
                let (h, _) = self.recv(&mut scratch);
                if h.src_port == c.peer_port {
                    c.peer_buf_alloc = h.buf_alloc;
                    c.peer_fwd_cnt = h.fwd_cnt;
                    if h.op == OP_CREDIT_UPDATE {
                        break;
                    }
                }
            }
        }
    }

    /// Sends `total` bytes on `c` as fast as credit allows (bench).
    pub fn stream_out(&mut self, c: &mut Conn, total: u64, chunk: &[u8]) {
        let mut sent = 0u64;
        let mut scratch = [0u8; 0];
        while sent < total {
            while let Some((h, _)) = self.poll_recv(&mut scratch) {
                if h.src_port == c.peer_port {
                    c.peer_buf_alloc = h.buf_alloc;
                    c.peer_fwd_cnt = h.fwd_cnt;
                }
            }
            let credit = c.peer_credit() as u64;
            if credit == 0 {
                core::hint::spin_loop();
                continue;
            }
            let n = (chunk.len() as u64).min(credit).min(total - sent) as usize;
            self.send(c, OP_RW, 0, &chunk[..n]);
            c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
            sent += n as u64;
        }
    }
}
