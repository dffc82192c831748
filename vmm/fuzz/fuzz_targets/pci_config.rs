#![no_main]
//! Guest accesses to the PCI root: configuration space through ports 0xcf8/0xcfc and ECAM, and
//! trapped BAR accesses (MSI-X table included) of a passed-through device whose own
//! configuration space is also fuzzed.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    eci_vmm::fuzzing::fuzz_pci_config(data);
});
