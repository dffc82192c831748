//! A minimal PCI root complex beside virtio-mmio: one bus (bus 0) whose configuration space is
//! reached through the legacy ports 0xcf8/0xcfc and through ECAM (MMCONFIG, 4 KiB of extended
//! configuration space per function), a host bridge at 00:00.0 and passed-through devices at
//! 00:01.0 and up (function 0 only). BAR accesses that are not backed by KVM memory slots trap
//! to the BAR windows, which dispatch by the BARs' current addresses, so a guest may move BARs.
//!
//! Written by hand: the PCI models of Cloud Hypervisor and crosvm are not published as crates
//! usable outside their trees, and what is needed here is small.
//!
//! Everything the guest writes here is untrusted: offsets are bounded, sizes other than 1, 2
//! and 4 bytes are ignored, absent functions read as all ones.

pub mod bars;
pub mod msi;
pub mod passthrough;

use std::sync::{Arc, Mutex};

use crate::devices::bus::{lock, BusDevice};

/// Devices on the bus, including the host bridge at slot 0.
pub const MAX_DEVICES: usize = 32;
/// Extended (PCIe) configuration space of one function.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// Legacy (PCI) configuration space, the part ports 0xcf8/0xcfc reach.
pub const LEGACY_CONFIG_SIZE: usize = 256;

/// What a function on the bus implements. `reg` is a byte offset into its configuration space,
/// below [`CONFIG_SPACE_SIZE`]; accesses are 1, 2 or 4 bytes and naturally aligned.
pub trait PciDevice: Send {
    fn config_read(&mut self, reg: usize, data: &mut [u8]);
    fn config_write(&mut self, reg: usize, data: &[u8]);
    /// The BARs whose accesses trap to the VMM, at their current guest addresses.
    fn trapped_bars(&self) -> Vec<BarRange> {
        Vec::new()
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
}

/// Port I/O or memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressSpace {
    Io,
    Memory,
}

/// A BAR as placed in the guest's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRange {
    pub bar: usize,
    pub space: AddressSpace,
    pub addr: u64,
    pub size: u64,
}

/// The host bridge at 00:00.0 (QEMU's generic PCIe host bridge ids, which Linux treats as a
/// plain host bridge).
struct HostBridge {
    config: [u8; 64],
}

impl HostBridge {
    fn new() -> Self {
        let mut config = [0u8; 64];
        config[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        config[2..4].copy_from_slice(&0x0008u16.to_le_bytes());
        config[0x0a] = 0x00; // subclass: host bridge
        config[0x0b] = 0x06; // class: bridge
        HostBridge { config }
    }
}

impl PciDevice for HostBridge {
    fn config_read(&mut self, reg: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(reg + i).copied().unwrap_or(0);
        }
    }
    fn config_write(&mut self, _reg: usize, _data: &[u8]) {}
}

/// The bus: function 0 of each slot, or nothing.
pub struct PciRoot {
    slots: Vec<Option<Box<dyn PciDevice>>>,
}

impl Default for PciRoot {
    fn default() -> Self {
        let mut slots: Vec<Option<Box<dyn PciDevice>>> = (0..MAX_DEVICES).map(|_| None).collect();
        slots[0] = Some(Box::new(HostBridge::new()));
        PciRoot { slots }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the PCI bus is full ({MAX_DEVICES} slots)")]
pub struct BusFull;

impl PciRoot {
    /// Adds a device at the next free slot; returns the slot (the device number).
    pub fn add(&mut self, device: Box<dyn PciDevice>) -> Result<u8, BusFull> {
        let slot = self.slots.iter().position(|s| s.is_none()).ok_or(BusFull)?;
        self.slots[slot] = Some(device);
        Ok(slot as u8)
    }

    /// A configuration read of bus 0; other buses, absent slots and functions other than 0
    /// read as all ones.
    pub fn config_read(&mut self, bus: u8, dev: u8, func: u8, reg: usize, data: &mut [u8]) {
        match self.function(bus, dev, func, reg, data.len()) {
            Some(d) => d.config_read(reg, data),
            None => data.fill(0xff),
        }
    }

    pub fn config_write(&mut self, bus: u8, dev: u8, func: u8, reg: usize, data: &[u8]) {
        if let Some(d) = self.function(bus, dev, func, reg, data.len()) {
            d.config_write(reg, data);
        }
    }

    fn function(
        &mut self,
        bus: u8,
        dev: u8,
        func: u8,
        reg: usize,
        len: usize,
    ) -> Option<&mut Box<dyn PciDevice>> {
        let aligned = matches!(len, 1 | 2 | 4) && reg % len == 0;
        if bus != 0 || func != 0 || !aligned || reg + len > CONFIG_SPACE_SIZE {
            return None;
        }
        self.slots.get_mut(dev as usize)?.as_mut()
    }

    /// Finds the trapped BAR containing `addr` in `space`.
    fn bar_at(
        &mut self,
        space: AddressSpace,
        addr: u64,
    ) -> Option<(&mut Box<dyn PciDevice>, usize, u64)> {
        for d in self.slots.iter_mut().flatten() {
            let hit = d
                .trapped_bars()
                .into_iter()
                .find(|b| b.space == space && addr >= b.addr && addr - b.addr < b.size);
            if let Some(b) = hit {
                return Some((d, b.bar, addr - b.addr));
            }
        }
        None
    }

    pub fn bar_read(&mut self, space: AddressSpace, addr: u64, data: &mut [u8]) {
        match self.bar_at(space, addr) {
            Some((d, bar, off)) => d.bar_read(bar, off, data),
            None => data.fill(0xff),
        }
    }

    pub fn bar_write(&mut self, space: AddressSpace, addr: u64, data: &[u8]) {
        if let Some((d, bar, off)) = self.bar_at(space, addr) {
            d.bar_write(bar, off, data);
        }
    }
}

/// Ports 0xcf8..0xcff: the configuration address register and the data window.
pub struct PciConfigIo {
    root: Arc<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigIo { root, address: 0 }
    }

    /// (bus, device, function, register) of the current address, when enabled.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let a = self.address;
        let reg = (a & 0xfc) as usize + data_offset as usize;
        Some((
            (a >> 16) as u8,
            ((a >> 11) & 0x1f) as u8,
            ((a >> 8) & 7) as u8,
            reg,
        ))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset < 4 {
            // Only whole-register reads of the address register are meaningful.
            if offset == 0 && data.len() == 4 {
                data.copy_from_slice(&self.address.to_le_bytes());
            } else {
                data.fill(0xff);
            }
            return;
        }
        match self.target(offset - 4) {
            Some((b, d, f, reg)) => lock(&self.root).config_read(b, d, f, reg, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset < 4 {
            if offset == 0 && data.len() == 4 {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            return;
        }
        if let Some((b, d, f, reg)) = self.target(offset - 4) {
            lock(&self.root).config_write(b, d, f, reg, data);
        }
    }
}

/// ECAM: bus << 20 | device << 15 | function << 12 | register.
pub struct PciConfigMmio {
    root: Arc<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        PciConfigMmio { root }
    }
}

fn ecam_decode(offset: u64) -> (u8, u8, u8, usize) {
    (
        (offset >> 20) as u8,
        ((offset >> 15) & 0x1f) as u8,
        ((offset >> 12) & 7) as u8,
        (offset & 0xfff) as usize,
    )
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let (b, d, f, reg) = ecam_decode(offset);
        lock(&self.root).config_read(b, d, f, reg, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (b, d, f, reg) = ecam_decode(offset);
        lock(&self.root).config_write(b, d, f, reg, data);
    }
}

/// A window of guest address space (the 32-bit or 64-bit BAR window, or the I/O window) whose
/// trapped accesses go to the BAR that currently covers them.
pub struct PciBarWindow {
    root: Arc<Mutex<PciRoot>>,
    space: AddressSpace,
    base: u64,
}

impl PciBarWindow {
    pub fn new(root: Arc<Mutex<PciRoot>>, space: AddressSpace, base: u64) -> Self {
        PciBarWindow { root, space, base }
    }
}

impl BusDevice for PciBarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        lock(&self.root).bar_read(self.space, self.base + offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        lock(&self.root).bar_write(self.space, self.base + offset, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(io: &mut PciConfigIo, bus: u8, dev: u8, func: u8, reg: u32) -> u32 {
        let addr = 0x8000_0000 | (bus as u32) << 16 | (dev as u32) << 11 | (func as u32) << 8 | reg;
        io.write(0, &addr.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(4, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn host_bridge_and_absent_functions_through_both_mechanisms() {
        let root = Arc::new(Mutex::new(PciRoot::default()));
        let mut io = PciConfigIo::new(root.clone());
        assert_eq!(read32(&mut io, 0, 0, 0, 0), 0x0008_1b36);
        assert_eq!(
            read32(&mut io, 0, 0, 0, 8) >> 16,
            0x0600,
            "class: host bridge"
        );
        assert_eq!(read32(&mut io, 0, 1, 0, 0), 0xffff_ffff, "empty slot");
        assert_eq!(read32(&mut io, 0, 0, 1, 0), 0xffff_ffff, "function 1");
        assert_eq!(read32(&mut io, 1, 0, 0, 0), 0xffff_ffff, "bus 1");
        // The address register reads back (Linux's conf1 probe relies on it).
        let mut b = [0u8; 4];
        io.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b) & 0x8000_0000, 0x8000_0000);
        // Byte access into the data window.
        io.write(0, &0x8000_0000u32.to_le_bytes());
        let mut one = [0u8; 1];
        io.read(4 + 2, &mut one);
        assert_eq!(one[0], 0x08);
        // Disabled address: all ones.
        io.write(0, &0u32.to_le_bytes());
        io.read(4, &mut b);
        assert_eq!(b, [0xff; 4]);

        let mut ecam = PciConfigMmio::new(root);
        ecam.read(0, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0008_1b36);
        ecam.read(1 << 15, &mut b);
        assert_eq!(b, [0xff; 4], "slot 1 via ECAM");
        // Extended space of the bridge reads as zero, misaligned accesses as all ones.
        ecam.read(0x100, &mut b);
        assert_eq!(b, [0; 4]);
        ecam.read(0x101, &mut b);
        assert_eq!(b, [0xff; 4]);
    }

    struct Fake {
        writes: Vec<(usize, Vec<u8>)>,
        bar_at: u64,
    }
    impl PciDevice for Fake {
        fn config_read(&mut self, reg: usize, data: &mut [u8]) {
            data.fill(reg as u8);
        }
        fn config_write(&mut self, reg: usize, data: &[u8]) {
            self.writes.push((reg, data.to_vec()));
        }
        fn trapped_bars(&self) -> Vec<BarRange> {
            vec![BarRange {
                bar: 2,
                space: AddressSpace::Memory,
                addr: self.bar_at,
                size: 0x1000,
            }]
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(bar as u8 * 0x10 + offset as u8);
        }
    }

    #[test]
    fn devices_get_slots_and_trapped_bar_accesses() {
        let root = Arc::new(Mutex::new(PciRoot::default()));
        let slot = lock(&root)
            .add(Box::new(Fake {
                writes: vec![],
                bar_at: 0xe000_0000,
            }))
            .unwrap();
        assert_eq!(slot, 1);
        let mut ecam = PciConfigMmio::new(root.clone());
        let mut b = [0u8; 2];
        ecam.read(1 << 15 | 0x44, &mut b);
        assert_eq!(b, [0x44, 0x44]);
        ecam.write(1 << 15 | 0x10, &[1, 2, 3, 4]);
        let mut w = PciBarWindow::new(root.clone(), AddressSpace::Memory, 0xe000_0000);
        let mut one = [0u8; 1];
        w.read(5, &mut one);
        assert_eq!(one[0], 0x25);
        w.read(0x1000, &mut one);
        assert_eq!(one[0], 0xff, "past the BAR");
        let mut io = PciBarWindow::new(root, AddressSpace::Io, 0xe000_0000);
        io.read(5, &mut one);
        assert_eq!(one[0], 0xff, "I/O space has no such BAR");
        for _ in 0..(MAX_DEVICES - 2) {
            lock(&io.root).add(Box::new(HostBridge::new())).unwrap();
        }
        assert!(lock(&io.root).add(Box::new(HostBridge::new())).is_err());
    }
}
