//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI finds its CPUs,
//! the IOAPIC and the ISA interrupt routing. Written by hand because no maintained crate
//! outside Firecracker/Cloud Hypervisor's own trees provides it; it is about 100 lines.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{APIC_START, IOAPIC_START, MPTABLE_START};

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("too many vCPUs for the MP table: {0}")]
    TooManyCpus(u8),
    #[error("MP table does not fit below the end of the EBDA")]
    TooBig,
    #[error("writing the MP table failed")]
    Write(#[source] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MPTABLE_LIMIT: u64 = 0xa0000;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The table bytes for `vcpus` CPUs and the given ISA IRQs routed 1:1 to IOAPIC pins.
pub fn build_mptable(vcpus: u8, irqs: &[u8]) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus >= 0xfe {
        return Err(MpTableError::TooManyCpus(vcpus));
    }
    let ioapic_id = vcpus + 1;
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        entries.extend_from_slice(&[0, cpu, APIC_VERSION]);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    for &irq in irqs {
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = (vcpus as u16) + 2 + irqs.len() as u16 + 2;

    let table_addr = MPTABLE_START + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, patched below
    header.extend_from_slice(b"ECI-VMM ");
    header.extend_from_slice(b"000000000000");
    header.extend_from_slice(&[0; 4]); // OEM table pointer
    header.extend_from_slice(&[0; 2]); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);
    fp.extend_from_slice(&table);
    Ok(fp)
}

pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u8, irqs: &[u8]) -> Result<(), MpTableError> {
    let bytes = build_mptable(vcpus, irqs)?;
    if MPTABLE_START + bytes.len() as u64 > MPTABLE_LIMIT {
        return Err(MpTableError::TooBig);
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_checksums_and_counts() {
        let t = build_mptable(4, &(0..24).collect::<Vec<_>>()).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(t[..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(u16::from_le_bytes([table[34], table[35]]), 4 + 2 + 24 + 2);
        // The first processor entry is the BSP, the second is not.
        assert_eq!(table[44 + 3], CPU_ENABLED | CPU_BSP);
        assert_eq!((table[64 + 1], table[64 + 3]), (1, CPU_ENABLED));
        assert!(build_mptable(0, &[]).is_err());
        // 32 vCPUs still fit in the EBDA.
        assert!(MPTABLE_START + build_mptable(32, &[0; 24]).unwrap().len() as u64 <= MPTABLE_LIMIT);
    }
}
