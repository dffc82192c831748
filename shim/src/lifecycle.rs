//! The shim binary's actions: `start` (find or spawn the pod's shim server), `delete` (clean up
//! after a shim that is gone), and the server itself ([`serve`]).
//!
//! `start` is answered here rather than by the shim library because containerd 1.6 reads a
//! plain address from stdout (and stderr: it uses the combined output), while the library
//! answers it in JSON; [`bootstrap`] answers each containerd in its own form.

use std::{
    io::Read,
    os::unix::{net::UnixStream, process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use containerd_shim::{
    asynchronous::{monitor::monitor_notify_by_pid, ExitSignal},
    protos::{shim::shim::DeleteResponse, shim_async::create_task},
    Flags, StartOpts, Task,
};

use crate::{
    agent, bootstrap, cgroups,
    paths::{self, PodPaths},
    task::{pod_id_of, Pod, TaskService},
};

pub const RUNTIME_ID: &str = "io.containerd.eci.v2";

/// containerd's TTRPC address (events), which `start` passes on to the server.
const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

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

/// `start`: finds or spawns the pod's shim server and returns the reply containerd expects
/// (see [`bootstrap`]), given what containerd wrote to stdin.
pub fn start(flags: &Flags, stdin: &[u8]) -> anyhow::Result<Vec<u8>> {
    let request = bootstrap::read_start(
        flags,
        stdin,
        std::env::var(TTRPC_ADDRESS).ok(),
        std::env::var("MAX_SHIM_VERSION").ok().as_deref(),
    )?;
    let bundle = std::env::current_dir().context("current directory (the bundle)")?;
    let (pod_id, _) = pod_of_bundle(&flags.id, &bundle);
    let address = request.opts.socket_address(&pod_id);
    if !is_serving(&address) {
        let _ = std::fs::remove_file(socket_path(&address));
        spawn_server(&request.opts, &pod_id, &address)?;
        if !is_serving(&address) {
            anyhow::bail!("shim server for pod {pod_id} did not come up at {address}");
        }
    }
    std::fs::write(bundle.join(ADDRESS_FILE), &address).context("write address file")?;
    Ok(bootstrap::encode_reply(request.reply, &address)?)
}

/// The bundle file naming the shim server's address (containerd 1.6 reads it; `delete` too).
const ADDRESS_FILE: &str = "address";

fn spawn_server(opts: &StartOpts, pod_id: &str, address: &str) -> anyhow::Result<()> {
    if opts.ttrpc_address.is_empty() {
        anyhow::bail!("containerd passed no TTRPC address (needed to publish events)");
    }
    let exe = std::env::current_exe().context("locate the shim binary")?;
    let mut command = Command::new(exe);
    command
        .args([
            "-namespace",
            &opts.namespace,
            "-id",
            pod_id,
            "-address",
            &opts.address,
        ])
        .args(["-publish-binary", &opts.publish_binary, "-socket", address])
        .env(TTRPC_ADDRESS, &opts.ttrpc_address)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if opts.debug {
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
    // The server is detached; its status is collected here only when it already failed.
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
    let endpoint = pod.agent_endpoint();
    let reachable = match &endpoint {
        agent::Endpoint::Unix { api, .. } => api.exists(),
        agent::Endpoint::HybridVsock { uds } => uds.exists(),
    };
    if reachable {
        if let Ok((client, _)) =
            agent::connect(&endpoint, Duration::from_millis(500), || None).await
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
        // The address `start` recorded (it may be in a socket directory containerd chose).
        let shim_address = std::fs::read_to_string(bundle.join(ADDRESS_FILE))
            .ok()
            .filter(|a| !a.trim().is_empty())
            .unwrap_or_else(|| {
                containerd_shim::socket_address(&flags.address, &flags.namespace, &pod_id)
            });
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

/// Kills the pod's sandbox processes recorded in the pod directory, if they are still ours:
/// local mode's namespace init, or VM mode's eci-vmm and virtiofsd.
async fn kill_sandbox(pod: &PodPaths) {
    let config = pod.vmm_config().display().to_string();
    let shared = pod.shared_dir().display().to_string();
    let candidates = [
        (
            crate::paths::read_pid(&pod.pid_file()),
            "eci-vmm",
            config.as_str(),
        ),
        (
            crate::paths::read_pid(&pod.virtiofsd_pid_file()),
            "virtiofsd",
            shared.as_str(),
        ),
    ];
    // Both are killed before either is waited for: a VMM with a passed-through device takes
    // seconds to end (its pinned memory is unmapped and the device reset), and containerd gives
    // this action only `io.containerd.timeout.shim.cleanup` (5 s by default).
    let ours: Vec<i32> = candidates
        .into_iter()
        .filter_map(|(pid, program, needle)| {
            pid.filter(|&p| crate::vm::process_is_ours(p, program, needle))
        })
        .collect();
    for pid in &ours {
        kill(*pid);
    }
    for pid in ours {
        wait_gone(pid).await;
    }
    crate::vm::teardown(pod);
    let Some(pid) = crate::paths::read_pid(&pod.pid_file()) else {
        return;
    };
    // The pid may have been reused: only kill the namespace init whose child is this pod's agent.
    let children = procfs::process::Process::new(pid)
        .and_then(|p| p.task_main_thread())
        .and_then(|t| t.children())
        .unwrap_or_default();
    let socket = pod.api_socket().display().to_string();
    let ours = children.into_iter().any(|child| {
        i32::try_from(child)
            .ok()
            .and_then(|child| procfs::process::Process::new(child).ok())
            .and_then(|p| p.cmdline().ok())
            .is_some_and(|args| args.iter().any(|a| a.contains(&socket)))
    });
    if ours {
        kill_and_wait(pid).await;
    }
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

async fn kill_and_wait(pid: i32) {
    kill(pid);
    wait_gone(pid).await;
}

/// Waits (up to 60 s) until every thread of `pid` has ended.
async fn wait_gone(pid: i32) {
    for _ in 0..6000 {
        if has_ended(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log::error!("sandbox process {pid} survived SIGKILL");
}

/// Whether every thread of `pid` has ended: the process is gone or a zombie whose threads are all
/// zombies. A thread-group leader turns zombie while its other threads still exit, and those are
/// still in the pod's cgroup (an eci-vmm thread closing a VFIO device resets it, for seconds).
fn has_ended(pid: i32) -> bool {
    let Ok(tasks) = procfs::process::Process::new(pid).and_then(|p| p.tasks()) else {
        return true;
    };
    tasks
        .flatten()
        .all(|t| t.stat().map_or(true, |s| matches!(s.state, 'Z' | 'X')))
}

/// Task service names: containerd 1.x calls the Task API `containerd.task.v2.Task`, 2.x
/// `containerd.task.v3.Task` (same messages); the shim answers under both.
const TASK_SERVICE_V3: &str = "containerd.task.v3.Task";
const TASK_SERVICE_V2: &str = "containerd.task.v2.Task";

/// The shim server of one pod: serves the Task API on `flags.socket` until the pod's last
/// container is deleted and containerd asks it to shut down.
///
/// This is the server half of `containerd_shim::asynchronous::run`, done here because the
/// library registers the Task service only under its v3 name, which containerd 1.6 does not
/// call. Logging, event publishing and the exit monitor are the library's.
pub async fn serve(flags: &Flags) -> anyhow::Result<()> {
    // SAFETY: prctl with an integer argument has no memory effects.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("become a subreaper");
    }
    tokio::spawn(reap_children());
    tokio::spawn(ignore_termination_signals());
    containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("open the shim log")?;
    let ttrpc_address = std::env::var(TTRPC_ADDRESS).context("TTRPC_ADDRESS is not set")?;
    let publisher = crate::publisher::EventPublisher::start(&ttrpc_address);
    let exit = Arc::new(ExitSignal::default());
    let pod = Pod::new(
        &flags.id,
        &flags.namespace,
        &flags.address,
        publisher,
        exit.clone(),
    );
    let service: Arc<dyn Task + Send + Sync> = Arc::new(TaskService { pod: Arc::new(pod) });
    let mut services = create_task(service.clone());
    if let Some(v3) = create_task(service).remove(TASK_SERVICE_V3) {
        services.insert(TASK_SERVICE_V2.to_owned(), v3);
    }
    let path = socket_path(&flags.socket).to_owned();
    if let Some(dir) = Path::new(&path).parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let listener = match std::os::unix::net::UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            if is_serving(&path) {
                // Another server of this pod is up: containerd will use it.
                signal_started();
                return Ok(());
            }
            std::fs::remove_file(&path).with_context(|| format!("remove stale socket {path}"))?;
            std::os::unix::net::UnixListener::bind(&path)
                .with_context(|| format!("listen on {path}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("listen on {path}")),
    };
    let listener =
        ttrpc::asynchronous::transport::Listener::try_from(listener).context("ttrpc listener")?;
    let mut server = ttrpc::asynchronous::Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.context("start the ttrpc server")?;
    signal_started();
    log::info!("shim serving pod {} on {path}", flags.id);
    exit.wait().await;
    let _ = server.shutdown().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Tells `start` that the server serves: stdout (its pipe) becomes stderr.
fn signal_started() {
    // SAFETY: dup2 on the standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}

/// Reaps every child (the shim is a subreaper) and reports exits through the library's monitor.
async fn reap_children() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())
    else {
        log::error!("cannot watch SIGCHLD");
        return;
    };
    loop {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    let _ = monitor_notify_by_pid(pid.as_raw(), code).await;
                }
                Ok(WaitStatus::Signaled(pid, signal, _)) => {
                    let _ = monitor_notify_by_pid(pid.as_raw(), 128 + signal as i32).await;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

/// containerd stops shims through the Task API; a stray SIGTERM/SIGINT must not kill a pod.
async fn ignore_termination_signals() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut pipe)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::pipe()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => log::info!("SIGTERM ignored: containerd shuts the shim down"),
            _ = int.recv() => log::info!("SIGINT ignored"),
            _ = pipe.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::has_ended;

    #[test]
    fn a_process_has_ended_only_when_all_its_threads_have() {
        // This test process: its leader runs, and so do the test harness's threads.
        assert!(!has_ended(std::process::id() as i32));
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        assert!(!has_ended(pid));
        child.kill().unwrap();
        // Unreaped it is a zombie, then gone: ended either way.
        for _ in 0..500 {
            if has_ended(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(has_ended(pid));
        child.wait().unwrap();
        assert!(has_ended(pid));
    }
}
