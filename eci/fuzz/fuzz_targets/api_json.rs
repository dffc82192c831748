//! The API's JSON: request bodies decoded and validated (create, update, image caches, exec).
//! The body is `eci::fuzz::api_json`, which a unit test also drives with random and mutated
//! input on stable.
//!
//! Run: `cd eci/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run api_json`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    eci::fuzz::api_json(data);
});
