//! The ECI guest agent: creates and runs a pod's OCI containers and serves the agent API
//! (`eci-protocol`) to the shim.
//!
//! Owns: container lifecycle through youki's libcontainer (namespaces, mounts, cgroups v1/v2,
//! capabilities, rlimits, seccomp via [`seccomp`]), process stdio streams, exit statuses, OOM
//! events. Must not know about containerd or the VMM. PID-1 duties (mounting /proc, /sys,
//! cgroup2, bringing up interfaces, the in-guest self-test) live in `pid1`, which then calls
//! [`serve`].

pub mod agent;
pub mod cgroup;
pub mod container;
pub mod devcg;
pub mod devices;
pub mod error;
pub mod fuzz;
pub mod helper;
pub mod network;
pub mod pid1;
pub mod pod;
pub mod port_forward;
pub mod process;
pub mod reaper;
pub mod seccomp;
pub mod server;
pub mod service;
pub mod stdio;
pub mod storage;

pub use server::{serve, Config, Listen, ServeError};

/// Now as Unix time in nanoseconds.
pub fn unix_nanos_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
