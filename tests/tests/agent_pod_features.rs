//! End-to-end tests of the agent's pod features (issue 6) in local mode: `io.eci.*` probes and
//! lifecycle hooks, StopContainer, sysctls, tmpfs and pod volumes, statistics. Each test starts
//! its own `eci-agent --local` and busybox bundle; they need root and busybox-static and fail
//! under CI without them (SKIP line elsewhere). Probe periods are 1 s so that the file stays fast.

use eci_protocol::agent::*;
use eci_protocol::stream::StreamKind;
use eci_tests::agent::{default_spec, read_all, LocalAgent};
use eci_tests::rootfs::BusyboxBundle;
use oci_spec::runtime::{LinuxBuilder, Mount, Spec};
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

struct Env {
    agent: LocalAgent,
    bundle: BusyboxBundle,
    events: mpsc::UnboundedReceiver<Event>,
}

async fn env(_test: &str) -> Option<Env> {
    if eci_tests::prereq::skip_unless_ready(eci_tests::agent::missing()) {
        return None;
    }
    let agent = LocalAgent::start().await.expect("start eci-agent");
    let bundle = BusyboxBundle::new().expect("build the busybox bundle");
    // Collect GetEvent results until the agent goes away.
    let (tx, events) = mpsc::unbounded_channel();
    let client = agent.client.clone();
    tokio::spawn(async move {
        loop {
            let long = ttrpc::context::with_timeout(Duration::from_secs(600).as_nanos() as i64);
            match client.get_event(long, &GetEventRequest::new()).await {
                Ok(e) => {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    Some(Env {
        agent,
        bundle,
        events,
    })
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// A spec running `sh -c script` with a writable root and the given annotations.
fn sh_spec(script: &str, annotations: &[(&str, String)]) -> Spec {
    let mut spec = default_spec(&["sh", "-c", script]);
    spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
    let map: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    spec.set_annotations(Some(map));
    spec
}

fn add_mount(spec: &mut Spec, destination: &str, source: &str, typ: &str, options: &[&str]) {
    let mut mounts = spec.mounts().clone().unwrap_or_default();
    let mut m = Mount::default();
    m.set_destination(destination.into());
    m.set_source(Some(source.into()));
    m.set_typ(Some(typ.into()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    mounts.push(m);
    spec.set_mounts(Some(mounts));
}

fn rpc_error(e: ttrpc::Error) -> (ttrpc::Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("not an RPC status: {other:?}"),
    }
}

impl Env {
    async fn create_in(&self, id: &str, sandbox: &str, spec: &Spec) -> ttrpc::Result<()> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(spec).unwrap(),
            bundle: self.bundle.bundle().display().to_string(),
            stdio: Some(StdioConfig {
                stdout: true,
                stderr: true,
                ..Default::default()
            })
            .into(),
            sandbox_id: sandbox.into(),
            ..Default::default()
        };
        self.agent
            .client
            .create_container(ctx(), &req)
            .await
            .map(|_| ())
    }

    /// Creates, attaches stdout (stderr merged into the returned text) and starts.
    async fn launch(
        &self,
        id: &str,
        sandbox: &str,
        spec: &Spec,
    ) -> tokio::task::JoinHandle<String> {
        self.create_in(id, sandbox, spec).await.expect("create");
        let out = self.agent.attach(id, "", StreamKind::STDOUT).unwrap();
        let err = self.agent.attach(id, "", StreamKind::STDERR).unwrap();
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .start_container(ctx(), &req)
            .await
            .expect("start");
        tokio::spawn(async move {
            let (o, e) = tokio::join!(read_all(out), read_all(err));
            format!("{}{}", o.unwrap_or_default(), e.unwrap_or_default())
        })
    }

    async fn wait(&self, id: &str) -> WaitProcessResponse {
        let req = ProcessRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .wait_process(ctx(), &req)
            .await
            .expect("wait")
    }

    async fn remove(&self, id: &str) {
        let req = RemoveContainerRequest {
            container_id: id.into(),
            force: true,
            ..Default::default()
        };
        self.agent
            .client
            .remove_container(ctx(), &req)
            .await
            .expect("remove");
    }

    async fn probe_status(&self, id: &str) -> ProbeStatusResponse {
        let req = ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .probe_status(ctx(), &req)
            .await
            .expect("probe status")
    }

    async fn stats(&self, id: &str) -> StatsContainerResponse {
        let req = ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .stats_container(ctx(), &req)
            .await
            .expect("stats")
    }

    /// Waits up to `within` for an event matching `want`, keeping the others in `seen`.
    async fn event(
        &mut self,
        seen: &mut Vec<Event>,
        within: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> Option<Event> {
        if let Some(e) = seen.iter().find(|e| want(e)) {
            return Some(e.clone());
        }
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .ok()??;
            seen.push(e.clone());
            if want(&e) {
                return Some(e);
            }
        }
    }

    /// Asserts that no mount of the agent's state directory is left.
    fn assert_no_mounts_left(&self) {
        let state = self.agent.state_dir();
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let left: Vec<&str> = info
            .lines()
            .filter(|l| l.contains(&*state.to_string_lossy()))
            .collect();
        assert!(left.is_empty(), "mounts left behind: {left:#?}");
    }
}

fn probe_event(e: &Event) -> Option<&ProbeEvent> {
    match &e.kind {
        Some(event::Kind::Probe(p)) => Some(p),
        _ => None,
    }
}

fn lifecycle_event(e: &Event) -> Option<&LifecycleEvent> {
    match &e.kind {
        Some(event::Kind::Lifecycle(l)) => Some(l),
        _ => None,
    }
}

fn is_probe(e: &Event, kind: ProbeKind, result: ProbeResult) -> bool {
    probe_event(e)
        .is_some_and(|p| p.kind.enum_value() == Ok(kind) && p.result.enum_value() == Ok(result))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_exec_probe_failure_kills_the_container() {
    let Some(mut env) = env("liveness").await else {
        return;
    };
    let id = unique("liveness");
    // Healthy for about 2 s, then the probe's file goes; `sleep` as PID 1 ignores SIGTERM, so
    // the kill needs the grace period's SIGKILL. The probe's own grace period (1 s) wins over
    // the container's (30 s).
    let spec = sh_spec(
        "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 1000",
        &[
            (
                "io.eci.probe.liveness",
                r#"{"exec":{"command":["cat","/tmp/healthy"]},"periodSeconds":1,"failureThreshold":2,
                    "terminationGracePeriodSeconds":1}"#
                    .into(),
            ),
            ("io.eci.termination-grace-period-seconds", "30".into()),
        ],
    );
    let started = Instant::now();
    let _out = env.launch(&id, "", &spec).await;
    let mut seen = Vec::new();
    let ok = env
        .event(&mut seen, Duration::from_secs(10), |e| {
            is_probe(e, ProbeKind::LIVENESS, ProbeResult::SUCCESS)
        })
        .await
        .expect("a liveness SUCCESS event");
    assert_eq!(probe_event(&ok).unwrap().container_id, id);
    let status = env.probe_status(&id).await;
    assert_eq!(status.probes.len(), 1);
    assert_eq!(
        status.probes[0].result.enum_value(),
        Ok(ProbeResult::SUCCESS)
    );
    assert!(status.ready && status.started);

    let exit = env.wait(&id).await;
    let elapsed = started.elapsed();
    assert_eq!(
        exit.reason.enum_value(),
        Ok(ExitReason::LIVENESS_PROBE_FAILED),
        "{exit:?}"
    );
    assert!(
        exit.message.contains("liveness probe failed"),
        "{}",
        exit.message
    );
    assert_eq!(exit.exit_code, 137, "SIGKILL after the grace period");
    // 2 s healthy + 2 failures 1 s apart + 1 s grace, with slack for a loaded machine.
    assert!(
        elapsed >= Duration::from_secs(3),
        "killed too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(25),
        "the probe's grace period was not used: {elapsed:?}"
    );
    let failure = env
        .event(&mut seen, Duration::from_secs(5), |e| {
            is_probe(e, ProbeKind::LIVENESS, ProbeResult::FAILURE)
        })
        .await
        .expect("a liveness FAILURE event");
    let failure = probe_event(&failure).unwrap();
    assert_eq!(failure.consecutive, 2);
    assert!(failure.message.contains("killed"), "{}", failure.message);

    // The probe stopped with the container: its last result time no longer moves.
    let before = env.probe_status(&id).await.probes[0].last_probe_unix_nanos;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = env.probe_status(&id).await;
    assert_eq!(
        after.probes[0].last_probe_unix_nanos, before,
        "probe still running"
    );
    assert!(!after.ready);
    env.remove(&id).await;
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_http_and_tcp_probes_go_from_failure_to_success() {
    let Some(mut env) = env("readiness").await else {
        return;
    };
    let http = unique("ready-http");
    let tcp = unique("ready-tcp");
    // Servers come up after 2 s; until then the probes fail (failureThreshold 1).
    let http_spec = sh_spec(
        "sleep 2; mkdir -p /www; echo ok > /www/index.html; httpd -f -p 8080 -h /www",
        &[(
            "io.eci.probe.readiness",
            r#"{"httpGet":{"path":"/index.html","port":8080},"periodSeconds":1,"failureThreshold":1}"#.into(),
        )],
    );
    let tcp_spec = sh_spec(
        "sleep 2; exec nc -ll -p 9090 -e true",
        &[(
            "io.eci.probe.readiness",
            r#"{"tcpSocket":{"port":9090},"periodSeconds":1,"failureThreshold":1}"#.into(),
        )],
    );
    let _o1 = env.launch(&http, "", &http_spec).await;
    let _o2 = env.launch(&tcp, "", &tcp_spec).await;
    let mut seen = Vec::new();
    for id in [&http, &tcp] {
        let of = |e: &Event, r| {
            is_probe(e, ProbeKind::READINESS, r) && probe_event(e).unwrap().container_id == *id
        };
        let fail = env
            .event(&mut seen, Duration::from_secs(10), |e| {
                of(e, ProbeResult::FAILURE)
            })
            .await
            .unwrap_or_else(|| panic!("{id}: no readiness FAILURE event"));
        let ok = env
            .event(&mut seen, Duration::from_secs(15), |e| {
                of(e, ProbeResult::SUCCESS)
            })
            .await
            .unwrap_or_else(|| panic!("{id}: no readiness SUCCESS event in {seen:#?}"));
        assert!(fail.timestamp_unix_nanos < ok.timestamp_unix_nanos);
        let status = env.probe_status(id).await;
        assert!(status.ready, "{id}: {status:?}");
    }
    let ok_http = seen
        .iter()
        .filter_map(probe_event)
        .find(|p| p.container_id == http && p.result.enum_value() == Ok(ProbeResult::SUCCESS))
        .unwrap();
    assert!(ok_http.message.contains("200"), "{}", ok_http.message);
    env.remove(&http).await;
    env.remove(&tcp).await;
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_start_hook_runs_and_its_file_is_seen() {
    let Some(mut env) = env("poststart").await else {
        return;
    };
    let id = unique("poststart");
    let spec = sh_spec(
        "for i in $(seq 100); do [ -f /tmp/started ] && { echo seen; exit 0; }; sleep 0.1; done; exit 3",
        &[(
            "io.eci.lifecycle.post-start",
            r#"{"exec":{"command":["touch","/tmp/started"]}}"#.into(),
        )],
    );
    let out = env.launch(&id, "", &spec).await;
    let exit = env.wait(&id).await;
    assert_eq!(exit.exit_code, 0, "{exit:?}");
    assert_eq!(out.await.unwrap().trim(), "seen");
    let mut seen = Vec::new();
    let e = env
        .event(&mut seen, Duration::from_secs(5), |e| {
            lifecycle_event(e).is_some()
        })
        .await
        .expect("a postStart event");
    let l = lifecycle_event(&e).unwrap();
    assert_eq!(l.hook.enum_value(), Ok(LifecycleHook::POST_START));
    assert!(l.succeeded, "{l:?}");
    env.remove(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_post_start_hook_kills_the_container() {
    let Some(mut env) = env("poststart-fail").await else {
        return;
    };
    let id = unique("poststart-fail");
    let spec = sh_spec(
        "exec sleep 1000",
        &[
            (
                "io.eci.lifecycle.post-start",
                r#"{"exec":{"command":["sh","-c","echo broken; exit 7"]}}"#.into(),
            ),
            ("io.eci.termination-grace-period-seconds", "1".into()),
        ],
    );
    let _out = env.launch(&id, "", &spec).await;
    let exit = env.wait(&id).await;
    assert_eq!(
        exit.reason.enum_value(),
        Ok(ExitReason::POST_START_HOOK_FAILED),
        "{exit:?}"
    );
    assert!(
        exit.message.contains("exit status 7") && exit.message.contains("broken"),
        "{}",
        exit.message
    );
    let mut seen = Vec::new();
    let e = env
        .event(&mut seen, Duration::from_secs(5), |e| {
            lifecycle_event(e).is_some()
        })
        .await
        .expect("a postStart event");
    let l = lifecycle_event(&e).unwrap();
    assert_eq!(l.hook.enum_value(), Ok(LifecycleHook::POST_START));
    assert!(!l.succeeded);
    env.remove(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_stop_hook_runs_before_the_stop_signal() {
    let Some(mut env) = env("prestop").await else {
        return;
    };
    let id = unique("prestop");
    let spec = sh_spec(
        "trap 'echo TERM >> /order; exit 0' TERM; echo up > /up; while true; do sleep 0.1; done",
        &[(
            "io.eci.lifecycle.pre-stop",
            r#"{"exec":{"command":["sh","-c","echo PRESTOP >> /order"]}}"#.into(),
        )],
    );
    let _out = env.launch(&id, "", &spec).await;
    let up = env.bundle.rootfs().join("up");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !up.exists() {
        assert!(Instant::now() < deadline, "container did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let req = StopContainerRequest {
        container_id: id.clone(),
        grace_period_seconds: 10,
        ..Default::default()
    };
    env.agent
        .client
        .stop_container(ctx(), &req)
        .await
        .expect("stop");
    let exit = env.wait(&id).await;
    assert_eq!(
        (exit.exit_code, exit.reason.enum_value()),
        (0, Ok(ExitReason::EXITED)),
        "{exit:?}"
    );
    let order = std::fs::read_to_string(env.bundle.rootfs().join("order")).unwrap();
    assert_eq!(order, "PRESTOP\nTERM\n");
    let mut seen = Vec::new();
    let e = env
        .event(&mut seen, Duration::from_secs(5), |e| {
            lifecycle_event(e).is_some()
        })
        .await
        .expect("a preStop event");
    let l = lifecycle_event(&e).unwrap();
    assert_eq!(l.hook.enum_value(), Ok(LifecycleHook::PRE_STOP));
    assert!(l.succeeded);
    env.remove(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_sysctls_apply_and_machine_wide_ones_are_refused() {
    let Some(env) = env("sysctl").await else {
        return;
    };
    let id = unique("sysctl");
    let mut spec = sh_spec(
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/net/ipv4/tcp_keepalive_time",
        &[],
    );
    let linux = spec
        .linux_mut()
        .get_or_insert_with(|| LinuxBuilder::default().build().unwrap());
    linux.set_sysctl(Some(HashMap::from([
        ("net.ipv4.ip_forward".to_string(), "1".to_string()),
        (
            "net.ipv4.tcp_keepalive_time".to_string(),
            "1234".to_string(),
        ),
    ])));
    let out = env.launch(&id, "", &spec).await;
    assert_eq!(env.wait(&id).await.exit_code, 0);
    assert_eq!(
        out.await.unwrap().split_whitespace().collect::<Vec<_>>(),
        ["1", "1234"]
    );
    env.remove(&id).await;

    for key in ["kernel.panic", "vm.swappiness"] {
        let linux = spec.linux_mut().as_mut().unwrap();
        linux.set_sysctl(Some(HashMap::from([(key.to_string(), "1".to_string())])));
        let (code, msg) = rpc_error(
            env.create_in(&unique("sysctl-bad"), "", &spec)
                .await
                .unwrap_err(),
        );
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(
            msg.contains(key) && msg.contains("not a namespaced sysctl"),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sized_tmpfs_refuses_the_17th_mib() {
    let Some(env) = env("tmpfs").await else {
        return;
    };
    let id = unique("tmpfs");
    let mut spec = sh_spec(
        "dd if=/dev/zero of=/data/f bs=1M count=17 2>&1; echo rc=$?; stat -c %s /data/f",
        &[],
    );
    add_mount(
        &mut spec,
        "/data",
        "tmpfs",
        "tmpfs",
        &["size=16m", "nosuid"],
    );
    let out = env.launch(&id, "", &spec).await;
    env.wait(&id).await;
    let out = out.await.unwrap();
    assert!(out.contains("No space left on device"), "{out}");
    assert!(!out.contains("rc=0"), "{out}");
    assert_eq!(out.lines().last(), Some("16777216"), "{out}");
    env.remove(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_empty_dir_is_shared_by_two_containers() {
    let Some(env) = env("emptydir").await else {
        return;
    };
    let pod = unique("pod");
    let app = unique("app");
    let mut sandbox = sh_spec(
        "echo hello > /shared/a; exec sleep 1000",
        &[(
            "io.eci.volume.shared",
            r#"{"emptyDir":{"medium":"Memory","sizeLimit":"8Mi"}}"#.into(),
        )],
    );
    add_mount(
        &mut sandbox,
        "/shared",
        "eci-volume://shared",
        "bind",
        &["rw"],
    );
    let _s = env.launch(&pod, "", &sandbox).await;
    let mut app_spec = sh_spec(
        "for i in $(seq 100); do [ -f /data/a ] && break; sleep 0.1; done; cat /data/a; df -k /data | tail -1",
        &[],
    );
    add_mount(
        &mut app_spec,
        "/data",
        "eci-volume://shared",
        "bind",
        &["rw"],
    );
    let out = env.launch(&app, &pod, &app_spec).await;
    assert_eq!(env.wait(&app).await.exit_code, 0);
    let out = out.await.unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("hello"), "{out}");
    let df: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(df.get(1), Some(&"8192"), "an 8 MiB tmpfs: {out}");

    // The sandbox's statistics list the volume it mounts with the tmpfs's capacity.
    let stats = env.stats(&pod).await;
    let shared = stats
        .filesystems
        .iter()
        .find(|f| f.name == "shared")
        .unwrap_or_else(|| panic!("no volume stats in {:?}", stats.filesystems));
    assert_eq!(shared.mount_point, "/shared");
    assert_eq!(shared.capacity_bytes, 8 << 20);

    // An undeclared volume is refused, naming the mount.
    let mut bad = sh_spec("true", &[]);
    add_mount(&mut bad, "/x", "eci-volume://missing", "bind", &[]);
    let (code, msg) = rpc_error(env.create_in(&unique("bad"), &pod, &bad).await.unwrap_err());
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(
        msg.contains("mounts[") && msg.contains("\"missing\""),
        "{msg}"
    );

    env.remove(&app).await;
    let volumes = env.agent.state_dir().join("volumes").join(&pod);
    assert!(
        volumes.join("shared").exists(),
        "the pod's volume went with a non-last container"
    );
    env.remove(&pod).await;
    env.assert_no_mounts_left();
    assert!(
        !volumes.exists(),
        "pod volume directory left: {}",
        volumes.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_volume_has_exact_content_and_modes_and_is_read_only() {
    let Some(env) = env("configfile").await else {
        return;
    };
    let id = unique("configfile");
    // "hello\n" and "#!/bin/sh\necho hi\n".
    let mut spec = sh_spec(
        "cat /etc/cfg/app.conf; sh /etc/cfg/sub/run.sh; stat -c '%a %n' /etc/cfg/app.conf /etc/cfg/sub/run.sh; touch /etc/cfg/new 2>&1; true",
        &[(
            "io.eci.volume.cfg",
            r#"{"configFile":{"items":[
                {"path":"app.conf","content":"aGVsbG8K","mode":384},
                {"path":"sub/run.sh","content":"IyEvYmluL3NoCmVjaG8gaGkK","mode":493}]}}"#
                .into(),
        )],
    );
    add_mount(&mut spec, "/etc/cfg", "eci-volume://cfg", "bind", &[]);
    let out = env.launch(&id, "", &spec).await;
    env.wait(&id).await;
    let out = out.await.unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "hello",
            "hi",
            "600 /etc/cfg/app.conf",
            "755 /etc/cfg/sub/run.sh"
        ],
        "{out}"
    );
    assert!(out.contains("Read-only file system"), "{out}");
    env.remove(&id).await;
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_volume_from_an_ext4_image_is_mounted_read_only() {
    let Some(env) = env("disk").await else { return };
    if which("mkfs.ext4").is_none() || !Path::new("/dev/loop-control").exists() {
        eci_tests::prereq::missing_prerequisite("mkfs.ext4 (e2fsprogs) and /dev/loop-control");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let content = dir.path().join("content");
    std::fs::create_dir(&content).unwrap();
    std::fs::write(content.join("hello.txt"), "from the disk\n").unwrap();
    let image = dir.path().join("disk.ext4");
    let status = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&content)
        .arg(&image)
        .arg("16M")
        .status()
        .unwrap();
    assert!(status.success(), "mkfs.ext4 failed");
    let id = unique("disk");
    let mut spec = sh_spec(
        "cat /mnt/disk/hello.txt; touch /mnt/disk/new 2>&1; true",
        &[(
            "io.eci.volume.data",
            format!(
                r#"{{"disk":{{"device":"{}","fsType":"ext4","readOnly":true}}}}"#,
                image.display()
            ),
        )],
    );
    add_mount(&mut spec, "/mnt/disk", "eci-volume://data", "bind", &[]);
    let out = env.launch(&id, "", &spec).await;
    env.wait(&id).await;
    let out = out.await.unwrap();
    assert!(out.starts_with("from the disk\n"), "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
    env.remove(&id).await;
    env.assert_no_mounts_left();
    // The loop device frees itself once unmounted (autoclear), asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(dev) = loop_device_of(&image) {
        assert!(
            Instant::now() < deadline,
            "{dev} still backs {}",
            image.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

/// The loop device whose backing file is `image`, if any.
fn loop_device_of(image: &Path) -> Option<String> {
    let image = image.to_string_lossy();
    std::fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|e| {
            let backing = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (backing.trim() == image).then(|| e.file_name().to_string_lossy().into_owned())
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_follow_cpu_load_and_memory() {
    let Some(env) = env("stats").await else {
        return;
    };
    let id = unique("stats");
    let mut spec = sh_spec(
        "sleep 1; dd if=/dev/zero of=/dev/shm/fill bs=1M count=48 2>/dev/null; \
         touch /filled; exec sleep 1000",
        &[],
    );
    let linux = spec.linux_mut().as_mut().unwrap();
    let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(serde_json::json!({
        "cpu": {"quota": 150000, "period": 100000}
    }))
    .unwrap();
    linux.set_resources(Some(resources));
    let _out = env.launch(&id, "", &spec).await;
    let idle = env.stats(&id).await;
    let cpu = idle.cpu.as_ref().unwrap();
    assert_eq!(cpu.limit_millicores, 1500);
    assert!(cpu.usage_nanocores < 200_000_000, "idle container: {cpu:?}");
    assert!(
        idle.networks.is_empty(),
        "only lo in a fresh netns: {:?}",
        idle.networks
    );
    let rootfs = idle
        .filesystems
        .iter()
        .find(|f| f.name == "rootfs")
        .expect("rootfs stats");
    assert!(
        rootfs.capacity_bytes > 0 && rootfs.used_bytes > 0,
        "{rootfs:?}"
    );
    let mem0 = idle.memory.as_ref().unwrap().working_set_bytes;

    let filled = env.bundle.rootfs().join("filled");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !filled.exists() {
        assert!(Instant::now() < deadline, "allocation did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after_fill = env.stats(&id).await;
    let mem = after_fill.memory.as_ref().unwrap();
    assert!(
        mem.working_set_bytes >= mem0 + (32 << 20),
        "working set {} -> {}",
        mem0,
        mem.working_set_bytes
    );
    assert!(
        mem.available_bytes > 0 && mem.available_bytes < u64::MAX / 2,
        "{mem:?}"
    );

    // A busy loop: usage over the window since the previous call rises towards one core.
    let busy = ExecProcessRequest {
        container_id: id.clone(),
        exec_id: "busy".into(),
        process_json: serde_json::to_vec(&serde_json::json!({
            "args": ["sh", "-c", "while :; do :; done"], "cwd": "/", "user": {"uid": 0, "gid": 0},
            "env": ["PATH=/bin:/usr/bin"]
        }))
        .unwrap(),
        ..Default::default()
    };
    env.agent
        .client
        .exec_process(ctx(), &busy)
        .await
        .expect("exec busy loop");
    env.stats(&id).await; // starts the window
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let loaded = env.stats(&id).await;
    let cpu = loaded.cpu.as_ref().unwrap();
    assert!(
        cpu.usage_nanocores > 300_000_000,
        "busy loop (a third of a core even on a loaded 2-CPU machine): {cpu:?}"
    );
    assert!(cpu.load >= 1, "busy loop: {cpu:?}");
    env.remove(&id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_annotations_are_refused_naming_them() {
    let Some(env) = env("bad-annotation").await else {
        return;
    };
    for (key, value, expect) in [
        (
            "io.eci.probe.liveness",
            "{oops",
            "invalid annotation io.eci.probe.liveness: ",
        ),
        (
            "io.eci.probe.readiness",
            r#"{"httpGet":{"port":0}}"#,
            "invalid annotation io.eci.probe.readiness: httpGet.port: must be 1..65535",
        ),
        (
            "io.eci.volume.cfg",
            r#"{"configFile":{"items":[{"path":"../etc/passwd","content":""}]}}"#,
            "invalid annotation io.eci.volume.cfg: configFile.items[0].path",
        ),
    ] {
        let spec = sh_spec("true", &[(key, value.to_string())]);
        let (code, msg) = rpc_error(env.create_in(&unique("bad"), "", &spec).await.unwrap_err());
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
        assert!(msg.contains(expect), "{msg}");
    }
    // Nothing of the refused containers is left.
    let bundles = std::fs::read_dir(env.agent.state_dir().join("bundles"))
        .unwrap()
        .count();
    assert_eq!(bundles, 0);
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_sysctls_of_setup_sandbox_reach_its_containers() {
    let Some(env) = env("pod-sysctl").await else {
        return;
    };
    let pod = unique("sysctl-pod");
    let setup = |sysctls: &[(&str, &str)]| SetupSandboxRequest {
        sandbox_id: pod.clone(),
        sysctls: sysctls
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let (code, msg) = rpc_error(
        env.agent
            .client
            .setup_sandbox(ctx(), &setup(&[("kernel.panic", "1")]))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("sysctls.\"kernel.panic\""), "{msg}");
    env.agent
        .client
        .setup_sandbox(ctx(), &setup(&[("net.ipv4.tcp_keepalive_time", "777")]))
        .await
        .expect("setup sandbox");
    let id = unique("sysctl-member");
    let spec = sh_spec("cat /proc/sys/net/ipv4/tcp_keepalive_time", &[]);
    let out = env.launch(&id, &pod, &spec).await;
    assert_eq!(env.wait(&id).await.exit_code, 0);
    assert_eq!(out.await.unwrap().trim(), "777");
    env.remove(&id).await;
    let req = DestroySandboxRequest {
        sandbox_id: pod.clone(),
        ..Default::default()
    };
    env.agent
        .client
        .destroy_sandbox(ctx(), &req)
        .await
        .expect("destroy sandbox");
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_tmpfs_empty_dir_becomes_a_pod_tmpfs() {
    let Some(env) = env("k8s-emptydir").await else {
        return;
    };
    let host = tempfile::tempdir().unwrap();
    let empty_dir = host
        .path()
        .join("pods/uid/volumes/kubernetes.io~empty-dir/cache");
    std::fs::create_dir_all(&empty_dir).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &empty_dir,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=4m"),
    )
    .expect("mount the host tmpfs");
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(&empty_dir);
    std::fs::write(empty_dir.join("host-only"), "x").unwrap();
    let id = unique("k8s-emptydir");
    let mut spec = sh_spec(
        "ls /cache; echo in-pod > /cache/new; df -k /cache | tail -1",
        &[],
    );
    add_mount(
        &mut spec,
        "/cache",
        &empty_dir.to_string_lossy(),
        "bind",
        &["rbind", "rw"],
    );
    let out = env.launch(&id, "", &spec).await;
    assert_eq!(env.wait(&id).await.exit_code, 0);
    let out = out.await.unwrap();
    assert!(
        !out.contains("host-only"),
        "the pod got the host's tmpfs: {out}"
    );
    let df: Vec<&str> = out
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        df.get(1),
        Some(&"4096"),
        "a pod tmpfs of the host tmpfs's size: {out}"
    );
    assert!(
        !empty_dir.join("new").exists(),
        "write reached the host tmpfs"
    );
    env.remove(&id).await;
    env.assert_no_mounts_left();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmountable_nfs_volume_fails_create_naming_the_volume() {
    let Some(env) = env("nfs").await else { return };
    // No NFS server listens on this machine's loopback (and the kernel may lack the NFS
    // client): the mount must fail, quickly and clearly, and leave nothing behind. Only this
    // failure path is tested: no tier mounts a real NFS export yet.
    if std::net::TcpStream::connect("127.0.0.1:2049").is_ok() {
        eci_tests::prereq::missing_prerequisite(
            "a free 127.0.0.1:2049 (something listens there, so the mount could succeed)",
        );
        return;
    }
    let id = unique("nfs");
    let mut spec = sh_spec(
        "true",
        &[(
            "io.eci.volume.share",
            r#"{"nfs":{"server":"127.0.0.1","path":"/export","readOnly":true}}"#.into(),
        )],
    );
    add_mount(&mut spec, "/share", "eci-volume://share", "bind", &[]);
    let result = tokio::time::timeout(Duration::from_secs(60), env.create_in(&id, "", &spec))
        .await
        .expect("the NFS mount attempt gave up within 60 s");
    let (code, msg) = rpc_error(result.unwrap_err());
    assert_eq!(code, ttrpc::Code::FAILED_PRECONDITION, "{msg}");
    assert!(
        msg.contains("pod volume \"share\"") && msg.contains("mount NFS 127.0.0.1:/export"),
        "{msg}"
    );
    env.assert_no_mounts_left();
    assert!(!env.agent.state_dir().join("volumes").join(&id).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_probe_gates_liveness() {
    let Some(mut env) = env("startup").await else {
        return;
    };
    let id = unique("startup");
    let spec = sh_spec(
        "sleep 2; touch /tmp/started; exec sleep 1000",
        &[
            (
                "io.eci.probe.startup",
                r#"{"exec":{"command":["cat","/tmp/started"]},"periodSeconds":1,"failureThreshold":30}"#.into(),
            ),
            (
                "io.eci.probe.liveness",
                r#"{"exec":{"command":["true"]},"periodSeconds":1}"#.into(),
            ),
        ],
    );
    let _out = env.launch(&id, "", &spec).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let early = env.probe_status(&id).await;
    assert!(!early.started && !early.ready, "{early:?}");
    let liveness_early = early
        .probes
        .iter()
        .find(|p| p.kind.enum_value() == Ok(ProbeKind::LIVENESS))
        .unwrap();
    assert_eq!(
        liveness_early.last_probe_unix_nanos, 0,
        "liveness ran before startup passed"
    );
    let mut seen = Vec::new();
    let live = env
        .event(&mut seen, Duration::from_secs(15), |e| {
            is_probe(e, ProbeKind::LIVENESS, ProbeResult::SUCCESS)
        })
        .await
        .expect("liveness SUCCESS once started");
    let started = env
        .event(&mut seen, Duration::from_secs(1), |e| {
            is_probe(e, ProbeKind::STARTUP, ProbeResult::SUCCESS)
        })
        .await
        .expect("startup SUCCESS");
    assert!(started.timestamp_unix_nanos <= live.timestamp_unix_nanos);
    let later = env.probe_status(&id).await;
    assert!(later.started && later.ready, "{later:?}");
    env.remove(&id).await;
}
