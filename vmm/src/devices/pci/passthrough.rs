//! A passed-through PCI function: configuration space is the device's own, read and written
//! through the backend (VFIO), except what the VMM virtualizes: the BARs (placed by the VMM),
//! the expansion ROM (hidden), the interrupt pin (INTx is not offered), the multi-function
//! bit, the MSI and MSI-X capabilities (their real registers belong to the host's VFIO driver)
//! and the extended configuration space, which the guest may read but not write.
//!
//! BAR pages the backend can map become KVM memory slots at the BAR's guest address and move
//! with it; the rest of each BAR (and always the MSI-X table and PBA) traps here.

use std::sync::{Arc, Mutex};

use super::bars::{Bar, BarRegisters, BAR0_REG};
use super::msi::{GsiRouter, MsiCap, MsixCap, CAP_ID_MSI, CAP_ID_MSIX};
use super::{AddressSpace, BarRange, PciDevice, LEGACY_CONFIG_SIZE};
use crate::devices::bus::lock;

/// The device side, a seam for tests: VFIO in the VMM.
pub trait PassthroughBackend: Send {
    fn config_read(&self, reg: usize, data: &mut [u8]);
    fn config_write(&self, reg: usize, data: &[u8]);
    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]);
    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]);
    /// Signals vectors 0..n of MSI (resp. MSI-X) through the eventfds registered as irqfds on
    /// the device's GSIs, in order.
    fn enable_msi(&self, vectors: u32) -> std::io::Result<()>;
    fn disable_msi(&self) -> std::io::Result<()>;
    fn enable_msix(&self, vectors: u32) -> std::io::Result<()>;
    fn disable_msix(&self) -> std::io::Result<()>;
}

/// KVM memory slots, a seam for tests.
pub trait MemorySlots: Send + Sync {
    /// Maps `size` bytes at host address `host` to guest address `gpa` in `slot`; `size` 0
    /// removes the slot.
    fn set_slot(&self, slot: u32, gpa: u64, size: u64, host: u64) -> std::io::Result<()>;
}

/// Part of a BAR mapped from the device into the host's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MappedArea {
    pub bar: usize,
    pub offset: u64,
    pub size: u64,
    pub host_addr: u64,
    pub slot: u32,
}

/// Offsets of the MSI and MSI-X capabilities and their register values, read from the
/// device's capability list.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub msi: Option<(usize, u16)>,
    pub msix: Option<(usize, u16, u32, u32)>,
}

fn read_u8(b: &dyn PassthroughBackend, reg: usize) -> u8 {
    let mut v = [0u8; 1];
    b.config_read(reg, &mut v);
    v[0]
}

fn read_u16(b: &dyn PassthroughBackend, reg: usize) -> u16 {
    let mut v = [0u8; 2];
    b.config_read(reg, &mut v);
    u16::from_le_bytes(v)
}

fn read_u32(b: &dyn PassthroughBackend, reg: usize) -> u32 {
    let mut v = [0u8; 4];
    b.config_read(reg, &mut v);
    u32::from_le_bytes(v)
}

/// Walks the device's capability list (bounded: a broken or hostile list cannot loop).
pub fn find_capabilities(b: &dyn PassthroughBackend) -> Capabilities {
    let mut caps = Capabilities::default();
    const STATUS_CAP_LIST: u16 = 1 << 4;
    if read_u16(b, 0x06) & STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = (read_u8(b, 0x34) & 0xfc) as usize;
    for _ in 0..48 {
        if ptr < 0x40 || ptr + 12 > LEGACY_CONFIG_SIZE {
            break;
        }
        match read_u8(b, ptr) {
            CAP_ID_MSI if caps.msi.is_none() => caps.msi = Some((ptr, read_u16(b, ptr + 2))),
            CAP_ID_MSIX if caps.msix.is_none() => {
                caps.msix = Some((
                    ptr,
                    read_u16(b, ptr + 2),
                    read_u32(b, ptr + 4),
                    read_u32(b, ptr + 8),
                ))
            }
            _ => {}
        }
        ptr = (read_u8(b, ptr + 1) & 0xfc) as usize;
    }
    caps
}

/// Which interrupt mode the backend has enabled, and with how many vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IrqMode {
    None,
    Msi(u32),
    Msix,
}

pub struct PassthroughDevice {
    backend: Box<dyn PassthroughBackend>,
    bars: BarRegisters,
    mapped: Vec<MappedArea>,
    slots: Arc<dyn MemorySlots>,
    msi: Option<MsiCap>,
    msix: Option<MsixCap>,
    router: Arc<Mutex<GsiRouter>>,
    /// One GSI per vector (MSI or MSI-X, whichever has more).
    gsis: Vec<u32>,
    mode: IrqMode,
    interrupt_line: u8,
    name: String,
}

/// How many vectors the device can use, which is how many GSIs it needs.
pub fn vectors_needed(caps: &Capabilities) -> u32 {
    let msi = caps
        .msi
        .map(|(o, c)| MsiCap::new(o, c).max_vectors())
        .unwrap_or(0);
    let msix = caps
        .msix
        .map(|(_, c, _, _)| (c & 0x7ff) as u32 + 1)
        .unwrap_or(0);
    msi.max(msix)
}

impl PassthroughDevice {
    /// `bars`: the device's BARs at the addresses the VMM chose; `mapped`: the areas of them
    /// backed by host mappings (mapped into the guest here); `gsis`: irqfd GSIs, one per
    /// vector, as many as [`vectors_needed`].
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        backend: Box<dyn PassthroughBackend>,
        bars: Vec<(usize, Bar)>,
        mapped: Vec<MappedArea>,
        slots: Arc<dyn MemorySlots>,
        router: Arc<Mutex<GsiRouter>>,
        gsis: Vec<u32>,
    ) -> std::io::Result<Self> {
        let caps = find_capabilities(backend.as_ref());
        let bars = BarRegisters::new(bars);
        for m in &mapped {
            let bar = bars.get(m.bar).ok_or_else(|| {
                std::io::Error::other(format!("mapped area of absent BAR {}", m.bar))
            })?;
            slots.set_slot(m.slot, bar.addr + m.offset, m.size, m.host_addr)?;
        }
        Ok(PassthroughDevice {
            backend,
            bars,
            mapped,
            slots,
            msi: caps.msi.map(|(o, c)| MsiCap::new(o, c)),
            msix: caps.msix.map(|(o, c, t, p)| MsixCap::new(o, c, t, p)),
            router,
            gsis,
            mode: IrqMode::None,
            interrupt_line: 0xff,
            name,
        })
    }

    /// Whether `reg` holds a byte the VMM virtualizes, and its value.
    fn virtual_byte(&self, reg: usize) -> Option<u8> {
        match reg {
            0x0e => Some(read_u8(self.backend.as_ref(), 0x0e) & 0x7f),
            0x10..=0x27 => {
                let v = self.bars.read((reg - BAR0_REG) / 4);
                Some(v.to_le_bytes()[reg % 4])
            }
            0x30..=0x33 => Some(0),
            0x3c => Some(self.interrupt_line),
            0x3d => Some(0),
            _ => {
                let mut b = [0u8; 1];
                if let Some(m) = self.msi.as_ref().filter(|m| m.contains(reg)) {
                    m.read(reg, &mut b);
                    return Some(b[0]);
                }
                if let Some(m) = self.msix.as_ref().filter(|m| m.contains(reg)) {
                    m.read(reg, &mut b);
                    return Some(b[0]);
                }
                None
            }
        }
    }

    /// Moves the memory slots of `bar` from `old` to its new address.
    fn relocate(&mut self, bar: usize, old: u64) {
        let Some(new) = self.bars.get(bar).map(|b| b.addr) else {
            return;
        };
        for m in self.mapped.iter().filter(|m| m.bar == bar) {
            let _ = self.slots.set_slot(m.slot, old + m.offset, 0, m.host_addr);
            if let Err(e) = self
                .slots
                .set_slot(m.slot, new + m.offset, m.size, m.host_addr)
            {
                // A guest that moves a BAR onto RAM or another BAR loses the mapping; accesses
                // then trap and reach the device through the backend.
                eprintln!(
                    "eci-vmm: {}: BAR {bar} at {:#x} cannot be mapped: {e}",
                    self.name,
                    new + m.offset
                );
            }
        }
    }

    /// Brings the backend's interrupt mode and the GSI routes in line with the emulated
    /// capabilities after the guest wrote one of them.
    fn sync_interrupts(&mut self) {
        let msix_on = self.msix.as_ref().is_some_and(|m| m.enabled());
        let msi_on = !msix_on && self.msi.as_ref().is_some_and(|m| m.enabled());
        let want = if msix_on {
            IrqMode::Msix
        } else if msi_on {
            IrqMode::Msi(self.msi.as_ref().map(|m| m.vectors()).unwrap_or(0))
        } else {
            IrqMode::None
        };
        let routes: Vec<_> = match want {
            IrqMode::None => self.gsis.iter().map(|g| (*g, None)).collect(),
            IrqMode::Msi(_) => {
                let msgs = self.msi.as_ref().map(|m| m.messages()).unwrap_or_default();
                self.gsis
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (*g, msgs.get(i).copied().flatten()))
                    .collect()
            }
            IrqMode::Msix => {
                let m = self.msix.as_ref().expect("MSI-X is on");
                self.gsis
                    .iter()
                    .enumerate()
                    .map(|(i, g)| (*g, m.message(i as u32)))
                    .collect()
            }
        };
        // Routes first, so that nothing the device signals after enabling is misrouted.
        if let Err(e) = lock(&self.router).update(&routes) {
            eprintln!("eci-vmm: {}: setting MSI routes failed: {e}", self.name);
        }
        if want == self.mode {
            return;
        }
        let res = match self.mode {
            IrqMode::Msi(_) => self.backend.disable_msi(),
            IrqMode::Msix => self.backend.disable_msix(),
            IrqMode::None => Ok(()),
        }
        .and_then(|_| match want {
            IrqMode::Msi(n) => self.backend.enable_msi(n.min(self.gsis.len() as u32)),
            IrqMode::Msix => {
                let n = self.msix.as_ref().map(|m| m.table_size()).unwrap_or(0);
                self.backend.enable_msix(n.min(self.gsis.len() as u32))
            }
            IrqMode::None => Ok(()),
        });
        match res {
            Ok(()) => self.mode = want,
            Err(e) => {
                eprintln!(
                    "eci-vmm: {}: switching interrupts to {want:?} failed: {e}",
                    self.name
                );
                self.mode = IrqMode::None;
            }
        }
    }

    fn msix_region(&self, bar: usize, offset: u64) -> Option<(bool, u64)> {
        let m = self.msix.as_ref()?;
        let t = m.table_location();
        if t.bar == bar && offset >= t.offset && offset - t.offset < m.table_len() {
            return Some((true, offset - t.offset));
        }
        let p = m.pba_location();
        if p.bar == bar && offset >= p.offset && offset - p.offset < m.pba_len() {
            return Some((false, offset - p.offset));
        }
        None
    }

    /// The interrupt mode the backend is in (for tests and the control socket).
    pub fn irq_mode(&self) -> String {
        format!("{:?}", self.mode)
    }
}

impl PciDevice for PassthroughDevice {
    fn config_read(&mut self, reg: usize, data: &mut [u8]) {
        if reg >= LEGACY_CONFIG_SIZE {
            self.backend.config_read(reg, data);
            return;
        }
        self.backend.config_read(reg, data);
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.virtual_byte(reg + i) {
                *b = v;
            }
        }
    }

    fn config_write(&mut self, reg: usize, data: &[u8]) {
        match reg {
            // Extended space: read-only for the guest (resizable BAR and similar controls
            // would change what the VMM placed).
            r if r >= LEGACY_CONFIG_SIZE => {}
            0x10..=0x27 => {
                let index = (reg - BAR0_REG) / 4;
                let mut v = self.bars.read(index).to_le_bytes();
                let at = reg % 4;
                v[at..at + data.len()].copy_from_slice(data);
                if let Some((bar, old)) = self.bars.write(index, u32::from_le_bytes(v)) {
                    self.relocate(bar, old);
                }
            }
            0x30..=0x33 => {}
            0x3c..=0x3f => {
                if reg == 0x3c {
                    self.interrupt_line = data[0];
                }
            }
            r if self
                .msi
                .as_ref()
                .is_some_and(|m| m.contains(r) || m.contains(r + data.len() - 1)) =>
            {
                let m = self.msi.as_mut().expect("checked");
                // A dword write at the capability start also carries ID and next: skip them.
                let skip = (m.offset + 2).saturating_sub(r).min(data.len());
                m.write(r + skip, &data[skip..]);
                self.sync_interrupts();
            }
            r if self
                .msix
                .as_ref()
                .is_some_and(|m| m.contains(r) || m.contains(r + data.len() - 1)) =>
            {
                let m = self.msix.as_mut().expect("checked");
                let skip = (m.offset + 2).saturating_sub(r).min(data.len());
                m.write(r + skip, &data[skip..]);
                self.sync_interrupts();
            }
            _ => self.backend.config_write(reg, data),
        }
    }

    fn trapped_bars(&self) -> Vec<BarRange> {
        self.bars
            .iter()
            .map(|(i, b)| BarRange {
                bar: i,
                space: if b.kind == super::bars::BarKind::Io {
                    AddressSpace::Io
                } else {
                    AddressSpace::Memory
                },
                addr: b.addr,
                size: b.size,
            })
            .collect()
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match self.msix_region(bar, offset) {
            Some((true, off)) => self.msix.as_ref().expect("found").table_read(off, data),
            // Pending bits are not emulated: a masked vector's interrupts are dropped.
            Some((false, _)) => data.fill(0),
            None => self.backend.bar_read(bar, offset, data),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match self.msix_region(bar, offset) {
            Some((true, off)) => {
                let changed = self.msix.as_mut().expect("found").table_write(off, data);
                if changed.is_some() {
                    self.sync_interrupts();
                }
            }
            Some((false, _)) => {}
            None => self.backend.bar_write(bar, offset, data),
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::super::bars::BarKind;
    use super::super::msi::{IrqRouting, MsiMessage};
    use super::*;

    /// A device model: configuration space from bytes, BAR accesses and interrupt calls
    /// recorded.
    #[derive(Default)]
    pub struct FakeBackend {
        pub config: Mutex<Vec<u8>>,
        pub log: Arc<Mutex<Vec<String>>>,
    }

    impl PassthroughBackend for FakeBackend {
        fn config_read(&self, reg: usize, data: &mut [u8]) {
            let c = self.config.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = c.get(reg + i).copied().unwrap_or(0xff);
            }
        }
        fn config_write(&self, reg: usize, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .push(format!("cfg {reg:#x} {data:?}"));
        }
        fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
            self.log
                .lock()
                .unwrap()
                .push(format!("read bar{bar} {offset:#x}"));
            data.fill(0x5a);
        }
        fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
            self.log
                .lock()
                .unwrap()
                .push(format!("write bar{bar} {offset:#x} {data:?}"));
        }
        fn enable_msi(&self, n: u32) -> std::io::Result<()> {
            self.log.lock().unwrap().push(format!("enable msi {n}"));
            Ok(())
        }
        fn disable_msi(&self) -> std::io::Result<()> {
            self.log.lock().unwrap().push("disable msi".into());
            Ok(())
        }
        fn enable_msix(&self, n: u32) -> std::io::Result<()> {
            self.log.lock().unwrap().push(format!("enable msix {n}"));
            Ok(())
        }
        fn disable_msix(&self) -> std::io::Result<()> {
            self.log.lock().unwrap().push("disable msix".into());
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct FakeSlots(pub Mutex<Vec<(u32, u64, u64)>>);
    impl MemorySlots for FakeSlots {
        fn set_slot(&self, slot: u32, gpa: u64, size: u64, _host: u64) -> std::io::Result<()> {
            self.0.lock().unwrap().push((slot, gpa, size));
            Ok(())
        }
    }

    #[derive(Default)]
    pub struct FakeRouting(pub Mutex<Vec<(u32, MsiMessage)>>);
    impl IrqRouting for FakeRouting {
        fn set_msi_routes(&self, routes: &[(u32, MsiMessage)]) -> std::io::Result<()> {
            *self.0.lock().unwrap() = routes.to_vec();
            Ok(())
        }
    }

    /// An edu-like function (1234:11e8, MSI at 0x40) plus an MSI-X capability at 0x60 with 4
    /// vectors whose table sits in BAR 2 at 0x800 and PBA at 0xc00.
    pub fn sample_config() -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        c[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
        c[0x06] = 0x10; // capability list
        c[0x0e] = 0x80; // multi-function on the host: hidden
        c[0x10..0x14].copy_from_slice(&0xfea0_0000u32.to_le_bytes());
        c[0x18..0x1c].copy_from_slice(&0x0000_000cu32.to_le_bytes());
        c[0x30..0x34].copy_from_slice(&0xfeb0_0001u32.to_le_bytes());
        c[0x3d] = 1; // INTA on the host
        c[0x34] = 0x40;
        c[0x40] = CAP_ID_MSI;
        c[0x41] = 0x60;
        c[0x42] = 0x80; // 64-bit, 1 vector
        c[0x60] = CAP_ID_MSIX;
        c[0x61] = 0;
        c[0x62] = 3; // 4 vectors
        c[0x64..0x68].copy_from_slice(&0x802u32.to_le_bytes());
        c[0x68..0x6c].copy_from_slice(&0xc02u32.to_le_bytes());
        c[0x100..0x104].copy_from_slice(&0x0001_0001u32.to_le_bytes());
        c
    }

    pub struct Harness {
        pub dev: PassthroughDevice,
        pub log: Arc<Mutex<Vec<String>>>,
        pub slots: Arc<FakeSlots>,
        pub routing: Arc<FakeRouting>,
    }

    pub fn harness(config: Vec<u8>) -> Harness {
        let log = Arc::new(Mutex::new(Vec::new()));
        let backend = FakeBackend {
            config: Mutex::new(config),
            log: log.clone(),
        };
        let slots = Arc::new(FakeSlots::default());
        let routing = Arc::new(FakeRouting::default());
        let router = Arc::new(Mutex::new(GsiRouter::new(routing.clone())));
        let caps = find_capabilities(&backend);
        let gsis = lock(&router).allocate(vectors_needed(&caps)).unwrap();
        let dev = PassthroughDevice::new(
            "test".into(),
            Box::new(backend),
            vec![
                (
                    0,
                    Bar::new(
                        BarKind::Mem32 {
                            prefetchable: false,
                        },
                        1 << 20,
                        0xe000_0000,
                    ),
                ),
                (
                    2,
                    Bar::new(BarKind::Mem64 { prefetchable: true }, 1 << 12, 1 << 32),
                ),
            ],
            vec![MappedArea {
                bar: 0,
                offset: 0,
                size: 1 << 20,
                host_addr: 0x7f00_0000_0000,
                slot: 40,
            }],
            slots.clone(),
            router,
            gsis,
        )
        .unwrap();
        Harness {
            dev,
            log,
            slots,
            routing,
        }
    }

    fn r32(d: &mut PassthroughDevice, reg: usize) -> u32 {
        let mut b = [0u8; 4];
        d.config_read(reg, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn config_space_is_the_devices_with_virtualized_fields() {
        let mut h = harness(sample_config());
        let d = &mut h.dev;
        assert_eq!(r32(d, 0), 0x11e8_1234);
        assert_eq!(r32(d, 0x0c) >> 16 & 0xff, 0, "multi-function bit hidden");
        assert_eq!(r32(d, 0x10), 0xe000_0000, "BAR0 where the VMM put it");
        assert_eq!(r32(d, 0x18), 0xc, "BAR2 low: 64-bit prefetchable flags");
        assert_eq!(r32(d, 0x1c), 1, "BAR2 high");
        assert_eq!(r32(d, 0x30), 0, "no ROM");
        assert_eq!(r32(d, 0x3c) & 0xff00, 0, "no interrupt pin");
        assert_eq!(r32(d, 0x100), 0x0001_0001, "extended space passes through");
        // Writes: command goes to the device, extended space and ROM do not.
        d.config_write(0x04, &[0x06, 0x00]);
        d.config_write(0x100, &[0; 4]);
        d.config_write(0x30, &[0xff; 4]);
        d.config_write(0x3c, &[0x0b]);
        assert_eq!(r32(d, 0x3c) & 0xff, 0x0b);
        assert_eq!(*h.log.lock().unwrap(), vec!["cfg 0x4 [6, 0]".to_string()]);
        // BAR0's slot was mapped at construction.
        assert_eq!(*h.slots.0.lock().unwrap(), vec![(40, 0xe000_0000, 1 << 20)]);
    }

    #[test]
    fn bar_sizing_and_relocation_move_the_memory_slot() {
        let mut h = harness(sample_config());
        let d = &mut h.dev;
        d.config_write(0x10, &u32::MAX.to_le_bytes());
        assert_eq!(r32(d, 0x10), 0xfff0_0000);
        d.config_write(0x10, &0xe000_0000u32.to_le_bytes());
        assert_eq!(
            h.slots.0.lock().unwrap().len(),
            1,
            "sizing does not move the slot"
        );
        // Byte writes merge into the register.
        d.config_write(0x13, &[0xe8]);
        assert_eq!(r32(d, 0x10), 0xe800_0000);
        assert_eq!(
            h.slots.0.lock().unwrap()[1..],
            [(40, 0xe000_0000, 0), (40, 0xe800_0000, 1 << 20)]
        );
        assert_eq!(
            d.trapped_bars()[0],
            BarRange {
                bar: 0,
                space: AddressSpace::Memory,
                addr: 0xe800_0000,
                size: 1 << 20
            }
        );
    }

    #[test]
    fn msi_enable_routes_and_disable() {
        let mut h = harness(sample_config());
        let d = &mut h.dev;
        d.config_write(0x44, &0xfee0_0000u32.to_le_bytes());
        d.config_write(0x48, &0u32.to_le_bytes());
        d.config_write(0x4c, &0x0041u16.to_le_bytes());
        assert!(h.routing.0.lock().unwrap().is_empty(), "not enabled yet");
        // A dword write at the capability start (ID, next, control) enables it.
        d.config_write(0x40, &0x0081_6005u32.to_le_bytes());
        assert_eq!(r32(d, 0x40), 0x0081_6005);
        let routes = h.routing.0.lock().unwrap().clone();
        assert_eq!(
            routes,
            vec![(
                24,
                MsiMessage {
                    address: 0xfee0_0000,
                    data: 0x41
                }
            )]
        );
        // The guest moves the vector (irq affinity): the route follows, MSI stays enabled.
        d.config_write(0x4c, &0x0051u16.to_le_bytes());
        assert_eq!(h.routing.0.lock().unwrap()[0].1.data, 0x51);
        d.config_write(0x42, &0u16.to_le_bytes());
        assert!(h.routing.0.lock().unwrap().is_empty());
        let log = h.log.lock().unwrap().clone();
        assert_eq!(log, vec!["enable msi 1", "disable msi"]);
        assert_eq!(d.irq_mode(), "None");
    }

    #[test]
    fn msix_table_traps_and_the_rest_of_the_bar_reaches_the_device() {
        let mut h = harness(sample_config());
        let d = &mut h.dev;
        // Vector 2: address, data, unmask; then enable MSI-X.
        d.bar_write(2, 0x800 + 32, &0xfee0_1000u32.to_le_bytes());
        d.bar_write(2, 0x800 + 40, &0x0062u32.to_le_bytes());
        d.bar_write(2, 0x800 + 44, &0u32.to_le_bytes());
        d.config_write(0x62, &0x8003u16.to_le_bytes());
        assert_eq!(r32(d, 0x60) >> 16, 0x8003);
        let routes = h.routing.0.lock().unwrap().clone();
        assert_eq!(
            routes,
            vec![(
                26,
                MsiMessage {
                    address: 0xfee0_1000,
                    data: 0x62
                }
            )]
        );
        let mut b = [0u8; 4];
        d.bar_read(2, 0x800 + 40, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x62);
        d.bar_read(2, 0xc00, &mut b);
        assert_eq!(b, [0; 4], "PBA");
        d.bar_read(2, 0x10, &mut b);
        assert_eq!(b, [0x5a; 4], "outside the table: the device");
        // Masking the vector removes its route.
        d.bar_write(2, 0x800 + 44, &1u32.to_le_bytes());
        assert!(h.routing.0.lock().unwrap().is_empty());
        // MSI-X wins over MSI when both are enabled.
        d.config_write(0x42, &0x0081u16.to_le_bytes());
        let log = h.log.lock().unwrap().clone();
        assert_eq!(log, vec!["enable msix 4", "read bar2 0x10"]);
    }

    #[test]
    fn hostile_capability_lists_terminate() {
        let mut c = sample_config();
        c[0x41] = 0x40; // MSI points at itself
        let b = FakeBackend {
            config: Mutex::new(c),
            log: Default::default(),
        };
        let caps = find_capabilities(&b);
        assert!(caps.msi.is_some() && caps.msix.is_none());
        let mut c = sample_config();
        c[0x34] = 0xfc; // past the legacy space once the header is read
        let b = FakeBackend {
            config: Mutex::new(c),
            log: Default::default(),
        };
        assert_eq!(find_capabilities(&b), Capabilities::default());
    }
}
