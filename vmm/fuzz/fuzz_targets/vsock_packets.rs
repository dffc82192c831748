//! Guest-controlled virtqueue memory into `eci_vmm::fuzzing::fuzz_vsock_packets` (the same body the
//! unit tests drive with random bytes on stable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = eci_vmm::fuzzing::fuzz_vsock_packets(data);
});
