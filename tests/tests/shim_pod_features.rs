//! Issue 6's pod features end to end through containerd (local mode): probes with `/eci/probe`
//! events seen by `ctr events`, lifecycle hooks, a graceful stop, sysctls through
//! `ctr run --config`, tmpfs and emptyDir size limits, configFile volumes, metrics under load,
//! annotation errors, and an emptyDir shared by the containers of a CRI pod.
//!
//! The OOM kill -> /tasks/oom proof is `oom_kill_publishes_tasks_oom` in shim_ctr.rs.

mod shim_common;

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use eci_tests::{containerd::Containerd, images::BUSYBOX_IMAGE};
use shim_common::*;

/// On a failing test (panic), force-deletes every task and container of the containerd before
/// it stops, so that their shims and agents do not outlive the test.
struct CleanupOnPanic<'a>(&'a Containerd);

impl Drop for CleanupOnPanic<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let ctd = self.0;
        let listed = ctd.ctr(&["container", "ls", "-q"]);
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let _ = ctd.ctr(&["task", "delete", "--force", id]);
            let _ = ctd.ctr(&["container", "delete", id]);
        }
    }
}

/// A field of an `/eci/*` event line as `ctr events` prints a google.protobuf.Struct:
/// `<time> <namespace> <topic> {"fields":{"probe":{"Kind":{"string_value":"liveness"}},...}}`.
fn field(line: &str, key: &str) -> Option<String> {
    let json: serde_json::Value = serde_json::from_str(&line[line.find('{')?..]).ok()?;
    let kind = &json["fields"][key]["Kind"];
    ["string_value", "number_value", "bool_value"]
        .iter()
        .find_map(|k| kind.get(k))
        .map(|v| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        })
}

/// An `/eci/<topic>` event of container `id` whose fields have the given values.
fn is_event(line: &str, topic: &str, id: &str, fields: &[(&str, &str)]) -> bool {
    line.contains(&format!(" {topic} "))
        && field(line, "container_id").as_deref() == Some(id)
        && fields
            .iter()
            .all(|(k, v)| field(line, k).as_deref() == Some(*v))
}

/// `ctr run` args for busybox `command` as `id` with the eci runtime and `extra` flags.
fn run_args<'a>(
    mode: &'a str,
    extra: &'a [String],
    id: &'a str,
    command: &'a [&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["run", mode, "--runtime", ECI];
    args.extend(extra.iter().map(String::as_str));
    args.extend([BUSYBOX_IMAGE, id]);
    args.extend_from_slice(command);
    args
}

fn annotation(key: &str, value: &str) -> Vec<String> {
    vec!["--annotation".into(), format!("{key}={value}")]
}

fn wait_status(ctd: &Containerd, id: &str, status: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while task_status(ctd, id) != status {
        assert!(
            Instant::now() < deadline,
            "task {id} not {status} within {timeout:?}: {}",
            ctd.ctr_ok(&["task", "ls"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// SIGKILLs every process of `id` (if it still runs) and deletes the task and the container.
fn remove(ctd: &Containerd, id: &str) {
    if task_status(ctd, id) != "STOPPED" {
        let _ = ctd.ctr(&["task", "kill", "-a", "-s", "SIGKILL", id]);
        wait_status(ctd, id, "STOPPED", Duration::from_secs(10));
    }
    ctd.ctr_ok(&["task", "delete", id]);
    ctd.ctr_ok(&["container", "delete", id]);
}

/// Waits for a foreground `ctr run` to end, at most `timeout`, and returns (exit code, stdout,
/// stderr).
fn finish(child: Child, timeout: Duration) -> (Option<i32>, String, String) {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("ctr run {pid} did not end within {timeout:?}");
        }
    };
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until `path` exists in container `id` (checked with execs of unique ids: the agent
/// keeps an exec id taken after its exec ended).
fn wait_for_file(ctd: &Containerd, id: &str, path: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for n in 0.. {
        let exec_id = format!("wait{n}");
        let check = ctd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &exec_id,
            id,
            "test",
            "-f",
            path,
        ]);
        if check.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} did not appear in {id} within {timeout:?}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn spawn_ctr(ctd: &Containerd, args: &[&str]) -> Child {
    ctd.ctr_command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr")
}

fn base64(data: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("base64");
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn liveness_exec_probe_that_starts_failing_kills_the_container() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let id = unique("live");
    let events = Events::subscribe(&ctd);
    let mut extra = annotation(
        "io.eci.probe.liveness",
        r#"{"exec": {"command": ["cat", "/tmp/healthy"]}, "periodSeconds": 1, "failureThreshold": 2}"#,
    );
    extra.extend(annotation("io.eci.termination-grace-period-seconds", "1"));
    // Healthy for 3 s, then the probe's file goes; `sleep` as PID 1 ignores SIGTERM, so the
    // grace period ends in SIGKILL.
    let command = [
        "sh",
        "-c",
        "touch /tmp/healthy; sleep 3; rm /tmp/healthy; exec sleep 300",
    ];
    let started = Instant::now();
    let run = spawn_ctr(&ctd, &run_args("--rm", &extra, &id, &command));
    let (code, _, stderr) = finish(run, Duration::from_secs(40));
    let took = started.elapsed();
    assert_eq!(
        code,
        Some(137),
        "killed by SIGKILL after the grace period: {stderr}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "killed after the 3 healthy seconds and the threshold, not before: {took:?}"
    );
    let success = events.wait_for("liveness success", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/probe",
            &id,
            &[("probe", "liveness"), ("result", "success")],
        )
    });
    let failure = events.wait_for("liveness failure", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/probe",
            &id,
            &[("probe", "liveness"), ("result", "failure")],
        )
    });
    let killed = events.wait_for("liveness kill", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/probe",
            &id,
            &[("result", "killed"), ("reason", "LivenessProbeFailed")],
        )
    });
    assert!(
        success < failure && failure <= killed,
        "order success, failure, kill: {:#?}",
        events.all()
    );
    let all = events.all();
    let line = &all[failure];
    assert!(
        field(line, "time").is_some_and(|t| t.ends_with('Z')) && field(line, "message").is_some(),
        "time and message: {line}"
    );
    // The reason is in the shim's log too (containerd copies the shim's log into its own).
    let log = std::fs::read_to_string(ctd.dir().join("containerd.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(&id) && l.contains("LivenessProbeFailed")),
        "shim log names the kill's reason: {}",
        ctd.log_tail()
    );
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn readiness_http_and_tcp_probes_go_from_failure_to_success() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let events = Events::subscribe(&ctd);
    let http = unique("ready-http");
    let tcp = unique("ready-tcp");
    let http_probe = annotation(
        "io.eci.probe.readiness",
        r#"{"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}"#,
    );
    let tcp_probe = annotation(
        "io.eci.probe.readiness",
        r#"{"tcpSocket": {"port": 9090}, "periodSeconds": 1}"#,
    );
    // Both servers come up 5 s after start: the probes fail (3 times, Kubernetes' default
    // threshold, before the result flips to failure), then succeed. The probes reach them on
    // the loopback of the pod's fresh network namespace, which the agent brings up.
    ctd.ctr_ok(&run_args(
        "-d",
        &http_probe,
        &http,
        &[
            "sh",
            "-c",
            "sleep 5; mkdir -p /www; echo ready > /www/index.html; \
             exec httpd -f -p 8080 -h /www",
        ],
    ));
    ctd.ctr_ok(&run_args(
        "-d",
        &tcp_probe,
        &tcp,
        &[
            "sh",
            "-c",
            "sleep 5; while :; do nc -l -p 9090 </dev/null; done",
        ],
    ));
    for id in [&http, &tcp] {
        let failure = events.wait_for("readiness failure", Duration::from_secs(15), |l| {
            is_event(
                l,
                "/eci/probe",
                id,
                &[("probe", "readiness"), ("result", "failure")],
            )
        });
        let success = events.wait_for("readiness success", Duration::from_secs(15), |l| {
            is_event(
                l,
                "/eci/probe",
                id,
                &[("probe", "readiness"), ("result", "success")],
            )
        });
        assert!(failure < success, "{id}: {:#?}", events.all());
    }
    remove(&ctd, &http);
    remove(&ctd, &tcp);
    assert_nothing_left(&ctd, &[http, tcp]);
}

#[test]
fn post_start_file_is_seen_and_pre_stop_runs_before_sigterm() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let id = unique("hooks");
    let events = Events::subscribe(&ctd);
    let mut extra = annotation(
        "io.eci.lifecycle.post-start",
        r#"{"exec": {"command": ["sh", "-c", "echo from-post-start > /tmp/post-start"]}}"#,
    );
    extra.extend(annotation(
        "io.eci.lifecycle.pre-stop",
        r#"{"exec": {"command": ["sh", "-c", "echo from-pre-stop > /tmp/pre-stop"]}}"#,
    ));
    extra.extend(annotation("io.eci.termination-grace-period-seconds", "10"));
    // The main process waits for the postStart file, then, on SIGTERM, prints what the preStop
    // hook left: both only show when the hooks ran in the container, preStop before the signal.
    // /tmp/armed tells the test that the TERM trap is set (PID 1 ignores SIGTERM without one).
    let script = "trap 'echo \"on-term: $(cat /tmp/pre-stop 2>&1)\"; exit 0' TERM; \
                  for i in $(seq 100); do [ -f /tmp/post-start ] && break; sleep 0.1; done; \
                  echo \"seen: $(cat /tmp/post-start)\"; touch /tmp/armed; \
                  while :; do sleep 0.1; done";
    let run = spawn_ctr(&ctd, &run_args("--rm", &extra, &id, &["sh", "-c", script]));
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(20));
    events.wait_for("postStart", Duration::from_secs(10), |l| {
        is_event(
            l,
            "/eci/lifecycle",
            &id,
            &[("hook", "postStart"), ("result", "success")],
        )
    });
    wait_for_file(&ctd, &id, "/tmp/armed", Duration::from_secs(10));
    let killed = Instant::now();
    ctd.ctr_ok(&["task", "kill", &id]);
    let kill_took = killed.elapsed();
    let (code, stdout, stderr) = finish(run, Duration::from_secs(30));
    assert_eq!(code, Some(0), "the TERM trap exits 0: {stdout} {stderr}");
    assert_eq!(
        stdout, "seen: from-post-start\non-term: from-pre-stop\n",
        "stderr: {stderr}"
    );
    assert!(
        kill_took < Duration::from_secs(5),
        "Kill returns promptly: {kill_took:?}"
    );
    events.wait_for("preStop", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/lifecycle",
            &id,
            &[("hook", "preStop"), ("result", "success")],
        )
    });
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn failing_post_start_kills_the_container() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let id = unique("poststart-fail");
    let events = Events::subscribe(&ctd);
    let mut extra = annotation(
        "io.eci.lifecycle.post-start",
        r#"{"exec": {"command": ["sh", "-c", "echo no-good; exit 3"]}}"#,
    );
    extra.extend(annotation("io.eci.termination-grace-period-seconds", "1"));
    let run = spawn_ctr(&ctd, &run_args("--rm", &extra, &id, &["sleep", "300"]));
    let (code, stdout, stderr) = finish(run, Duration::from_secs(30));
    assert_ne!(code, Some(0), "killed: {stdout} {stderr}");
    let failed = events.wait_for("failed postStart", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/lifecycle",
            &id,
            &[("hook", "postStart"), ("result", "failure")],
        )
    });
    assert!(
        field(&events.all()[failed], "message").is_some_and(|m| m.contains("no-good")),
        "the hook's output is the message: {:#?}",
        events.all()
    );
    events.wait_for("postStart kill", Duration::from_secs(5), |l| {
        is_event(
            l,
            "/eci/lifecycle",
            &id,
            &[("result", "killed"), ("reason", "PostStartHookFailed")],
        )
    });
    assert_nothing_left(&ctd, &[id]);
}

/// Writes a full OCI spec for `ctr run --config`: busybox rootfs at an absolute path, `args`,
/// and `sysctl`.
fn write_config_spec(dir: &std::path::Path, args: &[&str], sysctl: &[(&str, &str)]) -> String {
    let rootfs = dir.join("rootfs");
    eci_tests::rootfs::build_busybox_rootfs(&rootfs).expect("busybox rootfs");
    let mut spec = eci_tests::agent::default_spec(args);
    spec.set_root(Some(
        oci_spec::runtime::RootBuilder::default()
            .path(rootfs)
            .readonly(false)
            .build()
            .unwrap(),
    ));
    let linux = spec.linux_mut().as_mut().unwrap();
    linux.set_sysctl(Some(
        sysctl
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    ));
    let path = dir.join("config.json");
    spec.save(&path).unwrap();
    path.display().to_string()
}

#[test]
fn sysctl_namespaced_is_applied_and_non_namespaced_is_refused() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let tmp = tempfile::tempdir().unwrap();
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    // The opposite of the host's value, so that a value read back cannot be the host's.
    let want = if host.trim() == "1" { "0" } else { "1" };
    let ok_dir = tmp.path().join("ok");
    let spec = write_config_spec(
        &ok_dir,
        &["cat", "/proc/sys/net/ipv4/ip_forward"],
        &[("net.ipv4.ip_forward", want)],
    );
    let id = unique("sysctl");
    let out = ctd.ctr_ok(&["run", "--rm", "--runtime", ECI, "--config", &spec, &id]);
    assert_eq!(out.trim(), want);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host,
        "the host's value stays"
    );

    let bad_dir = tmp.path().join("bad");
    let spec = write_config_spec(&bad_dir, &["true"], &[("vm.overcommit_memory", "1")]);
    let bad = unique("sysctl-bad");
    let out = ctd.ctr(&["run", "--rm", "--runtime", ECI, "--config", &spec, &bad]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "non-namespaced key accepted");
    assert!(
        stderr.contains("vm.overcommit_memory"),
        "the error names the key: {stderr}"
    );
    // ctr leaves the container record of a failed create behind; its pod is gone.
    let _ = ctd.ctr(&["container", "delete", &bad]);
    assert_nothing_left(&ctd, &[id, bad]);
}

#[test]
fn tmpfs_volumes_of_16_mib_refuse_the_17th() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let fill = "dd if=/dev/zero of=/data/a bs=1M count=16 2>/dev/null && echo wrote-16; \
                if dd if=/dev/zero of=/data/b bs=1M count=1 2>/dev/null; \
                then echo wrote-17th; else echo refused-17th; fi";
    // A tmpfs mount of the spec with size=, and a pod emptyDir volume with a sizeLimit.
    let spec_tmpfs = vec![
        "--mount".to_owned(),
        "type=tmpfs,src=tmpfs,dst=/data,options=size=16m".to_owned(),
    ];
    let mut pod_volume = annotation(
        "io.eci.volume.scratch",
        r#"{"emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}"#,
    );
    pod_volume.extend([
        "--mount".to_owned(),
        "type=bind,src=eci-volume://scratch,dst=/data,options=rbind:rw".to_owned(),
    ]);
    let mut ids = Vec::new();
    for (what, extra) in [("spec tmpfs", spec_tmpfs), ("emptyDir", pod_volume)] {
        let id = unique("tmpfs");
        let out = ctd.ctr_ok(&run_args("--rm", &extra, &id, &["sh", "-c", fill]));
        assert_eq!(out, "wrote-16\nrefused-17th\n", "{what}");
        ids.push(id);
    }
    assert_nothing_left(&ctd, &ids);
}

#[test]
fn config_file_volume_has_exact_content_and_modes() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let conf = "listen 8080\nname \"eci\"\n";
    let script = "#!/bin/sh\necho hi\n";
    let volume = format!(
        r#"{{"configFile": {{"items": [{{"path": "a/b.conf", "content": "{}", "mode": 420}}, {{"path": "run.sh", "content": "{}", "mode": 493}}]}}}}"#,
        base64(conf.as_bytes()),
        base64(script.as_bytes()),
    );
    let mut extra = annotation("io.eci.volume.cfg", &volume);
    extra.extend([
        "--mount".to_owned(),
        "type=bind,src=eci-volume://cfg,dst=/etc/cfg,options=rbind:ro".to_owned(),
    ]);
    let id = unique("cfgfile");
    let out = ctd.ctr_ok(&run_args(
        "--rm",
        &extra,
        &id,
        &[
            "sh",
            "-c",
            "cat /etc/cfg/a/b.conf; echo ---; cat /etc/cfg/run.sh; echo ---; \
             stat -c '%a %n' /etc/cfg/a/b.conf /etc/cfg/run.sh; \
             if touch /etc/cfg/new 2>/dev/null; then echo writable; else echo read-only; fi",
        ],
    ));
    assert_eq!(
        out,
        format!("{conf}---\n{script}---\n644 /etc/cfg/a/b.conf\n755 /etc/cfg/run.sh\nread-only\n")
    );
    assert_nothing_left(&ctd, &[id]);
}

/// (cumulative CPU ns, working set bytes) of `id` from `ctr task metrics --format json`
/// (cgroup v1 or v2 Metrics, as containerd prints them).
fn cpu_and_working_set(ctd: &Containerd, id: &str) -> (u64, u64) {
    let text = ctd.ctr_ok(&["task", "metrics", "--format", "json", id]);
    let json: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let data = if json.get("Data").is_some() {
        &json["Data"]
    } else {
        &json
    };
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    if data["cpu"]["usage"].is_object() {
        let usage = n(&data["memory"]["usage"]["usage"]);
        let inactive = n(&data["memory"]["total_inactive_file"]);
        (
            n(&data["cpu"]["usage"]["total"]),
            usage.saturating_sub(inactive),
        )
    } else {
        let usage = n(&data["memory"]["usage"]);
        let inactive = n(&data["memory"]["inactive_file"]);
        (
            n(&data["cpu"]["usage_usec"]) * 1000,
            usage.saturating_sub(inactive),
        )
    }
}

#[test]
fn metrics_follow_cpu_and_memory_load() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let id = unique("load");
    // Idle until /tmp/go exists, then holds 32 MiB in a shell variable and counts to 2 million
    // (a fixed amount of work, about 2.5 s of CPU here, whatever the machine's load; the shell
    // stays: its last command is no `exec`-able single command).
    run_detached(
        &ctd,
        &id,
        &[
            "sh",
            "-c",
            "while [ ! -f /tmp/go ]; do sleep 0.1; done; \
             x=$(head -c 33554432 /dev/zero | tr '\\0' a); \
             i=0; while [ $i -lt 2000000 ]; do i=$((i+1)); done; touch /tmp/done; \
             while :; do sleep 1; done",
        ],
    );
    wait_status(&ctd, &id, "RUNNING", Duration::from_secs(10));
    let (cpu0, ws0) = cpu_and_working_set(&ctd, &id);
    ctd.ctr_ok(&["task", "exec", "--exec-id", "go", &id, "touch", "/tmp/go"]);
    wait_for_file(&ctd, &id, "/tmp/done", Duration::from_secs(60));
    let (cpu1, ws1) = cpu_and_working_set(&ctd, &id);
    assert!(
        cpu1 >= cpu0 + 500_000_000,
        "the busy loop raises CPU usage by over 0.5 s: {cpu0} -> {cpu1}"
    );
    assert!(
        ws1 >= ws0 + (24 << 20),
        "a 32 MiB allocation raises the working set by over 24 MiB: {ws0} -> {ws1}"
    );
    remove(&ctd, &id);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn network_counters_of_the_pod_reach_the_metrics() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let id = unique("netstats");
    // A veth pair inside the pod's network namespace; pinging an absent neighbour sends ARP
    // requests out of v0, which veth0 receives.
    let cap = ["--cap-add".to_owned(), "CAP_NET_ADMIN".to_owned()];
    ctd.ctr_ok(&run_args(
        "-d",
        &cap,
        &id,
        &[
            "sh",
            "-c",
            "ip link add v0 type veth && ip link set v0 up && ip link set veth0 up && \
             ip addr add 10.99.0.1/24 dev v0 && { ping -c 2 -W 1 10.99.0.2; touch /tmp/done; }; \
             while :; do sleep 1; done",
        ],
    ));
    wait_for_file(&ctd, &id, "/tmp/done", Duration::from_secs(20));
    let text = ctd.ctr_ok(&["task", "metrics", "--format", "json", &id]);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let data = json.get("Data").unwrap_or(&json);
    let networks = data["network"].as_array().cloned().unwrap_or_default();
    let by_name = |name: &str| {
        networks
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .clone()
    };
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
    let (v0, veth0) = (by_name("v0"), by_name("veth0"));
    assert!(n(&v0, "tx_packets") >= 2 && n(&v0, "tx_bytes") > 0, "{v0}");
    assert!(
        n(&veth0, "rx_packets") >= 2 && n(&veth0, "rx_bytes") > 0,
        "{veth0}"
    );
    assert!(
        networks.iter().all(|n| n["name"] != "lo"),
        "loopback excluded: {text}"
    );
    remove(&ctd, &id);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn bad_annotation_json_fails_create_naming_the_annotation() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let _cleanup = CleanupOnPanic(&ctd);
    let mut ids = Vec::new();
    for key in [
        "io.eci.probe.liveness",
        "io.eci.probe.readiness",
        "io.eci.lifecycle.post-start",
        "io.eci.lifecycle.pre-stop",
        "io.eci.volume.broken",
    ] {
        let id = unique("badjson");
        let extra = annotation(key, "{\"exec\": ");
        let out = ctd.ctr(&run_args("--rm", &extra, &id, &["true"]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{key}: bad JSON accepted");
        assert!(stderr.contains(key), "{key}: the error names it: {stderr}");
        let _ = ctd.ctr(&["container", "delete", &id]);
        ids.push(id);
    }
    assert_nothing_left(&ctd, &ids);
}

mod cri_pod {
    //! Two containers of one CRI pod share emptyDir volumes.

    use super::*;
    use eci_tests::images;
    use k8s_cri::v1::{
        runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
        CreateContainerRequest, ExecSyncRequest, ImageSpec, Mount, RemovePodSandboxRequest,
        RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
    };
    use tonic::transport::Channel;

    async fn exec(
        cri: &mut RuntimeServiceClient<Channel>,
        id: &str,
        script: &str,
    ) -> (i32, String) {
        let out = cri
            .exec_sync(ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 10,
            })
            .await
            .unwrap_or_else(|e| panic!("ExecSync {script}: {e}"))
            .into_inner();
        (
            out.exit_code,
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn containers_of_a_cri_pod_share_empty_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let Some((ctd, mut cri)) = cri_containerd(tmp.path()).await else {
            return;
        };
        let _cleanup = CleanupOnPanic(&ctd);

        let uid = unique("uid");
        // Where kubelet would keep the pod's emptyDir "cache".
        let k8s_empty_dir = tmp
            .path()
            .join(format!("pods/{uid}/volumes/kubernetes.io~empty-dir/cache"));
        std::fs::create_dir_all(&k8s_empty_dir).unwrap();
        let mut pod_config = host_network_pod("share", uid, &tmp.path().join("logs"));
        pod_config.annotations = [(
            "io.eci.volume.shared".to_owned(),
            r#"{"emptyDir": {"medium": "Memory", "sizeLimit": "8Mi"}}"#.to_owned(),
        )]
        .into();
        let pod_id = cri
            .run_pod_sandbox(RunPodSandboxRequest {
                config: Some(pod_config.clone()),
                runtime_handler: "eci".into(),
            })
            .await
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail()))
            .into_inner()
            .pod_sandbox_id;
        let mut ids = vec![pod_id.clone()];
        for name in ["writer", "reader"] {
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata {
                    name: name.into(),
                    attempt: 0,
                }),
                image: Some(ImageSpec {
                    image: images::BUSYBOX_IMAGE.into(),
                    ..Default::default()
                }),
                command: vec!["sleep".into(), "300".into()],
                annotations: [(
                    "io.eci.lifecycle.pre-stop".to_owned(),
                    format!(
                        r#"{{"exec": {{"command": ["sh", "-c", "echo {name} > /cache/pre-stop"]}}}}"#
                    ),
                )]
                .into(),
                mounts: vec![
                    Mount {
                        container_path: "/shared".into(),
                        host_path: "eci-volume://shared".into(),
                        ..Default::default()
                    },
                    Mount {
                        container_path: "/cache".into(),
                        host_path: k8s_empty_dir.display().to_string(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            };
            let id = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod_id.clone(),
                    config: Some(config),
                    sandbox_config: Some(pod_config.clone()),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctd.log_tail()))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
            ids.push(id);
        }
        let (code, out) = exec(
            &mut cri,
            &ids[1],
            "echo one > /shared/from-writer && echo two > /cache/from-writer",
        )
        .await;
        assert_eq!(code, 0, "{out}");
        let (code, out) = exec(
            &mut cri,
            &ids[2],
            "cat /shared/from-writer /cache/from-writer; \
             dd if=/dev/zero of=/shared/big bs=1M count=9 2>/dev/null || echo shared-full",
        )
        .await;
        assert_eq!((code, out.as_str()), (0, "one\ntwo\nshared-full\n"));

        // CRI reads the shim's metrics for ContainerStats.
        let (cpu, working_set) = eci_tests::cri::cpu_and_working_set(&mut cri, &ids[1])
            .await
            .unwrap_or_else(|e| panic!("ContainerStats: {e}"));
        assert!(
            cpu.is_some_and(|v| v > 0) && working_set.is_some_and(|v| v > 0),
            "cpu {cpu:?}, working set {working_set:?}"
        );

        // CRI StopContainer (SIGTERM, then its own SIGKILL after the timeout) runs the
        // container's preStop hook first; the other container sees what it wrote.
        cri.stop_container(StopContainerRequest {
            container_id: ids[2].clone(),
            timeout: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
        let (code, out) = exec(&mut cri, &ids[1], "cat /cache/pre-stop").await;
        assert_eq!((code, out.as_str()), (0, "reader\n"));

        cri.stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        cri.remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
        assert_nothing_left(&ctd, &ids);
    }
}
