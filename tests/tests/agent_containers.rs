//! End-to-end tests of the agent's container core in local mode: each test starts its own
//! `eci-agent --local`, builds a busybox bundle and drives the agent through the generated
//! ttrpc client and the stream socket. They need root (namespaces, cgroups, mounts) and
//! Debian's busybox-static; without them they fail under CI (SKIP line elsewhere).

use eci_protocol::agent::*;
use eci_protocol::stream::StreamKind;
use eci_tests::agent::{default_spec, read_all, LocalAgent};
use eci_tests::rootfs::BusyboxBundle;
use oci_spec::runtime::Spec;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

struct Env {
    agent: LocalAgent,
    bundle: BusyboxBundle,
}

/// The agent and a bundle, or None when the machine cannot run them (a failure under CI).
async fn env(_test: &str) -> Option<Env> {
    if eci_tests::prereq::skip_unless_ready(eci_tests::agent::missing()) {
        return None;
    }
    let agent = LocalAgent::start().await.expect("start eci-agent");
    let bundle = BusyboxBundle::new().expect("build the busybox bundle");
    Some(Env { agent, bundle })
}

fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

fn stdio(stdin: bool, terminal: bool) -> StdioConfig {
    StdioConfig {
        stdin,
        stdout: true,
        stderr: !terminal,
        terminal,
        ..Default::default()
    }
}

impl Env {
    async fn create(
        &self,
        id: &str,
        spec: &Spec,
        stdio: StdioConfig,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec_json: serde_json::to_vec(spec).unwrap(),
            bundle: self.bundle.bundle().display().to_string(),
            stdio: Some(stdio).into(),
            ..Default::default()
        };
        self.agent.client.create_container(ctx(), &req).await
    }

    async fn start(&self, id: &str) {
        let req = StartContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .start_container(ctx(), &req)
            .await
            .expect("start");
    }

    async fn wait(&self, id: &str, exec_id: &str) -> WaitProcessResponse {
        let req = ProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .wait_process(ctx(), &req)
            .await
            .expect("wait")
    }

    async fn signal(&self, id: &str, exec_id: &str, signal: u32, all: bool) {
        let req = SignalProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.agent
            .client
            .signal_process(ctx(), &req)
            .await
            .expect("signal");
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

    /// The processes of container `id`, as ListProcesses reports them.
    async fn list_processes(&self, id: &str) -> Vec<ProcessInfo> {
        let req = ContainerRequest {
            container_id: id.into(),
            ..Default::default()
        };
        self.agent
            .client
            .list_processes(ctx(), &req)
            .await
            .expect("list processes")
            .processes
    }

    /// Creates, attaches stdout and stderr, starts, collects the output and the exit, removes.
    async fn run(&self, id: &str, spec: &Spec) -> (String, String, WaitProcessResponse) {
        self.create(id, spec, stdio(false, false))
            .await
            .expect("create");
        let out = self.agent.attach(id, "", StreamKind::STDOUT).unwrap();
        let err = self.agent.attach(id, "", StreamKind::STDERR).unwrap();
        self.start(id).await;
        let (out, err) = (read_all(out).await.unwrap(), read_all(err).await.unwrap());
        let exit = self.wait(id, "").await;
        self.remove(id).await;
        (out, err, exit)
    }
}

fn sh(script: &str) -> Spec {
    default_spec(&["sh", "-c", script])
}

/// An ExecProcess request for `args` in container `id`, with a terminal when `stdio` has one.
fn exec_request(id: &str, exec_id: &str, args: &[&str], stdio: StdioConfig) -> ExecProcessRequest {
    let mut process = default_spec(args).process().clone().unwrap();
    process.set_terminal(Some(stdio.terminal));
    ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec_id.into(),
        process_json: serde_json::to_vec(&process).unwrap(),
        stdio: Some(stdio).into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn echo_output_reaches_the_stdout_stream() {
    let Some(env) = env("echo_output").await else {
        return;
    };
    let (out, err, exit) = env
        .run(
            &unique("echo"),
            &default_spec(&["echo", "hello from busybox"]),
        )
        .await;
    assert_eq!(out, "hello from busybox\n", "stderr: {err}");
    assert_eq!(exit.exit_code, 0);
    assert_eq!(exit.reason.enum_value(), Ok(ExitReason::EXITED));
    assert!(exit.exited_at_unix_nanos > 0);
}

#[tokio::test]
async fn exit_code_7_is_reported() {
    let Some(env) = env("exit_code").await else {
        return;
    };
    let (_, err, exit) = env
        .run(&unique("exit7"), &sh("echo oops >&2; exit 7"))
        .await;
    assert_eq!(exit.exit_code, 7);
    assert_eq!(exit.reason.enum_value(), Ok(ExitReason::EXITED));
    assert_eq!(err, "oops\n");
}

#[tokio::test]
async fn sigkill_gives_137() {
    let Some(env) = env("sigkill").await else {
        return;
    };
    let id = unique("kill");
    env.create(&id, &default_spec(&["sleep", "1000"]), stdio(false, false))
        .await
        .unwrap();
    env.start(&id).await;
    env.signal(&id, "", 9, false).await;
    let exit = env.wait(&id, "").await;
    assert_eq!(exit.exit_code, 137);
    assert_eq!(exit.reason.enum_value(), Ok(ExitReason::SIGNALED));
    assert_eq!(exit.signal, 9);
    env.remove(&id).await;
}

#[tokio::test]
async fn env_cwd_and_user_are_honoured() {
    let Some(env) = env("env_cwd_user").await else {
        return;
    };
    let mut spec = sh("echo \"$GREETING\"; pwd; id -u; id -g; id -G");
    let process = spec.process_mut().as_mut().unwrap();
    process.set_env(Some(vec![
        "PATH=/bin:/usr/bin".into(),
        "GREETING=hi there".into(),
    ]));
    process.set_cwd("/home/user".into());
    let mut user = oci_spec::runtime::User::default();
    user.set_uid(1000);
    user.set_gid(1000);
    user.set_additional_gids(Some(vec![1000, 4242]));
    process.set_user(user);
    let (out, err, exit) = env.run(&unique("envuser"), &spec).await;
    assert_eq!(exit.exit_code, 0, "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        ["hi there", "/home/user", "1000", "1000"],
        "{out}"
    );
    assert!(
        lines[4].split(' ').any(|g| g == "4242"),
        "additional gid missing: {out}"
    );
}

#[tokio::test]
async fn stdin_is_piped_to_cat() {
    let Some(env) = env("stdin_cat").await else {
        return;
    };
    let id = unique("cat");
    env.create(&id, &default_spec(&["cat"]), stdio(true, false))
        .await
        .unwrap();
    let mut input = env.agent.attach(&id, "", StreamKind::STDIN).unwrap();
    let out = env.agent.attach(&id, "", StreamKind::STDOUT).unwrap();
    env.start(&id).await;
    input.write_all(b"line one\nline two\n").unwrap();
    input.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_all(out).await.unwrap(), "line one\nline two\n");
    assert_eq!(env.wait(&id, "").await.exit_code, 0);
    env.remove(&id).await;
}

#[tokio::test]
async fn tty_process_sees_a_tty_and_gets_resized() {
    let Some(env) = env("tty").await else { return };
    let id = unique("tty");
    let script = "tty >/dev/null && echo is-a-tty; stty size; \
                  trap 'stty size; exit 0' WINCH; echo ready; while :; do sleep 1; done";
    env.create(&id, &sh(script), stdio(false, true))
        .await
        .unwrap();
    let resize = |rows, cols| ResizeTtyRequest {
        container_id: id.clone(),
        rows,
        cols,
        ..Default::default()
    };
    env.agent
        .client
        .resize_tty(ctx(), &resize(30, 100))
        .await
        .unwrap();
    let mut out = env.agent.attach(&id, "", StreamKind::STDOUT).unwrap();
    env.start(&id).await;
    // Read until "ready", then resize and expect the new size from the WINCH trap.
    let reader = tokio::task::spawn_blocking(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("ready") {
            let n = std::io::Read::read(&mut out, &mut buf).unwrap();
            assert!(
                n > 0,
                "tty closed early: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        (out, String::from_utf8_lossy(&seen).into_owned())
    });
    let (out, first) = reader.await.unwrap();
    assert!(first.contains("is-a-tty"), "{first:?}");
    assert!(
        first.contains("30 100"),
        "initial size not applied: {first:?}"
    );
    env.agent
        .client
        .resize_tty(ctx(), &resize(50, 132))
        .await
        .unwrap();
    let rest = read_all(out).await.unwrap();
    assert!(rest.contains("50 132"), "resize not seen: {rest:?}");
    assert_eq!(env.wait(&id, "").await.exit_code, 0);
    env.remove(&id).await;
}

#[tokio::test]
async fn exec_runs_in_a_running_container() {
    let Some(env) = env("exec").await else { return };
    let id = unique("exec");
    env.create(
        &id,
        &sh("echo hostname=$(hostname) > /dev/null; sleep 1000"),
        stdio(false, false),
    )
    .await
    .unwrap();
    env.start(&id).await;
    let req = exec_request(
        &id,
        "e1",
        &[
            "sh",
            "-c",
            "echo from-exec; ls /proc | grep -c '^[0-9]' >&2; exit 3",
        ],
        stdio(false, false),
    );
    let resp = env.agent.client.exec_process(ctx(), &req).await.unwrap();
    assert!(resp.pid > 0);
    let out = env.agent.attach(&id, "e1", StreamKind::STDOUT).unwrap();
    let err = env.agent.attach(&id, "e1", StreamKind::STDERR).unwrap();
    assert_eq!(read_all(out).await.unwrap(), "from-exec\n");
    // The exec sees the container's PID namespace: sleep, sh, ls and grep at most.
    let count: u32 = read_all(err).await.unwrap().trim().parse().unwrap();
    assert!(
        (2..=5).contains(&count),
        "{count} pids visible: not the container's PID namespace"
    );
    let exit = env.wait(&id, "e1").await;
    assert_eq!(exit.exit_code, 3);
    // A second exec with the same id is refused; the container still runs.
    let dup = env
        .agent
        .client
        .exec_process(ctx(), &req)
        .await
        .unwrap_err();
    assert_code(&dup, ttrpc::Code::ALREADY_EXISTS);
    let processes = env.list_processes(&id).await;
    assert!(
        processes.iter().any(|p| p.command == "sleep"),
        "{processes:?}"
    );
    env.remove(&id).await;
}

#[tokio::test]
async fn rlimit_is_applied() {
    let Some(env) = env("rlimit").await else {
        return;
    };
    let mut spec = sh("ulimit -n; ulimit -Hn");
    let rlimit = oci_spec::runtime::PosixRlimitBuilder::default()
        .typ(oci_spec::runtime::PosixRlimitType::RlimitNofile)
        .soft(123u64)
        .hard(456u64)
        .build()
        .unwrap();
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_rlimits(Some(vec![rlimit]));
    let (out, err, exit) = env.run(&unique("rlimit"), &spec).await;
    assert_eq!(exit.exit_code, 0, "{err}");
    assert_eq!(out, "123\n456\n");
}

#[tokio::test]
async fn read_only_rootfs_refuses_a_write() {
    let Some(env) = env("readonly").await else {
        return;
    };
    let spec = sh("echo data > /written && echo wrote");
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    let (out, err, exit) = env.run(&unique("ro"), &spec).await;
    assert_ne!(exit.exit_code, 0);
    assert_eq!(out, "");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!env.bundle.rootfs().join("written").exists());
}

#[tokio::test]
async fn masked_path_is_unreadable() {
    let Some(env) = env("masked").await else {
        return;
    };
    std::fs::write(env.bundle.rootfs().join("etc/secret"), "top-secret\n").unwrap();
    let mut spec = sh("cat /etc/secret; echo end; head -c 16 /proc/kcore | wc -c");
    let linux = spec.linux_mut().as_mut().unwrap();
    let mut masked = linux.masked_paths().clone().unwrap_or_default();
    assert!(masked.iter().any(|p| p == "/proc/kcore"));
    masked.push("/etc/secret".into());
    linux.set_masked_paths(Some(masked));
    let (out, err, exit) = env.run(&unique("masked"), &spec).await;
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(!out.contains("top-secret"), "masked file readable: {out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["end", "0"], "{out}");
}

#[tokio::test]
async fn dropped_capability_is_really_missing() {
    let Some(env) = env("caps").await else { return };
    let caps = |with_chown: bool| {
        let mut set: oci_spec::runtime::Capabilities =
            [oci_spec::runtime::Capability::Kill].into_iter().collect();
        if with_chown {
            set.insert(oci_spec::runtime::Capability::Chown);
        }
        let mut spec = sh("grep CapEff /proc/self/status; chown 1234 /etc/passwd && echo chowned");
        spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
        let c = oci_spec::runtime::LinuxCapabilitiesBuilder::default()
            .bounding(set.clone())
            .effective(set.clone())
            .permitted(set)
            .inheritable(oci_spec::runtime::Capabilities::new())
            .ambient(oci_spec::runtime::Capabilities::new())
            .build()
            .unwrap();
        spec.process_mut()
            .as_mut()
            .unwrap()
            .set_capabilities(Some(c));
        spec
    };
    let (out, err, exit) = env.run(&unique("nochown"), &caps(false)).await;
    assert_ne!(exit.exit_code, 0, "chown worked without CAP_CHOWN: {out}");
    assert!(
        out.contains("CapEff:\t0000000000000020"),
        "only CAP_KILL expected: {out}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");
    // Control: the same program with CAP_CHOWN succeeds.
    let (out, err, exit) = env.run(&unique("chown"), &caps(true)).await;
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(out.contains("chowned"), "{out}");
}

#[tokio::test]
async fn memory_limit_oom_kills_and_wait_reports_it() {
    let Some(env) = env("oom").await else { return };
    let id = unique("oom");
    // tail keeps all of /dev/zero (no newline) in memory: it is the allocator and the init.
    let mut spec = default_spec(&["tail", "/dev/zero"]);
    let memory = oci_spec::runtime::LinuxMemoryBuilder::default()
        .limit(32 * 1024 * 1024i64)
        .swap(32 * 1024 * 1024i64)
        .build()
        .unwrap();
    let resources = oci_spec::runtime::LinuxResourcesBuilder::default()
        .memory(memory)
        .build()
        .unwrap();
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_resources(Some(resources));
    env.create(&id, &spec, stdio(false, false)).await.unwrap();
    env.start(&id).await;
    let exit = tokio::time::timeout(Duration::from_secs(60), env.wait(&id, ""))
        .await
        .expect("OOM kill within 60 s");
    assert_eq!(
        exit.reason.enum_value(),
        Ok(ExitReason::OOM_KILLED),
        "{exit:?}"
    );
    assert_eq!(exit.exit_code, 137);
    let event = tokio::time::timeout(
        Duration::from_secs(10),
        env.agent
            .client
            .get_event(ctx(), &GetEventRequest::default()),
    )
    .await
    .expect("OOM event within 10 s")
    .unwrap();
    assert_eq!(event.oom().container_id, id);
    let stats = env
        .agent
        .client
        .stats_container(
            ctx(),
            &ContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(stats.memory.oom_kill_count >= 1, "{stats:?}");
    assert_eq!(stats.memory.limit_bytes, 32 * 1024 * 1024);
    env.remove(&id).await;
}

fn cgroup_dirs_of(id: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join("eci").join(id)];
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            candidates.push(e.path().join("eci").join(id));
        }
    }
    for c in candidates {
        if c.exists() {
            found.push(c);
        }
    }
    found
}

fn alive(pid: u32) -> bool {
    // A zombie counts: it still holds a pid.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn remove_leaves_no_process_mount_or_cgroup() {
    let Some(env) = env("remove").await else {
        return;
    };
    let id = unique("rm");
    let created = env
        .create(&id, &sh("sleep 1000 & sleep 1000"), stdio(false, false))
        .await
        .unwrap();
    env.start(&id).await;
    let exec = env
        .agent
        .client
        .exec_process(
            ctx(),
            &exec_request(&id, "sleeper", &["sleep", "1000"], stdio(false, false)),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let processes = env.list_processes(&id).await;
    let pids: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    // sh execs its last command: init is a sleep, plus the background sleep and the exec.
    assert!(
        pids.len() >= 3,
        "init, background sleep and exec expected: {processes:?}"
    );
    assert!(pids.contains(&created.pid) && pids.contains(&exec.pid));
    assert!(
        !cgroup_dirs_of(&id).is_empty(),
        "the container's cgroup should exist while it runs"
    );
    let rootfs = env.bundle.rootfs().display().to_string();

    // Not forced: a running container is refused.
    let refused = env
        .agent
        .client
        .remove_container(
            ctx(),
            &RemoveContainerRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_code(&refused, ttrpc::Code::FAILED_PRECONDITION);

    env.remove(&id).await;
    for pid in &pids {
        assert!(!alive(*pid), "pid {pid} survived remove");
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(&rootfs),
        "a mount of the rootfs is left"
    );
    assert_eq!(
        cgroup_dirs_of(&id),
        Vec::<std::path::PathBuf>::new(),
        "cgroup left"
    );
    let state = env.agent.state_dir();
    assert!(!state.join("runtime").join(&id).exists() && !state.join("bundles").join(&id).exists());
    let gone = env
        .agent
        .client
        .wait_process(
            ctx(),
            &ProcessRequest {
                container_id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_code(&gone, ttrpc::Code::NOT_FOUND);
}

fn assert_code(err: &ttrpc::Error, code: ttrpc::Code) {
    match err {
        ttrpc::Error::RpcStatus(s) => assert_eq!(s.code(), code, "{}", s.message()),
        other => panic!("expected status {code:?}, got {other:?}"),
    }
}

fn message(err: &ttrpc::Error) -> String {
    match err {
        ttrpc::Error::RpcStatus(s) => s.message().to_string(),
        other => format!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_agent_keeps_serving() {
    let Some(mut env) = env("bad_input").await else {
        return;
    };
    let id = unique("bad");
    let bundle = env.bundle.bundle().display().to_string();

    let malformed = CreateContainerRequest {
        container_id: id.clone(),
        oci_spec_json: b"{\"ociVersion\": \"1.0.2\", \"process\": ".to_vec(),
        bundle: bundle.clone(),
        ..Default::default()
    };
    let e = env
        .agent
        .client
        .create_container(ctx(), &malformed)
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("oci_spec_json"), "{}", message(&e));

    let bad_id = CreateContainerRequest {
        container_id: "../escape".into(),
        ..malformed.clone()
    };
    let e = env
        .agent
        .client
        .create_container(ctx(), &bad_id)
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::INVALID_ARGUMENT);
    assert!(message(&e).contains("container_id"), "{}", message(&e));

    let mut no_rootfs = default_spec(&["true"]);
    no_rootfs
        .root_mut()
        .as_mut()
        .unwrap()
        .set_path("/nonexistent/rootfs".into());
    let e = env
        .create(&id, &no_rootfs, stdio(false, false))
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::NOT_FOUND);
    assert!(
        message(&e).contains("/nonexistent/rootfs"),
        "{}",
        message(&e)
    );

    env.create(&id, &default_spec(&["sleep", "1000"]), stdio(false, false))
        .await
        .unwrap();
    let e = env
        .create(&id, &default_spec(&["true"]), stdio(false, false))
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::ALREADY_EXISTS);

    let unknown_exec = ProcessRequest {
        container_id: id.clone(),
        exec_id: "no-such-exec".into(),
        ..Default::default()
    };
    let e = env
        .agent
        .client
        .wait_process(ctx(), &unknown_exec)
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::NOT_FOUND);
    assert!(message(&e).contains("no-such-exec"), "{}", message(&e));
    let e = env
        .agent
        .client
        .start_container(
            ctx(),
            &StartContainerRequest {
                container_id: "nobody".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::NOT_FOUND);
    assert!(env
        .agent
        .attach(&id, "no-such-exec", StreamKind::STDOUT)
        .is_err());

    // Still serving: Ping, and the container created above runs and is removed normally.
    assert!(env.agent.is_running());
    let pong = env
        .agent
        .client
        .ping(
            ctx(),
            &PingRequest {
                protocol_version: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(pong.mode, "local");
    env.start(&id).await;
    env.remove(&id).await;
    let (out, _, exit) = env
        .run(&unique("after-bad"), &default_spec(&["echo", "still fine"]))
        .await;
    assert_eq!((out.as_str(), exit.exit_code), ("still fine\n", 0));
}

#[tokio::test]
async fn seccomp_profile_from_the_spec_is_enforced() {
    let Some(env) = env("seccomp").await else {
        return;
    };
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }))
    .unwrap();
    let spec_with = |seccomp: Option<oci_spec::runtime::LinuxSeccomp>| {
        let mut spec = sh("grep Seccomp: /proc/self/status; mkdir /tmp/made && echo made");
        spec.root_mut().as_mut().unwrap().set_readonly(Some(false));
        spec.linux_mut().as_mut().unwrap().set_seccomp(seccomp);
        spec
    };
    let (out, err, exit) = env.run(&unique("seccomp"), &spec_with(Some(profile))).await;
    assert_ne!(exit.exit_code, 0, "mkdir passed the filter: {out}");
    assert!(out.contains("Seccomp:\t2"), "no filter installed: {out}");
    assert!(err.contains("Operation not permitted"), "{err}");
    // Control: without the profile the same program works.
    let (out, err, exit) = env.run(&unique("noseccomp"), &spec_with(None)).await;
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(out.contains("made"), "{out}");
}

/// A cgroup file of the container, v1 (`/sys/fs/cgroup/<controller>/eci/<id>`) or v2.
fn cgroup_file(controller: &str, id: &str, v1_name: &str, v2_name: &str) -> std::path::PathBuf {
    let v1 = Path::new("/sys/fs/cgroup")
        .join(controller)
        .join("eci")
        .join(id)
        .join(v1_name);
    if v1.exists() {
        return v1;
    }
    Path::new("/sys/fs/cgroup/eci").join(id).join(v2_name)
}

#[tokio::test]
async fn pause_resume_update_and_stats() {
    let Some(env) = env("pause_update_stats").await else {
        return;
    };
    let id = unique("pause");
    env.create(
        &id,
        &sh("while :; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.1; done"),
        stdio(false, false),
    )
    .await
    .unwrap();
    env.start(&id).await;
    let req = ContainerRequest {
        container_id: id.clone(),
        ..Default::default()
    };
    let freezer = cgroup_file("freezer", &id, "freezer.state", "cgroup.freeze");
    env.agent.client.pause_container(ctx(), &req).await.unwrap();
    let frozen = std::fs::read_to_string(&freezer).unwrap();
    assert!(
        frozen.trim() == "FROZEN" || frozen.trim() == "1",
        "{frozen}"
    );
    env.agent
        .client
        .resume_container(ctx(), &req)
        .await
        .unwrap();
    let thawed = std::fs::read_to_string(&freezer).unwrap();
    assert!(
        thawed.trim() == "THAWED" || thawed.trim() == "0",
        "{thawed}"
    );

    let update = UpdateContainerRequest {
        container_id: id.clone(),
        resources_json: br#"{"pids":{"limit":57}}"#.to_vec(),
        ..Default::default()
    };
    env.agent
        .client
        .update_container(ctx(), &update)
        .await
        .unwrap();
    let pids_max =
        std::fs::read_to_string(cgroup_file("pids", &id, "pids.max", "pids.max")).unwrap();
    assert_eq!(pids_max.trim(), "57");
    let bad = UpdateContainerRequest {
        resources_json: b"{\"pids\": 5}".to_vec(),
        ..update.clone()
    };
    let e = env
        .agent
        .client
        .update_container(ctx(), &bad)
        .await
        .unwrap_err();
    assert_code(&e, ttrpc::Code::INVALID_ARGUMENT);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = env.agent.client.stats_container(ctx(), &req).await.unwrap();
    assert!(stats.cgroup_version == 1 || stats.cgroup_version == 2);
    assert!(stats.cpu.usage_ns > 0, "{stats:?}");
    assert!(stats.memory.usage_bytes > 0, "{stats:?}");
    assert_eq!(stats.pids.limit, 57);
    assert!(stats.pids.current >= 1);
    env.remove(&id).await;
}

#[tokio::test]
async fn exec_with_a_tty_and_closed_stdin() {
    let Some(env) = env("exec_tty").await else {
        return;
    };
    let id = unique("exectty");
    env.create(&id, &default_spec(&["sleep", "1000"]), stdio(false, false))
        .await
        .unwrap();
    env.start(&id).await;
    // A tty exec: the process sees a terminal on stdout.
    let req = exec_request(&id, "t1", &["sh", "-c", "tty"], stdio(false, true));
    env.agent.client.exec_process(ctx(), &req).await.unwrap();
    let out = env.agent.attach(&id, "t1", StreamKind::STDOUT).unwrap();
    let text = read_all(out).await.unwrap();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(env.wait(&id, "t1").await.exit_code, 0);
    // CloseStdin before any stream attached: cat sees EOF and exits.
    let req = exec_request(&id, "c1", &["cat"], stdio(true, false));
    env.agent.client.exec_process(ctx(), &req).await.unwrap();
    let close = ProcessRequest {
        container_id: id.clone(),
        exec_id: "c1".into(),
        ..Default::default()
    };
    env.agent.client.close_stdin(ctx(), &close).await.unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), env.wait(&id, "c1"))
        .await
        .expect("cat ends after CloseStdin");
    assert_eq!(exit.exit_code, 0);
    assert!(
        env.agent.attach(&id, "c1", StreamKind::STDIN).is_err(),
        "stdin stream after close"
    );
    env.remove(&id).await;
}

#[tokio::test]
async fn tty_works_with_a_64_character_cri_id() {
    let Some(env) = env("tty_long_id").await else {
        return;
    };
    // CRI ids are 64 hex characters: the console socket path must not grow with them (a unix
    // socket path holds at most 108 bytes).
    let id = format!("{:0>64x}", std::process::id());
    env.create(&id, &default_spec(&["sh", "-c", "tty"]), stdio(false, true))
        .await
        .unwrap();
    let out = env.agent.attach(&id, "", StreamKind::STDOUT).unwrap();
    env.start(&id).await;
    let text = read_all(out).await.unwrap();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert_eq!(env.wait(&id, "").await.exit_code, 0);
    env.remove(&id).await;
}

/// A valid spec without `process.env` runs an absolute args[0], as runc does; a bare name has
/// no PATH to be looked up in and is refused at create (runc refuses it too).
#[tokio::test]
async fn process_without_env_runs_an_absolute_program() {
    let Some(env) = env("no_env").await else {
        return;
    };
    let mut spec = default_spec(&["/bin/echo", "no env needed"]);
    spec.process_mut().as_mut().unwrap().set_env(None);
    let (out, err, exit) = env.run(&unique("noenv"), &spec).await;
    assert_eq!(
        (out.as_str(), exit.exit_code),
        ("no env needed\n", 0),
        "stderr: {err}"
    );
    let mut spec = default_spec(&["echo", "bare"]);
    spec.process_mut().as_mut().unwrap().set_env(None);
    let id = unique("noenv-bare");
    let refused = env.create(&id, &spec, stdio(false, false)).await;
    assert!(refused.is_err(), "a bare args[0] without PATH was accepted");
    assert!(cgroup_dirs_of(&id).is_empty(), "{:?}", cgroup_dirs_of(&id));
}

/// The `NoNewPrivs`, `Seccomp` and capability lines of /proc/self/status, sorted.
const STATUS_LINES: &str =
    "grep -E '^(NoNewPrivs|Seccomp|CapInh|CapPrm|CapEff|CapBnd|CapAmb):' /proc/self/status | sort";

/// With a seccomp profile and without `noNewPrivileges`, a process runs as under runc: the
/// profile is installed, no_new_privs stays off (setuid programs keep working) and the
/// capabilities are the spec's. Init and exec both; runc runs the same spec for comparison.
#[tokio::test]
async fn seccomp_without_no_new_privileges_matches_runc() {
    let Some(env) = env("seccomp_nnp").await else {
        return;
    };
    if eci_tests::prereq::skip_unless_ready(eci_tests::prereq::missing_tool("runc")) {
        return;
    }
    let profile: oci_spec::runtime::LinuxSeccomp = serde_json::from_value(serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    }))
    .unwrap();
    let mut spec = sh(STATUS_LINES);
    spec.linux_mut()
        .as_mut()
        .unwrap()
        .set_seccomp(Some(profile));
    spec.process_mut()
        .as_mut()
        .unwrap()
        .set_no_new_privileges(None);

    let runc_root = tempfile::tempdir().unwrap();
    spec.save(env.bundle.bundle().join("config.json")).unwrap();
    let runc_out = std::process::Command::new("runc")
        .arg("--root")
        .arg(runc_root.path())
        .args(["run", "--bundle"])
        .arg(env.bundle.bundle())
        .arg(unique("runc-seccomp"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let runc_lines = String::from_utf8_lossy(&runc_out.stdout).into_owned();
    assert!(
        runc_out.status.success() && runc_lines.contains("NoNewPrivs:\t0"),
        "runc: {runc_lines} {}",
        String::from_utf8_lossy(&runc_out.stderr)
    );

    let (out, err, exit) = env.run(&unique("seccomp-nnp"), &spec).await;
    assert_eq!(exit.exit_code, 0, "{err}");
    assert!(out.contains("Seccomp:\t2"), "no filter installed: {out}");
    assert_eq!(out, runc_lines, "init differs from runc");

    // An exec in such a container is set up the same way.
    let id = unique("seccomp-nnp-exec");
    let mut long = spec.clone();
    long.process_mut()
        .as_mut()
        .unwrap()
        .set_args(Some(vec!["sleep".into(), "1000".into()]));
    env.create(&id, &long, stdio(false, false)).await.unwrap();
    env.start(&id).await;
    let req = exec_request(&id, "e1", &["sh", "-c", STATUS_LINES], stdio(false, false));
    let mut process: oci_spec::runtime::Process =
        serde_json::from_slice(&req.process_json).unwrap();
    process.set_no_new_privileges(None);
    let req = ExecProcessRequest {
        process_json: serde_json::to_vec(&process).unwrap(),
        ..req
    };
    env.agent.client.exec_process(ctx(), &req).await.unwrap();
    let out = env.agent.attach(&id, "e1", StreamKind::STDOUT).unwrap();
    assert_eq!(
        read_all(out).await.unwrap(),
        runc_lines,
        "exec differs from runc"
    );
    assert_eq!(env.wait(&id, "e1").await.exit_code, 0);
    env.remove(&id).await;
}

/// A CreateContainer whose caller gives up while the agent creates (its deadline passes) leaves
/// no process and no cgroup behind, and the id can be used again.
#[tokio::test]
async fn abandoned_create_leaves_nothing_behind() {
    let Some(env) = env("abandoned_create").await else {
        return;
    };
    let id = unique("abandoned");
    let req = CreateContainerRequest {
        container_id: id.clone(),
        oci_spec_json: serde_json::to_vec(&default_spec(&["sleep", "1000"])).unwrap(),
        bundle: env.bundle.bundle().display().to_string(),
        stdio: Some(stdio(false, false)).into(),
        ..Default::default()
    };
    // Long enough for the request to reach the agent's runtime helper, far too short for the
    // create to finish.
    let short = ttrpc::context::with_timeout(Duration::from_millis(30).as_nanos() as i64);
    let answer = env.agent.client.create_container(short, &req).await;
    assert!(answer.is_err(), "the create finished within 30 ms");
    // The agent finishes the create, then undoes it: the init process (still the runtime
    // helper's clone, whose command line names the container) and the cgroup go, and the id is
    // free again (refused as existing while the create is under way).
    let again = default_spec(&["echo", "again"]);
    let mut left = Vec::new();
    let mut recreated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        left = eci_tests::cni::processes_with(&format!("\"id\":\"{id}\""))
            .into_iter()
            .map(|pid| format!("process {pid}"))
            .chain(cgroup_dirs_of(&id).iter().map(|d| d.display().to_string()))
            .collect();
        if !left.is_empty() {
            continue;
        }
        match env.create(&id, &again, stdio(false, false)).await {
            Ok(_) => {
                recreated = true;
                break;
            }
            Err(e) => assert_code(&e, ttrpc::Code::ALREADY_EXISTS),
        }
    }
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(recreated, "the id stayed taken");
    let out = env.agent.attach(&id, "", StreamKind::STDOUT).unwrap();
    env.start(&id).await;
    assert_eq!(read_all(out).await.unwrap(), "again\n");
    assert_eq!(env.wait(&id, "").await.exit_code, 0);
    env.remove(&id).await;
}
