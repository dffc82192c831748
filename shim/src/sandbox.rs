//! One pod's sandbox: started on the pod's first create, stopped after its last delete.

use std::{path::PathBuf, sync::Arc, time::Duration};

use eci_protocol::{
    agent::{DestroySandboxRequest, SetupSandboxRequest},
    agent_ttrpc::AgentClient,
};
use tokio::sync::watch;

use crate::{
    agent::{self, ctx},
    config::ShimConfig,
    error::{rpc, ShimError},
    hypervisor,
    paths::PodPaths,
};

/// How long the agent may take to answer its first ping.
const AGENT_START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Sandbox {
    pub id: String,
    pub paths: PodPaths,
    pub agent: AgentClient,
    pub stream_socket: PathBuf,
    /// Host pid of the process whose exit ends the sandbox.
    pub pid: i32,
    /// The sandbox process's exit status once it exited.
    dead: watch::Receiver<Option<i32>>,
}

impl Sandbox {
    /// Starts the sandbox of pod `id` with `config`, ready for containers.
    pub async fn start(
        id: &str,
        paths: PodPaths,
        config: &ShimConfig,
        hostname: &str,
    ) -> Result<Arc<Self>, ShimError> {
        let hypervisor = hypervisor::from_config(config)?;
        log::warn!("pod {id}: {}", hypervisor.isolation_note());
        paths
            .prepare()
            .map_err(|source| hypervisor::SandboxError::PodDir {
                path: paths.dir.clone(),
                source,
            })?;
        let launched = match hypervisor.launch(&paths).await {
            Ok(l) => l,
            Err(e) => {
                let _ = paths.remove();
                return Err(e.into());
            }
        };
        let (dead_tx, dead) = watch::channel(None);
        let exited = launched.exited;
        tokio::spawn(async move {
            let code = exited.await.unwrap_or(255);
            let _ = dead_tx.send(Some(code));
        });
        let pid = launched.pid;
        let watch_dead = dead.clone();
        let connected = agent::connect(&launched.api_address, AGENT_START_TIMEOUT, || {
            watch_dead.borrow().is_some()
        })
        .await;
        let sandbox = match connected {
            Ok((client, pong)) => {
                log::info!(
                    "pod {id}: agent {} up in {} mode (pid {pid})",
                    pong.agent_version,
                    pong.mode
                );
                Arc::new(Self {
                    id: id.to_owned(),
                    paths,
                    agent: client,
                    stream_socket: launched.stream_socket,
                    pid,
                    dead,
                })
            }
            Err(e) => {
                let log_tail = agent_log_tail(&paths);
                kill_and_reap(pid, dead).await;
                let _ = paths.remove();
                return Err(ShimError::Internal(format!(
                    "{}; agent log: {log_tail}",
                    crate::error::chain(&e)
                )));
            }
        };
        let setup = SetupSandboxRequest {
            sandbox_id: id.to_owned(),
            hostname: hostname.to_owned(),
            shared_dir: sandbox.paths.shared_dir().display().to_string(),
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

fn agent_log_tail(paths: &PodPaths) -> String {
    let text = std::fs::read_to_string(paths.agent_log()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join(" | ");
    if tail.is_empty() {
        "(empty)".to_owned()
    } else {
        tail
    }
}
