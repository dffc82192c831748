//! Agent request decoding and validation: protobuf requests, stream frames and the OCI JSON
//! documents they carry. The body is `eci_agent::fuzz::decode_and_validate`, which a unit test
//! also drives with random and malformed input on stable.
//!
//! Run: `cd guest-agent/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run agent_request`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eci_agent::fuzz::decode_and_validate(data);
});
