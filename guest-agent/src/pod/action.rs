//! Runs one probe or hook action against a container: an exec in the container (exit 0 is
//! success), an HTTP GET (200..=399) or a TCP connect. Network actions connect from inside the
//! container's network namespace: a short-lived thread `setns()`s into `/proc/<pid>/ns/net`
//! and opens the socket there (a socket keeps the namespace it was created in).
//!
//! HTTP is a hand-written GET of a few lines (request out, status line parsed with `httparse`):
//! a full client would add a large dependency tree to the static initramfs agent for one request.

use crate::container::Container;
use crate::reaper::Reaper;
use eci_protocol::agent::StdioConfig;
use eci_protocol::annotations::{Handler, HttpGet};
use oci_spec::runtime::Process as OciProcess;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

/// Most output of an exec action kept for the message.
const MAX_OUTPUT: usize = 1024;

/// What an action ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Success as Kubernetes defines it for the action.
    pub ok: bool,
    /// Why: exec output/status, HTTP status, connect error.
    pub message: String,
}

impl Outcome {
    fn fail(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

/// The container an action runs against.
pub struct Target {
    /// The container.
    pub container: Arc<Container>,
    /// Registers exec processes for reaping.
    pub reaper: Arc<Reaper>,
    /// The container's init process spec: execs take its user, env, cwd and capabilities.
    pub base_process: OciProcess,
}

/// Runs `handler` with `timeout`; `exec_id` names the exec process (one per purpose).
pub async fn run(target: &Target, exec_id: &str, handler: &Handler, timeout: Duration) -> Outcome {
    let pid = target.container.init.pid;
    match handler {
        Handler::Exec { command } => exec(target, exec_id, command, timeout).await,
        Handler::HttpGet(get) => {
            let get = get.clone();
            in_netns(pid, timeout, move || http_get(&get, timeout)).await
        }
        Handler::TcpSocket { host, port } => {
            let (host, port) = (host.clone(), *port);
            in_netns(pid, timeout, move || {
                connect(host.as_deref(), port, timeout)?;
                Ok(Outcome {
                    ok: true,
                    message: format!("connected to port {port}"),
                })
            })
            .await
        }
    }
}

/// Whether the spec gives the container a network namespace (fresh or joined).
pub fn has_network_namespace(spec: &oci_spec::runtime::Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        })
}

/// Brings up `lo` in the network namespace of `pid` (blocking). A fresh namespace has it down;
/// probes (127.0.0.1) and the workload's own loopback traffic need it up, as CNI's loopback
/// plugin would do. Failure is logged: the container still runs.
pub fn loopback_up(pid: i32) {
    let up = in_netns_blocking(pid, || {
        crate::pid1::net::loopback_up().map_err(std::io::Error::other)
    });
    if let Err(e) = up {
        tracing::warn!(pid, error = %e, "bring up lo in the container's network namespace");
    }
}

/// Runs `f` on a fresh thread inside the network namespace of `pid` and waits for it
/// (blocking).
pub fn in_netns_blocking<T: Send + 'static>(
    pid: i32,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            f()
        })?
        .join()
        .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

/// Runs `f` on a fresh thread inside the network namespace of `pid`.
async fn in_netns(
    pid: i32,
    timeout: Duration,
    f: impl FnOnce() -> std::io::Result<Outcome> + Send + 'static,
) -> Outcome {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("netns-probe".into())
        .spawn(move || {
            let result = (|| {
                let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                f()
            })();
            let _ = tx.send(result);
        });
    if let Err(e) = spawned {
        return Outcome::fail(format!("start the probe thread: {e}"));
    }
    // The socket calls have their own timeouts; this bounds name resolution too.
    match tokio::time::timeout(timeout * 3 + Duration::from_secs(1), rx).await {
        Ok(Ok(Ok(outcome))) => outcome,
        Ok(Ok(Err(e))) => Outcome::fail(e.to_string()),
        Ok(Err(_)) => Outcome::fail("probe thread failed"),
        Err(_) => Outcome::fail(format!("timed out after {}s", timeout.as_secs())),
    }
}

fn connect(host: Option<&str>, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let host = host.unwrap_or("127.0.0.1");
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{host} has no address"),
        )
    })?;
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| std::io::Error::new(e.kind(), format!("connect to {addr}: {e}")))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Builds the GET request kubelet would send.
pub fn http_request(get: &HttpGet) -> String {
    let host = get.host.as_deref().unwrap_or("127.0.0.1");
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {host}:{}\r\nUser-Agent: kube-probe/eci\r\nAccept: */*\r\nConnection: close\r\n",
        get.path, get.port
    );
    for (name, value) in &get.headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req
}

/// Judges an HTTP response head: 200..=399 is success.
pub fn judge_response(head: &[u8]) -> Outcome {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(_) => match resp.code {
            Some(code) => Outcome {
                ok: (200..400).contains(&code),
                message: format!("HTTP status {code}"),
            },
            None => Outcome::fail("incomplete HTTP response"),
        },
        Err(e) => Outcome::fail(format!("bad HTTP response: {e}")),
    }
}

fn http_get(get: &HttpGet, timeout: Duration) -> std::io::Result<Outcome> {
    let mut stream = connect(get.host.as_deref(), get.port, timeout)?;
    stream.write_all(http_request(get).as_bytes())?;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    // The status line is all that matters; stop at the end of the head or 64 KiB.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(judge_response(&head))
}

/// Reads a pipe to its end on a thread, keeping the first [`MAX_OUTPUT`] bytes.
fn collect(fd: Option<OwnedFd>) -> tokio::sync::oneshot::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if let Some(fd) = fd {
        let _ = std::thread::Builder::new()
            .name("probe-output".into())
            .spawn(move || {
                let mut file = std::fs::File::from(fd);
                let mut kept = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = file.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let room = MAX_OUTPUT.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
                let _ = tx.send(kept);
            });
    }
    rx
}

async fn exec(target: &Target, exec_id: &str, command: &[String], timeout: Duration) -> Outcome {
    let mut process = target.base_process.clone();
    process.set_args(Some(command.to_vec()));
    process.set_terminal(Some(false));
    let stdio = StdioConfig {
        stdout: true,
        stderr: true,
        ..Default::default()
    };
    let (c, reaper, id) = (
        target.container.clone(),
        target.reaper.clone(),
        exec_id.to_string(),
    );
    let started = tokio::task::spawn_blocking(move || c.exec(&reaper, &id, &process, &stdio)).await;
    let p = match started {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return Outcome::fail(format!("exec {:?}: {}", command[0], e.chain())),
        Err(e) => return Outcome::fail(format!("exec {:?}: {e}", command[0])),
    };
    let (out, err) = {
        let mut ends = p.stdio.lock();
        (ends.stdout.take(), ends.stderr.take())
    };
    let (out, err) = (collect(out), collect(err));
    let status = match tokio::time::timeout(timeout, p.wait()).await {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: kill(2) takes no pointers; the pid is our registered, unreaped child.
            unsafe { libc::kill(p.pid, libc::SIGKILL) };
            p.wait().await;
            return Outcome::fail(format!("command timed out after {}s", timeout.as_secs()));
        }
    };
    let grace = Duration::from_millis(200);
    let mut text = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    text.extend(
        tokio::time::timeout(grace, err)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default(),
    );
    let output = String::from_utf8_lossy(&text).trim().to_string();
    let ok = status.code == 0;
    let message = match (ok, output.is_empty()) {
        (true, true) => "exit status 0".to_string(),
        (_, true) => format!("exit status {}", status.code),
        (_, false) => format!("exit status {}: {output}", status.code),
    };
    Outcome { ok, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_judgement() {
        let get = HttpGet {
            host: None,
            port: 8080,
            path: "/healthz".into(),
            headers: vec![("X-Probe".into(), "1".into())],
        };
        let req = http_request(&get);
        assert!(req.starts_with("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(req.contains("X-Probe: 1\r\n") && req.ends_with("\r\n\r\n"));
        assert!(judge_response(b"HTTP/1.1 200 OK\r\n\r\n").ok);
        assert!(judge_response(b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n").ok);
        let o = judge_response(b"HTTP/1.1 503 Unavailable\r\n\r\n");
        assert!(!o.ok && o.message.contains("503"));
        assert!(!judge_response(b"garbage").ok);
        assert!(!judge_response(b"").ok);
    }
}
