//! Minimal polling virtio-blk driver.

use crate::virtio::{Arena, Buf, Device};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const F_RO: u32 = 1 << 5;
const DEPTH: usize = 32;

pub struct Blk {
    pub dev: Device,
    pub capacity: u64,
    pub read_only: bool,
    hdr: [u64; DEPTH],
    status: [u64; DEPTH],
    pub data: [u64; DEPTH],
    inflight: [Option<u16>; DEPTH],
}

fn wr<T>(addr: u64, v: T) {
    // SAFETY: addr is an arena allocation big enough for T.
    unsafe { core::ptr::write_volatile(addr as *mut T, v) }
}
fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: as for wr.
    unsafe { core::ptr::read_volatile(addr as *const T) }
}

impl Blk {
    pub fn init(arena: &mut Arena, base: u64) -> Blk {
        crate::mmio_write32(base + 0x14, 0);
        let features = crate::mmio_read32(base + 0x10);
        let dev = Device::init(arena, base, 1, 128); // DEPTH chains of 3 descriptors fit
        let capacity = dev.config_read32(0) as u64 | ((dev.config_read32(4) as u64) << 32);
        let mut b = Blk {
            dev,
            capacity,
            read_only: features & F_RO != 0,
            hdr: [0; DEPTH],
            status: [0; DEPTH],
            data: [0; DEPTH],
            inflight: [None; DEPTH],
        };
        for i in 0..DEPTH {
            b.hdr[i] = arena.alloc(16, 16);
            b.status[i] = arena.alloc(1, 1);
            b.data[i] = arena.alloc(4096, 4096);
        }
        b
    }

    /// Queues request `slot` (data buffer `len` bytes); does not wait.
    pub fn submit(&mut self, slot: usize, type_: u32, sector: u64, len: u32) {
        wr(self.hdr[slot], type_);
        wr(self.hdr[slot] + 4, 0u32);
        wr(self.hdr[slot] + 8, sector);
        wr(self.status[slot], 0xffu8);
        let hdr = Buf {
            addr: self.hdr[slot],
            len: 16,
            writable: false,
        };
        let status = Buf {
            addr: self.status[slot],
            len: 1,
            writable: true,
        };
        let head = if len == 0 {
            self.dev.q(0).submit(&[hdr, status])
        } else {
            let data = Buf {
                addr: self.data[slot],
                len,
                writable: type_ == T_IN,
            };
            self.dev.q(0).submit(&[hdr, data, status])
        };
        self.inflight[slot] = head;
    }

    pub fn kick(&self) {
        self.dev.queues[0].as_ref().unwrap().notify();
    }

    /// Reaps one completion: (slot, status byte).
    pub fn poll(&mut self) -> Option<(usize, u8)> {
        let (head, _) = self.dev.q(0).poll_used()?;
        let slot = self.inflight.iter().position(|h| *h == Some(head))?;
        self.inflight[slot] = None;
        Some((slot, rd(self.status[slot])))
    }

    /// One synchronous request on slot 0; returns the status byte.
    pub fn request(&mut self, type_: u32, sector: u64, len: u32) -> u8 {
        self.submit(0, type_, sector, len);
        self.kick();
        loop {
            if let Some((_, st)) = self.poll() {
                return st;
            }
            core::hint::spin_loop();
        }
    }

    pub fn data_slice(&self, slot: usize, len: usize) -> &'static mut [u8] {
        // SAFETY: the slot's data buffer is 4096 bytes and idle when the caller touches it.
        unsafe { core::slice::from_raw_parts_mut(self.data[slot] as *mut u8, len) }
    }

    /// Keeps `DEPTH` random 4 KiB reads in flight until `total` completed; returns errors.
    pub fn random_reads(&mut self, total: u64, seed: u64) -> u64 {
        let sectors = self.capacity.saturating_sub(8).max(1);
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % sectors) & !7
        };
        let (mut submitted, mut done, mut errors) = (0u64, 0u64, 0u64);
        for slot in 0..DEPTH {
            if submitted < total {
                self.submit(slot, T_IN, next(), 4096);
                submitted += 1;
            }
        }
        self.kick();
        while done < total {
            let mut any = false;
            while let Some((slot, st)) = self.poll() {
                any = true;
                done += 1;
                if st != 0 {
                    errors += 1;
                }
                if submitted < total {
                    self.submit(slot, T_IN, next(), 4096);
                    submitted += 1;
                }
            }
            if any {
                self.kick();
            } else {
                core::hint::spin_loop();
            }
        }
        errors
    }
}
