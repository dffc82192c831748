//! The `io.eci.*` annotation parser (probes, lifecycle hooks, grace period, pod volumes,
//! quantities). The body is `eci_agent::fuzz::parse_annotations`, which a unit test also drives
//! with random and mutated input on stable.
//!
//! Run: `cd guest-agent/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run annotations`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eci_agent::fuzz::parse_annotations(data);
});
