//! Reads the Linux boot_params ("zero page") the VMM wrote.

/// One e820 entry.
#[derive(Clone, Copy, Debug)]
pub struct E820 {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub struct ZeroPage(pub u64);

impl ZeroPage {
    fn read<T: Copy>(&self, off: u64) -> T {
        // SAFETY: the zero page is identity mapped and the offsets are within its 4 KiB.
        unsafe { core::ptr::read_unaligned((self.0 + off) as *const T) }
    }

    pub fn e820_count(&self) -> usize {
        self.read::<u8>(0x1e8) as usize
    }

    pub fn e820(&self, i: usize) -> E820 {
        let base = 0x2d0 + 20 * i as u64;
        E820 {
            addr: self.read(base),
            size: self.read(base + 8),
            kind: self.read(base + 16),
        }
    }

    pub fn cmdline(&self) -> &'static [u8] {
        let ptr: u32 = self.read(0x228);
        let len: u32 = self.read(0x238);
        // SAFETY: the VMM wrote `len` bytes of command line at `ptr` in identity-mapped RAM.
        unsafe { core::slice::from_raw_parts(ptr as u64 as *const u8, len as usize) }
    }

    /// (address, size) of the initrd, if the VMM loaded one.
    pub fn initrd(&self) -> Option<(u64, u32)> {
        let addr: u32 = self.read(0x218);
        let size: u32 = self.read(0x21c);
        (size > 0).then_some((addr as u64, size))
    }

    /// Value of `key=` on the command line.
    pub fn cmdline_value(&self, key: &str) -> Option<&'static str> {
        let line = core::str::from_utf8(self.cmdline()).ok()?;
        line.split(' ')
            .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }
}
