//! Client side of the agent API: the ttrpc connection and the stdio stream endpoint.

use std::{path::Path, time::Duration};

use eci_protocol::framing::tokio_io::{read_frame, write_frame};
use eci_protocol::{
    agent::{PingRequest, PingResponse},
    agent_ttrpc::AgentClient,
    stream::{StreamAck, StreamHeader, StreamKind},
    PROTOCOL_VERSION,
};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent did not come up at {address} within {waited:?}")]
    NotUp { address: String, waited: Duration },
    #[error("agent speaks protocol version {0}, the shim speaks {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("agent call {call}")]
    Rpc {
        call: &'static str,
        source: ttrpc::Error,
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

/// Connects to the agent at `address`, retrying until it answers a ping or `give_up` says stop.
pub async fn connect(
    address: &str,
    wait: Duration,
    mut give_up: impl FnMut() -> bool,
) -> Result<(AgentClient, PingResponse), AgentError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Ok(client) = ttrpc::asynchronous::Client::connect(address).await {
            let client = AgentClient::new(client);
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
        if give_up() || tokio::time::Instant::now() >= deadline {
            return Err(AgentError::NotUp {
                address: address.to_owned(),
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

/// Opens one stdio stream of a process: header frame out, ack frame in.
pub async fn open_stream(
    socket: &Path,
    container_id: &str,
    exec_id: &str,
    kind: StreamKind,
) -> Result<UnixStream, AgentError> {
    let io_error = |source| AgentError::StreamIo {
        path: socket.display().to_string(),
        source,
    };
    let frame_error = |source| AgentError::Frame {
        path: socket.display().to_string(),
        source,
    };
    let mut stream = UnixStream::connect(socket).await.map_err(io_error)?;
    let header = StreamHeader {
        container_id: container_id.to_owned(),
        exec_id: exec_id.to_owned(),
        kind: kind.into(),
        ..Default::default()
    };
    write_frame(&mut stream, &header)
        .await
        .map_err(frame_error)?;
    let ack: StreamAck = read_frame(&mut stream).await.map_err(frame_error)?;
    if !ack.ok {
        return Err(AgentError::StreamRefused {
            kind,
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
            reason: ack.error,
        });
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::UnixListener,
    };

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
        let mut stream = open_stream(&path, "c1", "e1", StreamKind::STDOUT)
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
        let err = open_stream(&path, "c1", "", StreamKind::STDIN)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no such process") && err.contains("c1"),
            "{err}"
        );
        server.await.unwrap();
    }
}
