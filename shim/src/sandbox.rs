//! One pod's sandbox: started on the pod's first create, stopped after its last delete.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use eci_protocol::{
    agent::{DestroySandboxRequest, DnsConfig, SetupSandboxRequest},
    agent_ttrpc::AgentClient,
};
use oci_spec::runtime::Spec;
use tokio::sync::watch;

use crate::{
    agent::{self, ctx, Endpoint},
    config::ShimConfig,
    error::{rpc, ShimError},
    hypervisor::{self, Hypervisor, LaunchRequest},
    paths::PodPaths,
};

pub struct Sandbox {
    pub id: String,
    pub paths: PodPaths,
    pub agent: AgentClient,
    pub endpoint: Endpoint,
    /// Host pid of the process whose exit ends the sandbox (the VMM, or local mode's init).
    pub pid: i32,
    /// The pod's shared directory as the agent sees it.
    pub guest_share: PathBuf,
    /// Whether agent pids map to host pids (local mode); in a VM every process is the VMM.
    pub host_pids: bool,
    /// PCI devices passed through to the VM.
    pub vfio: crate::vfio::PodVfio,
    hypervisor: Box<dyn Hypervisor>,
    /// The sandbox process's exit status once it exited.
    dead: watch::Receiver<Option<i32>>,
}

impl Sandbox {
    /// Starts the sandbox of pod `id` with `config` for its first container `spec`, ready for
    /// containers.
    pub async fn start(
        id: &str,
        paths: PodPaths,
        config: &ShimConfig,
        hostname: &str,
        spec: &Spec,
        netns: Option<&Path>,
    ) -> Result<Arc<Self>, ShimError> {
        let hypervisor = hypervisor::from_config(config)?;
        log::warn!("pod {id}: {}", hypervisor.isolation_note());
        paths
            .prepare()
            .map_err(|source| hypervisor::SandboxError::PodDir {
                path: paths.dir.clone(),
                source,
            })?;
        let request = LaunchRequest {
            pod_id: id,
            spec,
            netns,
        };
        let launched = match hypervisor.launch(&paths, &request).await {
            Ok(l) => l,
            Err(e) => {
                let _ = paths.remove();
                return Err(e.into());
            }
        };
        let (dead_tx, dead) = watch::channel(None);
        let exited = launched.exited;
        let network = launched.network;
        let vfio = launched.vfio;
        tokio::spawn(async move {
            let code = exited.await.unwrap_or(255);
            let _ = dead_tx.send(Some(code));
        });
        let pid = launched.pid;
        let watch_dead = dead.clone();
        let started = std::time::Instant::now();
        let connected = agent::connect(&launched.endpoint, hypervisor.agent_timeout(), || {
            let code = (*watch_dead.borrow())?;
            Some(format!("the VMM (pid {pid}) exited with status {code}"))
        })
        .await;
        let share = hypervisor.guest_share(&paths);
        let sandbox = match connected {
            Ok((client, pong)) => {
                log::info!(
                    "pod {id}: agent {} up in {} mode after {:?} (pid {pid})",
                    pong.agent_version,
                    pong.mode,
                    started.elapsed()
                );
                Arc::new(Self {
                    id: id.to_owned(),
                    paths,
                    agent: client,
                    endpoint: launched.endpoint,
                    pid,
                    guest_share: share.dir.clone(),
                    host_pids: share.host_pids,
                    vfio,
                    hypervisor,
                    dead,
                })
            }
            Err(e) => {
                // Before the kill: where a sandbox whose agent never answered stands.
                let state = hypervisor.running_state(&paths);
                kill_and_reap(pid, dead).await;
                // The logs after it, with what the shim noted about the exits.
                let diagnostics = hypervisor.diagnostics_with(&paths, state);
                let _ = paths.remove();
                return Err(ShimError::Internal(format!(
                    "{}; {diagnostics}",
                    crate::error::chain(&e)
                )));
            }
        };
        let setup = SetupSandboxRequest {
            sandbox_id: id.to_owned(),
            hostname: hostname.to_owned(),
            shared_dir: share.dir.display().to_string(),
            storages: share.storages,
            dns: dns_of(spec).into(),
            interfaces: network.interfaces,
            routes: network.routes,
            neighbours: network.neighbours,
            pci_devices: sandbox.vfio.pci_devices(),
            ..Default::default()
        };
        if let Err(e) = sandbox
            .agent
            .setup_sandbox(ctx(Duration::from_secs(30)), &setup)
            .await
        {
            sandbox.stop().await;
            return Err(rpc("SetupSandbox")(e));
        }
        Ok(sandbox)
    }

    pub fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    /// The agent's view of a host path in the pod's shared directory.
    pub fn guest_path(&self, host: &Path) -> PathBuf {
        match host.strip_prefix(self.paths.shared_dir()) {
            Ok(rel) => self.guest_share.join(rel),
            Err(_) => host.to_owned(),
        }
    }

    /// Whether the agent sees the host's files only through the pod's share (VM mode).
    pub fn is_vm(&self) -> bool {
        !self.host_pids
    }

    /// What went on in the sandbox (log tails), for errors and the log.
    pub fn diagnostics(&self) -> String {
        self.hypervisor.diagnostics(&self.paths)
    }

    /// [`Self::diagnostics`] for an agent call the sandbox left unanswered.
    pub fn stall_diagnostics(&self) -> String {
        self.hypervisor.stall_diagnostics(&self.paths)
    }

    /// Resolves when the sandbox process exited.
    pub async fn wait_dead(&self) {
        let mut dead = self.dead.clone();
        let _ = dead.wait_for(|d| d.is_some()).await;
    }

    /// Tears the sandbox down and releases every host resource of the pod.
    pub async fn stop(&self) {
        if !self.is_dead() {
            let req = DestroySandboxRequest {
                sandbox_id: self.id.clone(),
                ..Default::default()
            };
            if let Err(e) = self
                .agent
                .destroy_sandbox(ctx(Duration::from_secs(10)), &req)
                .await
            {
                log::warn!("pod {}: DestroySandbox: {e}", self.id);
            }
        }
        log::debug!("pod {}: sandbox destroyed", self.id);
        kill_and_reap(self.pid, self.dead.clone()).await;
        log::debug!("pod {}: sandbox process gone", self.id);
        if let Err(e) = self.paths.remove() {
            log::error!("pod {}: remove {}: {e}", self.id, self.paths.dir.display());
        }
    }
}

/// The pod's resolver configuration: the file the spec binds at /etc/resolv.conf (CRI and
/// nerdctl make one per pod from the DNS config they were given; a host-network pod gets the
/// host's). One the agent would refuse is left out with a warning: the containers still see
/// the file through their bind mount.
fn dns_of(spec: &Spec) -> Option<DnsConfig> {
    let source = spec
        .mounts()
        .as_ref()?
        .iter()
        .find(|m| m.destination() == Path::new("/etc/resolv.conf"))?
        .source()
        .clone()?;
    let text = std::fs::read_to_string(&source)
        .map_err(|e| log::warn!("pod DNS from {}: {e}", source.display()))
        .ok()?;
    let config = eci_protocol::validate::network::parse_resolv_conf(&text);
    match eci_protocol::validate::network::dns("dns", &config) {
        Ok(_) => Some(config),
        Err(e) => {
            log::warn!("pod DNS from {}: {e}", source.display());
            None
        }
    }
}

async fn kill_and_reap(pid: i32, mut dead: watch::Receiver<Option<i32>>) {
    if dead.borrow().is_none() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    if tokio::time::timeout(Duration::from_secs(10), dead.wait_for(|d| d.is_some()))
        .await
        .is_err()
    {
        log::error!("sandbox process {pid} did not exit after SIGKILL");
    }
}
