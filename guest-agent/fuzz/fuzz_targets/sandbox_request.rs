//! SetupSandbox validation (interfaces, routes, neighbours, DNS, storages, shared directory)
//! and the network parsers under it, resolv.conf's included. The body is
//! `eci_agent::fuzz::setup_sandbox`, which a unit test also drives with random and mutated
//! input on stable.
//!
//! Run: `cd guest-agent/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run sandbox_request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eci_agent::fuzz::setup_sandbox(data);
});
