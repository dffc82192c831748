//! ACPI tables, written only when the VM has a PCI root (a VFIO device): Linux finds ECAM
//! (MMCONFIG) only through the MCFG table, and the PCI host bridge with its address windows
//! only through the DSDT. Hardware-reduced ACPI (no PM registers, no SCI), as Firecracker,
//! Cloud Hypervisor and qemu's microvm use: RSDP, XSDT, FADT, DSDT, MADT (the same CPUs and
//! IOAPIC as the MP table, which stays for guests without ACPI) and MCFG. Built with rust-vmm's
//! `acpi_tables`.
//!
//! Under hardware-reduced ACPI Linux drops the legacy PIC and maps no ISA IRQ by itself, so
//! every device with an interrupt is described in the DSDT with its GSI: the serial port as
//! COM1 (PNP0501) and each virtio-mmio device (LNRO0005, which the virtio_mmio driver matches),
//! as Firecracker and qemu's microvm do. The virtio-mmio devices are then left off the kernel
//! command line (`boot::build_cmdline`), or Linux would find each twice.
//!
//! The RSDP sits at 0xe0000, in the BIOS area Linux scans when the boot protocol gives no
//! RSDP address; the tables follow it. That area is reserved in the e820 map.

use acpi_tables::aml::{self, AddressSpace, AddressSpaceCacheable};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::devices::legacy::{SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
use crate::layout::{
    ACPI_TABLES_END, ACPI_TABLES_START, APIC_START, IOAPIC_START, VIRTIO_MMIO_SIZE,
};

const OEM_ID: [u8; 6] = *b"ECIVMM";
const OEM_TABLE_ID: [u8; 8] = *b"ECIVMM  ";

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("the ACPI tables ({0} bytes) do not fit in the BIOS area")]
    TooBig(usize),
    #[error("writing the ACPI tables failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// What the tables describe: CPUs, the PCI root's windows (start, size) and the virtio-mmio
/// devices (base, GSI).
#[derive(Debug, Clone)]
pub struct AcpiConfig {
    pub vcpus: u8,
    pub ecam: (u64, u64),
    pub io: (u64, u64),
    pub mmio32: (u64, u64),
    pub mmio64: (u64, u64),
    pub virtio: Vec<(u64, u32)>,
}

fn bytes(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// An edge-triggered, active-high interrupt on `gsi`: what KVM's irqfds raise on IOAPIC pins.
fn edge_irq(gsi: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, gsi)
}

/// COM1: the 16550 at 0x3f8 on GSI 4.
fn serial_device(out: &mut Vec<u8>) {
    let hid = aml::EISAName::new("PNP0501");
    let io = aml::IO::new(
        SERIAL_PORT_BASE as u16,
        SERIAL_PORT_BASE as u16,
        1,
        SERIAL_PORT_LEN as u8,
    );
    let irq = edge_irq(SERIAL_IRQ);
    let crs = aml::ResourceTemplate::new(vec![&io, &irq]);
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    ];
    aml::Device::new(
        "_SB_.COM1".into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(out);
}

/// A virtio-mmio device (`LNRO0005`): its register page and GSI.
fn virtio_device(index: usize, base: u64, gsi: u32, out: &mut Vec<u8>) {
    let hid: aml::AmlString = "LNRO0005".into();
    let uid = index as u64;
    let mem = aml::Memory32Fixed::new(true, base as u32, VIRTIO_MMIO_SIZE as u32);
    let irq = edge_irq(gsi);
    let crs = aml::ResourceTemplate::new(vec![&mem, &irq]);
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_UID".into(), &uid),
        aml::Name::new("_CRS".into(), &crs),
    ];
    aml::Device::new(
        format!("_SB_.V{index:03X}").as_str().into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    )
    .to_aml_bytes(out);
}

/// The DSDT: one PCI Express host bridge (PNP0A08) for bus 0, with the configuration ports,
/// the I/O window and both memory windows as its resources; COM1; the virtio-mmio devices.
fn dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let end = |(start, size): (u64, u64)| start + size - 1;
    let bus = AddressSpace::new_bus_number(0u16, 0u16);
    let ports = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io = AddressSpace::new_io(cfg.io.0 as u16, end(cfg.io) as u16, None);
    let mmio32 = AddressSpace::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        cfg.mmio32.0 as u32,
        end(cfg.mmio32) as u32,
        None,
    );
    let mmio64 = AddressSpace::new_memory(
        AddressSpaceCacheable::PreFetchable,
        true,
        cfg.mmio64.0,
        end(cfg.mmio64),
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &ports, &io, &mmio32, &mmio64]);
    let (hid, cid) = (aml::EISAName::new("PNP0A08"), aml::EISAName::new("PNP0A03"));
    let names = [
        aml::Name::new("_HID".into(), &hid),
        aml::Name::new("_CID".into(), &cid),
        aml::Name::new("_ADR".into(), &aml::ZERO),
        aml::Name::new("_SEG".into(), &aml::ZERO),
        aml::Name::new("_UID".into(), &aml::ZERO),
        aml::Name::new("_BBN".into(), &aml::ZERO),
        aml::Name::new("_CRS".into(), &crs),
    ];
    let pci0 = aml::Device::new(
        "_SB_.PCI0".into(),
        names.iter().map(|n| n as &dyn Aml).collect(),
    );
    let mut body = Vec::new();
    pci0.to_aml_bytes(&mut body);
    serial_device(&mut body);
    for (i, (base, gsi)) in cfg.virtio.iter().enumerate() {
        virtio_device(i, *base, *gsi, &mut body);
    }
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, 1);
    dsdt.append_slice(&body);
    dsdt.update_checksum();
    dsdt.as_slice().to_vec()
}

fn madt(vcpus: u8) -> Vec<u8> {
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        1,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..vcpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    // The same IOAPIC id as the MP table.
    madt.add_structure(IoApic::new(vcpus + 1, IOAPIC_START as u32, 0));
    let mut t = bytes(&madt);
    // PCAT_COMPAT: the dual 8259 exists (KVM's irqchip has it). Without it Linux allocates no
    // legacy IRQs, so ISA devices such as the serial port on IRQ 4 cannot get their interrupt.
    // `acpi_tables` keeps the flags private: set the bit and fix the checksum here.
    const MADT_FLAGS: usize = 40;
    const PCAT_COMPAT: u8 = 1;
    t[MADT_FLAGS] |= PCAT_COMPAT;
    t[9] = 0;
    t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    t
}

/// Every table with its guest address, RSDP first.
pub fn build_tables(cfg: &AcpiConfig) -> Vec<(u64, Vec<u8>)> {
    let align = |a: u64| a.div_ceil(16) * 16;
    let mut at = align(ACPI_TABLES_START + Rsdp::len() as u64);
    let mut place = |t: Vec<u8>, out: &mut Vec<(u64, Vec<u8>)>| {
        let addr = at;
        at = align(at + t.len() as u64);
        out.push((addr, t));
        addr
    };
    let mut out = Vec::new();
    let dsdt_addr = place(dsdt(cfg), &mut out);
    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, 1)
        .flag(Flags::HwReducedAcpi)
        .dsdt_64(dsdt_addr)
        .finalize();
    let fadt_addr = place(bytes(&fadt), &mut out);
    let madt_addr = place(madt(cfg.vcpus), &mut out);
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, 1);
    let last_bus = ((cfg.ecam.1 >> 20).max(1) - 1) as u8;
    mcfg.add_ecam(cfg.ecam.0, 0, 0, last_bus);
    let mcfg_addr = place(bytes(&mcfg), &mut out);
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, 1);
    for a in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(a);
    }
    let xsdt_addr = place(bytes(&xsdt), &mut out);
    out.insert(0, (ACPI_TABLES_START, bytes(&Rsdp::new(OEM_ID, xsdt_addr))));
    out
}

/// Writes the tables into guest memory; returns the RSDP's address.
pub fn write_tables(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> Result<u64, AcpiError> {
    let tables = build_tables(cfg);
    let (last, t) = tables.last().expect("at least the RSDP");
    if last + t.len() as u64 > ACPI_TABLES_END {
        return Err(AcpiError::TooBig(
            (last + t.len() as u64 - ACPI_TABLES_START) as usize,
        ));
    }
    for (addr, t) in &tables {
        mem.write_slice(t, GuestAddress(*addr))
            .map_err(AcpiError::Write)?;
    }
    Ok(ACPI_TABLES_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn config() -> AcpiConfig {
        AcpiConfig {
            vcpus: 4,
            ecam: (0xf000_0000, 1 << 20),
            io: (0xc000, 0x4000),
            mmio32: (0xe000_0000, 0x1000_0000),
            mmio64: (1 << 32, 1 << 40),
            virtio: vec![(0xd000_0000, 5), (0xd000_1000, 6)],
        }
    }

    /// An Extended Interrupt descriptor: consumer, edge-triggered, active-high, one GSI.
    fn edge_irq_bytes(gsi: u32) -> Vec<u8> {
        let mut v = vec![0x89, 6, 0, 0b11, 1];
        v.extend_from_slice(&gsi.to_le_bytes());
        v
    }

    fn count(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).filter(|w| *w == needle).count()
    }

    #[test]
    fn dsdt_gives_serial_and_virtio_devices_their_gsis() {
        let d = dsdt(&config());
        // COM1: EISA id PNP0501, ports 0x3f8..0x3ff, GSI 4.
        assert_eq!(count(&d, &[0x41, 0xd0, 0x05, 0x01]), 1);
        assert_eq!(count(&d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), 1);
        assert_eq!(count(&d, &edge_irq_bytes(4)), 1);
        // Each virtio-mmio device: LNRO0005, its page as Memory32Fixed, its GSI.
        assert_eq!(count(&d, b"LNRO0005\0"), 2);
        for (base, gsi) in [(0xd000_0000u32, 5), (0xd000_1000, 6)] {
            let mut mem = vec![0x86, 9, 0, 1];
            mem.extend_from_slice(&base.to_le_bytes());
            mem.extend_from_slice(&0x1000u32.to_le_bytes());
            assert_eq!(count(&d, &mem), 1, "{base:#x}");
            assert_eq!(count(&d, &edge_irq_bytes(gsi)), 1, "GSI {gsi}");
        }
    }

    #[test]
    fn tables_checksum_and_link_up() {
        let tables = build_tables(&config());
        let (rsdp_addr, rsdp) = &tables[0];
        assert_eq!(*rsdp_addr, ACPI_TABLES_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0);
        assert_eq!(sum(rsdp), 0);
        let by_addr = |a: u64| {
            tables
                .iter()
                .find(|(x, _)| *x == a)
                .map(|(_, t)| t)
                .unwrap()
        };
        let xsdt = by_addr(u64::from_le_bytes(rsdp[24..32].try_into().unwrap()));
        assert_eq!(&xsdt[..4], b"XSDT");
        let mut sigs = Vec::new();
        for e in xsdt[36..].chunks(8) {
            let t = by_addr(u64::from_le_bytes(e.try_into().unwrap()));
            assert_eq!(sum(t), 0, "{:?}", std::str::from_utf8(&t[..4]));
            assert_eq!(
                u32::from_le_bytes(t[4..8].try_into().unwrap()) as usize,
                t.len()
            );
            sigs.push(String::from_utf8(t[..4].to_vec()).unwrap());
            if &t[..4] == b"FACP" {
                let flags = u32::from_le_bytes(t[112..116].try_into().unwrap());
                assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
                let dsdt = by_addr(u64::from_le_bytes(t[140..148].try_into().unwrap()));
                assert_eq!(&dsdt[..4], b"DSDT");
                assert_eq!(sum(dsdt), 0);
                // The host bridge's _HID: EISA id PNP0A08 compressed.
                assert!(dsdt.windows(4).any(|w| w == [0x41, 0xd0, 0x0a, 0x08]));
            }
            if &t[..4] == b"MCFG" {
                assert_eq!(
                    u64::from_le_bytes(t[44..52].try_into().unwrap()),
                    0xf000_0000
                );
                assert_eq!((t[54], t[55]), (0, 0), "bus 0 only");
            }
            if &t[..4] == b"APIC" {
                // 4 local APICs (8 bytes) and one IOAPIC (12 bytes) after the 44-byte header.
                assert_eq!(t.len(), 44 + 4 * 8 + 12);
                assert_eq!(t[44 + 4 * 8 + 2], 5, "IOAPIC id after the CPUs");
                assert_eq!(t[40] & 1, 1, "PCAT_COMPAT: legacy IRQs for ISA devices");
            }
        }
        assert_eq!(sigs, ["FACP", "APIC", "MCFG"]);
    }

    #[test]
    fn tables_fit_for_the_largest_vm() {
        let mut c = config();
        c.vcpus = crate::config::MAX_VCPUS;
        c.virtio = (0..crate::layout::MAX_VIRTIO_DEVICES as u32)
            .map(|i| (0xd000_0000 + u64::from(i) * 0x1000, 5 + i))
            .collect();
        let tables = build_tables(&c);
        let (last, t) = tables.last().unwrap();
        assert!(last + t.len() as u64 <= ACPI_TABLES_END);
    }
}
