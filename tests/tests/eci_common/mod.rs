//! Shared set-up of the eci end-to-end tests and benchmark (`mod eci_common;`; a directory
//! module, so that cargo does not build it as a test binary of its own): a private containerd
//! with CRI + CNI in a test network namespace, the real `eci serve` over it, an HTTP client of
//! its REST API, the `eci` CLI, and CRI checks.

#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use eci_tests::{
    bins,
    cni::{CriNetwork, CriNetworkOptions, SUBNET},
    cri::{self, Cri},
    eci_server::{EciServeOptions, EciServer},
    images,
};
use serde_json::{json, Value};

pub const BUSYBOX: &str = images::BUSYBOX_IMAGE;

/// Whether `ip` (dotted quad) lies in [`SUBNET`] (a /16).
pub fn in_subnet(ip: &str) -> bool {
    let prefix: Vec<&str> = SUBNET.split('.').take(2).collect();
    let parts: Vec<&str> = ip.split('.').collect();
    parts.len() == 4 && parts[..2] == prefix[..] && parts.iter().all(|p| p.parse::<u8>().is_ok())
}

/// Why the eci end-to-end tests cannot run here, if they cannot.
pub fn missing() -> Option<String> {
    eci_tests::cni::missing().or_else(images::missing_tools)
}

/// Options of [`Env::start`].
#[derive(Default)]
pub struct EnvOptions {
    /// Arguments appended to `eci serve`.
    pub serve_args: Vec<String>,
    /// Environment of `eci serve`.
    pub serve_env: Vec<(String, String)>,
}

/// One test's world: containerd (CRI, handler `eci` in local mode, CNI) in its own network
/// namespace and `eci serve` over it. Fields drop in order: server, then containerd and the
/// namespace, then the temp dir.
pub struct Env {
    pub server: EciServer,
    pub net: CriNetwork,
    pub tmp: tempfile::TempDir,
    pub http: reqwest::blocking::Client,
    pub eci: PathBuf,
}

/// A JSON answer of the API: status code and body (`Value::Null` when not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Env {
    /// The environment, or None when this machine cannot run it (a failure under CI).
    pub fn start(options: EnvOptions) -> Option<Self> {
        if eci_tests::prereq::skip_unless_ready(missing()) {
            return None;
        }
        let eci = bins::require_workspace_binary("eci");
        let shim = bins::require_workspace_binary("containerd-shim-eci-v2");
        bins::require_workspace_binary("eci-agent");
        let net = CriNetwork::start(CriNetworkOptions {
            eci_shim: Some(shim),
            shim_config: None,
        })
        .expect("start containerd with CNI in a test netns");
        let tmp = tempfile::Builder::new()
            .prefix("eci-e2e-")
            .tempdir()
            .unwrap();
        // The fixture's conf dir already holds eci's conflist: serve finds it and writes none.
        let mut serve_args = vec![
            "--cni-conf-dir".to_owned(),
            net.cni_conf_dir.display().to_string(),
        ];
        serve_args.extend(options.serve_args);
        let server = EciServer::start(EciServeOptions {
            binary: eci.clone(),
            containerd: net.socket().to_path_buf(),
            data_dir: tmp.path().join("data"),
            extra_args: serve_args,
            env: options.serve_env,
        })
        .expect("start eci serve");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Some(Self {
            server,
            net,
            tmp,
            http,
            eci,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url)
    }

    pub fn request(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Answer {
        let mut request = self.http.request(method.clone(), self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.server.log_tail()));
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Answer { status, body, text }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.request(reqwest::Method::GET, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        self.request(reqwest::Method::POST, path, Some(body))
    }

    /// Runs `command` in `container` of group `id` through the exec API.
    pub fn exec(&self, id: &str, container: &str, command: &[&str]) -> Answer {
        self.post(
            &format!("/v1/containerGroups/{id}/containers/{container}/exec"),
            &json!({ "command": command }),
        )
    }

    /// Creates a group and returns its id; panics with the answer unless it succeeded.
    pub fn create(&self, body: &Value) -> String {
        let answer = self.post("/v1/containerGroups", body);
        assert!(
            (200..300).contains(&answer.status),
            "create answered {}: {}",
            answer.status,
            answer.text
        );
        answer.body["id"]
            .as_str()
            .unwrap_or_else(|| panic!("create answer has an id: {}", answer.text))
            .to_owned()
    }

    pub fn group(&self, id: &str) -> Value {
        let answer = self.get(&format!("/v1/containerGroups/{id}"));
        assert_eq!(answer.status, 200, "GET group {id}: {}", answer.text);
        answer.body
    }

    /// The group's events (oldest first).
    pub fn events(&self, id: &str) -> Vec<Value> {
        let answer = self.get(&format!("/v1/containerGroups/{id}/events"));
        assert_eq!(answer.status, 200, "GET events of {id}: {}", answer.text);
        list(&answer.body, "events")
    }

    /// The ids of every group the API lists.
    pub fn group_ids(&self) -> Vec<String> {
        let answer = self.get("/v1/containerGroups");
        assert_eq!(answer.status, 200, "GET groups: {}", answer.text);
        list(&answer.body, "containerGroups")
            .iter()
            .filter_map(|g| g["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Polls the group until `done` holds; panics after `timeout` with its last state, its
    /// events and the server's log.
    pub fn wait_group(
        &self,
        id: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let group = self.group(id);
            if done(&group) {
                return group;
            }
            if Instant::now() > deadline {
                panic!(
                    "group {id} not {what} after {timeout:?}:\n{group:#}\nevents: {:#}\neci serve log:\n{}\ncontainerd log:\n{}\n{}",
                    Value::Array(self.events(id)),
                    self.server.log_tail(),
                    self.net.containerd.log_tail(),
                    self.agent_logs()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The tails of the agent logs of every pod CRI knows (for failure messages).
    pub fn agent_logs(&self) -> String {
        let (sandboxes, _) = self.cri_lists();
        let socket = self.net.socket().display().to_string();
        sandboxes
            .iter()
            .map(|id| {
                let log = eci_shim::paths::PodPaths::new(&socket, "k8s.io", id).agent_log();
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!(
                    "agent log of pod {id}:\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until the group and every container of it run.
    pub fn wait_running(&self, id: &str) -> Value {
        self.wait_group(id, "Running", Duration::from_secs(90), |g| {
            g["status"] == "Running"
                && g["containers"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().all(|c| c["state"] == "Running"))
        })
    }

    /// Deletes the group and waits until the API no longer knows it.
    pub fn delete(&self, id: &str) {
        let answer = self.request(
            reqwest::Method::DELETE,
            &format!("/v1/containerGroups/{id}"),
            None,
        );
        assert!(
            (200..300).contains(&answer.status),
            "DELETE {id}: {} {}",
            answer.status,
            answer.text
        );
        let gone = wait_until(Duration::from_secs(60), || {
            (self.get(&format!("/v1/containerGroups/{id}")).status == 404).then_some(())
        });
        assert!(gone.is_some(), "group {id} still listed after delete");
    }

    /// `eci --endpoint <server> <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(&self.eci)
            .arg("--endpoint")
            .arg(&self.server.url)
            .args(args)
            .output()
            .expect("run eci")
    }

    /// (pod sandboxes, containers) CRI knows.
    pub fn cri_lists(&self) -> (Vec<String>, Vec<String>) {
        let socket = self.net.socket().to_path_buf();
        cri::block_on(async move {
            let mut cri = Cri::connect(socket).await.expect("connect CRI");
            (
                cri.sandbox_ids().await.expect("ListPodSandbox"),
                cri.container_ids().await.expect("ListContainers"),
            )
        })
    }

    /// CRI's start time (ContainerStatus `started_at`) of every container, written as eci
    /// writes times (RFC 3339, UTC, as many fraction digits as needed).
    pub fn cri_start_times(&self) -> Vec<String> {
        let socket = self.net.socket().to_path_buf();
        cri::block_on(async move {
            let mut cri = Cri::connect(socket).await.expect("connect CRI");
            let mut times = Vec::new();
            for id in cri.container_ids().await.expect("ListContainers") {
                let status = cri
                    .runtime
                    .container_status(k8s_cri::v1::ContainerStatusRequest {
                        container_id: id,
                        verbose: false,
                    })
                    .await
                    .expect("ContainerStatus")
                    .into_inner()
                    .status
                    .expect("a status");
                let started = chrono::DateTime::from_timestamp_nanos(status.started_at);
                times.push(started.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
            }
            times
        })
    }

    /// Asserts that containerd holds no pod sandbox, no container and no shim process (giving
    /// an exiting shim a moment).
    pub fn assert_containerd_empty(&self) {
        let mut last = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..100 {
            let (sandboxes, containers) = self.cri_lists();
            let processes = self.runtime_processes();
            if sandboxes.is_empty() && containers.is_empty() && processes.is_empty() {
                return;
            }
            last = (sandboxes, containers, processes);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "left in containerd: sandboxes {:?}, containers {:?}, runtime processes {:?}",
            last.0, last.1, last.2
        );
    }

    /// The shims of this containerd and everything they started (pod inits and agents in local
    /// mode; eci-vmm and virtiofsd in VM mode), as `pid comm`.
    pub fn runtime_processes(&self) -> Vec<String> {
        eci_tests::census::runtime_processes(&self.net.containerd.socket)
            .into_iter()
            .map(|p| format!("{} {}", p.pid, p.comm))
            .collect()
    }

    /// The pids of this containerd's VMs (none in local mode).
    pub fn vm_pids(&self) -> Vec<i32> {
        eci_tests::census::runtime_processes(&self.net.containerd.socket)
            .into_iter()
            .filter(|p| p.comm == "eci-vmm")
            .map(|p| p.pid)
            .collect()
    }
}

/// The array `key` of a list answer (`{"containerGroups": [...]}`, `{"events": [...]}`).
pub fn list(body: &Value, key: &str) -> Vec<Value> {
    body[key]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("not a list answer: {body}"))
}

/// The container status `name` of a group.
pub fn container<'a>(group: &'a Value, name: &str) -> &'a Value {
    group["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no container {name} in {group:#}"))
}

pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Grace period of the tests' groups: their `sleep`s ignore SIGTERM, and stops (update, delete)
/// would wait the default 30 s for each before SIGKILL.
pub const GRACE_SECONDS: u64 = 2;

/// A one-container group of busybox running `script`.
pub fn simple_group(name: &str, restart_policy: &str, script: &str) -> Value {
    json!({
        "name": name,
        "cpu": 1,
        "memory": 2,
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "containers": [{
            "name": "main",
            "image": BUSYBOX,
            "imagePullPolicy": "IfNotPresent",
            "commands": ["sh", "-c", script],
        }],
    })
}

/// Bump when the test images' content changes: cached archives carry it in their name.
const TEST_IMAGE_VERSION: u32 = 1;

/// An OCI archive of busybox whose own command is `sh -c <script>`, built once (cached next to
/// the test executables like [`images`]' archives; built under a unique name, then renamed).
pub fn busybox_image_tar(name: &str, script: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = bins::profile_dir().join("eci-test-images");
    std::fs::create_dir_all(&dir).unwrap();
    let tar = dir.join(format!("{name}-v{TEST_IMAGE_VERSION}.tar"));
    if !tar.is_file() {
        let partial = dir.join(format!(
            "{name}-v{TEST_IMAGE_VERSION}.{}.tar",
            std::process::id()
        ));
        images::build_image_tar(&partial, &["sh", "-c", script])
            .unwrap_or_else(|e| panic!("build image {name}: {e}"));
        std::fs::rename(&partial, &tar).unwrap();
    }
    tar
}

/// Image one of the update test: prints `image-one`, then sleeps.
pub const IMAGE_ONE: &str = "eci.local/busybox-one:latest";
/// Image two: prints `image-two`, then sleeps (also the image cache test's registry image).
pub const IMAGE_TWO: &str = "eci.local/busybox-two:latest";

pub fn image_one_tar() -> PathBuf {
    busybox_image_tar("busybox-one", "echo image-one; exec sleep 3600")
}

pub fn image_two_tar() -> PathBuf {
    busybox_image_tar("busybox-two", "echo image-two; exec sleep 3600")
}

/// Imports [`IMAGE_ONE`] and [`IMAGE_TWO`] into the environment's containerd.
pub fn import_test_images(env: &Env) {
    env.net
        .containerd
        .import(&image_one_tar(), IMAGE_ONE.trim_end_matches(":latest"));
    env.net
        .containerd
        .import(&image_two_tar(), IMAGE_TWO.trim_end_matches(":latest"));
}
