//! eci-vmm: a minimal KVM virtual machine monitor on rust-vmm crates.
//!
//! Owns: KVM setup, guest memory, direct kernel boot, the legacy and virtio devices, vCPU
//! threads and the event loop, the control socket and the process's seccomp filters.
//! Must not know about containers or the agent API.

pub mod acpi;
pub mod api;
pub mod arch;
pub mod boot;
pub mod config;
pub mod devices;
pub mod fuzzing;
pub mod jail;
pub mod kvm_kind;
pub mod layout;
pub mod memory;
pub mod mptable;
pub mod seccomp;
pub mod vcpu;
pub mod vfio;
pub mod vmm;
