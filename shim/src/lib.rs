//! containerd shim v2 for ECI pods (`io.containerd.eci.v2`).
//!
//! Owns: the containerd Task API of one pod, the pod's sandbox (through [`hypervisor`]: a
//! microVM per pod in [`vm`], or local mode), host
//! OCI hooks, stdio plumbing, and every host resource of the pod (sockets, mounts, cgroups,
//! directories). Must not touch: guest internals, except through the agent API.

pub mod agent;
pub mod bootstrap;
pub mod cgroups;
pub mod config;
pub mod error;
pub mod events;
pub mod hooks;
pub mod hypervisor;
pub mod lifecycle;
pub mod metrics;
pub mod paths;
pub mod pidmap;
pub mod publisher;
pub mod reaper;
pub mod sandbox;
pub mod stdio;
pub mod task;
pub mod vfio;
pub mod vm;

pub use lifecycle::RUNTIME_ID;
