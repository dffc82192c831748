//! BARs: their types, placement in the guest's address space (the VMM plays firmware and
//! assigns every BAR before boot) and the emulated BAR registers (sizing by writing all ones,
//! relocation by the guest).
//!
//! Placement: I/O BARs in the I/O window, 32-bit and non-prefetchable 64-bit BARs in the 32-bit
//! window below 4 GiB, prefetchable 64-bit BARs (GPU apertures, tens of GiB) above both the end
//! of RAM and 4 GiB. Each BAR is aligned to its size, as the PCI specification requires.

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32 { prefetchable: bool },
    Mem64 { prefetchable: bool },
}

impl BarKind {
    /// The type of a BAR from its register value (the low flag bits).
    pub fn from_register(value: u32) -> Self {
        if value & 1 == 1 {
            return BarKind::Io;
        }
        let prefetchable = value & 0x8 != 0;
        match (value >> 1) & 3 {
            2 => BarKind::Mem64 { prefetchable },
            _ => BarKind::Mem32 { prefetchable },
        }
    }

    /// The read-only flag bits of the register.
    fn flags(self) -> u32 {
        match self {
            BarKind::Io => 1,
            BarKind::Mem32 { prefetchable } => (prefetchable as u32) << 3,
            BarKind::Mem64 { prefetchable } => 0b100 | (prefetchable as u32) << 3,
        }
    }

    pub fn is_64bit(self) -> bool {
        matches!(self, BarKind::Mem64 { .. })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BarError {
    #[error("BAR {bar}: size {size:#x} is not a power of two of at least {min:#x}")]
    BadSize { bar: usize, size: u64, min: u64 },
    #[error("BAR {bar}: a {size:#x}-byte {what} BAR does not fit in the guest's {what} window")]
    NoSpace {
        bar: usize,
        size: u64,
        what: &'static str,
    },
    #[error("BAR {bar}: a 32-bit BAR cannot be {size:#x} bytes")]
    TooBigFor32 { bar: usize, size: u64 },
}

/// A bump allocator over one window, aligning each allocation to its size.
#[derive(Debug, Clone)]
struct Window {
    next: u64,
    end: u64,
}

impl Window {
    fn take(&mut self, size: u64) -> Option<u64> {
        let start = self.next.checked_add(size - 1)? & !(size - 1);
        let end = start.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(start)
    }
}

/// Assigns guest addresses to BARs.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    io: Window,
    mmio32: Window,
    mmio64: Window,
}

/// Where the 64-bit window starts: above RAM and above 4 GiB, 1 GiB aligned.
pub fn mmio64_start(ram_end: u64) -> u64 {
    const GIB: u64 = 1 << 30;
    ram_end.max(4 * GIB).div_ceil(GIB) * GIB
}

impl BarAllocator {
    /// `io`, `mmio32`: (start, size) of those windows; the 64-bit window runs from
    /// [`mmio64_start`] to the end of the guest-physical address space (`phys_bits`).
    pub fn new(io: (u64, u64), mmio32: (u64, u64), ram_end: u64, phys_bits: u8) -> Self {
        let phys_end = 1u64 << phys_bits.clamp(36, 52);
        BarAllocator {
            io: Window {
                next: io.0,
                end: io.0 + io.1,
            },
            mmio32: Window {
                next: mmio32.0,
                end: mmio32.0 + mmio32.1,
            },
            mmio64: Window {
                next: mmio64_start(ram_end),
                end: phys_end,
            },
        }
    }

    /// The 64-bit window (start, end exclusive) for the ACPI host bridge resources.
    pub fn mmio64_window(&self) -> (u64, u64) {
        (self.mmio64.next, self.mmio64.end)
    }

    /// A guest address for BAR `bar` of `kind` and `size` bytes.
    pub fn allocate(&mut self, bar: usize, kind: BarKind, size: u64) -> Result<u64, BarError> {
        let min = if kind == BarKind::Io { 4 } else { 16 };
        if size < min || !size.is_power_of_two() {
            return Err(BarError::BadSize { bar, size, min });
        }
        // Memory BARs get whole pages so that each can be its own KVM memory slot.
        let mem_size = size.max(4096);
        let no_space = |what| BarError::NoSpace { bar, size, what };
        match kind {
            BarKind::Io => self.io.take(size).ok_or(no_space("I/O")),
            BarKind::Mem32 { .. } => {
                if size > 1 << 31 {
                    return Err(BarError::TooBigFor32 { bar, size });
                }
                self.mmio32.take(mem_size).ok_or(no_space("32-bit"))
            }
            BarKind::Mem64 { prefetchable: true } => {
                self.mmio64.take(mem_size).ok_or(no_space("64-bit"))
            }
            BarKind::Mem64 {
                prefetchable: false,
            } => self
                .mmio32
                .take(mem_size)
                .or_else(|| self.mmio64.take(mem_size))
                .ok_or(no_space("64-bit")),
        }
    }
}

/// One emulated BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    pub kind: BarKind,
    pub size: u64,
    pub addr: u64,
    /// The guest wrote all ones to the low / high register to size the BAR and has not yet
    /// restored an address: the register reads the size mask and the BAR is not moved.
    sizing_low: bool,
    sizing_high: bool,
}

impl Bar {
    pub fn new(kind: BarKind, size: u64, addr: u64) -> Self {
        Bar {
            kind,
            size,
            addr,
            sizing_low: false,
            sizing_high: false,
        }
    }

    fn mask(&self) -> u64 {
        !(self.size - 1)
    }
}

/// The six BAR registers of a type-0 header.
#[derive(Debug, Clone, Default)]
pub struct BarRegisters {
    bars: [Option<Bar>; 6],
}

/// Offset of the first BAR register in configuration space.
pub const BAR0_REG: usize = 0x10;

impl BarRegisters {
    /// `bars`: (index, BAR). A 64-bit BAR also takes the register after it.
    pub fn new(bars: impl IntoIterator<Item = (usize, Bar)>) -> Self {
        let mut r = BarRegisters::default();
        for (i, b) in bars {
            if i < 6 && !(b.kind.is_64bit() && i == 5) {
                r.bars[i] = Some(b);
            }
        }
        r
    }

    pub fn get(&self, index: usize) -> Option<&Bar> {
        self.bars.get(index)?.as_ref()
    }

    pub fn iter(&self) -> impl Iterator<Item = (usize, &Bar)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().map(|b| (i, b)))
    }

    /// The BAR a register belongs to, and whether it is the upper half of a 64-bit BAR.
    fn owner(&self, reg_index: usize) -> Option<(usize, bool)> {
        if let Some(Some(_)) = self.bars.get(reg_index) {
            return Some((reg_index, false));
        }
        let lower = reg_index.checked_sub(1)?;
        match self.bars.get(lower) {
            Some(Some(b)) if b.kind.is_64bit() => Some((lower, true)),
            _ => None,
        }
    }

    /// The value of BAR register `reg_index` (0..6).
    pub fn read(&self, reg_index: usize) -> u32 {
        let Some((i, upper)) = self.owner(reg_index) else {
            return 0;
        };
        let b = self.bars[i].as_ref().expect("owner found it");
        if upper {
            let v = if b.sizing_high { b.mask() } else { b.addr };
            (v >> 32) as u32
        } else {
            let v = if b.sizing_low { b.mask() } else { b.addr };
            let addr_bits = if b.kind == BarKind::Io {
                v as u32 & !0x3
            } else {
                v as u32 & !0xf
            };
            addr_bits | b.kind.flags()
        }
    }

    /// Writes BAR register `reg_index`. Returns (BAR index, old address) when the BAR moved to
    /// a new address (no sizing in progress), so the caller can move what backs it.
    pub fn write(&mut self, reg_index: usize, value: u32) -> Option<(usize, u64)> {
        let (i, upper) = self.owner(reg_index)?;
        let b = self.bars[i].as_mut().expect("owner found it");
        let old = b.addr;
        let sizing = value == u32::MAX;
        let mask = b.mask();
        if upper {
            b.sizing_high = sizing;
            if !sizing {
                b.addr = ((value as u64) << 32 | (b.addr & 0xffff_ffff)) & mask;
            }
        } else {
            b.sizing_low = sizing;
            if !sizing {
                let low_mask = if b.kind.is_64bit() {
                    mask
                } else {
                    mask & 0xffff_ffff
                };
                b.addr = ((b.addr & !0xffff_ffff) | value as u64) & low_mask;
            }
        }
        (!b.sizing_low && !b.sizing_high && b.addr != old).then_some((i, old))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn kinds_from_register_values() {
        assert_eq!(BarKind::from_register(0x1), BarKind::Io);
        assert_eq!(
            BarKind::from_register(0xfe00_0000),
            BarKind::Mem32 {
                prefetchable: false
            }
        );
        assert_eq!(
            BarKind::from_register(0xc),
            BarKind::Mem64 { prefetchable: true }
        );
    }

    #[test]
    fn placement_follows_kind_ram_and_alignment() {
        // A GPU: BAR0 16 MiB 32-bit, BAR1 32 GiB 64-bit prefetchable, BAR3 32 MiB 64-bit
        // prefetchable, BAR5 128 bytes of I/O; 6 GiB of RAM (so RAM runs past 4 GiB).
        let ram_end = 4 * GIB + 3 * GIB + (1 << 28);
        let mut a = BarAllocator::new((0xc000, 0x4000), (0xe000_0000, 0x1000_0000), ram_end, 46);
        let bar0 = a
            .allocate(
                0,
                BarKind::Mem32 {
                    prefetchable: false,
                },
                16 << 20,
            )
            .unwrap();
        assert!(bar0 >= 0xe000_0000 && bar0 + (16 << 20) <= 0xf000_0000);
        assert_eq!(bar0 % (16 << 20), 0);
        let bar1 = a
            .allocate(1, BarKind::Mem64 { prefetchable: true }, 32 * GIB)
            .unwrap();
        assert!(bar1 >= ram_end && bar1 >= 4 * GIB, "{bar1:#x}");
        assert_eq!(bar1 % (32 * GIB), 0, "aligned to its size");
        let bar3 = a
            .allocate(3, BarKind::Mem64 { prefetchable: true }, 32 << 20)
            .unwrap();
        assert!(bar3 >= bar1 + 32 * GIB);
        let bar5 = a.allocate(5, BarKind::Io, 128).unwrap();
        assert_eq!(bar5 % 128, 0);
        assert!((0xc000..0x10000).contains(&bar5));
        // Small RAM: the 64-bit window still starts at 4 GiB.
        assert_eq!(mmio64_start(256 << 20), 4 * GIB);
        assert_eq!(mmio64_start(5 * GIB + 1), 6 * GIB);
    }

    #[test]
    fn placement_errors() {
        let mut a = BarAllocator::new((0xc000, 0x4000), (0xe000_0000, 0x1000_0000), GIB, 36);
        assert!(matches!(
            a.allocate(
                0,
                BarKind::Mem32 {
                    prefetchable: false
                },
                3 << 20
            ),
            Err(BarError::BadSize { bar: 0, .. })
        ));
        assert!(matches!(
            a.allocate(
                1,
                BarKind::Mem32 {
                    prefetchable: false
                },
                1 << 30
            ),
            Err(BarError::NoSpace { bar: 1, .. })
        ));
        // 36 physical bits = 64 GiB of address space: a 64 GiB BAR cannot fit above 4 GiB.
        let err = a
            .allocate(2, BarKind::Mem64 { prefetchable: true }, 64 * GIB)
            .unwrap_err();
        assert!(err.to_string().contains("BAR 2"), "{err}");
        // Non-prefetchable 64-bit BARs go low when they fit, high otherwise.
        let low = a
            .allocate(
                3,
                BarKind::Mem64 {
                    prefetchable: false,
                },
                1 << 20,
            )
            .unwrap();
        assert!(low < 4 * GIB);
    }

    #[test]
    fn sizing_reads_the_mask_and_restores() {
        let mut r = BarRegisters::new([
            (
                0,
                Bar::new(
                    BarKind::Mem32 {
                        prefetchable: false,
                    },
                    1 << 20,
                    0xe010_0000,
                ),
            ),
            (
                2,
                Bar::new(BarKind::Mem64 { prefetchable: true }, 8 * GIB, 8 * GIB),
            ),
            (4, Bar::new(BarKind::Io, 0x80, 0xc080)),
        ]);
        assert_eq!(r.read(0), 0xe010_0000);
        assert_eq!(r.write(0, u32::MAX), None);
        assert_eq!(r.read(0), 0xfff0_0000, "size mask of 1 MiB");
        assert_eq!(r.write(0, 0xe010_0000), None, "restored: not moved");
        // 64-bit: both halves sized, then restored.
        assert_eq!(r.read(2), 0xc);
        assert_eq!(r.read(3), 2);
        r.write(2, u32::MAX);
        r.write(3, u32::MAX);
        assert_eq!(r.read(2), 0xc, "low half of an 8 GiB mask is zero");
        assert_eq!(r.read(3), 0xffff_fffe);
        assert_eq!(r.write(2, 0xc), None);
        assert_eq!(r.write(3, 2), None);
        assert_eq!(r.get(2).unwrap().addr, 8 * GIB);
        // I/O BAR: flag bit 0, mask of 128 bytes.
        assert_eq!(r.read(4), 0xc081);
        r.write(4, u32::MAX);
        assert_eq!(r.read(4), 0xffff_ff81);
        // Absent registers read zero and ignore writes.
        assert_eq!(r.read(1), 0);
        assert_eq!(r.write(5, 0x1234), None);
        assert_eq!(r.read(5), 0);
    }

    #[test]
    fn relocation_is_reported_with_the_old_address() {
        let mut r = BarRegisters::new([(
            1,
            Bar::new(BarKind::Mem64 { prefetchable: true }, 1 << 20, 4 * GIB),
        )]);
        // Low half first, then high: each step is a move to a well-defined address.
        assert_eq!(r.write(1, 0x0020_0000), Some((1, 4 * GIB)));
        assert_eq!(r.get(1).unwrap().addr, 4 * GIB + 0x20_0000);
        assert_eq!(r.write(2, 2), Some((1, 4 * GIB + 0x20_0000)));
        assert_eq!(r.get(1).unwrap().addr, 8 * GIB + 0x20_0000);
        // Address bits below the size are ignored.
        r.write(1, 0x0020_1234);
        assert_eq!(r.get(1).unwrap().addr, 8 * GIB + 0x20_0000);
    }
}
