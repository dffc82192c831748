//! Message-signalled interrupts of passed-through devices: the emulated MSI capability, the
//! emulated MSI-X capability and table, and the VM's GSI routing table.
//!
//! Delivery: every vector of a device has a GSI (24 and up, above the IOAPIC's pins) with an
//! irqfd registered once at setup; the host's VFIO driver signals that eventfd and KVM turns
//! it into the guest's message through the GSI route. The guest programs messages here, and
//! the routes follow: a masked or disabled vector has no route (its interrupts are dropped, as
//! the pending bit is not emulated).

use std::collections::BTreeMap;
use std::sync::Arc;

/// First GSI for MSI routes; 0..24 are the PIC and IOAPIC pins.
pub const MSI_GSI_BASE: u32 = 24;
/// KVM's default table has 1024 routes; leave room for the irqchip ones.
pub const MAX_GSI: u32 = 1024;

pub const CAP_ID_MSI: u8 = 0x05;
pub const CAP_ID_MSIX: u8 = 0x11;

/// An MSI message as the guest programmed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiMessage {
    pub address: u64,
    pub data: u32,
}

/// The VM side of interrupt routing (KVM_SET_GSI_ROUTING), a seam for tests.
pub trait IrqRouting: Send + Sync {
    /// Replaces every MSI route of the VM with `routes`; the irqchip routes of GSIs 0..24
    /// stay as KVM set them up.
    fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> std::io::Result<()>;
}

#[derive(Debug, thiserror::Error)]
#[error("out of GSIs for MSI vectors ({MAX_GSI} at most)")]
pub struct OutOfGsis;

/// The VM's MSI routes; shared by every passed-through device.
pub struct GsiRouter {
    ops: Arc<dyn IrqRouting>,
    next: u32,
    routes: BTreeMap<u32, MsiMessage>,
}

impl GsiRouter {
    pub fn new(ops: Arc<dyn IrqRouting>) -> Self {
        GsiRouter {
            ops,
            next: MSI_GSI_BASE,
            routes: BTreeMap::new(),
        }
    }

    /// Reserves `n` GSIs.
    pub fn allocate(&mut self, n: u32) -> Result<Vec<u32>, OutOfGsis> {
        let end = self
            .next
            .checked_add(n)
            .filter(|e| *e <= MAX_GSI)
            .ok_or(OutOfGsis)?;
        let gsis = (self.next..end).collect();
        self.next = end;
        Ok(gsis)
    }

    /// Sets (or, with `None`, removes) the routes of `changes`; tells KVM only when the table
    /// changed.
    pub fn update(&mut self, changes: &[(u32, Option<MsiMessage>)]) -> std::io::Result<()> {
        let mut changed = false;
        for (gsi, msg) in changes {
            let before = match msg {
                Some(m) => self.routes.insert(*gsi, *m),
                None => self.routes.remove(gsi),
            };
            changed |= before != *msg;
        }
        if !changed {
            return Ok(());
        }
        let all: Vec<_> = self.routes.iter().map(|(g, m)| (*g, *m)).collect();
        self.ops.set_msi_routes(&all)
    }

    pub fn routes(&self) -> &BTreeMap<u32, MsiMessage> {
        &self.routes
    }
}

/// A capability register block shadowed in the VMM: reads return the shadow, writes change
/// only the bits marked writable.
#[derive(Debug, Clone)]
struct Shadow {
    bytes: Vec<u8>,
    writable: Vec<u8>,
}

impl Shadow {
    fn read(&self, off: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.bytes.get(off + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, off: usize, data: &[u8]) {
        for (i, v) in data.iter().enumerate() {
            if let (Some(b), Some(w)) = (self.bytes.get_mut(off + i), self.writable.get(off + i)) {
                *b = (*b & !w) | (v & w);
            }
        }
    }

    fn u16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }

    fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.bytes[off..off + 4].try_into().expect("4 bytes"))
    }
}

/// The MSI capability (PCI 3.0 section 6.8.1), emulated: the device's real MSI registers belong
/// to the host's VFIO driver.
#[derive(Debug, Clone)]
pub struct MsiCap {
    /// Offset of the capability in configuration space.
    pub offset: usize,
    regs: Shadow,
}

const MSI_ENABLE: u16 = 1;
const MSI_64BIT: u16 = 1 << 7;
const MSI_PER_VECTOR_MASK: u16 = 1 << 8;

impl MsiCap {
    /// From the device's message control register (its read-only bits: multiple message
    /// capable, 64-bit, per-vector masking).
    pub fn new(offset: usize, device_control: u16) -> Self {
        let control = device_control & (0x000e | MSI_64BIT | MSI_PER_VECTOR_MASK);
        let is64 = control & MSI_64BIT != 0;
        let pvm = control & MSI_PER_VECTOR_MASK != 0;
        let len = match (is64, pvm) {
            (false, false) => 10,
            (true, false) => 14,
            (false, true) => 20,
            (true, true) => 24,
        };
        let mut bytes = vec![0u8; len];
        bytes[0] = CAP_ID_MSI;
        bytes[2..4].copy_from_slice(&control.to_le_bytes());
        let mut writable = vec![0u8; len];
        writable[2] = 0x71; // enable, multiple message enable
        writable[4] = 0xfc; // address, dword aligned
        writable[5..8].fill(0xff);
        let data_off = if is64 {
            writable[8..12].fill(0xff);
            12
        } else {
            8
        };
        writable[data_off..data_off + 2].fill(0xff);
        if pvm {
            let mask_off = data_off + 4;
            writable[mask_off..mask_off + 4].fill(0xff);
        }
        MsiCap {
            offset,
            regs: Shadow { bytes, writable },
        }
    }

    /// Whether configuration register `reg` is in the emulated part (all but ID and next).
    pub fn contains(&self, reg: usize) -> bool {
        reg >= self.offset + 2 && reg < self.offset + self.regs.bytes.len()
    }

    pub fn read(&self, reg: usize, data: &mut [u8]) {
        self.regs.read(reg - self.offset, data);
    }

    pub fn write(&mut self, reg: usize, data: &[u8]) {
        self.regs.write(reg - self.offset, data);
    }

    fn control(&self) -> u16 {
        self.regs.u16(2)
    }

    fn is64(&self) -> bool {
        self.control() & MSI_64BIT != 0
    }

    pub fn enabled(&self) -> bool {
        self.control() & MSI_ENABLE != 0
    }

    /// The largest vector count the device supports.
    pub fn max_vectors(&self) -> u32 {
        1 << ((self.control() >> 1) & 7).min(5)
    }

    /// Vectors enabled by the guest (multiple message enable, capped by what is capable).
    pub fn vectors(&self) -> u32 {
        (1 << ((self.control() >> 4) & 7).min(5)).min(self.max_vectors())
    }

    fn masked(&self, vector: u32) -> bool {
        if self.control() & MSI_PER_VECTOR_MASK == 0 {
            return false;
        }
        let mask_off = if self.is64() { 16 } else { 12 };
        self.regs.u32(mask_off) & (1 << vector) != 0
    }

    /// The message of each enabled vector, `None` when masked (data's low bits carry the
    /// vector number, as with multiple messages on hardware).
    pub fn messages(&self) -> Vec<Option<MsiMessage>> {
        let lo = self.regs.u32(4) as u64;
        let (address, data_off) = if self.is64() {
            (lo | (self.regs.u32(8) as u64) << 32, 12)
        } else {
            (lo, 8)
        };
        let data = self.regs.u16(data_off) as u32;
        let n = self.vectors();
        (0..n)
            .map(|v| {
                (!self.masked(v)).then_some(MsiMessage {
                    address,
                    data: (data & !(n - 1)) | v,
                })
            })
            .collect()
    }
}

/// The MSI-X capability (PCI 3.0 section 6.8.2) and its table, emulated: the table lives in a
/// BAR whose pages around it may be mapped into the guest, but the table itself always traps.
#[derive(Debug, Clone)]
pub struct MsixCap {
    pub offset: usize,
    regs: Shadow,
    table: Vec<[u32; 4]>,
}

const MSIX_ENABLE: u16 = 1 << 15;
const MSIX_FUNCTION_MASK: u16 = 1 << 14;
/// Size of one table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;

/// Where a table or the PBA lives: BAR index and offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarLocation {
    pub bar: usize,
    pub offset: u64,
}

impl BarLocation {
    fn from_register(v: u32) -> Self {
        BarLocation {
            bar: (v & 7) as usize,
            offset: (v & !7) as u64,
        }
    }
}

impl MsixCap {
    /// From the device's message control, table and PBA registers.
    pub fn new(offset: usize, device_control: u16, table: u32, pba: u32) -> Self {
        let mut bytes = vec![0u8; 12];
        bytes[0] = CAP_ID_MSIX;
        bytes[2..4].copy_from_slice(&(device_control & 0x07ff).to_le_bytes());
        bytes[4..8].copy_from_slice(&table.to_le_bytes());
        bytes[8..12].copy_from_slice(&pba.to_le_bytes());
        let mut writable = vec![0u8; 12];
        writable[3] = 0xc0; // enable, function mask
        let size = (device_control & 0x07ff) as usize + 1;
        MsixCap {
            offset,
            regs: Shadow { bytes, writable },
            // Every vector starts masked.
            table: vec![[0, 0, 0, 1]; size],
        }
    }

    pub fn contains(&self, reg: usize) -> bool {
        reg >= self.offset + 2 && reg < self.offset + 12
    }

    pub fn read(&self, reg: usize, data: &mut [u8]) {
        self.regs.read(reg - self.offset, data);
    }

    pub fn write(&mut self, reg: usize, data: &[u8]) {
        self.regs.write(reg - self.offset, data);
    }

    pub fn table_size(&self) -> u32 {
        self.table.len() as u32
    }

    pub fn table_location(&self) -> BarLocation {
        BarLocation::from_register(self.regs.u32(4))
    }

    pub fn pba_location(&self) -> BarLocation {
        BarLocation::from_register(self.regs.u32(8))
    }

    /// Bytes the table takes, and the PBA (one bit per vector, in qwords).
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * MSIX_ENTRY_SIZE
    }

    pub fn pba_len(&self) -> u64 {
        (self.table.len() as u64).div_ceil(64) * 8
    }

    pub fn enabled(&self) -> bool {
        self.regs.u16(2) & MSIX_ENABLE != 0
    }

    fn function_masked(&self) -> bool {
        self.regs.u16(2) & MSIX_FUNCTION_MASK != 0
    }

    /// Reads the table at byte `offset` (4 or 8 bytes, aligned; anything else reads ones).
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if !matches!(data.len(), 4 | 8) || offset % data.len() as u64 != 0 {
            return;
        }
        for (k, chunk) in data.chunks_mut(4).enumerate() {
            let off = offset + 4 * k as u64;
            if let Some(e) = self.table.get((off / MSIX_ENTRY_SIZE) as usize) {
                chunk.copy_from_slice(&e[((off % MSIX_ENTRY_SIZE) / 4) as usize].to_le_bytes());
            }
        }
    }

    /// Writes the table; returns the vector whose entry changed.
    pub fn table_write(&mut self, offset: u64, data: &[u8]) -> Option<u32> {
        if !matches!(data.len(), 4 | 8) || offset % data.len() as u64 != 0 {
            return None;
        }
        let index = (offset / MSIX_ENTRY_SIZE) as usize;
        let entry = self.table.get_mut(index)?;
        for (k, chunk) in data.chunks(4).enumerate() {
            let word = ((offset % MSIX_ENTRY_SIZE) / 4) as usize + k;
            let v = u32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            entry[word] = if word == 3 { v & 1 } else { v };
        }
        Some(index as u32)
    }

    /// The route of `vector`: its message unless disabled or masked.
    pub fn message(&self, vector: u32) -> Option<MsiMessage> {
        let e = self.table.get(vector as usize)?;
        let live = self.enabled() && !self.function_masked() && e[3] & 1 == 0;
        live.then_some(MsiMessage {
            address: e[0] as u64 | (e[1] as u64) << 32,
            data: e[2],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Recorder(pub Mutex<Vec<Vec<(u32, MsiMessage)>>>);
    impl IrqRouting for Recorder {
        fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> std::io::Result<()> {
            self.0.lock().unwrap().push(routes.to_vec());
            Ok(())
        }
    }

    #[test]
    fn router_allocates_and_only_reports_changes() {
        let rec = Arc::new(Recorder::default());
        let mut r = GsiRouter::new(rec.clone());
        assert_eq!(r.allocate(2).unwrap(), vec![24, 25]);
        assert_eq!(r.allocate(1).unwrap(), vec![26]);
        assert!(r.allocate(MAX_GSI).is_err());
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        r.update(&[(24, Some(m))]).unwrap();
        r.update(&[(24, Some(m))]).unwrap();
        r.update(&[(25, None)]).unwrap();
        r.update(&[(24, None)]).unwrap();
        let calls = rec.0.lock().unwrap();
        assert_eq!(calls.len(), 2, "{calls:?}");
        assert_eq!(calls[0], vec![(24, m)]);
        assert!(calls[1].is_empty());
    }

    #[test]
    fn msi_64bit_with_masking() {
        // 64-bit, per-vector mask, 4 vectors capable (MMC = 2).
        let mut c = MsiCap::new(0x50, MSI_64BIT | MSI_PER_VECTOR_MASK | 2 << 1);
        assert!(c.contains(0x52) && !c.contains(0x50) && c.contains(0x50 + 23));
        assert!(!c.contains(0x50 + 24));
        c.write(0x54, &0xfee0_1003u32.to_le_bytes());
        c.write(0x58, &1u32.to_le_bytes());
        c.write(0x5c, &0x4021u16.to_le_bytes());
        // Enable with 8 vectors requested: capped at the 4 capable.
        c.write(0x52, &(MSI_ENABLE | 3 << 4).to_le_bytes());
        assert!(c.enabled());
        assert_eq!(c.vectors(), 4);
        let mut b = [0u8; 4];
        c.read(0x54, &mut b);
        assert_eq!(
            u32::from_le_bytes(b),
            0xfee0_1000,
            "low address bits read as zero"
        );
        c.write(0x60, &0b10u32.to_le_bytes()); // mask vector 1
        let msgs = c.messages();
        assert_eq!(msgs.len(), 4);
        assert_eq!(
            msgs[0],
            Some(MsiMessage {
                address: 0x1_fee0_1000,
                data: 0x4020
            })
        );
        assert_eq!(msgs[1], None);
        assert_eq!(msgs[3].unwrap().data, 0x4023);
        // Read-only bits stay: the guest cannot claim 32 vectors or drop 64-bit.
        c.write(0x52, &0xffffu16.to_le_bytes());
        let mut ctl = [0u8; 2];
        c.read(0x52, &mut ctl);
        assert_eq!(
            u16::from_le_bytes(ctl) & 0x18e,
            MSI_64BIT | MSI_PER_VECTOR_MASK | 4
        );
    }

    #[test]
    fn msi_32bit_single_vector() {
        let mut c = MsiCap::new(0x40, 0);
        c.write(0x44, &0xfee0_0000u32.to_le_bytes());
        c.write(0x48, &0x0031u16.to_le_bytes());
        assert!(!c.enabled());
        c.write(0x42, &MSI_ENABLE.to_le_bytes());
        assert_eq!(
            c.messages(),
            vec![Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            })]
        );
        assert!(!c.contains(0x40 + 10));
    }

    #[test]
    fn msix_table_entries_masks_and_enable() {
        // 3 vectors, table in BAR 2 at 0x2000, PBA in BAR 2 at 0x3000.
        let mut c = MsixCap::new(0x70, 2, 0x2002, 0x3002);
        assert_eq!(c.table_size(), 3);
        assert_eq!(
            c.table_location(),
            BarLocation {
                bar: 2,
                offset: 0x2000
            }
        );
        assert_eq!(c.table_len(), 48);
        assert_eq!(c.pba_len(), 8);
        let entry = |c: &mut MsixCap, v: u64, addr: u32, data: u32, ctl: u32| {
            c.table_write(v * 16, &addr.to_le_bytes());
            c.table_write(v * 16 + 4, &0u32.to_le_bytes());
            c.table_write(v * 16 + 8, &data.to_le_bytes());
            c.table_write(v * 16 + 12, &ctl.to_le_bytes())
        };
        assert_eq!(entry(&mut c, 1, 0xfee0_0000, 0x45, 0), Some(1));
        assert_eq!(c.message(1), None, "MSI-X not enabled yet");
        c.write(0x73, &[0x80]);
        assert!(c.enabled());
        assert_eq!(c.message(1).unwrap().data, 0x45);
        assert_eq!(c.message(0), None, "entries start masked");
        c.write(0x73, &[0xc0]);
        assert_eq!(c.message(1), None, "function mask");
        c.write(0x73, &[0x80]);
        let mut q = [0u8; 8];
        c.table_read(16 + 8, &mut q);
        assert_eq!(q, [0x45, 0, 0, 0, 0, 0, 0, 0]);
        // Out of range and odd accesses are harmless.
        assert_eq!(c.table_write(3 * 16, &[0; 4]), None);
        assert_eq!(c.table_write(2, &[0; 4]), None);
        let mut one = [0u8; 1];
        c.table_read(0, &mut one);
        assert_eq!(one, [0xff]);
        // The table registers are read-only for the guest.
        c.write(0x74, &0u32.to_le_bytes());
        assert_eq!(c.table_location().offset, 0x2000);
    }
}
