//! The runtime of `eci serve`: drives containerd through CRI (runtime handler `eci`) to make
//! container groups real. Owns the CRI client, the [`Controller`] that implements
//! [`crate::backend::Backend`], one worker task per group (init containers, restart policy with
//! back-off, status and events), image caches, logs, exec and metrics, and the CNI config
//! writer. Never talks to shims or agents directly.

pub mod cni;
pub mod controller;
pub mod cri;
mod group;
pub mod images;
pub mod logs;
pub mod metrics;
pub mod policy;
pub mod probes;
pub mod translate;

pub use controller::{Controller, RuntimeConfig};
