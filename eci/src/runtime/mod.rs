//! The runtime of `eci serve`: drives containerd through CRI (runtime handler `eci`) to make
//! container groups real. Owns the CRI client, the controller that implements
//! [`crate::backend::Backend`], the per-group supervisor (restart policy with back-off, init
//! containers), image caches, logs, exec and metrics, and the CNI config writer. Never talks to
//! shims or agents directly.

pub mod cni;
