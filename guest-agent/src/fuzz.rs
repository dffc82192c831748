//! The fuzz bodies for agent request decoding and validation, for the `io.eci.*` annotation
//! parser and for SetupSandbox's network and DNS parsers (and the resolv.conf parser the shim
//! reads a pod's DNS with), shared by the cargo-fuzz targets (`guest-agent/fuzz`) and unit
//! tests that feed them random and malformed bytes on stable.

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
        // Checks every field, pci_devices and the network included.
        let _ = validate::setup_sandbox(&r);
    }
    if let Ok(h) = framing::decode_frame::<StreamHeader>(data) {
        let _ = validate::stream_header(&h);
    }
    // The OCI documents inside requests are JSON: feed the bytes to the JSON validators directly.
    let _ = validate::spec("oci_spec_json", data);
    let _ = validate::process_json("process_json", data);
    let _ = validate::resources_json("resources_json", data);
}

/// Decodes `data` as a SetupSandbox request and validates it (interfaces, routes, neighbours,
/// DNS, storages, shared directory), and parses it as text with the network parsers: an
/// address/prefix, a MAC, resolv.conf (then validated as the DNS it gives). Must never panic.
pub fn setup_sandbox(data: &[u8]) {
    use validate::network;
    if let Ok(r) = SetupSandboxRequest::parse_from_bytes(data) {
        let _ = validate::setup_sandbox(&r);
    }
    let text = String::from_utf8_lossy(data);
    let _ = network::cidr("cidr", &text);
    let _ = network::parse_mac(&text);
    let _ = network::ifname("name", &text);
    let dns = network::parse_resolv_conf(&text);
    if let Ok(d) = network::dns("dns", &dns) {
        let _ = d.resolv_conf();
    }
    // The text as one of each field of a request.
    let request = SetupSandboxRequest {
        sandbox_id: "pod".into(),
        hostname: text.to_string(),
        shared_dir: text.to_string(),
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: "0a:58:0a:58:00:05".into(),
            addresses: vec![IpAddress {
                cidr: text.to_string(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        routes: vec![Route {
            destination: text.to_string(),
            gateway: text.to_string(),
            device: "eth0".into(),
            ..Default::default()
        }],
        neighbours: vec![Neighbour {
            ip: text.to_string(),
            mac: text.to_string(),
            device: "eth0".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let _ = validate::setup_sandbox(&request);
}

/// Parses `data` as the value of every `io.eci.*` annotation (and, split at the first NUL, as
/// a key/value pair of a whole annotation map). Must never panic, whatever the bytes.
pub fn parse_annotations(data: &[u8]) {
    use eci_protocol::annotations::{self as a, ProbeKindName};
    let text = String::from_utf8_lossy(data);
    let _ = a::parse_probe(a::PROBE_LIVENESS, &text, ProbeKindName::Liveness);
    let _ = a::parse_probe(a::PROBE_READINESS, &text, ProbeKindName::Readiness);
    let _ = a::parse_hook(a::POST_START, &text);
    let _ = a::parse_volume("io.eci.volume.v", &text);
    let _ = a::parse_quantity(&text);
    let (key, value) = text.split_once('\0').unwrap_or(("io.eci.volume.v", &text));
    let map = std::collections::HashMap::from([
        (key.to_string(), value.to_string()),
        (a::TERMINATION_GRACE.to_string(), value.to_string()),
    ]);
    let _ = a::parse(&map);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_parser_survives_random_and_mutated_input() {
        let mut seed = 0x2545_f491_4f6c_dd1d;
        for len in 0..2000 {
            parse_annotations(&random_bytes(&mut seed, len % 200));
        }
        let valid: &[&[u8]] = &[
            br#"{"httpGet":{"path":"/h","port":8080,"httpHeaders":[{"name":"A","value":"b"}]},"periodSeconds":1}"#,
            br#"{"exec":{"command":["cat","/tmp/x"]},"failureThreshold":2}"#,
            br#"{"tcpSocket":{"port":"80"}}"#,
            br#"{"configFile":{"items":[{"path":"a/b","content":"aGk=","mode":420}]}}"#,
            br#"{"emptyDir":{"medium":"Memory","sizeLimit":"1.5Gi"}}"#,
            br#"{"disk":{"device":"/dev/vdb","fsType":"xfs","readOnly":true}}"#,
            br#"{"nfs":{"server":"[::1]","path":"/export"}}"#,
            b"io.eci.probe.startup\0{\"exec\":{\"command\":[\"true\"]}}",
            b"64Mi",
        ];
        // Every truncation and single-byte corruption of valid values.
        for v in valid {
            for cut in 0..v.len() {
                parse_annotations(&v[..cut]);
                let mut bad = v.to_vec();
                bad[cut] ^= 0x5a;
                parse_annotations(&bad);
            }
        }
    }

    #[test]
    fn sandbox_parsers_survive_random_and_mutated_input() {
        let mut seed = 0x7f4a_7c15_9e37_79b9;
        for len in 0..2000 {
            setup_sandbox(&random_bytes(&mut seed, len % 300));
        }
        let request = SetupSandboxRequest {
            sandbox_id: "pod".into(),
            hostname: "web".into(),
            shared_dir: "/run/eci-shared".into(),
            storages: vec![StorageMount {
                source: "eci-shared".into(),
                fstype: "virtiofs".into(),
                mount_point: "/run/eci-shared".into(),
                ..Default::default()
            }],
            dns: Some(DnsConfig {
                nameservers: vec!["10.96.0.10".into()],
                searches: vec!["svc.cluster.local".into()],
                options: vec!["ndots:5".into()],
                ..Default::default()
            })
            .into(),
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:05".into(),
                mtu: 1500,
                addresses: vec![IpAddress {
                    cidr: "10.88.0.5/16".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            routes: vec![Route {
                destination: "default".into(),
                gateway: "10.88.0.1".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(validate::setup_sandbox(&request).is_ok());
        let valid = request.write_to_bytes().unwrap();
        let texts: &[&[u8]] = &[
            b"nameserver 10.0.0.1\nsearch a.b c\noptions ndots:2\n",
            b"fd00::1/64",
            b"0a:58:0a:58:00:05",
        ];
        for v in std::iter::once(valid.as_slice()).chain(texts.iter().copied()) {
            for cut in 0..v.len() {
                setup_sandbox(&v[..cut]);
                let mut bad = v.to_vec();
                bad[cut] ^= 0x5a;
                setup_sandbox(&bad);
            }
        }
    }

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
