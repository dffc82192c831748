//! Shared set-up of the shim end-to-end tests (`mod shim_common;`; a directory module, so that
//! cargo does not build it as a test binary of its own).

#![allow(dead_code)]

pub mod direct;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use eci_tests::{bins, containerd, images};

pub const ECI: &str = "io.containerd.eci.v2";
pub const RUNC: &str = "io.containerd.runc.v2";

/// A private containerd with the shim on its PATH and busybox imported, or None when this machine
/// cannot run one (a failure under CI, see [`eci_tests::prereq`]). Its pods are VMs when
/// `ECI_TEST_HYPERVISOR=eci-vmm` (scripts/vm-tier), else local mode.
pub fn containerd_with_busybox() -> Option<containerd::Containerd> {
    containerd_with(containerd::ContainerdOptions::default())
}

/// Whether this run's pods are VMs.
pub fn vm_mode() -> bool {
    eci_tests::vm::vm_mode()
}

pub fn containerd_with(
    mut options: containerd::ContainerdOptions,
) -> Option<containerd::Containerd> {
    if eci_tests::prereq::skip_unless_ready(containerd::missing().or_else(images::missing_tools)) {
        return None;
    }
    if vm_mode() {
        eci_tests::vm::require_vm_kvm("shim tier in VM mode");
    }
    let shim = bins::require_workspace_binary("containerd-shim-eci-v2");
    bins::require_workspace_binary("eci-agent");
    options.path_dirs.push(shim.parent().unwrap().to_path_buf());
    let ctd = containerd::Containerd::start(options).expect("start containerd");
    ctd.import_busybox().expect("import busybox");
    Some(ctd)
}

/// The shim config of the test run (VM mode with `ECI_TEST_HYPERVISOR=eci-vmm`, else local
/// mode), as text that tests extend with their own fields.
pub fn shim_config_base() -> String {
    if vm_mode() {
        eci_tests::vm::vm_shim_config("")
    } else {
        containerd::LOCAL_MODE_SHIM_CONFIG.to_owned()
    }
}

pub fn shim_binary() -> PathBuf {
    bins::require_workspace_binary("containerd-shim-eci-v2")
}

/// `ctr run -d` of busybox `command` as container `id` with the eci runtime.
pub fn run_detached(ctd: &containerd::Containerd, id: &str, command: &[&str]) {
    let mut args = vec!["run", "-d", "--runtime", ECI, images::BUSYBOX_IMAGE, id];
    args.extend_from_slice(command);
    ctd.ctr_ok(&args);
}

/// The status column of `ctr task ls` for task `id` ("" when it is not listed).
pub fn task_status(ctd: &containerd::Containerd, id: &str) -> String {
    let list = ctd.ctr_ok(&["task", "ls"]);
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("")
        .to_owned()
}

/// Waits (generously: a VM boots first, possibly on an emulated host) until task `id` runs.
pub fn wait_running(ctd: &containerd::Containerd, id: &str) {
    for _ in 0..6000 {
        if task_status(ctd, id) == "RUNNING" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("task {id} did not start: {}", ctd.ctr_ok(&["task", "ls"]));
}

/// Waits (60 s at most: a VM pod's exit crosses the guest and the hybrid vsock) until task `id`
/// is STOPPED.
pub fn wait_stopped(ctd: &containerd::Containerd, id: &str) {
    for _ in 0..1200 {
        if task_status(ctd, id) == "STOPPED" {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("task {id} did not stop: {}", ctd.ctr_ok(&["task", "ls"]));
}

/// A shim config in `ctd`'s directory that asks for local mode (`hypervisor = "none"`), for
/// `ctr run --runtime-config-path`: local-mode tests must not depend on the default.
pub fn local_mode_config(ctd: &containerd::Containerd) -> String {
    let path = ctd.dir().join("shim-local.toml");
    if !path.exists() {
        std::fs::write(&path, "hypervisor = \"none\"\n").unwrap();
    }
    path.display().to_string()
}

/// `ctr run <flags>` of busybox `command` as container `id` with the eci runtime, local mode
/// set explicitly.
pub fn ctr_run_local(
    ctd: &containerd::Containerd,
    flags: &[&str],
    id: &str,
    command: &[&str],
) -> std::process::Output {
    let config = local_mode_config(ctd);
    let mut args = vec!["run"];
    args.extend_from_slice(flags);
    args.extend_from_slice(&["--runtime", ECI, "--runtime-config-path", &config]);
    args.extend_from_slice(&[images::BUSYBOX_IMAGE, id]);
    args.extend_from_slice(command);
    ctd.ctr(&args)
}

/// `ctr run -d` of busybox `command` as container `id`, local mode set explicitly.
pub fn run_detached_local(ctd: &containerd::Containerd, id: &str, command: &[&str]) {
    let out = ctr_run_local(ctd, &["-d"], id, command);
    assert!(
        out.status.success(),
        "ctr run {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The container's cgroup directory in one hierarchy of this host (v1 pids, or v2), for the
/// default `cgroupsPath` `/<namespace>/<id>`.
pub fn container_cgroup(ctd: &containerd::Containerd, id: &str) -> PathBuf {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let hierarchy = if root.join("cgroup.controllers").exists() {
        root.to_path_buf()
    } else {
        root.join("pids")
    };
    hierarchy.join(&ctd.namespace).join(id)
}

/// A container id unique in this test process.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub use eci_tests::census::processes_with;

/// The eci shim processes serving `ctd` (their command line names its socket).
pub fn shim_processes(ctd: &containerd::Containerd) -> Vec<u32> {
    processes_with(&ctd.socket.display().to_string())
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("containerd-shim-eci-v2")
        })
        .collect()
}

/// The host directory of pod `pod_id` of `ctd`.
pub fn pod_dir(ctd: &containerd::Containerd, pod_id: &str) -> PathBuf {
    eci_shim::paths::PodPaths::new(ctd.socket.to_str().unwrap(), &ctd.namespace, pod_id).dir
}

/// Everything of ours the pods `pod_ids` of `ctd` may leave on the host: shim processes of this
/// containerd, their agents, pod directories, mounts under containerd's directory or the pod
/// directories, cgroups named after the pods' containers (`/<namespace>/<id>`).
pub fn leftovers(ctd: &containerd::Containerd, pod_ids: &[String]) -> Vec<String> {
    let mut left = Vec::new();
    for pid in shim_processes(ctd) {
        left.push(format!("shim process {pid}"));
    }
    for id in pod_ids {
        let dir = pod_dir(ctd, id);
        // The agent (local mode), or eci-vmm and virtiofsd (VM mode).
        for pid in processes_with(dir.to_str().unwrap()) {
            left.push(format!("sandbox process {pid} of pod {id}"));
        }
        if dir.exists() {
            left.push(format!("pod directory {}", dir.display()));
        }
        for m in containerd::mounts_under(&dir) {
            left.push(format!("mount {}", m.display()));
        }
        let cgroups_path = format!("/{}/{id}", ctd.namespace);
        for cgroup in eci_shim::cgroups::cgroup_dirs(&cgroups_path) {
            if cgroup.exists() {
                left.push(format!("cgroup {}", cgroup.display()));
            }
        }
    }
    for m in containerd::mounts_under(ctd.dir()) {
        left.push(format!("mount {}", m.display()));
    }
    left
}

/// Asserts that nothing of the pods `pod_ids` is left, giving exiting shims a moment: containerd
/// returns from the last delete before the shim process has exited.
pub fn assert_nothing_left(ctd: &containerd::Containerd, pod_ids: &[String]) {
    let mut left = Vec::new();
    // A VM's end (VMM and virtiofsd exit, cgroup removal) takes longer than local mode's.
    for _ in 0..600 {
        left = leftovers(ctd, pod_ids);
        if left.is_empty() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("left behind: {left:?}");
}

/// A private containerd whose CRI has the runtime handler `eci` (this shim in local mode, with
/// the `io.eci.*` annotations passed on, as the README's config), the pause image imported, and
/// a CRI runtime client; state under `tmp`. None when this machine cannot run it.
pub async fn cri_containerd(
    tmp: &std::path::Path,
) -> Option<(
    containerd::Containerd,
    k8s_cri::v1::runtime_service_client::RuntimeServiceClient<tonic::transport::Channel>,
)> {
    let shim_config = tmp.join("shim.toml");
    std::fs::write(
        &shim_config,
        format!("{}log_level = \"debug\"\n", shim_config_base()),
    )
    .unwrap();
    let cni_dir = tmp.join("cni");
    std::fs::create_dir_all(&cni_dir).unwrap();
    let mut cri = containerd::CriConfig::new(&cni_dir);
    cri.runtimes.push(containerd::CriRuntime::eci(
        "eci",
        &shim_binary(),
        Some(shim_config),
    ));
    let options = containerd::ContainerdOptions {
        cri: Some(cri),
        namespace: Some("k8s.io".into()),
        ..Default::default()
    };
    let ctd = containerd_with(options)?;
    ctd.import_pause().expect("import pause");
    let channel = eci_tests::cri::channel(ctd.socket.clone())
        .await
        .expect("connect to CRI");
    let cri = k8s_cri::v1::runtime_service_client::RuntimeServiceClient::new(channel);
    Some((ctd, cri))
}

/// A host-network pod (CRI NamespaceMode NODE: no CNI needed) named `name` logging to
/// `log_dir`. Host-network pods have no UTS namespace of their own, hence no hostname (as
/// kubelet).
pub fn host_network_pod(
    name: &str,
    uid: String,
    log_dir: &std::path::Path,
) -> k8s_cri::v1::PodSandboxConfig {
    use k8s_cri::v1::*;
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid,
            namespace: "default".into(),
            attempt: 0,
        }),
        log_directory: log_dir.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Node as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running `ctr events` whose lines are collected as they arrive.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Events {
    pub fn subscribe(ctd: &containerd::Containerd) -> Self {
        let mut child = ctd
            .events_command()
            .stdout(Stdio::piped())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let events = Self {
            child,
            lines,
            reader: Some(reader),
        };
        events.wait_until_subscribed(ctd);
        events
    }

    /// Returns once the subscription is live: it has seen an event made after it started (a
    /// label on the test's namespace). `ctr events` starting in an emulated host may take
    /// seconds, and an event published before it subscribed never reaches it.
    fn wait_until_subscribed(&self, ctd: &containerd::Containerd) {
        const KEY: &str = "eci-test-subscribed";
        let ns = ctd.namespace().to_owned();
        // The namespace exists once anything ran in it; "already exists" is fine.
        let _ = ctd.ctr(&["namespaces", "create", &ns]);
        let deadline = Instant::now() + Duration::from_secs(120);
        for attempt in 0u32.. {
            ctd.ctr_ok(&["namespaces", "label", &ns, &format!("{KEY}={attempt}")]);
            if self
                .find(Duration::from_secs(2), |l| l.contains(KEY))
                .is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ctr events saw none of its own markers within 120 s: {:?}",
                self.all()
            );
        }
    }

    pub fn all(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Index (in arrival order) of the first line satisfying `pred`, waiting up to `timeout`.
    pub fn find(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.all().iter().position(|l| pred(l)) {
                return Some(i);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Like [`Events::find`], panicking with every event seen when none came.
    pub fn wait_for(&self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> usize {
        self.find(timeout, pred).unwrap_or_else(|| {
            panic!(
                "no event {what} within {timeout:?}; events:\n{}",
                self.all().join("\n")
            )
        })
    }

    /// The exit status of the first /tasks/exit of container `id`'s process `exec_id` (""
    /// for its init process) within `timeout`.
    pub fn exit_status(&self, id: &str, exec_id: &str, timeout: Duration) -> Option<u32> {
        let process = if exec_id.is_empty() { id } else { exec_id };
        let is_exit = |l: &str| {
            l.contains("/tasks/exit")
                && l.contains(&format!("\"container_id\":\"{id}\""))
                && l.contains(&format!("\"id\":\"{process}\""))
        };
        let i = self.find(timeout, is_exit)?;
        let line = self.all().swap_remove(i);
        let rest = line.split("\"exit_status\":").nth(1)?;
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}
