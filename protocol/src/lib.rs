//! The ECI agent API shared by the shim (client) and the agent (server).
//!
//! Owns: the wire contract (`proto/`), the generated ttrpc code, the stream framing, and the
//! protocol version. Must not touch: anything that runs containers or talks to containerd.

/// Generated protobuf messages of `proto/agent.proto`.
#[allow(clippy::all, nonstandard_style, dead_code, unused_attributes, unknown_lints, unused_mut, unused_imports, unused_results, unsafe_op_in_unsafe_fn, non_camel_case_types)]
#[rustfmt::skip]
pub mod agent {
    include!(concat!(env!("OUT_DIR"), "/agent.rs"));
}

/// Generated ttrpc client and server of `proto/agent.proto`.
#[allow(clippy::all, nonstandard_style, dead_code, unused_attributes, unknown_lints, unused_mut, unused_imports, unused_results, unsafe_op_in_unsafe_fn, non_camel_case_types)]
#[rustfmt::skip]
pub mod agent_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/agent_ttrpc.rs"));
}

/// Generated protobuf messages of `proto/stream.proto`.
#[allow(clippy::all, nonstandard_style, dead_code, unused_attributes, unknown_lints, unused_mut, unused_imports, unused_results, unsafe_op_in_unsafe_fn, non_camel_case_types)]
#[rustfmt::skip]
pub mod stream {
    include!(concat!(env!("OUT_DIR"), "/stream.rs"));
}

pub mod annotations;
pub mod framing;
pub mod sizes;
pub mod validate;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// vsock port of the ttrpc API in a VM.
pub const AGENT_API_VSOCK_PORT: u32 = 1024;

/// vsock port of the stdio stream endpoint in a VM.
pub const AGENT_STREAM_VSOCK_PORT: u32 = 1025;
