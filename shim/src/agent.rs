//! Client side of the agent API: the ttrpc connection and the stdio stream endpoint, over the
//! agent's unix sockets (local mode) or the VMM's hybrid vsock (VM mode: connect to the VMM's
//! unix socket, send `CONNECT <port>\n`, read `OK <host port>\n`, then the stream is the guest
//! port's).

use std::{path::PathBuf, time::Duration};

use eci_protocol::framing::tokio_io::{read_frame, write_frame};
use eci_protocol::{
    agent::{PingRequest, PingResponse},
    agent_ttrpc::AgentClient,
    stream::{StreamAck, StreamHeader, StreamKind},
    AGENT_API_VSOCK_PORT, AGENT_STREAM_VSOCK_PORT, PROTOCOL_VERSION,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixStream,
};

/// Where the agent's API and stdio streams are reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Local mode: the unix sockets the agent listens on.
    Unix { api: PathBuf, streams: PathBuf },
    /// VM mode: the VMM's hybrid vsock socket; the agent listens on its vsock ports.
    HybridVsock { uds: PathBuf },
}

/// Longest `OK <port>\n` answer to a hybrid vsock CONNECT.
const HYBRID_REPLY_MAX: usize = 32;
/// How long one connection attempt may take: a VMM whose guest has not set up its vsock
/// device yet holds the connection unanswered in its listen backlog.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

impl Endpoint {
    /// A new connection to the agent's API (`stream` false) or stream endpoint, given up after
    /// [`DIAL_TIMEOUT`].
    pub async fn dial(&self, stream: bool) -> std::io::Result<UnixStream> {
        tokio::time::timeout(DIAL_TIMEOUT, self.dial_once(stream))
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("{}: no answer within {DIAL_TIMEOUT:?}", self.describe()),
                ))
            })
    }

    async fn dial_once(&self, stream: bool) -> std::io::Result<UnixStream> {
        match self {
            Endpoint::Unix { api, streams } => {
                UnixStream::connect(if stream { streams } else { api }).await
            }
            Endpoint::HybridVsock { uds } => {
                let port = if stream {
                    AGENT_STREAM_VSOCK_PORT
                } else {
                    AGENT_API_VSOCK_PORT
                };
                let mut conn = UnixStream::connect(uds).await?;
                conn.write_all(format!("CONNECT {port}\n").as_bytes())
                    .await?;
                // Byte by byte: whatever follows the newline belongs to the guest's stream.
                let mut reply = Vec::new();
                loop {
                    let byte = conn.read_u8().await?;
                    if byte == b'\n' {
                        break;
                    }
                    reply.push(byte);
                    if reply.len() > HYBRID_REPLY_MAX {
                        return Err(std::io::Error::other("hybrid vsock: reply too long"));
                    }
                }
                if !reply.starts_with(b"OK ") {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        format!(
                            "hybrid vsock CONNECT {port}: {}",
                            String::from_utf8_lossy(&reply)
                        ),
                    ));
                }
                Ok(conn)
            }
        }
    }

    /// For messages: where the agent is expected.
    pub fn describe(&self) -> String {
        match self {
            Endpoint::Unix { api, .. } => format!("unix://{}", api.display()),
            Endpoint::HybridVsock { uds } => {
                format!("hybrid vsock {} port {AGENT_API_VSOCK_PORT}", uds.display())
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not come up at {address} within {waited:?}")]
    NotUp { address: String, waited: Duration },
    #[error("stopped waiting for the agent at {address} after {after:?}: {reason}")]
    GaveUp {
        address: String,
        after: Duration,
        reason: String,
    },
    #[error("agent speaks protocol version {0}, the shim speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("agent call {call}")]
    Rpc {
        call: &'static str,
        source: ttrpc::Error,
    },
    #[error("agent call {call}: {why}; {diagnostics}")]
    NoAnswer {
        call: &'static str,
        why: String,
        diagnostics: String,
    },
    #[error("stream endpoint {path}")]
    StreamIo {
        path: String,
        source: std::io::Error,
    },
    #[error("agent refused the {kind:?} stream of {container_id}/{exec_id}: {reason}")]
    StreamRefused {
        kind: StreamKind,
        container_id: String,
        exec_id: String,
        reason: String,
    },
    #[error("stream endpoint {path}: handshake")]
    Frame {
        path: String,
        source: eci_protocol::framing::FrameError,
    },
}

/// Connects to the agent at `endpoint`, retrying until it answers a ping, `wait` has passed, or
/// `give_up` gives a reason to stop (e.g. the VM ended).
pub async fn connect(
    endpoint: &Endpoint,
    wait: Duration,
    mut give_up: impl FnMut() -> Option<String>,
) -> Result<(AgentClient, PingResponse), AgentError> {
    let started = tokio::time::Instant::now();
    let deadline = started + wait;
    loop {
        if let Ok(conn) = endpoint.dial(false).await {
            let socket = ttrpc::asynchronous::transport::Socket::from(conn);
            let client = AgentClient::new(ttrpc::asynchronous::Client::new(socket));
            let ping = PingRequest {
                protocol_version: PROTOCOL_VERSION,
                ..Default::default()
            };
            if let Ok(pong) = client.ping(ctx(Duration::from_secs(5)), &ping).await {
                if pong.protocol_version != PROTOCOL_VERSION {
                    return Err(AgentError::Version(pong.protocol_version));
                }
                return Ok((client, pong));
            }
        }
        if let Some(reason) = give_up() {
            return Err(AgentError::GaveUp {
                address: endpoint.describe(),
                after: started.elapsed(),
                reason,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(AgentError::NotUp {
                address: endpoint.describe(),
                waited: wait,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A request context with a deadline.
pub fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(timeout.as_nanos() as i64)
}

/// A request context without deadline (long polls, waits).
pub fn no_deadline() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

/// Opens one stdio stream of a process at the agent's stream endpoint (header, ack).
pub async fn open_stream(
    endpoint: &Endpoint,
    container_id: &str,
    exec_id: &str,
    kind: StreamKind,
) -> Result<UnixStream, AgentError> {
    let header = StreamHeader {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
        kind: kind.into(),
        ..Default::default()
    };
    open(endpoint, header).await
}

/// Opens a connection to TCP `port` on the loopback of a VM pod's network (a PORT_FORWARD
/// stream, see `stream.proto`).
pub async fn open_port_forward(endpoint: &Endpoint, port: u16) -> Result<UnixStream, AgentError> {
    let header = StreamHeader {
        kind: StreamKind::PORT_FORWARD.into(),
        port: port.into(),
        ..Default::default()
    };
    open(endpoint, header).await
}

async fn open(endpoint: &Endpoint, header: StreamHeader) -> Result<UnixStream, AgentError> {
    let io_error = |source| AgentError::StreamIo {
        path: endpoint.describe(),
        source,
    };
    let frame_error = |source| AgentError::Frame {
        path: endpoint.describe(),
        source,
    };
    let mut stream = endpoint.dial(true).await.map_err(io_error)?;
    write_frame(&mut stream, &header)
        .await
        .map_err(frame_error)?;
    let ack: StreamAck = read_frame(&mut stream).await.map_err(frame_error)?;
    if !ack.ok {
        return Err(AgentError::StreamRefused {
            kind: header.kind.enum_value_or_default(),
            container_id: header.container_id,
            exec_id: header.exec_id,
            reason: ack.error,
        });
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    async fn fake_endpoint(listener: UnixListener, ack: StreamAck) -> StreamHeader {
        let (mut conn, _) = listener.accept().await.unwrap();
        let header: StreamHeader = read_frame(&mut conn).await.unwrap();
        write_frame(&mut conn, &ack).await.unwrap();
        conn.write_all(b"payload").await.unwrap();
        header
    }

    #[tokio::test]
    async fn stream_handshake_sends_header_and_reads_ack() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let ack = StreamAck {
            ok: true,
            ..Default::default()
        };
        let server = tokio::spawn(fake_endpoint(listener, ack));
        let endpoint = Endpoint::Unix {
            api: dir.path().join("api.sock"),
            streams: path.clone(),
        };
        let mut stream = open_stream(&endpoint, "c1", "e1", StreamKind::STDOUT)
            .await
            .unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "payload");
        let header = server.await.unwrap();
        assert_eq!(
            (header.container_id.as_str(), header.exec_id.as_str()),
            ("c1", "e1")
        );
        assert_eq!(header.kind.enum_value(), Ok(StreamKind::STDOUT));
    }

    #[tokio::test]
    async fn refused_stream_reports_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("io.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let ack = StreamAck {
            ok: false,
            error: "no such process".into(),
            ..Default::default()
        };
        let server = tokio::spawn(fake_endpoint(listener, ack));
        let endpoint = Endpoint::Unix {
            api: dir.path().join("api.sock"),
            streams: path.clone(),
        };
        let err = open_stream(&endpoint, "c1", "", StreamKind::STDIN)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such process") && err.contains("c1"),
            "{err}"
        );
        server.await.unwrap();
    }

    /// A VMM's hybrid vsock socket: answers CONNECT to `open_port` with OK, closes otherwise,
    /// then plays the agent's stream endpoint.
    async fn fake_vmm(listener: UnixListener, open_port: u32) -> Option<StreamHeader> {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut line = Vec::new();
        loop {
            let b = conn.read_u8().await.unwrap();
            if b == b'\n' {
                break;
            }
            line.push(b);
        }
        if line != format!("CONNECT {open_port}").into_bytes() {
            return None; // a refused port: the VMM closes the connection
        }
        conn.write_all(b"OK 1073741824\n").await.unwrap();
        let header: StreamHeader = read_frame(&mut conn).await.unwrap();
        let ack = StreamAck {
            ok: true,
            ..Default::default()
        };
        write_frame(&mut conn, &ack).await.unwrap();
        conn.write_all(b"payload").await.unwrap();
        Some(header)
    }

    #[tokio::test]
    async fn hybrid_vsock_connects_to_the_stream_port() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        let server = tokio::spawn(fake_vmm(listener, AGENT_STREAM_VSOCK_PORT));
        let endpoint = Endpoint::HybridVsock { uds };
        let mut stream = open_stream(&endpoint, "c1", "", StreamKind::STDOUT)
            .await
            .unwrap();
        let mut rest = String::new();
        stream.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "payload");
        assert_eq!(server.await.unwrap().unwrap().container_id, "c1");
    }

    #[tokio::test]
    async fn hybrid_vsock_refusal_is_an_error_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        // The guest listens on nothing but the API port: the stream CONNECT is refused.
        let server = tokio::spawn(fake_vmm(listener, AGENT_API_VSOCK_PORT));
        let endpoint = Endpoint::HybridVsock { uds: uds.clone() };
        let err = open_stream(&endpoint, "c1", "", StreamKind::STDOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(uds.to_str().unwrap()), "{err}");
        assert!(server.await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_vm_that_ended_stops_the_wait_with_its_reason_not_a_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock.sock");
        let endpoint = Endpoint::HybridVsock { uds: uds.clone() };
        let mut polls = 0;
        let err = connect(&endpoint, Duration::from_secs(600), || {
            polls += 1;
            (polls == 3).then(|| "the VMM (pid 7) exited with status 0".to_owned())
        })
        .await
        .map(|_| ())
        .unwrap_err();
        assert!(matches!(err, AgentError::GaveUp { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("exited with status 0"), "{text}");
        assert!(text.contains(uds.to_str().unwrap()), "{text}");
        assert!(!text.contains("600"), "not reported as a timeout: {text}");
    }
}
