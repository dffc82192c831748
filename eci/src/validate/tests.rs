use super::*;
use crate::model::*;

const QUOTA: Quota = Quota {
    vcpu_quota: 100.0,
    vcpu_used: 0.0,
    gpu_quota: 0,
    gpu_used: 0,
};

fn container(name: &str) -> Container {
    serde_json::from_value(serde_json::json!({"name": name, "image": "busybox"})).unwrap()
}

fn request() -> CreateContainerGroupRequest {
    serde_json::from_value(serde_json::json!({
        "name": "web",
        "containers": [{"name": "app", "image": "busybox", "cpu": 1, "memory": 2}],
    }))
    .unwrap()
}

/// The field paths of the violations of `req`, or a panic if it is valid.
fn rejected(req: &CreateContainerGroupRequest) -> Vec<String> {
    match validate_create(req, &QUOTA) {
        Ok(spec) => panic!("accepted: {spec:?}"),
        Err(errors) => errors.0.into_iter().map(|e| e.field).collect(),
    }
}

#[test]
fn a_minimal_group_is_accepted_and_sized_from_its_containers() {
    let spec = validate_create(&request(), &QUOTA).unwrap();
    assert_eq!((spec.cpu, spec.memory), (1.0, 2.0));
    assert_eq!(spec.termination_grace_period_seconds, 30);
    assert_eq!(spec.restart_policy, RestartPolicy::Always);
}

#[test]
fn group_size_is_normalised_to_the_table() {
    let mut req = request();
    req.cpu = Some(7.0);
    req.memory = Some(13.0);
    let spec = validate_create(&req, &QUOTA).unwrap();
    assert_eq!((spec.cpu, spec.memory), (8.0, 16.0));
}

#[test]
fn summed_container_sizes_are_normalised() {
    let mut req = request();
    let mut second = container("side");
    second.cpu = Some(0.5);
    second.memory = Some(1.5);
    req.containers.push(second);
    let spec = validate_create(&req, &QUOTA).unwrap();
    // 1.5 vCPU + 3.5 GiB -> 2 vCPU + 4 GiB.
    assert_eq!((spec.cpu, spec.memory), (2.0, 4.0));
}

#[test]
fn no_sizes_anywhere_gets_the_default() {
    let mut req = request();
    req.containers = vec![container("app")];
    let spec = validate_create(&req, &QUOTA).unwrap();
    assert_eq!((spec.cpu, spec.memory), (DEFAULT_CPU, DEFAULT_MEMORY));
}

#[test]
fn sizes_beyond_the_table_are_rejected() {
    let mut req = request();
    req.cpu = Some(65.0);
    assert_eq!(rejected(&req), ["cpu"]);
    let mut req = request();
    req.cpu = Some(64.0);
    req.memory = Some(1024.0);
    assert_eq!(rejected(&req), ["memory"]);
}

#[test]
fn containers_must_fit_the_group() {
    let mut req = request();
    req.cpu = Some(1.0);
    req.memory = Some(2.0);
    let mut second = container("side");
    second.cpu = Some(0.5);
    second.memory = Some(0.5);
    req.containers.push(second);
    assert_eq!(
        rejected(&req),
        ["containers[1].cpu", "containers[1].memory"]
    );
}

#[test]
fn each_init_container_must_fit_the_group() {
    let mut req = request();
    req.cpu = Some(1.0);
    req.memory = Some(2.0);
    let mut init = container("setup");
    init.cpu = Some(2.0);
    req.init_containers.push(init);
    assert_eq!(rejected(&req), ["initContainers[0].cpu"]);
}

#[test]
fn container_count_limits() {
    let mut req = request();
    req.containers.clear();
    assert_eq!(rejected(&req), ["containers"]);
    let mut req = request();
    req.containers = (0..21).map(|i| container(&format!("c{i}"))).collect();
    assert_eq!(rejected(&req), ["containers"]);
    let mut req = request();
    req.containers = (0..20).map(|i| container(&format!("c{i}"))).collect();
    req.init_containers = (0..20).map(|i| container(&format!("i{i}"))).collect();
    validate_create(&req, &QUOTA).unwrap();
    req.init_containers.push(container("i20"));
    assert_eq!(rejected(&req), ["initContainers"]);
}

#[test]
fn container_names_are_dns_labels_and_unique_across_kinds() {
    let mut req = request();
    req.containers.push(container("Bad_Name"));
    req.containers.push(container("app"));
    req.init_containers.push(container("side"));
    req.containers.push(container("side"));
    req.containers.push(container(&"a".repeat(64)));
    assert_eq!(
        rejected(&req),
        [
            "containers[1].name",
            "containers[2].name",
            "containers[3].name",
            "containers[4].name"
        ]
    );
}

#[test]
fn group_name_rules() {
    for bad in ["", "-web", "web-", "Web", "a b", &"a".repeat(129)] {
        let mut req = request();
        req.name = bad.to_string();
        assert_eq!(rejected(&req), ["name"], "{bad:?}");
    }
}

#[test]
fn images_must_be_given() {
    let mut req = request();
    req.containers[0].image = " ".into();
    assert_eq!(rejected(&req), ["containers[0].image"]);
}

#[test]
fn tag_rules() {
    let tag = |key: &str, value: &str| Tag {
        key: key.into(),
        value: value.into(),
    };
    let mut req = request();
    req.tags = (0..21).map(|i| tag(&format!("k{i}"), "v")).collect();
    assert_eq!(rejected(&req), ["tags"]);
    let mut req = request();
    req.tags = vec![
        tag("a", "1"),
        tag("a", "2"),
        tag(&"k".repeat(64), "v"),
        tag("b", &"v".repeat(64)),
        tag("", "v"),
    ];
    assert_eq!(
        rejected(&req),
        ["tags[1].key", "tags[2].key", "tags[3].value", "tags[4].key"]
    );
    let mut req = request();
    req.tags = vec![tag(&"k".repeat(63), &"v".repeat(63))];
    validate_create(&req, &QUOTA).unwrap();
}

#[test]
fn sysctl_whitelist() {
    for good in [
        "kernel.shmmax",
        "kernel.msgmax",
        "kernel.sem",
        "fs.mqueue.msg_max",
        "net.ipv4.ip_forward",
        "net.core.somaxconn",
    ] {
        assert_eq!(check_sysctl_name(good), Ok(()), "{good}");
    }
    for bad in [
        "net.core.rmem_max",
        "kernel.hostname",
        "vm.swappiness",
        "fs.file-max",
        "kernel.semx",
        "",
        "net..x",
    ] {
        assert!(check_sysctl_name(bad).is_err(), "{bad}");
    }
    let mut req = request();
    req.security_context = Some(SecurityContext {
        sysctls: vec![
            Sysctl {
                name: "net.ipv4.ip_forward".into(),
                value: "1".into(),
            },
            Sysctl {
                name: "net.core.rmem_max".into(),
                value: "1".into(),
            },
        ],
    });
    assert_eq!(rejected(&req), ["securityContext.sysctls[1].name"]);
}

fn dns(servers: &[&str], searches: &[&str], options: &[&str]) -> DnsConfig {
    let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    DnsConfig {
        name_servers: strings(servers),
        search_domains: strings(searches),
        options: strings(options),
    }
}

/// The violations of a group with `config`, as (field, reason).
fn dns_rejected(config: DnsConfig) -> Vec<(String, String)> {
    let mut req = request();
    req.dns_config = Some(config);
    match validate_create(&req, &QUOTA) {
        Ok(spec) => panic!("accepted: {:?}", spec.dns_config),
        Err(errors) => errors.0.into_iter().map(|e| (e.field, e.reason)).collect(),
    }
}

fn dns_fields(config: DnsConfig) -> Vec<String> {
    dns_rejected(config).into_iter().map(|(f, _)| f).collect()
}

#[test]
fn dns_config_is_optional_and_kept_as_given() {
    assert_eq!(
        validate_create(&request(), &QUOTA).unwrap().dns_config,
        None
    );
    let mut req = request();
    let config = dns(
        &["10.88.0.53", "2001:db8::53", "127.0.0.53"],
        &["svc.example.internal", "example.internal."],
        &["ndots:2", "rotate", "timeout:1", "single-request-reopen"],
    );
    req.dns_config = Some(config.clone());
    let spec = validate_create(&req, &QUOTA).unwrap();
    assert_eq!(spec.dns_config, Some(config.clone()));
    // It survives the store's JSON and a stored spec validates to itself.
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains(r#""dnsConfig":{"nameServers":["#), "{json}");
    let stored: ContainerGroupSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(stored, spec);
    assert_eq!(
        validate_create(&spec_to_request(&spec), &QUOTA).unwrap(),
        spec
    );
    // Only name servers is enough.
    req.dns_config = Some(dns(&["192.0.2.53"], &[], &[]));
    assert!(validate_create(&req, &QUOTA).is_ok());
}

#[test]
fn dns_name_servers_are_one_to_three_unicast_addresses() {
    assert_eq!(
        dns_rejected(dns(&[], &[], &[])),
        [(
            "dnsConfig.nameServers".to_string(),
            "at least one name server is required".to_string()
        )]
    );
    let four = dns(&["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"], &[], &[]);
    let rejected = dns_rejected(four);
    assert_eq!(rejected[0].0, "dnsConfig.nameServers");
    assert!(
        rejected[0].1.contains("4 name servers, at most 3"),
        "{rejected:?}"
    );
    let rejected = dns_rejected(dns(&["10.0.0.1", "dns.example.com"], &[], &[]));
    assert_eq!(
        rejected,
        [(
            "dnsConfig.nameServers[1]".to_string(),
            "\"dns.example.com\" is not an IPv4 or IPv6 address".to_string()
        )]
    );
    for bad in [
        "10.0.0.300",
        " 10.0.0.1",
        "10.0.0.1:53",
        "fe80::1%eth0",
        "",
        "[::1]",
    ] {
        assert_eq!(
            dns_fields(dns(&[bad], &[], &[])),
            ["dnsConfig.nameServers[0]"],
            "{bad:?}"
        );
    }
    for bad in ["0.0.0.0", "::", "224.0.0.251", "ff02::fb"] {
        let rejected = dns_rejected(dns(&["10.0.0.1", bad], &[], &[]));
        assert_eq!(rejected[0].0, "dnsConfig.nameServers[1]", "{bad}");
        assert!(
            rejected[0].1.contains("not a unicast address"),
            "{rejected:?}"
        );
    }
}

#[test]
fn dns_search_domains_follow_kubernetes_limits() {
    let ok = |domain: &str| dns(&["10.0.0.1"], &[domain], &[]);
    for good in ["a", "svc.cluster.local", "example.com.", "x-1.b2"] {
        let mut req = request();
        req.dns_config = Some(ok(good));
        assert!(validate_create(&req, &QUOTA).is_ok(), "{good}");
    }
    let long = vec!["a".repeat(63); 4].join(".");
    for bad in [
        "",
        ".",
        "Example.com",
        "a..b",
        "-a.b",
        "a-.b",
        "a_b.c",
        "a b",
        &long,
    ] {
        let rejected = dns_rejected(ok(bad));
        assert_eq!(rejected.len(), 1, "{bad:?}: {rejected:?}");
        assert_eq!(rejected[0].0, "dnsConfig.searchDomains[0]", "{bad:?}");
        assert!(rejected[0].1.contains("DNS-1123 subdomain"), "{rejected:?}");
    }
    // At most 32 domains.
    let names: Vec<String> = (0..33).map(|n| format!("d{n}.example")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let rejected = dns_rejected(dns(&["10.0.0.1"], &names, &[]));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "dnsConfig.searchDomains");
    assert!(
        rejected[0].1.contains("33 search domains, at most 32"),
        "{rejected:?}"
    );
    // 2048 characters in all, one separator per domain: 8 * (253 + 1) + (15 + 1) fit exactly.
    let label = "a".repeat(63);
    let domain = format!("{label}.{label}.{label}.{}", "b".repeat(61));
    assert_eq!(domain.len(), 253);
    let mut fits: Vec<&str> = vec![domain.as_str(); 8];
    fits.push("c12345678901234");
    let mut req = request();
    req.dns_config = Some(dns(&["10.0.0.1"], &fits, &[]));
    assert!(validate_create(&req, &QUOTA).is_ok());
    fits.push("c");
    let rejected = dns_rejected(dns(&["10.0.0.1"], &fits, &[]));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "dnsConfig.searchDomains");
    assert!(
        rejected[0].1.contains("2050 characters") && rejected[0].1.contains("at most 2048"),
        "{rejected:?}"
    );
}

#[test]
fn dns_options_are_names_or_name_value_pairs() {
    let with = |option: &str| dns(&["10.0.0.1"], &[], &["ndots:2", option]);
    for good in [
        "rotate",
        "edns0",
        "timeout:1",
        "single-request-reopen",
        "use-vc",
    ] {
        let mut req = request();
        req.dns_config = Some(with(good));
        assert!(validate_create(&req, &QUOTA).is_ok(), "{good}");
    }
    let too_long = format!("ndots:{}", "1".repeat(59));
    for bad in [
        "", ":2", "ndots:", "ndots 2", "ndots=2", "a:b:c", "ndots:2#", &too_long,
    ] {
        let rejected = dns_rejected(with(bad));
        assert_eq!(rejected.len(), 1, "{bad:?}: {rejected:?}");
        assert_eq!(rejected[0].0, "dnsConfig.options[1]", "{bad:?}");
        assert!(
            rejected[0].1.contains("is not a resolver option"),
            "{rejected:?}"
        );
    }
    let options: Vec<String> = (0..17).map(|n| format!("opt{n}")).collect();
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let rejected = dns_rejected(dns(&["10.0.0.1"], &[], &options));
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0].0, "dnsConfig.options");
    assert!(
        rejected[0].1.contains("17 options, at most 16"),
        "{rejected:?}"
    );
}

#[test]
fn every_dns_violation_is_reported_at_once() {
    assert_eq!(
        dns_fields(dns(&["10.0.0.1", "x"], &["A"], &["ndots 2"])),
        [
            "dnsConfig.nameServers[1]",
            "dnsConfig.searchDomains[0]",
            "dnsConfig.options[0]"
        ]
    );
}

#[test]
fn dns_config_decoding_refuses_unknown_and_missing_fields() {
    let decode = |config: serde_json::Value| {
        serde_json::from_value::<CreateContainerGroupRequest>(serde_json::json!({
            "name": "web",
            "containers": [{"name": "a", "image": "b"}],
            "dnsConfig": config,
        }))
    };
    let err =
        decode(serde_json::json!({"nameServers": ["10.0.0.1"], "searches": ["a"]})).unwrap_err();
    assert!(err.to_string().contains("searches"), "{err}");
    let err = decode(serde_json::json!({"searchDomains": ["a"]})).unwrap_err();
    assert!(err.to_string().contains("nameServers"), "{err}");
}

#[test]
fn vcpu_quota() {
    let mut req = request();
    req.cpu = Some(4.0);
    let quota = Quota {
        vcpu_quota: 10.0,
        vcpu_used: 7.0,
        gpu_quota: 0,
        gpu_used: 0,
    };
    let err = validate_create(&req, &quota).unwrap_err();
    assert_eq!(err.fields(), ["cpu"]);
    assert!(err.0[0].reason.contains("quota"), "{err}");
    let quota = Quota {
        vcpu_quota: 10.0,
        vcpu_used: 6.0,
        gpu_quota: 0,
        gpu_used: 0,
    };
    validate_create(&req, &quota).unwrap();
}

#[test]
fn volume_mounts_must_name_declared_volumes() {
    let mut req = request();
    req.volumes.push(Volume {
        name: "data".into(),
        empty_dir: Some(EmptyDirVolume::default()),
        ..Volume::default()
    });
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: false,
        sub_path: None,
    };
    req.containers[0].volume_mounts = vec![
        mount("data", "/data"),
        mount("missing", "/x"),
        mount("data", "relative"),
        mount("data", "/data"),
    ];
    assert_eq!(
        rejected(&req),
        [
            "containers[0].volumeMounts[1].name",
            "containers[0].volumeMounts[2].mountPath",
            "containers[0].volumeMounts[3].mountPath"
        ]
    );
}

#[test]
fn volume_sources() {
    let volume = |json: serde_json::Value| -> Volume { serde_json::from_value(json).unwrap() };
    let mut req = request();
    req.volumes = vec![
        volume(
            serde_json::json!({"name": "ok", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}),
        ),
        volume(serde_json::json!({"name": "none"})),
        volume(
            serde_json::json!({"name": "two", "emptyDir": {}, "nfs": {"server": "s", "path": "/p"}}),
        ),
        volume(serde_json::json!({"name": "medium", "emptyDir": {"medium": "Disk"}})),
        volume(serde_json::json!({"name": "limit", "emptyDir": {"sizeLimit": "lots"}})),
        volume(serde_json::json!({"name": "cfg", "configFile": {"items": [
            {"path": "../x", "content": "aGk="},
            {"path": "a", "content": "not base64!"},
            {"path": "b", "content": "aGk=", "mode": 4095}]}})),
        volume(serde_json::json!({"name": "disk", "disk": {"device": "vdb", "fsType": "ntfs"}})),
        volume(serde_json::json!({"name": "nfs", "nfs": {"server": "", "path": "p"}})),
        volume(serde_json::json!({"name": "ok", "emptyDir": {}})),
    ];
    assert_eq!(
        rejected(&req),
        [
            "volumes[1]",
            "volumes[2]",
            "volumes[3].emptyDir.medium",
            "volumes[4].emptyDir.sizeLimit",
            "volumes[5].configFile.items[0].path",
            "volumes[5].configFile.items[1].content",
            "volumes[5].configFile.items[2].mode",
            "volumes[6].disk.device",
            "volumes[6].disk.fsType",
            "volumes[7].nfs.server",
            "volumes[7].nfs.path",
            "volumes[8].name",
        ]
    );
}

#[test]
fn the_pods_own_volume_limits_are_reported_with_the_api_field() {
    // The API's checks pass, the pod-side parser refuses a file that is also a directory.
    let mut req = request();
    req.volumes = vec![serde_json::from_value(serde_json::json!({
        "name": "cfg", "configFile": {"items": [
            {"path": "a", "content": "aGk="}, {"path": "a/b", "content": "aGk="}]}}))
    .unwrap()];
    assert_eq!(rejected(&req), ["volumes[0].configFile.items"]);
}

#[test]
fn probe_and_lifecycle_shapes() {
    let mut req = request();
    let app = &mut req.containers[0];
    app.liveness_probe = Some(serde_json::from_value(serde_json::json!({})).unwrap());
    app.readiness_probe = Some(
        serde_json::from_value(serde_json::json!({
            "httpGet": {"port": 70000, "path": "x", "scheme": "FTP"},
            "periodSeconds": 0
        }))
        .unwrap(),
    );
    app.startup_probe = Some(
        serde_json::from_value(serde_json::json!({
            "exec": {"command": []}, "successThreshold": 2
        }))
        .unwrap(),
    );
    app.lifecycle = Some(
        serde_json::from_value(serde_json::json!({
            "postStart": {"exec": {"command": ["true"]}, "httpGet": {"port": 80}},
            "preStop": {"httpGet": {"port": 0}}
        }))
        .unwrap(),
    );
    assert_eq!(
        rejected(&req),
        [
            "containers[0].livenessProbe",
            "containers[0].readinessProbe.httpGet.port",
            "containers[0].readinessProbe.httpGet.path",
            "containers[0].readinessProbe.httpGet.scheme",
            "containers[0].readinessProbe.periodSeconds",
            "containers[0].startupProbe.exec.command",
            "containers[0].startupProbe.successThreshold",
            "containers[0].lifecycle.postStart",
            "containers[0].lifecycle.preStop.httpGet.port",
        ]
    );
}

#[test]
fn valid_probes_and_hooks_pass_the_pod_parser() {
    let mut req = request();
    let app = &mut req.containers[0];
    app.liveness_probe = Some(
        serde_json::from_value(serde_json::json!({
            "tcpSocket": {"port": 8080}, "initialDelaySeconds": 1, "failureThreshold": 2
        }))
        .unwrap(),
    );
    app.readiness_probe = Some(
        serde_json::from_value(serde_json::json!({
            "httpGet": {"port": 80, "path": "/healthz", "scheme": "HTTP",
                        "httpHeaders": [{"name": "X-A", "value": "1"}]},
            "successThreshold": 2
        }))
        .unwrap(),
    );
    app.lifecycle = Some(
        serde_json::from_value(serde_json::json!({
            "postStart": {"exec": {"command": ["touch", "/tmp/started"]}},
            "preStop": {"httpGet": {"port": 80, "path": "/stop"}}
        }))
        .unwrap(),
    );
    validate_create(&req, &QUOTA).unwrap();
}

#[test]
fn init_containers_have_no_probes_or_hooks() {
    let mut req = request();
    let mut init = container("setup");
    init.readiness_probe =
        Some(serde_json::from_value(serde_json::json!({"exec": {"command": ["true"]}})).unwrap());
    init.lifecycle = Some(Lifecycle::default());
    req.init_containers.push(init);
    assert_eq!(
        rejected(&req),
        [
            "initContainers[0].readinessProbe",
            "initContainers[0].lifecycle"
        ]
    );
}

#[test]
fn container_fields() {
    let mut req = request();
    let app = &mut req.containers[0];
    app.cpu = Some(-1.0);
    app.working_dir = Some("tmp".into());
    app.env = vec![EnvVar {
        key: "A=B".into(),
        value: String::new(),
    }];
    app.ports = vec![ContainerPort {
        port: 0,
        protocol: Protocol::Tcp,
    }];
    app.tty = true;
    app.args = vec!["a\0b".into()];
    let fields = rejected(&req);
    for expected in [
        "containers[0].cpu",
        "containers[0].workingDir",
        "containers[0].env[0].key",
        "containers[0].ports[0].port",
        "containers[0].tty",
        "containers[0].args[0]",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
}

#[test]
fn ports_are_unique_within_the_group() {
    let mut req = request();
    let port = ContainerPort {
        port: 80,
        protocol: Protocol::Tcp,
    };
    req.containers[0].ports = vec![port.clone()];
    let mut side = container("side");
    side.ports = vec![
        ContainerPort {
            port: 80,
            protocol: Protocol::Udp,
        },
        port,
    ];
    req.containers.push(side);
    assert_eq!(rejected(&req), ["containers[1].ports[1].port"]);
}

#[test]
fn group_scalars() {
    let mut req = request();
    req.ephemeral_storage = Some(0.0);
    req.termination_grace_period_seconds = Some(-1);
    req.image_cache_id = Some("cache".into());
    req.image_registry_credentials = vec![ImageRegistryCredential {
        server: "https://r".into(),
        user_name: String::new(),
        password: "p".into(),
    }];
    assert_eq!(
        rejected(&req),
        [
            "imageRegistryCredentials[0].server",
            "imageRegistryCredentials[0].userName",
            "ephemeralStorage",
            "terminationGracePeriodSeconds",
            "imageCacheId"
        ]
    );
}

#[test]
fn every_violation_is_reported_at_once() {
    let mut req = request();
    req.name = "Bad".into();
    req.containers[0].image = String::new();
    req.tags = vec![Tag {
        key: String::new(),
        value: String::new(),
    }];
    assert_eq!(
        rejected(&req),
        ["name", "containers[0].image", "tags[0].key"]
    );
}

#[test]
fn unknown_request_fields_are_refused_by_decoding() {
    let err = serde_json::from_value::<CreateContainerGroupRequest>(serde_json::json!({
        "name": "web", "containers": [{"name": "a", "image": "b", "cpus": 1}]
    }))
    .unwrap_err();
    assert!(err.to_string().contains("cpus"), "{err}");
}

fn stored_spec() -> ContainerGroupSpec {
    let mut req = request();
    req.containers.push(container("side"));
    validate_create(&req, &QUOTA).unwrap()
}

#[test]
fn update_changes_images_env_and_sizes() {
    let current = stored_spec();
    let req: UpdateContainerGroupRequest = serde_json::from_value(serde_json::json!({
        "containers": [{"name": "side", "image": "nginx", "env": [{"key": "A", "value": "1"}]},
                       {"name": "app"}],
        "cpu": 3, "memory": 5, "tags": [{"key": "t", "value": "v"}]
    }))
    .unwrap();
    let update = validate_update(&current, &req, &QUOTA).unwrap();
    assert_eq!(update.changed_containers, ["side"]);
    assert!(update.resized);
    assert_eq!((update.spec.cpu, update.spec.memory), (4.0, 8.0));
    assert_eq!(update.spec.containers[1].image, "nginx");
    assert_eq!(update.spec.containers[1].env[0].key, "A");
    assert_eq!(update.spec.tags.len(), 1);
}

#[test]
fn update_keeps_the_dns_config_which_a_patch_cannot_name() {
    let mut req = request();
    req.dns_config = Some(dns(&["10.0.0.1"], &["example.internal"], &["ndots:2"]));
    let current = validate_create(&req, &QUOTA).unwrap();
    let patch: UpdateContainerGroupRequest = serde_json::from_value(serde_json::json!({
        "containers": [{"name": "app", "image": "nginx"}]
    }))
    .unwrap();
    let update = validate_update(&current, &patch, &QUOTA).unwrap();
    assert_eq!(update.spec.dns_config, current.dns_config);
    // Pod-level: it would need a new sandbox, and an update keeps the group's sandbox.
    let err = serde_json::from_value::<UpdateContainerGroupRequest>(serde_json::json!({
        "dnsConfig": {"nameServers": ["10.0.0.2"]}
    }))
    .unwrap_err();
    assert!(err.to_string().contains("dnsConfig"), "{err}");
}

#[test]
fn update_rejects_unknown_containers_and_overflow() {
    let current = stored_spec();
    let req: UpdateContainerGroupRequest = serde_json::from_value(serde_json::json!({
        "containers": [{"name": "nope", "image": "x"}, {"name": "app", "cpu": 5}]
    }))
    .unwrap();
    let err = validate_update(&current, &req, &QUOTA).unwrap_err();
    assert_eq!(err.fields(), ["containers[0].name", "containers[0].cpu"]);
}

#[test]
fn image_cache_rules() {
    let req: CreateImageCacheRequest = serde_json::from_value(serde_json::json!({
        "name": "cache", "images": ["busybox", "nginx:1"]
    }))
    .unwrap();
    assert_eq!(validate_image_cache(&req).unwrap().retention_days, 7);
    let req: CreateImageCacheRequest = serde_json::from_value(serde_json::json!({
        "name": "Cache", "images": ["a", "a", ""], "retentionDays": 0
    }))
    .unwrap();
    let err = validate_image_cache(&req).unwrap_err();
    assert_eq!(
        err.fields(),
        ["name", "images[1]", "images[2]", "retentionDays"]
    );
    let patch = UpdateImageCacheRequest {
        name: None,
        retention_days: Some(400),
    };
    assert_eq!(
        validate_image_cache_update(&patch).unwrap_err().fields(),
        ["retentionDays"]
    );
}

#[test]
fn gpu_instance_types_set_the_size_and_gpu_count() {
    let quota = Quota {
        vcpu_quota: 100.0,
        vcpu_used: 0.0,
        gpu_quota: 4,
        gpu_used: 1,
    };
    let mut req = request();
    req.instance_type = Some("ecs.gn7i-c16g1.4xlarge".into());
    let spec = validate_create(&req, &quota).unwrap();
    assert_eq!((spec.cpu, spec.memory, spec.gpu), (16.0, 60.0, 1));
    // Contradicting the type names the field.
    req.cpu = Some(8.0);
    req.gpu = Some(2);
    let fields: Vec<String> = validate_create(&req, &quota)
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.field)
        .collect();
    assert_eq!(fields, ["cpu", "gpu"]);
    // A plain GPU count, within the quota and the per-group limit.
    let mut req = request();
    req.gpu = Some(3);
    assert_eq!(validate_create(&req, &quota).unwrap().gpu, 3);
    req.gpu = Some(4);
    let err = validate_create(&req, &quota).unwrap_err();
    assert_eq!(err.0[0].field, "gpu");
    assert!(err.0[0].reason.contains("3 of 4"), "{}", err.0[0].reason);
    req.gpu = Some(9);
    assert!(validate_create(&req, &quota).is_err());
    req.gpu = None;
    req.instance_type = Some("ecs.g7.large".into());
    assert_eq!(rejected(&req), ["instanceType"]);
}
