//! VM mode: CRI port-forward, host side.
//!
//! containerd serves a port-forward by connecting to `localhost:<port>` inside the pod's network
//! namespace. In a VM pod nothing listens there: the pod's processes are in the guest, and the
//! pod IP, local to the namespace as well, never leaves it from inside. So the shim listens on
//! one loopback port of the namespace, an iptables REDIRECT in the namespace's nat OUTPUT chain
//! sends every other TCP connection to 127.0.0.1 there, and each is carried to the same port in
//! the guest as a PORT_FORWARD stream of the agent (`stream.proto`); SO_ORIGINAL_DST says which
//! port was asked for. Only IPv4: containerd tries 127.0.0.1 first.
//!
//! The rule sits in a chain of its own, [`CHAIN`]; [`remove_rules`] takes it out with the rest
//! of the pod's network (`net::release`), and a namespace that goes with the pod takes it along.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::net::{TcpListener, TcpStream};

use super::net::NetError;
use crate::agent::{self, Endpoint};

/// The nat chain holding the redirect.
const CHAIN: &str = "ECI-PORT-FORWARD";

/// The forwarder of one pod: stops listening when dropped.
pub struct PortForwarder {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn iptables() -> PathBuf {
    ["/usr/sbin/iptables", "/sbin/iptables"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("iptables"))
}

/// The error of port-forward step `step`, from its cause.
fn failed<E: std::fmt::Display>(step: &str) -> impl FnOnce(E) -> NetError + '_ {
    move |reason| NetError::PortForward {
        step: step.to_owned(),
        reason: reason.to_string(),
    }
}

/// Runs iptables (in the calling thread's network namespace) on the nat table.
fn nat(args: &[&str]) -> Result<(), NetError> {
    let step = format!("iptables -t nat {}", args.join(" "));
    let out = Command::new(iptables())
        .args(["-w", "5", "-t", "nat"])
        .args(args)
        .output()
        .map_err(failed(&step))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(&step)(format!("{}: {}", out.status, stderr.trim())));
    }
    Ok(())
}

/// Takes the redirect out of the calling thread's network namespace; what is not there is
/// fine.
pub(super) fn remove_rules() {
    let _ = nat(&["-D", "OUTPUT", "-o", "lo", "-j", CHAIN]);
    let _ = nat(&["-F", CHAIN]);
    let _ = nat(&["-X", CHAIN]);
}

/// containerd connects over the namespace's loopback, which a hook-made namespace may leave
/// down.
fn loopback_up() -> Result<(), NetError> {
    let nl_error = |source| NetError::Netlink {
        interface: "lo".into(),
        source,
    };
    let mut nl = eci_netlink::Netlink::new().map_err(nl_error)?;
    if let Some(lo) = nl.link_by_name("lo").map_err(nl_error)? {
        let up = eci_netlink::LinkChange {
            up: Some(true),
            ..Default::default()
        };
        nl.set_link(lo.index, &up).map_err(nl_error)?;
    }
    Ok(())
}

/// Listens on a loopback port of the namespace `netns` and redirects the namespace's other
/// loopback TCP connections to it.
fn listen_in(netns: &Path) -> Result<std::net::TcpListener, NetError> {
    super::net::in_netns(netns, || {
        loopback_up()?;
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(failed("listen on 127.0.0.1"))?;
        let port = listener
            .local_addr()
            .map_err(failed("the listener's port"))?
            .port()
            .to_string();
        remove_rules();
        let installed = nat(&["-N", CHAIN])
            .and_then(|()| {
                nat(&[
                    "-A",
                    CHAIN,
                    "-p",
                    "tcp",
                    "-d",
                    "127.0.0.1/32",
                    "!",
                    "--dport",
                    &port,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ])
            })
            .and_then(|()| nat(&["-I", "OUTPUT", "-o", "lo", "-j", CHAIN]));
        if let Err(e) = installed {
            remove_rules();
            return Err(e);
        }
        Ok(listener)
    })
}

/// Starts forwarding the loopback connections of the pod namespace `netns` to the guest whose
/// agent is at `endpoint`.
pub async fn start(netns: &Path, endpoint: Endpoint) -> Result<PortForwarder, NetError> {
    let path = netns.to_owned();
    let listener = tokio::task::spawn_blocking(move || listen_in(&path))
        .await
        .map_err(failed("listen"))??;
    listener.set_nonblocking(true).map_err(failed("listen"))?;
    let listener = TcpListener::from_std(listener).map_err(failed("listen"))?;
    let task = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(forward(conn, endpoint.clone()));
                }
                Err(e) => {
                    log::warn!("port-forward: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    Ok(PortForwarder { task })
}

/// The port a redirected connection was made to.
fn original_port(conn: &TcpStream) -> std::io::Result<u16> {
    let addr = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::OriginalDst)?;
    Ok(u16::from_be(addr.sin_port))
}

async fn forward(mut conn: TcpStream, endpoint: Endpoint) {
    let port = match original_port(&conn) {
        Ok(port) => port,
        Err(e) => return log::warn!("port-forward: the connection's original port: {e}"),
    };
    if conn.local_addr().map(|a| a.port()).ok() == Some(port) {
        return; // made to the forwarder itself, not redirected
    }
    let mut guest = match agent::open_port_forward(&endpoint, port).await {
        Ok(stream) => stream,
        Err(e) => {
            return log::warn!(
                "port-forward to port {port} in the pod: {}",
                crate::error::chain(&e)
            )
        }
    };
    let peer = conn
        .peer_addr()
        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    log::debug!("port-forward: {peer} to port {port} in the pod");
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut guest).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use eci_protocol::framing::tokio_io::{read_frame, write_frame};
    use eci_protocol::stream::{StreamAck, StreamHeader, StreamKind};
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A stand-in for the agent's stream endpoint: acks one stream, then answers what it
    /// received prefixed with the port the header named.
    async fn fake_agent(listener: tokio::net::UnixListener) -> StreamHeader {
        let (mut conn, _) = listener.accept().await.unwrap();
        let header: StreamHeader = read_frame(&mut conn).await.unwrap();
        let ack = StreamAck {
            ok: true,
            ..Default::default()
        };
        write_frame(&mut conn, &ack).await.unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        let answer = format!("port {}: {}", header.port, String::from_utf8_lossy(&got));
        conn.write_all(answer.as_bytes()).await.unwrap();
        header
    }

    fn nat_rules(netns: &Path) -> String {
        super::super::net::in_netns(netns, || {
            let out = Command::new(iptables())
                .args(["-t", "nat", "-S"])
                .output()
                .unwrap();
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_loopback_connection_in_the_namespace_reaches_the_port_it_asked_for() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (a network namespace, iptables)"
        );
        let dir = tempfile::tempdir().unwrap();
        let holder = super::super::netns::NetnsHolder::spawn(dir.path()).unwrap();
        let netns = holder.netns_path();
        let streams = dir.path().join("streams.sock");
        let listener = tokio::net::UnixListener::bind(&streams).unwrap();
        let endpoint = Endpoint::Unix {
            api: dir.path().join("api.sock"),
            streams,
        };
        let forwarder = start(&netns, endpoint).await.unwrap();
        assert!(nat_rules(&netns).contains(CHAIN), "{}", nat_rules(&netns));
        let agent = tokio::spawn(fake_agent(listener));

        let client_netns = netns.clone();
        let answer = tokio::task::spawn_blocking(move || {
            super::super::net::in_netns(&client_netns, || {
                let mut conn = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, 8080)).unwrap();
                conn.write_all(b"ping").unwrap();
                conn.shutdown(std::net::Shutdown::Write).unwrap();
                let mut answer = String::new();
                conn.read_to_string(&mut answer).unwrap();
                Ok(answer)
            })
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(answer, "port 8080: ping");
        let header = agent.await.unwrap();
        assert_eq!(header.kind.enum_value(), Ok(StreamKind::PORT_FORWARD));
        assert!(header.container_id.is_empty() && header.exec_id.is_empty());

        drop(forwarder);
        super::super::net::in_netns(&netns, || {
            remove_rules();
            Ok(())
        })
        .unwrap();
        assert!(!nat_rules(&netns).contains(CHAIN), "{}", nat_rules(&netns));
    }
}
