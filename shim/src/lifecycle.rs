//! The shim binary's actions: `start` (find or spawn the pod's shim server), `delete` (clean up
//! after a shim that is gone), and the server itself ([`EciShim`]).
//!
//! `start` is answered here rather than by the shim library because containerd 1.6 reads the
//! plain address from stdout (and stderr: it uses the combined output), while the library answers
//! in the JSON of containerd 2.x; containerd 2.x accepts the plain address as well.

use std::{
    io::Read,
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use async_trait::async_trait;
use containerd_shim::{
    asynchronous::{publisher::RemotePublisher, ExitSignal, Shim},
    protos::shim::shim::DeleteResponse,
    Config, Flags, StartOpts,
};

use crate::{
    agent, cgroups,
    paths::{self, PodPaths},
    task::{pod_id_of, Pod, TaskService},
};

pub const RUNTIME_ID: &str = "io.containerd.eci.v2";

/// The pod of the container in `bundle` (CRI annotations), or the container itself.
fn pod_of_bundle(id: &str, bundle: &Path) -> (String, Option<oci_spec::runtime::Spec>) {
    let spec = oci_spec::runtime::Spec::load(bundle.join("config.json")).ok();
    let annotations = spec.as_ref().and_then(|s| s.annotations().clone());
    (pod_id_of(id, annotations.as_ref()), spec)
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

fn is_serving(address: &str) -> bool {
    UnixStream::connect(socket_path(address)).is_ok()
}

/// `start`: returns the ttrpc address of the pod's shim server, starting the server when the
/// pod has none yet.
pub fn start(flags: &Flags) -> anyhow::Result<String> {
    let bundle = std::env::current_dir().context("current directory (the bundle)")?;
    let (pod_id, _) = pod_of_bundle(&flags.id, &bundle);
    let address = containerd_shim::socket_address(&flags.address, &flags.namespace, &pod_id);
    if !is_serving(&address) {
        let _ = std::fs::remove_file(socket_path(&address));
        spawn_server(flags, &pod_id, &address)?;
        if !is_serving(&address) {
            anyhow::bail!("shim server for pod {pod_id} did not come up at {address}");
        }
    }
    std::fs::write(bundle.join("address"), &address).context("write address file")?;
    Ok(address)
}

fn spawn_server(flags: &Flags, pod_id: &str, address: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("locate the shim binary")?;
    let mut command = Command::new(exe);
    command
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            pod_id,
            "-address",
            &flags.address,
        ])
        .args(["-publish-binary", &flags.publish_binary, "-socket", address])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if flags.debug {
        command.arg("-debug");
    }
    // SAFETY: setsid is async-signal-safe; the server must outlive containerd's process group.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    let mut child = command.spawn().context("spawn the shim server")?;
    // The server closes its stdout once it serves (or when it dies).
    let mut sink = Vec::new();
    let _ = child
        .stdout
        .take()
        .map(|mut out| out.read_to_end(&mut sink));
    // The server is detached; its exit is collected here only if it failed early.
    std::thread::sleep(Duration::from_millis(0));
    if let Ok(Some(status)) = child.try_wait() {
        anyhow::bail!("shim server exited at start: {status}");
    }
    Ok(())
}

/// `delete`: releases what a container (and, for a pod's last container, its pod) holds on the
/// host after its shim server is gone.
pub async fn cleanup(flags: &Flags) -> anyhow::Result<DeleteResponse> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().context("current directory (the bundle)")?
    } else {
        PathBuf::from(&flags.bundle)
    };
    let (pod_id, spec) = pod_of_bundle(&flags.id, &bundle);
    let pod = PodPaths::new(&flags.address, &flags.namespace, &pod_id);
    // Ask a live agent to drop the container first.
    if pod.api_socket().exists() {
        let address = format!("unix://{}", pod.api_socket().display());
        if let Ok((client, _)) =
            agent::connect(&address, Duration::from_millis(500), || false).await
        {
            let req = eci_protocol::agent::RemoveContainerRequest {
                container_id: flags.id.clone(),
                force: true,
                ..Default::default()
            };
            let _ = client
                .remove_container(agent::ctx(Duration::from_secs(5)), &req)
                .await;
        }
    }
    paths::unmount_under(&pod.container_dir(&flags.id)).context("unmount container rootfs")?;
    let _ = std::fs::remove_dir_all(pod.container_dir(&flags.id));
    let _ = paths::unmount_under(&bundle.join("rootfs"));
    if pod_id == flags.id {
        kill_sandbox(&pod).await;
        let shim_address =
            containerd_shim::socket_address(&flags.address, &flags.namespace, &pod_id);
        if !is_serving(&shim_address) {
            let _ = std::fs::remove_file(socket_path(&shim_address));
        }
    }
    if let Some(path) = spec
        .as_ref()
        .and_then(|s| s.linux().as_ref())
        .and_then(|l| l.cgroups_path().clone())
    {
        let path = path.display().to_string();
        for left in cgroups::remove(&path) {
            log::warn!("cgroup {} stays: not empty", left.display());
        }
    }
    if pod_id == flags.id {
        pod.remove().context("remove pod directory")?;
    }
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(DeleteResponse {
        pid: 0,
        exit_status: 137,
        exited_at: Some(
            containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp {
                seconds: since.as_secs() as i64,
                nanos: since.subsec_nanos() as i32,
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    })
}

/// Kills the pod's sandbox process recorded in the pod directory, if it is still ours.
async fn kill_sandbox(pod: &PodPaths) {
    let Some(pid) = std::fs::read_to_string(pod.pid_file())
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    else {
        return;
    };
    // The pid may have been reused: only kill a process started for this pod's socket.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = String::from_utf8_lossy(&cmdline).contains(&pod.api_socket().display().to_string());
    if !ours {
        return;
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for _ in 0..500 {
        if !Path::new(&format!("/proc/{pid}")).exists() || is_zombie(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log::error!("sandbox process {pid} survived SIGKILL");
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// The shim server of one pod.
pub struct EciShim {
    flags: Flags,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for EciShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let flags = Flags {
            debug: args.debug,
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            bundle: args.bundle.clone(),
            address: args.address.clone(),
            publish_binary: args.publish_binary.clone(),
            action: args.action.clone(),
            version: args.version,
            info: args.info,
        };
        Self {
            flags,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, _opts: StartOpts) -> containerd_shim::Result<String> {
        // main() answers `start` itself; this path only runs under containerd 2.3's bootstrap.
        start(&self.flags).map_err(|e| containerd_shim::Error::Other(format!("{e:#}")))
    }

    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        cleanup(&self.flags)
            .await
            .map_err(|e| containerd_shim::Error::Other(format!("{e:#}")))
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let pod = Pod::new(
            &self.flags.id,
            &self.flags.namespace,
            &self.flags.address,
            publisher,
            self.exit.clone(),
        );
        TaskService { pod: Arc::new(pod) }
    }
}

/// Library defaults: the library reaps every child (the shim is a subreaper) and reports exits
/// through its monitor, which is how the shim waits for its own children.
pub fn library_config() -> Config {
    Config {
        no_setup_logger: false,
        default_log_level: "info".into(),
        no_reaper: false,
        no_sub_reaper: false,
    }
}
