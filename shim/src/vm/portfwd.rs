//! VM mode: CRI's port forwarding. containerd serves `kubectl port-forward` by dialling
//! `localhost:<port>` inside the pod's network namespace on the host; a VM pod's processes
//! listen in the guest, whose traffic the namespace only redirects from its veth. So the shim
//! mirrors the guest's listening TCP ports: every second it asks the agent which ports listen
//! on the guest's wildcard or loopback addresses (ListeningPorts), listens on `127.0.0.1:<port>`
//! in the pod's namespace for each, and forwards every connection to the same port on the
//! guest's loopback over a PORT stream of the agent's stream endpoint (hybrid vsock). Listeners
//! of ports that stopped listening close; everything ends with the sandbox.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use eci_protocol::{agent::ListeningPortsRequest, validate};
use tokio::task::AbortHandle;

use crate::{agent, sandbox::Sandbox};

/// How often the guest's listening ports are read.
const POLL: Duration = Duration::from_secs(1);

/// Binds `127.0.0.1:port` inside the network namespace `netns` (the socket stays in it).
fn bind_in_netns(netns: &Path, port: u16) -> std::io::Result<std::net::TcpListener> {
    let file = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace file moves only this short-lived thread.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("the bind thread panicked")))
}

/// Accepts on `listener` and forwards each connection to `port` in the guest.
async fn serve(listener: tokio::net::TcpListener, sandbox: Arc<Sandbox>, port: u16) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            let stream = agent::open_port_stream(&sandbox.endpoint, &sandbox.id, port).await;
            match stream {
                Ok(mut guest) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut guest).await;
                }
                Err(e) => log::warn!(
                    "pod {}: forward port {port}: {}",
                    sandbox.id,
                    crate::error::chain(&e)
                ),
            }
        });
    }
}

/// Mirrors the guest's listening ports in the pod's network namespace `netns` until the
/// sandbox dies.
pub async fn run(sandbox: Arc<Sandbox>, netns: PathBuf) {
    let mut listening: HashMap<u16, AbortHandle> = HashMap::new();
    let mut refused: Vec<u16> = Vec::new();
    let request = ListeningPortsRequest::default();
    loop {
        tokio::select! {
            _ = sandbox.wait_dead() => break,
            _ = tokio::time::sleep(POLL) => {}
        }
        let answer = sandbox
            .agent
            .listening_ports(agent::ctx(Duration::from_secs(10)), &request)
            .await;
        let ports = match answer.map(|a| validate::listening_ports(&a.ports)) {
            Ok(Ok(ports)) => ports,
            Ok(Err(e)) => {
                log::warn!("pod {}: ListeningPorts answer refused: {e}", sandbox.id);
                continue;
            }
            Err(e) => {
                log::debug!("pod {}: ListeningPorts: {e}", sandbox.id);
                continue;
            }
        };
        listening.retain(|port, task| {
            let keep = ports.contains(port);
            if !keep {
                task.abort();
            }
            keep
        });
        refused.retain(|p| ports.contains(p));
        for port in ports {
            if listening.contains_key(&port) || refused.contains(&port) {
                continue;
            }
            let bound = bind_in_netns(&netns, port).and_then(tokio::net::TcpListener::from_std);
            match bound {
                Ok(listener) => {
                    log::debug!(
                        "pod {}: forwarding port {port} from its namespace",
                        sandbox.id
                    );
                    let task = tokio::spawn(serve(listener, sandbox.clone(), port));
                    listening.insert(port, task.abort_handle());
                }
                Err(e) => {
                    // Something of the host's namespace side holds the port: not ours to take.
                    log::info!("pod {}: port {port} not forwarded: {e}", sandbox.id);
                    refused.push(port);
                }
            }
        }
    }
    for task in listening.values() {
        task.abort();
    }
}
