use super::*;
use crate::model::{ContainerGroupSpec, RestartPolicy};

fn spec() -> ContainerGroupSpec {
    serde_json::from_value(serde_json::json!({
        "name": "web",
        "cpu": 2.0,
        "memory": 4.0,
        "restartPolicy": "OnFailure",
        "terminationGracePeriodSeconds": 7,
        "containers": [
            {
                "name": "app",
                "image": "busybox",
                "commands": ["sh", "-c"],
                "args": ["echo hi"],
                "workingDir": "/srv",
                "env": [{"key": "A", "value": "1"}],
                "cpu": 0.5,
                "memory": 1.0,
                "volumeMounts": [
                    {"name": "cache", "mountPath": "/cache"},
                    {"name": "conf", "mountPath": "/etc/app", "subPath": "sub"}
                ],
                "livenessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 3},
                "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "echo bye"]}}},
                "tty": true
            }
        ],
        "initContainers": [{"name": "setup", "image": "127.0.0.1:5000/tools:1"}],
        "volumes": [
            {"name": "cache", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
            {"name": "conf", "configFile": {"items": [
                {"path": "sub/app.conf", "content": "a2V5PXZhbHVl", "mode": 384}
            ]}}
        ],
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
        "dnsConfig": {
            "nameServers": ["10.88.0.53", "2001:db8::53"],
            "searchDomains": ["svc.example.internal", "example.internal"],
            "options": ["ndots:2", "rotate"]
        }
    }))
    .unwrap()
}

#[test]
fn sandbox_carries_labels_volumes_sysctls_dns_and_grace() {
    let spec = spec();
    let layout = PodLayout::new(Path::new("/data"), "eci-1");
    let config = sandbox_config("eci-1", &spec, &layout);
    let meta = config.metadata.as_ref().unwrap();
    assert_eq!((meta.name.as_str(), meta.uid.as_str()), ("web", "eci-1"));
    assert_eq!(config.hostname, "web");
    assert_eq!(config.log_directory, "/data/pods/eci-1/logs");
    assert_eq!(config.labels[LABEL_GROUP_ID], "eci-1");
    assert_eq!(config.labels[LABEL_DATA_DIR], "/data");
    let volume: serde_json::Value =
        serde_json::from_str(&config.annotations["io.eci.volume.cache"]).unwrap();
    assert_eq!(
        volume,
        serde_json::json!({"emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}})
    );
    let conf: serde_json::Value =
        serde_json::from_str(&config.annotations["io.eci.volume.conf"]).unwrap();
    assert_eq!(conf["configFile"]["items"][0]["path"], "sub/app.conf");
    assert_eq!(config.annotations[GRACE_ANNOTATION], "7");
    // The VM's size: the normalised group size, in the units the shim reads.
    assert_eq!(
        config.annotations[eci_protocol::annotations::VCPUS],
        spec.cpu.to_string()
    );
    assert_eq!(
        config.annotations[eci_protocol::annotations::MEMORY_MIB],
        ((spec.memory * 1024.0) as u64).to_string()
    );
    assert_eq!(config.linux.unwrap().sysctls["net.ipv4.ip_forward"], "1");
    assert_eq!(spec.restart_policy, RestartPolicy::OnFailure);
    assert_eq!(
        config.dns_config,
        Some(DnsConfig {
            servers: vec!["10.88.0.53".into(), "2001:db8::53".into()],
            searches: vec!["svc.example.internal".into(), "example.internal".into()],
            options: vec!["ndots:2".into(), "rotate".into()],
        })
    );
}

#[test]
fn a_group_without_dns_config_leaves_it_to_containerd() {
    let mut spec = spec();
    spec.dns_config = None;
    let layout = PodLayout::new(Path::new("/data"), "eci-1");
    assert_eq!(sandbox_config("eci-1", &spec, &layout).dns_config, None);
}

#[test]
fn container_config_translates_every_field() {
    let spec = spec();
    let layout = PodLayout::new(Path::new("/data"), "eci-1");
    let c = container_config("eci-1", &spec, &spec.containers[0], false, 2, &layout).unwrap();
    assert_eq!(c.metadata.as_ref().unwrap().attempt, 2);
    assert_eq!(c.image.as_ref().unwrap().image, "busybox");
    assert_eq!(c.command, ["sh", "-c"]);
    assert_eq!(c.args, ["echo hi"]);
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(
        (c.envs[0].key.as_str(), c.envs[0].value.as_str()),
        ("A", "1")
    );
    assert_eq!(c.log_path, "app/2.log");
    assert!(c.tty && !c.stdin);
    assert_eq!(c.labels[LABEL_CONTAINER_NAME], "app");
    assert_eq!(c.labels[LABEL_INIT], "false");
    assert_eq!(c.mounts.len(), 2);
    assert_eq!(c.mounts[0].container_path, "/cache");
    assert_eq!(
        c.mounts[0].host_path,
        "/data/pods/eci-1/volumes/kubernetes.io~empty-dir/cache"
    );
    assert!(!c.mounts[0].readonly);
    assert_eq!(
        c.mounts[1].host_path,
        "/data/pods/eci-1/volumes/kubernetes.io~empty-dir/conf/sub"
    );
    assert!(c.mounts[1].readonly, "configFile volumes are read-only");
    let probe: serde_json::Value = serde_json::from_str(&c.annotations[PROBE_LIVENESS]).unwrap();
    assert_eq!(
        probe,
        serde_json::json!({"exec": {"command": ["true"]}, "periodSeconds": 3})
    );
    assert!(!c.annotations.contains_key(PROBE_READINESS));
    let pre_stop: serde_json::Value =
        serde_json::from_str(&c.annotations[LIFECYCLE_PRE_STOP]).unwrap();
    assert_eq!(pre_stop["exec"]["command"][2], "echo bye");
    assert_eq!(c.annotations[GRACE_ANNOTATION], "7");
    let r = c.linux.unwrap().resources.unwrap();
    assert_eq!(
        (r.cpu_period, r.cpu_quota, r.cpu_shares),
        (100_000, 50_000, 512)
    );
    assert_eq!(r.memory_limit_in_bytes, 1 << 30);

    let init =
        container_config("eci-1", &spec, &spec.init_containers[0], true, 0, &layout).unwrap();
    assert_eq!(init.labels[LABEL_INIT], "true");
    let r = init.linux.unwrap().resources.unwrap();
    assert_eq!(
        (r.cpu_quota, r.memory_limit_in_bytes),
        (0, 0),
        "no limits when none asked"
    );
}

#[test]
fn bad_sub_path_and_unknown_volume_name_the_field() {
    let mut spec = spec();
    spec.containers[0].volume_mounts[1].sub_path = Some("../escape".into());
    let layout = PodLayout::new(Path::new("/data"), "g");
    let err = container_config("g", &spec, &spec.containers[0], false, 0, &layout).unwrap_err();
    assert_eq!(
        err,
        TranslateError::Invalid {
            field: "containers[0].volumeMounts[1].subPath".into(),
            reason: "must be a relative path without '..'".into()
        }
    );
    spec.containers[0].volume_mounts[1].name = "nope".into();
    let err = container_config("g", &spec, &spec.containers[0], false, 0, &layout).unwrap_err();
    assert!(err
        .to_string()
        .starts_with("containers[0].volumeMounts[1].name"));
}

#[test]
fn prepare_writes_config_files_and_remove_cleans_up() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec();
    let layout = PodLayout::new(tmp.path(), "g1");
    layout.prepare(&spec).unwrap();
    let file = tmp
        .path()
        .join("pods/g1/volumes/kubernetes.io~empty-dir/conf/sub/app.conf");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "key=value");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let empty = tmp
        .path()
        .join("pods/g1/volumes/kubernetes.io~empty-dir/cache");
    assert!(empty.is_dir());
    assert!(layout.log_dir().is_dir());
    layout.remove().unwrap();
    assert!(!tmp.path().join("pods/g1").exists());
    layout.remove().unwrap();
}

#[test]
fn config_file_paths_cannot_escape() {
    let tmp = tempfile::tempdir().unwrap();
    let mut spec = spec();
    spec.volumes[1].config_file.as_mut().unwrap().items[0].path = "/etc/passwd".into();
    let err = PodLayout::new(tmp.path(), "g").prepare(&spec).unwrap_err();
    assert!(err.to_string().contains("items[0].path"), "{err}");
}

#[test]
fn image_names_and_credentials() {
    assert_eq!(registry_of("busybox"), "docker.io");
    assert_eq!(registry_of("library/busybox:1"), "docker.io");
    assert_eq!(registry_of("127.0.0.1:5000/a/b:1"), "127.0.0.1:5000");
    assert_eq!(registry_of("localhost/x"), "localhost");
    assert_eq!(
        normalise_image("busybox"),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(
        normalise_image("docker.io/library/busybox:latest"),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(
        normalise_image("127.0.0.1:5000/x"),
        "127.0.0.1:5000/x:latest"
    );
    assert_eq!(normalise_image("r.io/x@sha256:ab"), "r.io/x@sha256:ab");
    let creds = vec![crate::model::ImageRegistryCredential {
        server: "http://127.0.0.1:5000".into(),
        user_name: "u".into(),
        password: "p".into(),
    }];
    let auth = auth_for("127.0.0.1:5000/x:1", &creds).unwrap();
    assert_eq!((auth.username.as_str(), auth.password.as_str()), ("u", "p"));
    // A URL whose host containerd compares with the registry's (a bare host:port is refused).
    assert_eq!(auth.server, "https://127.0.0.1:5000");
    assert!(auth_for("busybox", &creds).is_none());
}

#[test]
fn the_agents_parser_accepts_what_eci_generates() {
    let spec = spec();
    let layout = PodLayout::new(Path::new("/data"), "eci-1");
    let sandbox =
        eci_protocol::annotations::parse(&sandbox_config("eci-1", &spec, &layout).annotations)
            .expect("sandbox annotations parse");
    let names: Vec<&str> = sandbox.volumes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["cache", "conf"]);
    assert_eq!(sandbox.grace(), std::time::Duration::from_secs(7));
    let container =
        container_config("eci-1", &spec, &spec.containers[0], false, 0, &layout).unwrap();
    let parsed = eci_protocol::annotations::parse(&container.annotations)
        .expect("container annotations parse");
    assert!(parsed.liveness.is_some() && parsed.pre_stop.is_some());
    assert!(parsed.readiness.is_none() && parsed.post_start.is_none());
}

#[test]
fn containers_get_their_own_pid_namespace_and_share_network_and_ipc() {
    let spec = spec();
    let layout = PodLayout::new(Path::new("/data"), "eci-1");
    let expected = NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    };
    let sandbox = sandbox_config("eci-1", &spec, &layout);
    let sandbox_ns = sandbox.linux.unwrap().security_context.unwrap();
    assert_eq!(sandbox_ns.namespace_options, Some(expected.clone()));
    let app = container_config("eci-1", &spec, &spec.containers[0], false, 0, &layout).unwrap();
    let app_ns = app.linux.unwrap().security_context.unwrap();
    assert_eq!(app_ns.namespace_options, Some(expected));
}
