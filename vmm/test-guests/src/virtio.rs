//! Polling virtio-mmio driver for the test guests: device discovery from the kernel command
//! line (`virtio_mmio.device=4K@0xADDR:IRQ:ID`), feature negotiation, split virtqueues.
//! Guest physical = virtual (identity map), so buffers are plain statics.

use core::sync::atomic::{fence, Ordering};

use crate::{mmio_read32, mmio_write32, zero_page::ZeroPage};

pub const STATUS_ACK: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const DESC_F_NEXT: u16 = 1;
pub const DESC_F_WRITE: u16 = 2;

/// Bump allocator over a static arena (never freed: guests are short-lived).
pub struct Arena {
    next: u64,
    end: u64,
}

#[allow(dead_code)] // only ever used through its address
#[repr(align(4096))]
struct ArenaMem([u8; 8 << 20]);
static mut ARENA: ArenaMem = ArenaMem([0; 8 << 20]);
static mut ARENA_TAKEN: bool = false;

impl Arena {
    /// The one arena; only the BSP calls this, once.
    pub fn take() -> Arena {
        // SAFETY: single-threaded use by the BSP; the flag prevents a second arena.
        unsafe {
            assert!(!ARENA_TAKEN, "arena taken twice");
            ARENA_TAKEN = true;
            let start = core::ptr::addr_of_mut!(ARENA) as u64;
            Arena {
                next: start,
                end: start + (8 << 20),
            }
        }
    }

    pub fn alloc(&mut self, size: u64, align: u64) -> u64 {
        let a = (self.next + align - 1) & !(align - 1);
        assert!(a + size <= self.end, "guest arena exhausted");
        self.next = a + size;
        a
    }
}

/// Base addresses of the virtio-mmio devices announced on the command line, in order.
pub fn devices_from_cmdline(zp: &ZeroPage) -> impl Iterator<Item = u64> {
    let line = core::str::from_utf8(zp.cmdline()).unwrap_or("");
    line.split(' ').filter_map(|w| {
        let spec = w.strip_prefix("virtio_mmio.device=")?;
        let at = spec.split('@').nth(1)?;
        let addr = at.split(':').next()?;
        u64::from_str_radix(addr.strip_prefix("0x")?, 16).ok()
    })
}

/// Finds the first announced device of `device_type`.
pub fn find_device(zp: &ZeroPage, device_type: u32) -> Option<u64> {
    devices_from_cmdline(zp)
        .find(|&base| mmio_read32(base) == 0x7472_6976 && mmio_read32(base + 8) == device_type)
}

pub struct Virtq {
    base: u64,
    index: u32,
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    free_head: u16,
    num_free: u16,
    last_used: u16,
    avail_idx: u16,
}

#[derive(Clone, Copy)]
pub struct Buf {
    pub addr: u64,
    pub len: u32,
    pub writable: bool,
}

fn w16(a: u64, v: u16) {
    // SAFETY: `a` is inside a queue area allocated from the arena.
    unsafe { core::ptr::write_volatile(a as *mut u16, v) }
}
fn r16(a: u64) -> u16 {
    // SAFETY: as for w16.
    unsafe { core::ptr::read_volatile(a as *const u16) }
}
fn r32(a: u64) -> u32 {
    // SAFETY: as for w16.
    unsafe { core::ptr::read_volatile(a as *const u32) }
}
fn w64(a: u64, v: u64) {
    // SAFETY: as for w16.
    unsafe { core::ptr::write_volatile(a as *mut u64, v) }
}
fn w32(a: u64, v: u32) {
    // SAFETY: as for w16.
    unsafe { core::ptr::write_volatile(a as *mut u32, v) }
}

impl Virtq {
    fn new(arena: &mut Arena, base: u64, index: u32, want: u16) -> Virtq {
        mmio_write32(base + 0x30, index);
        let max = mmio_read32(base + 0x34) as u16;
        assert!(max > 0, "queue not available");
        let size = want.min(max);
        let desc = arena.alloc(16 * size as u64, 4096);
        let avail = arena.alloc(6 + 2 * size as u64, 4096);
        let used = arena.alloc(6 + 8 * size as u64, 4096);
        for i in 0..size {
            // next pointers form the free list
            w16(desc + 16 * i as u64 + 14, (i + 1) % size);
        }
        mmio_write32(base + 0x38, size as u32);
        mmio_write32(base + 0x80, desc as u32);
        mmio_write32(base + 0x84, (desc >> 32) as u32);
        mmio_write32(base + 0x90, avail as u32);
        mmio_write32(base + 0x94, (avail >> 32) as u32);
        mmio_write32(base + 0xa0, used as u32);
        mmio_write32(base + 0xa4, (used >> 32) as u32);
        mmio_write32(base + 0x44, 1);
        Virtq {
            base,
            index,
            size,
            desc,
            avail,
            used,
            free_head: 0,
            num_free: size,
            last_used: 0,
            avail_idx: 0,
        }
    }

    pub fn num_free(&self) -> u16 {
        self.num_free
    }

    /// Queues a chain; returns its head id, or None when the ring is full.
    pub fn submit(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.num_free as usize {
            return None;
        }
        let head = self.free_head;
        let mut idx = head;
        for (i, b) in bufs.iter().enumerate() {
            let d = self.desc + 16 * idx as u64;
            let next = r16(d + 14);
            w64(d, b.addr);
            w32(d + 8, b.len);
            let mut flags = if b.writable { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            } else {
                self.free_head = next;
            }
            w16(d + 12, flags);
            if i + 1 < bufs.len() {
                idx = next;
            }
        }
        self.num_free -= bufs.len() as u16;
        let slot = self.avail + 4 + 2 * (self.avail_idx % self.size) as u64;
        w16(slot, head);
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        w16(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        Some(head)
    }

    /// Kicks the device unless it said it is already draining (VRING_USED_F_NO_NOTIFY).
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if r16(self.used) & 1 == 0 {
            mmio_write32(self.base + 0x50, self.index);
        }
    }

    /// A completed chain: (head id, bytes written by the device).
    pub fn poll_used(&mut self) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        if r16(self.used + 2) == self.last_used {
            return None;
        }
        let e = self.used + 4 + 8 * (self.last_used % self.size) as u64;
        let head = r32(e) as u16;
        let len = r32(e + 4);
        self.last_used = self.last_used.wrapping_add(1);
        // Return the chain's descriptors to the free list.
        let mut idx = head;
        let mut n = 1;
        loop {
            let d = self.desc + 16 * idx as u64;
            if r16(d + 12) & DESC_F_NEXT == 0 {
                w16(d + 14, self.free_head);
                break;
            }
            idx = r16(d + 14);
            n += 1;
        }
        self.free_head = head;
        self.num_free += n;
        Some((head, len))
    }
}

/// An initialised device: negotiated VERSION_1 and set up `queues` queues.
pub struct Device {
    pub base: u64,
    pub queues: [Option<Virtq>; 3],
}

impl Device {
    pub fn init(arena: &mut Arena, base: u64, nqueues: usize, qsize: u16) -> Device {
        mmio_write32(base + 0x70, 0);
        mmio_write32(base + 0x70, STATUS_ACK | STATUS_DRIVER);
        mmio_write32(base + 0x14, 1);
        assert!(mmio_read32(base + 0x10) & 1 == 1, "VERSION_1 not offered");
        mmio_write32(base + 0x24, 0);
        mmio_write32(base + 0x20, 0);
        mmio_write32(base + 0x24, 1);
        mmio_write32(base + 0x20, 1);
        mmio_write32(base + 0x70, STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK);
        assert!(
            mmio_read32(base + 0x70) & STATUS_FEATURES_OK != 0,
            "features refused"
        );
        let mut queues = [None, None, None];
        for (i, q) in queues.iter_mut().enumerate().take(nqueues) {
            *q = Some(Virtq::new(arena, base, i as u32, qsize));
        }
        mmio_write32(
            base + 0x70,
            STATUS_ACK | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        let st = mmio_read32(base + 0x70);
        assert!(st & 0x40 == 0, "device needs reset after DRIVER_OK");
        Device { base, queues }
    }

    pub fn q(&mut self, i: usize) -> &mut Virtq {
        self.queues[i].as_mut().expect("queue set up")
    }

    pub fn config_read32(&self, off: u64) -> u32 {
        mmio_read32(self.base + 0x100 + off)
    }
}
