//! Guest physical memory layout (x86_64), the same shape Firecracker uses so that a stock
//! Linux guest finds what it expects.

/// Boot GDT and IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const MEMMAP_START: u64 = 0x7000 - 0x800;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapped page tables for the 64-bit boot protocol (first 1 GiB, 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// End of conventional memory; the MP table lives in the EBDA just below it.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = EBDA_START;
/// Kernels are loaded at or above 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// 32-bit MMIO hole: virtio-mmio devices, IOAPIC, LAPIC. RAM above it goes past 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio device windows, one page each, IRQs from `VIRTIO_IRQ_BASE`.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_GAP_START;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// Largest number of virtio-mmio devices (IRQs 5..=23 of the IOAPIC).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// PCI root (only with a PCI device): the 32-bit BAR window, ECAM for bus 0 (reserved in the
/// e820 map, as Linux requires before it uses MMCONFIG), the I/O BAR window. The 64-bit BAR
/// window starts above RAM and 4 GiB (`devices::pci::bars::mmio64_start`).
pub const PCI_MMIO32_START: u64 = 0xe000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x1000_0000;
pub const PCI_ECAM_START: u64 = 0xf000_0000;
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
pub const PCI_IO_START: u64 = 0xc000;
pub const PCI_IO_SIZE: u64 = 0x4000;
/// Ports 0xcf8..0xcff: PCI configuration mechanism #1.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
pub const PCI_CONFIG_PORT_LEN: u64 = 8;
/// ACPI tables (RSDP first) in the BIOS area, inside the reserved range below 1 MiB.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = 0x10_0000;
/// First KVM memory slot for BAR mappings (RAM uses the slots below).
pub const BAR_SLOT_BASE: u32 = 32;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's private pages for VMX (TSS and identity map), inside the MMIO hole.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// The guest RAM ranges for `mem_size` bytes, split around the MMIO hole.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1].0, MMIO_GAP_END);
        assert_eq!(r[0].1 + r[1].1, 4 << 30);
    }
}
