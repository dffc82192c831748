//! A local-mode agent for end-to-end tests: `eci-agent --local --listen SOCK` in a temporary
//! directory, a ttrpc client to it, and helpers to attach stdio streams. Dropping the
//! [`LocalAgent`] sends SIGTERM (the agent then removes its containers), waits for the process
//! and removes the directory.

use eci_protocol::agent_ttrpc::AgentClient;
use eci_protocol::framing::{read_frame, write_frame};
use eci_protocol::stream::{StreamAck, StreamHeader, StreamKind};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running local-mode agent.
pub struct LocalAgent {
    child: Child,
    dir: tempfile::TempDir,
    /// Client of the agent API.
    pub client: AgentClient,
}

impl LocalAgent {
    /// Starts the `eci-agent` binary of this workspace (or the one `ECI_AGENT_BIN` names, e.g.
    /// the static musl build) and connects to it.
    pub async fn start() -> io::Result<Self> {
        let binary = match std::env::var_os("ECI_AGENT_BIN") {
            Some(path) => PathBuf::from(path),
            None => crate::bins::require_workspace_binary("eci-agent"),
        };
        let dir = tempfile::Builder::new().prefix("eci-agent-").tempdir()?;
        let api = dir.path().join("agent.sock");
        let child = Command::new(binary)
            .arg("--local")
            .arg("--listen")
            .arg(&api)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .spawn()?;
        let mut agent = AgentGuard(Some(child));
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = format!("unix://{}", api.display());
        let client = loop {
            if api.exists() {
                if let Ok(c) = ttrpc::r#async::Client::connect(&addr).await {
                    break c;
                }
            }
            if let Some(status) = agent.0.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(io::Error::other(format!(
                    "eci-agent exited early: {status}"
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "eci-agent did not listen in 20 s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child: agent.0.take().expect("child"),
            dir,
            client: AgentClient::new(client),
        })
    }

    /// The stream socket (`<api>.io`).
    pub fn stream_socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock.io")
    }

    /// The agent's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Whether the agent process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Opens one stdio stream of a process; fails with the agent's reason when refused.
    pub fn attach(
        &self,
        container_id: &str,
        exec_id: &str,
        kind: StreamKind,
    ) -> io::Result<UnixStream> {
        attach(&self.stream_socket(), container_id, exec_id, kind)
    }
}

/// Opens one stdio stream at `socket` (header, ack); see `stream.proto`.
pub fn attach(
    socket: &Path,
    container_id: &str,
    exec_id: &str,
    kind: StreamKind,
) -> io::Result<UnixStream> {
    let mut conn = UnixStream::connect(socket)?;
    let header = StreamHeader {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        kind: kind.into(),
        ..Default::default()
    };
    write_frame(&mut conn, &header).map_err(io::Error::other)?;
    let ack: StreamAck = read_frame(&mut conn).map_err(io::Error::other)?;
    if !ack.ok {
        return Err(io::Error::other(format!("stream refused: {}", ack.error)));
    }
    Ok(conn)
}

/// Reads a stream to its end on a blocking thread.
pub async fn read_all(mut conn: UnixStream) -> io::Result<String> {
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        conn.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
    .await
    .map_err(io::Error::other)?
}

struct AgentGuard(Option<Child>);

impl Drop for AgentGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        crate::terminate(&mut self.child, Duration::from_secs(15));
    }
}

/// A runc-like default spec (`oci_spec::runtime::Spec::default()`: pid, network, ipc, uts and
/// mount namespaces, default capabilities, masked and read-only paths, read-only root) with
/// `args`, `PATH` set and a relative `rootfs` root.
pub fn default_spec(args: &[&str]) -> oci_spec::runtime::Spec {
    let mut spec = oci_spec::runtime::Spec::default();
    let process = spec
        .process_mut()
        .as_mut()
        .expect("default spec has a process");
    process.set_args(Some(args.iter().map(|s| s.to_string()).collect()));
    process.set_terminal(Some(false));
    process.set_env(Some(vec!["PATH=/usr/sbin:/usr/bin:/sbin:/bin".into()]));
    spec
}

/// Why this machine cannot run the local-mode agent tests, or None when it can.
pub fn missing() -> Option<String> {
    if !crate::is_root() {
        return Some("needs root (namespaces, cgroups, mounts)".into());
    }
    if crate::rootfs::static_busybox().is_none() {
        return Some("static /bin/busybox missing (apt-get install busybox-static)".into());
    }
    None
}
