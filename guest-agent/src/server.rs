//! [`serve`]: binds the API and stream endpoints and runs until SIGTERM/SIGINT, then removes
//! every container. Local mode and PID-1 (guest) mode both call it.

use crate::agent::{Agent, Mode};
use crate::container::StateDirs;
use crate::reaper::Reaper;
use crate::service::AgentService;
use crate::stdio::{serve_streams, StreamListener};
use eci_protocol::{agent_ttrpc, AGENT_API_VSOCK_PORT, AGENT_STREAM_VSOCK_PORT};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Where the agent listens.
#[derive(Debug, Clone)]
pub enum Listen {
    /// Local mode: unix sockets on the host.
    Local {
        /// The ttrpc API socket.
        api: PathBuf,
        /// The stdio stream socket.
        streams: PathBuf,
    },
    /// Guest mode: vsock ports (any CID).
    Vsock {
        /// ttrpc API port (1024).
        api_port: u32,
        /// Stream port (1025).
        stream_port: u32,
    },
}

impl Listen {
    /// The guest default: vsock ports 1024 and 1025.
    pub fn guest() -> Self {
        Self::Vsock {
            api_port: AGENT_API_VSOCK_PORT,
            stream_port: AGENT_STREAM_VSOCK_PORT,
        }
    }
}

/// Agent configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Endpoints.
    pub listen: Listen,
    /// Directory for the agent's bundles and libcontainer state.
    pub state_dir: PathBuf,
}

/// Why the agent could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An endpoint could not be bound.
    #[error("bind {endpoint}")]
    Bind {
        /// Which endpoint.
        endpoint: String,
        /// The underlying failure.
        #[source]
        source: std::io::Error,
    },
    /// ttrpc failed.
    #[error("ttrpc server")]
    Ttrpc(#[from] ttrpc::Error),
    /// Signal handling could not be set up.
    #[error("install signal handlers")]
    Signals(#[source] std::io::Error),
    /// Removing the containers on shutdown failed.
    #[error("remove containers on shutdown: {0}")]
    Shutdown(String),
}

fn bind_err(endpoint: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let endpoint = endpoint.into();
    move |source| ServeError::Bind { endpoint, source }
}

/// Serves the agent API until SIGTERM or SIGINT, then removes every container and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    // SIGCHLD first: no child may exit before the reaper listens.
    let sigchld = signal(SignalKind::child()).map_err(ServeError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    // Container processes are created by runtime helper processes and re-parented to the agent
    // when the helper exits (see `helper.rs`).
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers and only flags this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(ServeError::Signals(std::io::Error::last_os_error()));
    }
    let reaper = Arc::new(Reaper::default());
    tokio::spawn(reaper.clone().run(sigchld));

    let mode = match config.listen {
        Listen::Local { .. } => Mode::Local,
        Listen::Vsock { .. } => Mode::Guest,
    };
    let dirs = StateDirs::new(&config.state_dir);
    for dir in [&dirs.runtime_root, &dirs.bundles] {
        std::fs::create_dir_all(dir)
            .map_err(bind_err(format!("state directory {}", dir.display())))?;
    }
    let agent = Arc::new(Agent::new(mode, dirs, reaper));

    let (api_addr, streams) = match &config.listen {
        Listen::Local { api, streams } => {
            for path in [api, streams] {
                let _ = std::fs::remove_file(path);
            }
            let l = std::os::unix::net::UnixListener::bind(streams)
                .map_err(bind_err(streams.display().to_string()))?;
            (format!("unix://{}", api.display()), StreamListener::Unix(l))
        }
        Listen::Vsock {
            api_port,
            stream_port,
        } => {
            let l = vsock::VsockListener::bind(&vsock::VsockAddr::new(
                libc::VMADDR_CID_ANY,
                *stream_port,
            ))
            .map_err(bind_err(format!("vsock port {stream_port}")))?;
            (format!("vsock://-1:{api_port}"), StreamListener::Vsock(l))
        }
    };
    let lookup: Arc<dyn crate::stdio::ProcessLookup> = agent.clone();
    std::thread::Builder::new()
        .name("streams".into())
        .spawn(move || serve_streams(streams, lookup))
        .map_err(bind_err("stream endpoint thread"))?;

    let service = agent_ttrpc::create_agent(Arc::new(AgentService(agent.clone())));
    let mut server = ttrpc::r#async::Server::new()
        .bind(&api_addr)?
        .register_service(service);
    server.start().await?;
    tracing::info!(api = %api_addr, "agent serving");

    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
    }
    let _ = server.shutdown().await;
    let result = agent
        .remove_all()
        .await
        .map_err(|e| ServeError::Shutdown(e.chain()));
    // Volumes go with their pod's last container; this catches any a failed removal left.
    tokio::task::block_in_place(|| agent.release_pod_volumes());
    remove_default_cgroup_parents();
    if let Listen::Local { api, streams } = &config.listen {
        let _ = std::fs::remove_file(api);
        let _ = std::fs::remove_file(streams);
    }
    result
}

/// Removes the agent's default cgroup parent (`/eci`) in every hierarchy once it is empty; a
/// parent still in use (another agent's containers) is left alone.
fn remove_default_cgroup_parents() {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let rel = crate::container::DEFAULT_CGROUP_PARENT.trim_start_matches('/');
    let mut dirs = vec![root.join(rel)];
    if let Ok(entries) = std::fs::read_dir(root) {
        dirs.extend(entries.flatten().map(|e| e.path().join(rel)));
    }
    for dir in dirs {
        // rmdir fails on a non-empty cgroup, which is what we want.
        let _ = std::fs::remove_dir(dir);
    }
}
