//! The fuzz body for agent request decoding and validation, shared by the cargo-fuzz target
//! (`guest-agent/fuzz`) and a unit test that feeds it random and malformed bytes on stable.

use eci_protocol::agent::*;
use eci_protocol::stream::StreamHeader;
use eci_protocol::{framing, validate};
use protobuf::Message;

/// Decodes `data` as every request the agent accepts and validates what decodes. Must never
/// panic, whatever the bytes.
pub fn decode_and_validate(data: &[u8]) {
    if let Ok(r) = CreateContainerRequest::parse_from_bytes(data) {
        let _ = validate::create_container(&r);
    }
    if let Ok(r) = ExecProcessRequest::parse_from_bytes(data) {
        let _ = validate::exec_process(&r);
    }
    if let Ok(r) = SignalProcessRequest::parse_from_bytes(data) {
        let _ = validate::signal_process(&r);
    }
    if let Ok(r) = ResizeTtyRequest::parse_from_bytes(data) {
        let _ = validate::resize_tty(&r);
    }
    if let Ok(r) = UpdateContainerRequest::parse_from_bytes(data) {
        let _ = validate::update_container(&r);
    }
    if let Ok(r) = ProcessRequest::parse_from_bytes(data) {
        let _ = validate::process_request(&r);
    }
    if let Ok(r) = SetupSandboxRequest::parse_from_bytes(data) {
        let _ = validate::id("sandbox_id", &r.sandbox_id);
    }
    if let Ok(h) = framing::decode_frame::<StreamHeader>(data) {
        let _ = validate::stream_header(&h);
    }
    // The OCI documents inside requests are JSON: feed the bytes to the JSON validators directly.
    let _ = validate::spec("oci_spec_json", data);
    let _ = validate::process_json("process_json", data);
    let _ = validate::resources_json("resources_json", data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: deterministic bytes without a dependency.
    fn random_bytes(seed: &mut u64, len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed as u8
            })
            .collect()
    }

    #[test]
    fn random_and_malformed_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for len in 0..2000 {
            decode_and_validate(&random_bytes(&mut seed, len % 300));
        }
        let valid = CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: br#"{"ociVersion":"1.0.2","process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}},"root":{"path":"/r"}}"#.to_vec(),
            ..Default::default()
        }
        .write_to_bytes()
        .unwrap();
        // Every truncation and single-byte corruption of a valid request.
        for cut in 0..valid.len() {
            decode_and_validate(&valid[..cut]);
            let mut bad = valid.clone();
            bad[cut] ^= 0xff;
            decode_and_validate(&bad);
        }
        for json in [
            &b"{}"[..],
            b"null",
            b"[]",
            b"{\"ociVersion\":1}",
            &[0xff; 64],
        ] {
            decode_and_validate(json);
        }
    }
}
