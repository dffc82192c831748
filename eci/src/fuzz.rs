//! The fuzz body for the API's JSON (decode + validate), shared by the cargo-fuzz target
//! (`eci/fuzz`) and a unit test that feeds it random and mutated input on stable.

use crate::model::{
    ContainerGroupSpec, CreateContainerGroupRequest, CreateImageCacheRequest, ExecRequest, Quota,
    UpdateContainerGroupRequest, UpdateImageCacheRequest,
};
use crate::server::decode_json;
use crate::validate::{
    spec_to_request, validate_create, validate_image_cache, validate_image_cache_update,
    validate_update, SIZE_TABLE,
};

const QUOTA: Quota = Quota {
    vcpu_quota: 64.0,
    vcpu_used: 8.0,
    gpu_quota: 0,
    gpu_used: 0,
};

/// Decodes `data` as every request body the API takes and validates what decodes. Must never
/// panic; an accepted group must be a table size and validate to itself again.
pub fn api_json(data: &[u8]) {
    if let Ok(request) = decode_json::<CreateContainerGroupRequest>(data) {
        if let Ok(spec) = validate_create(&request, &QUOTA) {
            check_accepted(&spec);
            let update = UpdateContainerGroupRequest::default();
            let again = validate_update(&spec, &update, &QUOTA).map(|u| u.spec);
            assert_eq!(
                again.as_ref(),
                Ok(&spec),
                "an empty update changed the spec"
            );
        }
    }
    if let Ok(update) = decode_json::<UpdateContainerGroupRequest>(data) {
        let _ = validate_update(&base_spec(), &update, &QUOTA);
    }
    if let Ok(request) = decode_json::<CreateImageCacheRequest>(data) {
        let _ = validate_image_cache(&request);
    }
    if let Ok(request) = decode_json::<UpdateImageCacheRequest>(data) {
        let _ = validate_image_cache_update(&request);
    }
    let _ = decode_json::<ExecRequest>(data);
}

fn check_accepted(spec: &ContainerGroupSpec) {
    let row = SIZE_TABLE
        .iter()
        .find(|(cpu, _)| *cpu == spec.cpu)
        .unwrap_or_else(|| panic!("cpu {} is not a table size", spec.cpu));
    assert!(
        row.1.contains(&spec.memory),
        "{} GiB is not a size of the {} vCPU row",
        spec.memory,
        spec.cpu
    );
    assert!(spec.cpu <= QUOTA.vcpu_quota - QUOTA.vcpu_used);
    let json = serde_json::to_vec(spec).expect("a spec serialises");
    let decoded: ContainerGroupSpec = serde_json::from_slice(&json).expect("a spec decodes");
    assert_eq!(&decoded, spec, "the spec does not survive the store's JSON");
    let again = validate_create(&spec_to_request(spec), &QUOTA).expect("an accepted spec is valid");
    assert_eq!(&again, spec, "validation is not idempotent");
}

fn base_spec() -> ContainerGroupSpec {
    let request: CreateContainerGroupRequest = serde_json::from_value(serde_json::json!({
        "name": "base",
        "containers": [{"name": "app", "image": "busybox", "cpu": 1, "memory": 2},
                       {"name": "side", "image": "busybox"}],
        "initContainers": [{"name": "init", "image": "busybox"}],
    }))
    .expect("a valid base request");
    validate_create(&request, &QUOTA).expect("a valid base spec")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Valid and nearly valid bodies to mutate.
    const SEEDS: &[&str] = &[
        r#"{"name":"web","cpu":7,"memory":13,"restartPolicy":"OnFailure","containers":[{"name":"app","image":"busybox","cpu":1,"memory":2,"ports":[{"port":80}],"env":[{"key":"A","value":"1"}],"volumeMounts":[{"name":"data","mountPath":"/data"}],"livenessProbe":{"exec":{"command":["true"]},"periodSeconds":1},"lifecycle":{"preStop":{"httpGet":{"port":80,"path":"/"}}}}],"initContainers":[{"name":"init","image":"busybox"}],"volumes":[{"name":"data","emptyDir":{"sizeLimit":"16Mi"}},{"name":"cfg","configFile":{"items":[{"path":"a/b","content":"aGk=","mode":420}]}}],"tags":[{"key":"k","value":"v"}],"securityContext":{"sysctls":[{"name":"net.ipv4.ip_forward","value":"1"}]}}"#,
        r#"{"containers":[{"name":"app","image":"nginx","cpu":0.25}],"cpu":0.1,"memory":0.1}"#,
        r#"{"name":"c","images":["busybox","nginx"],"retentionDays":3}"#,
        r#"{"command":["sh","-c","echo"],"tty":true,"sync":false}"#,
        r#"{"name":"x","containers":[{"name":"a","image":"b","cpu":64,"memory":512}]}"#,
        r#"{"name":"dns","containers":[{"name":"a","image":"b"}],"dnsConfig":{"nameServers":["10.88.0.53","2001:db8::53"],"searchDomains":["svc.example.internal","example.internal."],"options":["ndots:2","rotate"]}}"#,
    ];

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn seeds_decode_and_the_first_and_last_are_valid() {
        let request: CreateContainerGroupRequest = serde_json::from_str(SEEDS[0]).unwrap();
        let spec = validate_create(&request, &QUOTA).unwrap();
        assert_eq!((spec.cpu, spec.memory), (8.0, 16.0));
        let dns_seed = SEEDS.last().unwrap();
        let request: CreateContainerGroupRequest = serde_json::from_str(dns_seed).unwrap();
        let spec = validate_create(&request, &QUOTA).unwrap();
        assert_eq!(spec.dns_config.unwrap().name_servers.len(), 2);
        for seed in SEEDS {
            api_json(seed.as_bytes());
        }
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let tokens: &[&[u8]] = &[
            b"-1",
            b"1e308",
            b"NaN",
            b"0.0000001",
            b"\"\"",
            b"null",
            b"[]",
            b"{}",
            b"99999999999",
            b"\"..\"",
            b"\"/\"",
            b"\"\\u0000\"",
            b"true",
            b"65536",
            b"\"Memory\"",
            b"\"::\"",
            b"\"ndots:\"",
        ];
        for round in 0..20_000 {
            let mut data = SEEDS[round % SEEDS.len()].as_bytes().to_vec();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(data.len());
                match rng.below(4) {
                    0 => data[at] = rng.next() as u8,
                    1 => {
                        let end = (at + rng.below(8)).min(data.len());
                        data.drain(at..end);
                    }
                    2 => {
                        let token = tokens[rng.below(tokens.len())];
                        data.splice(at..at, token.iter().copied());
                    }
                    _ => {
                        // Replace a number with a token: reaches the size and range rules.
                        if let Some(offset) = data[at..].iter().position(u8::is_ascii_digit) {
                            let token = tokens[rng.below(tokens.len())];
                            let start = at + offset;
                            data.splice(start..start + 1, token.iter().copied());
                        }
                    }
                }
                if data.is_empty() {
                    break;
                }
            }
            api_json(&data);
        }
        for _ in 0..2_000 {
            let len = rng.below(64);
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            api_json(&data);
        }
    }
}
