//! End-to-end proof of the eci control plane (issue 7), black box: the real `eci serve` over a
//! private containerd (CRI, runtime handler `eci` in local mode) whose CNI bridge lives in a
//! network namespace the test made, driven through its REST API and the `eci` CLI.

mod eci_common;

use std::{
    io::{BufRead, BufReader},
    time::Duration,
};

use eci_common::*;
use eci_tests::{
    cni::{CriNetwork, CriNetworkOptions, SUBNET},
    cri::{self, Cri},
    registry::{self, Registry},
};
use k8s_cri::v1::{
    LinuxPodSandboxConfig, PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest,
    RunPodSandboxRequest, StopPodSandboxRequest,
};
use serde_json::{json, Value};

/// The fixture alone: a CRI pod through runc gets an address from the CNI bridge, the bridge
/// exists only in the test's namespace, and dropping the fixture leaves nothing behind.
#[test]
fn cni_fixture_gives_a_runc_pod_an_address_and_leaves_nothing() {
    if eci_tests::prereq::skip_unless_ready(
        eci_tests::cni::missing().or_else(eci_tests::images::missing_tools),
    ) {
        return;
    }
    let net = CriNetwork::start(CriNetworkOptions::default()).expect("start containerd in netns");
    let netns_name = net.netns.name.clone();
    let ctd_dir = net.dir().to_path_buf();
    let containerd_pid_needle = net.socket().display().to_string();

    let socket = net.socket().to_path_buf();
    let (pod_ip, pod_netns) = cri::block_on(async move {
        let mut cri = Cri::connect(socket).await.expect("connect CRI");
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "cni-fixture".into(),
                uid: format!("uid-{}", std::process::id()),
                namespace: "default".into(),
                attempt: 0,
            }),
            linux: Some(LinuxPodSandboxConfig::default()),
            ..Default::default()
        };
        let id = cri
            .runtime
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
            .expect("RunPodSandbox through runc")
            .into_inner()
            .pod_sandbox_id;
        let (ip, netns_path) = cri.pod_ip_and_netns(&id).await.expect("PodSandboxStatus");
        cri.runtime
            .stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.clone(),
            })
            .await
            .expect("StopPodSandbox");
        cri.runtime
            .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
            .await
            .expect("RemovePodSandbox");
        (ip, netns_path)
    });
    assert!(
        in_subnet(&pod_ip),
        "pod IP {pod_ip:?} not in {SUBNET}\n{}",
        net.containerd.log_tail()
    );
    assert!(!pod_netns.is_empty(), "the pod had a network namespace");
    let links = net.netns.ip(&["-o", "link", "show"]).unwrap();
    assert!(links.contains("eci0"), "bridge in the test netns: {links}");
    let host_links = std::process::Command::new("ip")
        .args(["-o", "link", "show", "eci0"])
        .output()
        .unwrap();
    assert!(
        !host_links.status.success() || host_links.stdout.is_empty(),
        "the bridge must not appear in the host's namespace"
    );

    drop(net);
    assert!(
        !std::path::Path::new("/run/netns")
            .join(&netns_name)
            .exists(),
        "netns {netns_name} removed"
    );
    assert!(
        !std::path::Path::new(&pod_netns).exists(),
        "pod netns {pod_netns} removed"
    );
    assert!(
        !ctd_dir.exists(),
        "fixture dir {} removed",
        ctd_dir.display()
    );
    assert!(
        eci_tests::containerd::mounts_under(&ctd_dir).is_empty(),
        "no mounts left under {}",
        ctd_dir.display()
    );
    assert_eq!(
        eci_tests::cni::processes_with(&containerd_pid_needle),
        Vec::<u32>::new(),
        "no containerd or shim process left"
    );
}

/// `hello-config\n`, base64 (configFile contents are base64 in the API).
const CONFIG_CONTENT_B64: &str = "aGVsbG8tY29uZmlnCg==";

/// Issue 7's first proof: a two-container group with an init container, an emptyDir and a
/// configFile runs; then its logs (tail, follow), exec (API and CLI exit code), events and
/// metrics; then delete leaves nothing in containerd.
#[test]
fn group_with_init_container_and_volumes_runs_then_serves_logs_exec_events_metrics() {
    let Some(env) = Env::start(EnvOptions::default()) else {
        return;
    };
    let body = json!({
        "name": "web",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "cpu": 1,
        "memory": 2,
        "restartPolicy": "Always",
        "tags": [{"key": "suite", "value": "e2e"}],
        "dnsConfig": {
            "nameServers": ["10.88.0.53", "192.0.2.53"],
            "searchDomains": ["e2e.example.internal"],
            "options": ["ndots:2"],
        },
        "initContainers": [{
            "name": "init",
            "image": BUSYBOX,
            "commands": ["sh", "-c", "echo init-ran > /data/init.txt"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
        "containers": [
            {
                "name": "app",
                "image": BUSYBOX,
                "cpu": 0.5,
                "memory": 1,
                "commands": [
                    "sh",
                    "-c",
                    "echo line1; echo line2; cat /data/init.txt; cat /config/app.conf; \
                     mkdir -p /tmp/www && echo served-by-app > /tmp/www/index.html && \
                     exec httpd -f -p 8080 -h /tmp/www"
                ],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/data"},
                    {"name": "config", "mountPath": "/config", "readOnly": true},
                ],
            },
            {
                "name": "ticker",
                "image": BUSYBOX,
                "cpu": 0.5,
                "memory": 1,
                "commands": ["sh", "-c",
                    "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.3; done"],
                "volumeMounts": [
                    {"name": "data", "mountPath": "/shared"},
                    {"name": "scratch", "mountPath": "/scratch"},
                ],
            },
        ],
        "volumes": [
            {"name": "data", "emptyDir": {}},
            {"name": "scratch", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "config", "configFile": {"items": [
                {"path": "app.conf", "content": CONFIG_CONTENT_B64},
            ]}},
        ],
    });
    let id = env.create(&body);
    let group = env.wait_running(&id);
    assert_eq!(
        group["containers"].as_array().unwrap().len(),
        2,
        "{group:#}"
    );
    let ip = group["ip"].as_str().unwrap_or_default();
    assert!(
        in_subnet(ip),
        "group IP {ip:?} from the CNI bridge ({SUBNET})"
    );
    let init = &group["initContainers"][0];
    assert_eq!(init["state"], "Terminated", "init container ran: {group:#}");
    assert_eq!(init["exitCode"], 0, "init container succeeded: {group:#}");
    assert_eq!(group["cpu"], 1.0);
    assert_eq!(group["memory"], 2.0);
    assert!(env.group_ids().contains(&id), "the list holds the group");
    let by_tag = env.get("/v1/containerGroups?tag=suite=e2e");
    assert_eq!(by_tag.status, 200, "{}", by_tag.text);
    assert_eq!(
        list(&by_tag.body, "containerGroups").len(),
        1,
        "tag filter: {}",
        by_tag.text
    );
    let by_other_tag = env.get("/v1/containerGroups?tag=suite=other");
    assert_eq!(
        list(&by_other_tag.body, "containerGroups").len(),
        0,
        "tag filter: {}",
        by_other_tag.text
    );

    // Logs with tail: the last two lines the app wrote (init's file via the emptyDir, the
    // configFile's content).
    let logs_path = format!("/v1/containerGroups/{id}/containers/app/logs");
    let logs = wait_until(Duration::from_secs(20), || {
        let answer = env.get(&format!("{logs_path}?tail=2"));
        (answer.status == 200 && answer.text.contains("hello-config")).then_some(answer.text)
    })
    .unwrap_or_else(|| panic!("app logs: {}", env.get(&logs_path).text));
    assert_eq!(logs, "init-ran\nhello-config\n", "tail=2 of the app's log");
    let all = env.get(&logs_path).text;
    assert_eq!(
        all, "line1\nline2\ninit-ran\nhello-config\n",
        "whole app log"
    );

    // Follow: lines written after the request arrive on the open stream.
    let response = env
        .http
        .get(env.url(&format!(
            "/v1/containerGroups/{id}/containers/ticker/logs?follow=true&tail=1"
        )))
        .send()
        .expect("follow logs");
    assert_eq!(response.status().as_u16(), 200);
    let mut lines = BufReader::new(response).lines();
    let first = lines
        .next()
        .expect("a first line")
        .expect("read log stream");
    let first_n: u64 = first
        .trim_start_matches("tick ")
        .parse()
        .unwrap_or_else(|_| panic!("tick line: {first:?}"));
    let mut seen = Vec::new();
    for line in lines.by_ref().take(3) {
        seen.push(line.expect("read log stream"));
    }
    let expected: Vec<String> = (1..=3).map(|k| format!("tick {}", first_n + k)).collect();
    assert_eq!(seen, expected, "follow streams new lines in order");
    drop(lines);

    // Exec through the API: output, error output and exit code; the emptyDir is shared by the
    // init container and both containers.
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/app/exec"),
        &json!({"command": ["sh", "-c", "cat /data/init.txt; echo oops >&2; exit 3"]}),
    );
    assert_eq!(exec.status, 200, "exec: {}", exec.text);
    assert_eq!(exec.body["stdout"], "init-ran\n", "{}", exec.text);
    assert_eq!(exec.body["stderr"], "oops\n", "{}", exec.text);
    assert_eq!(exec.body["exitCode"], 3, "{}", exec.text);
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/ticker/exec"),
        &json!({"command": ["cat", "/shared/init.txt"]}),
    );
    assert_eq!(
        exec.body["stdout"], "init-ran\n",
        "emptyDir shared: {}",
        exec.text
    );
    assert_eq!(exec.body["exitCode"], 0, "{}", exec.text);
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/app/exec"),
        &json!({"command": ["sh", "-c", "echo x > /config/new"]}),
    );
    assert_ne!(
        exec.body["exitCode"], 0,
        "configFile volume mounted read-only: {}",
        exec.text
    );

    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/ticker/exec"),
        &json!({"command": ["grep", " /scratch ", "/proc/mounts"]}),
    );
    let mount = exec.body["stdout"].as_str().unwrap_or_default();
    assert!(
        mount.starts_with("tmpfs ") && mount.contains("size=16384k"),
        "a 16Mi memory emptyDir is a sized tmpfs: {}",
        exec.text
    );

    // The group's DNS config is the containers' resolv.conf (containerd writes it from CRI's
    // dns_config and binds it at /etc/resolv.conf).
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/app/exec"),
        &json!({"command": ["cat", "/etc/resolv.conf"]}),
    );
    assert_eq!(exec.body["exitCode"], 0, "{}", exec.text);
    let resolv = exec.body["stdout"].as_str().unwrap_or_default();
    let lines: Vec<&str> = resolv.lines().map(str::trim).collect();
    for line in [
        "nameserver 10.88.0.53",
        "nameserver 192.0.2.53",
        "search e2e.example.internal",
        "options ndots:2",
    ] {
        assert!(
            lines.contains(&line),
            "/etc/resolv.conf has {line:?}: {resolv:?}"
        );
    }

    // The group's network: its IP on the containers' eth0 (in VM mode the guest's), and a server
    // in the pod reached at that IP from the CNI bridge's side.
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/app/exec"),
        &json!({"command": ["ip", "-4", "-o", "addr", "show", "eth0"]}),
    );
    assert!(
        exec.body["stdout"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("inet {ip}/")),
        "eth0 carries the group's IP {ip}: {}",
        exec.text
    );
    let page = env
        .net
        .get_from_host_side(&format!("http://{ip}:8080/"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        page, "served-by-app\n",
        "the pod's server from the bridge's side"
    );

    // The CLI: exec exits with the command's exit code and prints its output.
    let out = env.cli(&["exec", &id, "app", "--", "sh", "-c", "echo via-cli; exit 3"]);
    assert_eq!(out.status.code(), Some(3), "eci exec exit code: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "via-cli\n", "{out:?}");
    let out = env.cli(&["-o", "json", "describe", &id]);
    assert!(out.status.success(), "eci describe: {out:?}");
    let described: Value = serde_json::from_slice(&out.stdout).expect("describe -o json is JSON");
    assert_eq!(described["id"], id.as_str());
    assert_eq!(described["status"], "Running");
    let out = env.cli(&["ls"]);
    assert!(out.status.success(), "eci ls: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&id),
        "eci ls table lists the group: {out:?}"
    );
    let out = env.cli(&["describe", "cg-does-not-exist"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unknown id is an API error (exit 1): {out:?}"
    );

    // Events: every container was started, in order init -> app/ticker.
    let events = env.events(&id);
    for event in &events {
        assert!(event["time"].is_string(), "event has a time: {event}");
        assert!(
            event["type"] == "Normal" || event["type"] == "Warning",
            "event type: {event}"
        );
        assert!(
            event["reason"].is_string() && event["message"].is_string(),
            "{event}"
        );
    }
    let started: Vec<String> = events
        .iter()
        .filter(|e| e["reason"] == "Started")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect();
    for name in ["init", "app", "ticker"] {
        assert!(
            started.iter().any(|m| m.contains(name)),
            "a Started event for {name}: {started:?}"
        );
    }
    assert!(
        started[0].contains("init"),
        "init container started first: {started:?}"
    );
    let out = env.cli(&["events", &id]);
    assert!(out.status.success(), "eci events: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Started"),
        "{out:?}"
    );

    // Metrics with the manual's field names and plausible values.
    let metrics = wait_until(Duration::from_secs(20), || {
        let answer = env.get(&format!("/v1/containerGroups/{id}/metrics"));
        assert_eq!(answer.status, 200, "metrics: {}", answer.text);
        let containers = answer.body["containers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (containers.len() == 2
            && containers
                .iter()
                .all(|c| c["cpu"]["UsageCoreNanoSeconds"].as_u64() > Some(0)))
        .then_some(answer.body)
    })
    .unwrap_or_else(|| {
        panic!(
            "metrics never had both containers with CPU usage: {}",
            env.get(&format!("/v1/containerGroups/{id}/metrics")).text
        )
    });
    for c in metrics["containers"].as_array().unwrap() {
        for field in ["UsageNanoCores", "UsageCoreNanoSeconds", "Load", "Limit"] {
            assert!(
                c["cpu"][field].is_u64(),
                "cpu.{field} of {}: {metrics:#}",
                c["name"]
            );
        }
        for field in ["AvailableBytes", "UsageBytes", "Cache", "WorkingSet", "Rss"] {
            assert!(
                c["memory"][field].is_u64(),
                "memory.{field} of {}: {metrics:#}",
                c["name"]
            );
        }
        let usage = c["memory"]["UsageBytes"].as_u64().unwrap();
        assert!(
            usage > 0 && usage < 2 << 30,
            "memory usage {usage} plausible: {metrics:#}"
        );
        assert!(
            c["memory"]["WorkingSet"].as_u64().unwrap() <= usage,
            "working set <= usage: {metrics:#}"
        );
    }
    let interfaces = metrics["network"]["interfaces"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for interface in &interfaces {
        assert!(interface["Name"].is_string(), "{metrics:#}");
        for field in [
            "TxBytes",
            "RxBytes",
            "TxErrors",
            "RxErrors",
            "TxPackets",
            "RxPackets",
            "TxDrops",
            "RxDrops",
        ] {
            assert!(interface[field].is_u64(), "network {field}: {metrics:#}");
        }
    }
    assert!(metrics["disk"].is_array(), "disk usage list: {metrics:#}");
    assert!(metrics["timestamp"].is_string(), "timestamp: {metrics:#}");
    if interfaces.is_empty() {
        eprintln!("NOTE: metrics carry no network interface: {metrics:#}");
    }

    // Delete leaves nothing in containerd.
    env.delete(&id);
    env.assert_containerd_empty();
    assert!(env.group_ids().is_empty());
}

/// A container created in a pod after another container of it ran two programs must start
/// (found by the group test: with an init container and an emptyDir in the pod,
/// `sh -c '/bin/true; /bin/true; exec sleep 3600'` in the first container made CreateContainer
/// of the second fail in the agent with FAILED_PRECONDITION "failed to prepare rootfs"; fixed in
/// eci's runtime by ed4c066, a PID namespace per container).
#[test]
fn second_container_starts_after_the_first_ran_programs() {
    let Some(env) = Env::start(EnvOptions::default()) else {
        return;
    };
    let body = json!({
        "name": "forks",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "cpu": 1,
        "memory": 2,
        "initContainers": [{
            "name": "init",
            "image": BUSYBOX,
            "commands": ["sh", "-c", "echo ready > /data/ready"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        }],
        "containers": [
            {"name": "first", "image": BUSYBOX,
             "commands": ["sh", "-c", "/bin/true; /bin/true; exec sleep 3600"],
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
            {"name": "second", "image": BUSYBOX, "commands": ["sleep", "3600"],
             "volumeMounts": [{"name": "data", "mountPath": "/shared"}]},
        ],
        "volumes": [{"name": "data", "emptyDir": {}}],
    });
    let id = env.create(&body);
    env.wait_group(&id, "Running", Duration::from_secs(30), |g| {
        g["status"] == "Running"
            && g["containers"]
                .as_array()
                .is_some_and(|cs| cs.iter().all(|c| c["state"] == "Running"))
    });
    env.delete(&id);
    env.assert_containerd_empty();
}

/// A short restart back-off, so that restarts show within seconds.
fn fast_backoff() -> EnvOptions {
    EnvOptions {
        serve_env: vec![
            ("ECI_RESTART_BACKOFF_INITIAL_MS".into(), "200".into()),
            ("ECI_RESTART_BACKOFF_MAX_MS".into(), "1000".into()),
        ],
        ..Default::default()
    }
}

/// restartPolicy OnFailure restarts a container that exits 1 (restartCount grows); Never leaves
/// the group Failed with the exit code; OnFailure with exit 0 ends Succeeded.
#[test]
fn restart_policy_on_failure_restarts_and_never_fails() {
    let Some(env) = Env::start(fast_backoff()) else {
        return;
    };
    let on_failure = env.create(&simple_group("crashy", "OnFailure", "exit 1"));
    let never = env.create(&simple_group("once", "Never", "exit 1"));
    let succeeds = env.create(&simple_group("done", "OnFailure", "exit 0"));

    let group = env.wait_group(
        &on_failure,
        "restarted twice",
        Duration::from_secs(60),
        |g| container(g, "main")["restartCount"].as_u64() >= Some(2),
    );
    assert!(
        ["Running", "Restarting", "Pending"]
            .contains(&group["status"].as_str().unwrap_or_default()),
        "an OnFailure group whose container crashes is neither Failed nor Succeeded: {group:#}"
    );
    assert!(
        env.events(&on_failure)
            .iter()
            .any(|e| e["reason"] == "BackOff"
                || e["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("exited with 1")),
        "events tell of the crash"
    );

    let group = env.wait_group(&never, "Failed", Duration::from_secs(60), |g| {
        g["status"] == "Failed"
    });
    let main = container(&group, "main");
    assert_eq!(main["state"], "Terminated", "{group:#}");
    assert_eq!(main["exitCode"], 1, "{group:#}");
    assert_eq!(main["restartCount"], 0, "Never does not restart: {group:#}");

    let group = env.wait_group(&succeeds, "Succeeded", Duration::from_secs(60), |g| {
        g["status"] == "Succeeded"
    });
    assert_eq!(container(&group, "main")["exitCode"], 0, "{group:#}");
    assert_eq!(container(&group, "main")["restartCount"], 0, "{group:#}");
    // Still Failed a moment later: nothing restarted it.
    std::thread::sleep(Duration::from_secs(2));
    let group = env.group(&never);
    assert_eq!(group["status"], "Failed", "{group:#}");
    assert_eq!(container(&group, "main")["restartCount"], 0, "{group:#}");

    let status = env.get("/v1/containerGroups?status=Failed");
    let failed: Vec<Value> = list(&status.body, "containerGroups");
    assert_eq!(failed.len(), 1, "status filter: {}", status.text);
    assert_eq!(failed[0]["id"], never.as_str());

    for id in [&on_failure, &never, &succeeds] {
        env.delete(id);
    }
    env.assert_containerd_empty();
}

/// PATCH changes a container's image: the group goes Updating, then Running again with the new
/// image (its own command runs), keeping its sandbox and IP (in VM mode, its VM).
#[test]
fn update_changes_the_image_and_keeps_the_pod_ip() {
    let Some(env) = Env::start(EnvOptions::default()) else {
        return;
    };
    import_test_images(&env);
    let mut body = simple_group("upd", "Always", "");
    // No commands: each image's own command runs, so the logs tell which image runs.
    body["containers"][0] = json!({"name": "main", "image": IMAGE_ONE});
    body["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "side", "image": BUSYBOX, "commands": ["sleep", "3600"]}));
    let id = env.create(&body);
    let before = env.wait_running(&id);
    let logs_path = format!("/v1/containerGroups/{id}/containers/main/logs");
    let logs = wait_until(Duration::from_secs(20), || {
        let text = env.get(&logs_path).text;
        text.contains("image-one").then_some(text)
    });
    assert!(
        logs.is_some(),
        "image one's command ran: {}",
        env.get(&logs_path).text
    );
    let ip = before["ip"].as_str().unwrap().to_owned();
    let (sandboxes, _) = env.cri_lists();
    assert_eq!(sandboxes.len(), 1);
    let side_started = container(&before, "side")["startedAt"].clone();
    // The start times are CRI's from the first report on (later syncs copy CRI's).
    let cri_times = env.cri_start_times();
    for name in ["main", "side"] {
        let started = container(&before, name)["startedAt"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            cri_times.contains(&started),
            "{name}'s startedAt {started} is CRI's start time: {cri_times:?}"
        );
    }
    // In VM mode the group is one VM, and the update happens inside it.
    let vms = env.vm_pids();
    if eci_tests::vm::vm_mode() {
        assert_eq!(vms.len(), 1, "one VM for the group: {vms:?}");
    }

    let patch = env.request(
        reqwest::Method::PATCH,
        &format!("/v1/containerGroups/{id}"),
        Some(&json!({"containers": [{"name": "main", "image": IMAGE_TWO}]})),
    );
    assert!(
        (200..300).contains(&patch.status),
        "PATCH: {} {}",
        patch.status,
        patch.text
    );
    let after = env.wait_group(
        &id,
        "Running with image two",
        Duration::from_secs(90),
        |g| {
            g["status"] == "Running"
                && container(g, "main")["image"] == IMAGE_TWO
                && container(g, "main")["state"] == "Running"
        },
    );
    assert_eq!(after["ip"], ip.as_str(), "update keeps the pod IP");
    assert_eq!(after["id"], id.as_str());
    assert_eq!(
        container(&after, "side")["startedAt"],
        side_started,
        "an unchanged container is not restarted"
    );
    let (sandboxes_after, containers) = env.cri_lists();
    assert_eq!(sandboxes_after, sandboxes, "same sandbox");
    assert_eq!(env.vm_pids(), vms, "the update happened in the group's VM");
    assert_eq!(
        containers.len(),
        2,
        "the old main container is gone from CRI"
    );
    let events = env.events(&id);
    assert!(
        events.iter().any(|e| e["reason"] == "Updated"),
        "an Updated event: {events:#?}"
    );
    // The running main container is image two's: its own command ran.
    let logs = wait_until(Duration::from_secs(20), || {
        let text = env.get(&logs_path).text;
        text.contains("image-two").then_some(text)
    });
    assert!(
        logs.is_some(),
        "image two's command ran: {}",
        env.get(&logs_path).text
    );

    env.delete(&id);
    env.assert_containerd_empty();
}

/// An image cache pulled from the local registry with credentials makes a later create with
/// autoMatchImageCache skip the pull (event `hit image cache <id>`, no Pulling), while the same
/// create without it pulls.
#[test]
fn image_cache_hit_skips_the_pull() {
    if eci_tests::prereq::skip_unless_ready(registry::missing_tools()) {
        return;
    }
    let Some(env) = Env::start(EnvOptions::default()) else {
        return;
    };
    // In containerd's network namespace: that is where pulls come from.
    let registry = Registry::start_in(Some(&env.net.netns.name)).expect("start docker-registry");
    let image = registry
        .push_oci_archive(&image_two_tar(), "eci/cached", "1")
        .expect("push image two");
    let credentials = json!([{
        "server": registry.addr,
        "userName": registry::USER,
        "password": registry::PASSWORD,
    }]);

    let answer = env.post(
        "/v1/imageCaches",
        &json!({"name": "cache1", "images": [image], "imageRegistryCredentials": credentials, "retentionDays": 1}),
    );
    assert!(
        (200..300).contains(&answer.status),
        "create cache: {}",
        answer.text
    );
    let cache_id = answer.body["id"].as_str().expect("cache id").to_owned();
    let cache = wait_until(Duration::from_secs(60), || {
        let cache = env.get(&format!("/v1/imageCaches/{cache_id}")).body;
        assert_ne!(cache["status"], "Failed", "cache failed: {cache:#}");
        (cache["status"] == "Ready").then_some(cache)
    })
    .unwrap_or_else(|| {
        panic!(
            "cache not Ready: {}",
            env.get(&format!("/v1/imageCaches/{cache_id}")).text
        )
    });
    assert!(
        !cache["events"].as_array().unwrap().is_empty()
            && cache["events"].as_array().unwrap().len() <= 50,
        "cache has creation events: {cache:#}"
    );
    let caches = env.get("/v1/imageCaches");
    assert!(
        list(&caches.body, "imageCaches")
            .iter()
            .any(|c| c["id"] == cache_id.as_str()),
        "listed: {}",
        caches.text
    );

    // With the cache: no pull even though the policy is Always.
    let mut body = simple_group("cached", "Always", "exec sleep 3600");
    body["containers"][0]["image"] = json!(image);
    body["containers"][0]["imagePullPolicy"] = json!("Always");
    body["autoMatchImageCache"] = json!(true);
    let id = env.create(&body);
    env.wait_running(&id);
    let events = env.events(&id);
    assert!(
        events
            .iter()
            .any(|e| e["message"] == format!("hit image cache {cache_id}").as_str()),
        "hit image cache event: {events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["reason"] == "Pulling"),
        "no pull with the cache: {events:#?}"
    );

    // Without it (control): the same create pulls, with the credentials.
    body["name"] = json!("uncached");
    body["autoMatchImageCache"] = json!(false);
    body["imageRegistryCredentials"] = credentials.clone();
    let control = env.create(&body);
    env.wait_running(&control);
    let events = env.events(&control);
    assert!(
        events.iter().any(|e| e["reason"] == "Pulling"),
        "the control group pulls: {events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("hit image cache")),
        "{events:#?}"
    );

    for id in [&id, &control] {
        env.delete(id);
    }
    env.assert_containerd_empty();
    let answer = env.request(
        reqwest::Method::DELETE,
        &format!("/v1/imageCaches/{cache_id}"),
        None,
    );
    assert!(
        (200..300).contains(&answer.status),
        "delete cache: {}",
        answer.text
    );
    assert_eq!(env.get(&format!("/v1/imageCaches/{cache_id}")).status, 404);
}

/// A valid create request; each validation case breaks exactly one rule of it.
fn valid_request() -> Value {
    json!({
        "name": "valid",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "cpu": 1,
        "memory": 2,
        "restartPolicy": "Always",
        "containers": [
            {"name": "a", "image": BUSYBOX, "commands": ["sleep", "3600"],
             "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
        ],
        "volumes": [
            {"name": "scratch", "emptyDir": {"sizeLimit": "16Mi"}},
            {"name": "conf", "configFile": {"items": [{"path": "a.conf", "content": CONFIG_CONTENT_B64}]}},
        ],
        "tags": [{"key": "team", "value": "e2e"}],
        "securityContext": {"sysctls": [{"name": "net.ipv4.ip_forward", "value": "1"}]},
    })
}

fn containers_named(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"name": format!("c{i}"), "image": BUSYBOX}))
            .collect(),
    )
}

fn tags(n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
            .collect(),
    )
}

/// Every validation rule of issue 7: a 400 naming the field, and nothing created (the list and
/// containerd stay empty, the quota unused). Then a valid odd size is normalised (7 + 13 -> 8 + 16).
#[test]
fn every_validation_rule_is_a_400_with_its_field_and_creates_nothing() {
    let Some(env) = Env::start(EnvOptions {
        serve_args: vec!["--vcpu-quota".into(), "10".into()],
        ..Default::default()
    }) else {
        return;
    };
    type Edit = fn(&mut Value);
    let cases: Vec<(&str, Edit, Option<&str>)> = vec![
        (
            "no container",
            |b| b["containers"] = json!([]),
            Some("containers"),
        ),
        (
            "21 containers",
            |b| {
                b["containers"] = containers_named(21);
                b.as_object_mut().unwrap().remove("cpu");
                b.as_object_mut().unwrap().remove("memory");
            },
            Some("containers"),
        ),
        (
            "21 init containers",
            |b| b["initContainers"] = containers_named(21),
            Some("initContainers"),
        ),
        (
            "duplicate container name",
            |b| b["containers"][1] = json!({"name": "a", "image": BUSYBOX}),
            Some("containers[1].name"),
        ),
        (
            "container name not DNS-1123",
            |b| b["containers"][0]["name"] = json!("Bad_Name"),
            Some("containers[0].name"),
        ),
        (
            "empty image",
            |b| b["containers"][0]["image"] = json!(""),
            Some("containers[0].image"),
        ),
        (
            "cpu beyond the size table",
            |b| b["cpu"] = json!(100),
            Some("cpu"),
        ),
        (
            "memory beyond the size table",
            |b| b["memory"] = json!(1000),
            Some("memory"),
        ),
        (
            "containers' cpu exceeds the group's",
            |b| {
                b["containers"][0]["cpu"] = json!(0.75);
                b["containers"][1] = json!({"name": "b", "image": BUSYBOX, "cpu": 0.75});
            },
            Some("containers[1].cpu"),
        ),
        (
            "containers' memory exceeds the group's",
            |b| {
                b["containers"][0]["memory"] = json!(1.5);
                b["containers"][1] = json!({"name": "b", "image": BUSYBOX, "memory": 1.5});
            },
            Some("containers[1].memory"),
        ),
        (
            "vCPU quota exceeded",
            |b| {
                b["cpu"] = json!(12);
                b["memory"] = json!(24);
            },
            Some("cpu"),
        ),
        ("21 tags", |b| b["tags"] = tags(21), Some("tags")),
        (
            "duplicate tag key",
            |b| b["tags"] = json!([{"key": "k", "value": "1"}, {"key": "k", "value": "2"}]),
            Some("tags[1].key"),
        ),
        (
            "tag key of 64 characters",
            |b| b["tags"][0]["key"] = json!("k".repeat(64)),
            Some("tags[0].key"),
        ),
        (
            "tag value of 64 characters",
            |b| b["tags"][0]["value"] = json!("v".repeat(64)),
            Some("tags[0].value"),
        ),
        (
            "sysctl outside the whitelist",
            |b| b["securityContext"]["sysctls"][0]["name"] = json!("kernel.panic"),
            Some("securityContext.sysctls[0].name"),
        ),
        (
            "net.core.rmem_max is excluded",
            |b| b["securityContext"]["sysctls"][0]["name"] = json!("net.core.rmem_max"),
            Some("securityContext.sysctls[0].name"),
        ),
        (
            "mount of an undeclared volume",
            |b| b["containers"][0]["volumeMounts"][0]["name"] = json!("nope"),
            Some("containers[0].volumeMounts[0].name"),
        ),
        (
            "emptyDir sizeLimit not a quantity",
            |b| b["volumes"][0]["emptyDir"]["sizeLimit"] = json!("lots"),
            Some("volumes[0].emptyDir.sizeLimit"),
        ),
        (
            "configFile content not base64",
            |b| b["volumes"][1]["configFile"]["items"][0]["content"] = json!("%%%"),
            Some("volumes[1].configFile.items[0].content"),
        ),
        (
            "probe with two handlers",
            |b| {
                b["containers"][0]["livenessProbe"] =
                    json!({"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}})
            },
            Some("containers[0].livenessProbe"),
        ),
        (
            "unknown restartPolicy",
            |b| b["restartPolicy"] = json!("Sometimes"),
            None,
        ),
        ("unknown field", |b| b["bogus"] = json!(1), None),
    ];
    let mut failures = Vec::new();
    for (what, edit, field) in &cases {
        let mut body = valid_request();
        if body["containers"].as_array().unwrap().len() < 2 {
            body["containers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "b", "image": BUSYBOX}));
        }
        edit(&mut body);
        let answer = env.post("/v1/containerGroups", &body);
        let error = &answer.body["error"];
        let detail_fields: Vec<&str> = error["details"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["field"].as_str())
            .collect();
        let ok = answer.status == 400
            && error["message"].as_str().is_some_and(|m| !m.is_empty())
            && match field {
                Some(field) => error["field"] == *field && detail_fields.iter().all(|f| f == field),
                None => true,
            };
        if !ok {
            failures.push(format!(
                "{what}: expected 400 naming {field:?}, got {} {}",
                answer.status, answer.text
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases wrong:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(env.group_ids().is_empty(), "nothing created");
    assert_eq!(
        env.cri_lists(),
        (vec![], vec![]),
        "nothing reached containerd"
    );
    let quota = env.get("/v1/quota").body;
    assert_eq!(quota["vcpuQuota"], 10.0, "{quota}");
    assert_eq!(quota["vcpuUsed"], 0.0, "{quota}");

    // The CLI reports a rejected create with exit code 1 and the field.
    let file = env.tmp.path().join("bad.json");
    let mut bad = valid_request();
    bad["tags"][0]["key"] = json!("k".repeat(64));
    std::fs::write(&file, bad.to_string()).unwrap();
    let out = env.cli(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "eci create of a bad file: {out:?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tags[0].key"),
        "{out:?}"
    );

    // A valid odd size is normalised to the table, and counts against the quota.
    let mut body = valid_request();
    body["cpu"] = json!(7);
    body["memory"] = json!(13);
    let id = env.create(&body);
    let group = env.group(&id);
    assert_eq!(
        (group["cpu"].as_f64(), group["memory"].as_f64()),
        (Some(8.0), Some(16.0)),
        "{group:#}"
    );
    assert_eq!(env.get("/v1/quota").body["vcpuUsed"], 8.0);
    env.wait_running(&id);
    env.delete(&id);
    env.assert_containerd_empty();
}

/// `eci serve` killed with SIGKILL and started again on the same data dir finds its group (same
/// id, IP and sandbox), reconciles it with containerd (a container stopped behind its back while
/// it was down is restarted), and can still exec in and delete it.
#[test]
fn killed_and_restarted_server_keeps_and_reconciles_its_groups() {
    let Some(mut env) = Env::start(fast_backoff()) else {
        return;
    };
    let mut body = simple_group("survivor", "Always", "exec sleep 3600");
    body["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "other", "image": BUSYBOX, "commands": ["sleep", "3600"]}));
    let id = env.create(&body);
    let before = env.wait_running(&id);
    let (sandboxes, containers) = env.cri_lists();
    assert_eq!((sandboxes.len(), containers.len()), (1, 2));

    env.server.kill9();
    // Behind the server's back: stop one container (as a crash would).
    let socket = env.net.socket().to_path_buf();
    let victim = cri::block_on(async move {
        let mut cri = Cri::connect(socket).await.unwrap();
        let list = cri
            .runtime
            .list_containers(k8s_cri::v1::ListContainersRequest::default())
            .await
            .unwrap()
            .into_inner()
            .containers;
        let victim = list
            .iter()
            .find(|c| c.metadata.as_ref().is_some_and(|m| m.name == "main"))
            .expect("CRI container of main")
            .id
            .clone();
        cri.runtime
            .stop_container(k8s_cri::v1::StopContainerRequest {
                container_id: victim.clone(),
                timeout: 0,
            })
            .await
            .unwrap();
        victim
    });
    env.server.restart().expect("restart eci serve");

    assert_eq!(
        env.group_ids(),
        vec![id.clone()],
        "the group survived the restart"
    );
    let after = env.wait_group(&id, "reconciled", Duration::from_secs(60), |g| {
        g["status"] == "Running"
            && container(g, "main")["state"] == "Running"
            && container(g, "main")["restartCount"].as_u64() >= Some(1)
    });
    assert_eq!(after["ip"], before["ip"], "same IP");
    assert_eq!(after["createdAt"], before["createdAt"]);
    assert_eq!(container(&after, "other")["restartCount"], 0, "{after:#}");
    let (sandboxes_after, _) = env.cri_lists();
    assert_eq!(sandboxes_after, sandboxes, "same sandbox, no second one");
    let socket = env.net.socket().to_path_buf();
    let running = cri::block_on(async move {
        let mut cri = Cri::connect(socket).await.unwrap();
        cri.running_container_ids().await.unwrap()
    });
    assert_eq!(running.len(), 2, "both containers run again: {running:?}");
    assert!(
        !running.contains(&victim),
        "main runs as a new CRI container, not the stopped one"
    );
    let exec = env.post(
        &format!("/v1/containerGroups/{id}/containers/other/exec"),
        &json!({"command": ["echo", "still here"]}),
    );
    assert_eq!(exec.body["stdout"], "still here\n", "{}", exec.text);

    env.delete(&id);
    env.assert_containerd_empty();
}

/// The pod features reach the pod through eci: a group sysctl is set in the pod's network
/// namespace, a postStart hook runs in the container, and a liveness probe that starts failing
/// gets the container killed in the pod, after which restartPolicy Always brings it back.
#[test]
fn probes_hooks_and_sysctls_reach_the_pod() {
    let Some(env) = Env::start(fast_backoff()) else {
        return;
    };
    let body = json!({
        "name": "probed",
        "cpu": 1,
        "memory": 2,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {"sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "1234"}]},
        "containers": [{
            "name": "main",
            "image": BUSYBOX,
            "imagePullPolicy": "IfNotPresent",
            "commands": ["sh", "-c", "touch /tmp/alive; exec sleep 3600"],
            "lifecycle": {"postStart": {"exec": {"command": ["sh", "-c", "echo hook > /tmp/post-start"]}}},
            "livenessProbe": {
                "exec": {"command": ["test", "-f", "/tmp/alive"]},
                "initialDelaySeconds": 1,
                "periodSeconds": 1,
                "failureThreshold": 2
            }
        }],
    });
    let id = env.create(&body);
    env.wait_running(&id);
    // In VM mode the group is one VM, and the liveness restart below happens inside it.
    let vms = env.vm_pids();
    if eci_tests::vm::vm_mode() {
        assert_eq!(vms.len(), 1, "one VM for the group: {vms:?}");
    }
    let exec = |command: &[&str]| env.exec(&id, "main", command);
    let sysctl = exec(&["cat", "/proc/sys/net/ipv4/tcp_keepalive_time"]);
    assert_eq!(
        sysctl.body["stdout"], "1234\n",
        "group sysctl: {}",
        sysctl.text
    );
    let hook = wait_until(Duration::from_secs(10), || {
        let out = exec(&["cat", "/tmp/post-start"]);
        (out.body["stdout"] == "hook\n").then_some(())
    });
    assert!(hook.is_some(), "the postStart hook's file never appeared");
    // Healthy: the probe keeps passing for a few periods.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        container(&env.group(&id), "main")["restartCount"],
        0,
        "a passing liveness probe does not restart"
    );

    let removed = exec(&["rm", "/tmp/alive"]);
    assert_eq!(removed.body["exitCode"], 0, "{}", removed.text);
    let group = env.wait_group(&id, "restarted by liveness", Duration::from_secs(60), |g| {
        let main = container(g, "main");
        main["restartCount"].as_u64() >= Some(1) && main["state"] == "Running"
    });
    assert_eq!(group["status"], "Running", "{group:#}");
    let alive = exec(&["test", "-f", "/tmp/alive"]);
    assert_eq!(
        alive.body["exitCode"], 0,
        "the restarted container is a fresh one: {}",
        alive.text
    );
    assert_eq!(
        env.vm_pids(),
        vms,
        "the container restarted in the group's VM"
    );
    env.delete(&id);
    env.assert_containerd_empty();
}

/// A container's `ready` follows its readiness probe (the pod's `/eci/probe` results), not
/// merely its running state: false while the probe fails, true once it passes, false again when
/// it fails again. A container without a probe is ready while it runs.
#[test]
fn ready_follows_the_readiness_probe() {
    let Some(env) = Env::start(fast_backoff()) else {
        return;
    };
    let body = json!({
        "name": "readiness",
        "cpu": 1,
        "memory": 2,
        "restartPolicy": "Always",
        "containers": [
            {
                "name": "main",
                "image": BUSYBOX,
                "imagePullPolicy": "IfNotPresent",
                "commands": ["sleep", "3600"],
                "readinessProbe": {
                    "exec": {"command": ["test", "-f", "/tmp/ready"]},
                    "periodSeconds": 1,
                    "failureThreshold": 1
                }
            },
            {"name": "plain", "image": BUSYBOX, "imagePullPolicy": "IfNotPresent", "commands": ["sleep", "3600"]}
        ],
    });
    let id = env.create(&body);
    env.wait_running(&id);
    let exec = |command: &[&str]| env.exec(&id, "main", command);
    // Several probe periods: running, not ready.
    std::thread::sleep(Duration::from_secs(3));
    let group = env.group(&id);
    assert_eq!(container(&group, "main")["state"], "Running", "{group:#}");
    assert_eq!(container(&group, "main")["ready"], false, "{group:#}");
    assert_eq!(container(&group, "plain")["ready"], true, "{group:#}");

    assert_eq!(exec(&["touch", "/tmp/ready"]).body["exitCode"], 0);
    env.wait_group(&id, "ready", Duration::from_secs(30), |g| {
        container(g, "main")["ready"] == true
    });
    assert_eq!(exec(&["rm", "/tmp/ready"]).body["exitCode"], 0);
    let group = env.wait_group(&id, "unready again", Duration::from_secs(30), |g| {
        container(g, "main")["ready"] == false
    });
    assert_eq!(container(&group, "main")["restartCount"], 0, "{group:#}");
    env.delete(&id);
    env.assert_containerd_empty();
}

/// When CRI cannot remove a group's pod (here: CNI cannot tear the pod's network down, its
/// plugin is missing), the group is not forgotten: it stays Terminating with a FailedKillPod
/// event, and the delete is retried until CRI succeeds.
#[test]
fn group_whose_pod_cri_cannot_remove_stays_until_it_can() {
    let Some(env) = Env::start(fast_backoff()) else {
        return;
    };
    let id = env.create(&simple_group("sticky", "Always", "exec sleep 3600"));
    env.wait_running(&id);
    let conflist = env.net.cni_conf_dir.join("10-eci.conflist");
    let good = std::fs::read_to_string(&conflist).unwrap();
    let broken = good.replace("\"type\": \"bridge\"", "\"type\": \"eci-missing-plugin\"");
    assert_ne!(broken, good, "the conflist names the bridge plugin: {good}");
    // Put back whatever happens, so that the fixture's own clean-up can tear the pod down.
    struct Restore(std::path::PathBuf, String);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = std::fs::write(&self.0, &self.1);
        }
    }
    let restore = Restore(conflist.clone(), good);
    std::fs::write(&conflist, broken).unwrap();
    // containerd reloads its CNI config when the directory changes.
    std::thread::sleep(Duration::from_secs(3));
    let answer = env.request(
        reqwest::Method::DELETE,
        &format!("/v1/containerGroups/{id}"),
        None,
    );
    assert!((200..300).contains(&answer.status), "{}", answer.text);
    let failed = wait_until(Duration::from_secs(60), || {
        env.events(&id)
            .into_iter()
            .find(|e| e["reason"] == "FailedKillPod")
    });
    let group = env.group(&id);
    drop(restore);
    assert!(failed.is_some(), "no FailedKillPod event: {group:#}");
    assert_eq!(group["status"], "Terminating", "{group:#}");
    // With the network plugin back, a retry removes the pod and then the record.
    let gone = wait_until(Duration::from_secs(90), || {
        (env.get(&format!("/v1/containerGroups/{id}")).status == 404).then_some(())
    });
    assert!(gone.is_some(), "group {id} never deleted");
    env.assert_containerd_empty();
}
