//! The ECI control plane: the API model, its validation, the SQLite store, the REST server
//! (`eci serve`) and the CLI. The runtime (`runtime/`) drives containerd through CRI and
//! implements [`backend::Backend`]; this crate must not talk to shims or agents directly.

pub mod backend;
pub mod cli;
pub mod fuzz;
pub mod model;
pub mod openapi;
pub mod runtime;
pub mod server;
pub mod store;
pub mod validate;
