//! A client of containerd's CRI streaming server (the URLs of CRI Exec, Attach and
//! PortForward) over the Kubernetes websocket channel protocol: every binary message starts
//! with a channel byte (exec/attach: 0 stdin, 1 stdout, 2 stderr, 3 status; port-forward:
//! 0 data and 1 error of the first port, each opened by the port number, little endian).
//!
//! The streaming server listens on containerd's loopback, which is the test network
//! namespace's when containerd runs in one: [`in_netns`] runs a session there.

use std::{
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, Instant},
};

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue, Message};

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;

/// Runs `f` on a thread of its own inside the network namespace at `netns`, with a
/// current-thread tokio runtime for it.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let file = std::fs::File::open(netns)?;
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace file; it moves only this thread, which ends with
        // `f`.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

/// One websocket session with the streaming server.
pub struct Session {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

/// What arrived on each channel.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub channels: std::collections::BTreeMap<u8, Vec<u8>>,
    /// The server closed the session.
    pub closed: bool,
}

impl Received {
    pub fn text(&self, channel: u8) -> String {
        String::from_utf8_lossy(self.channels.get(&channel).map_or(&[][..], |v| v)).into_owned()
    }
}

impl Session {
    /// Opens `url` (`http://...`, as CRI returns it) speaking `v4.channel.k8s.io`.
    pub async fn connect(url: &str) -> Result<Self, String> {
        let ws = url.replacen("http://", "ws://", 1);
        let mut request = ws.into_client_request().map_err(|e| e.to_string())?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static("v4.channel.k8s.io"),
        );
        let (socket, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        Ok(Self { socket })
    }

    /// Sends `data` on `channel`.
    pub async fn send(&mut self, channel: u8, data: &[u8]) -> Result<(), String> {
        let mut frame = vec![channel];
        frame.extend_from_slice(data);
        self.socket
            .send(Message::binary(frame))
            .await
            .map_err(|e| e.to_string())
    }

    /// Collects what arrives until `done` holds for it, the server closes, or `timeout`.
    pub async fn receive_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&Received) -> bool,
    ) -> Received {
        let deadline = Instant::now() + timeout;
        let mut got = Received::default();
        while !done(&got) {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.socket.next()).await {
                Ok(Some(Ok(Message::Binary(data)))) => {
                    if let Some((&channel, payload)) = data.split_first() {
                        got.channels
                            .entry(channel)
                            .or_default()
                            .extend_from_slice(payload);
                    }
                }
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) => {
                    got.closed = true;
                    break;
                }
                Ok(Some(Ok(_))) => {}
                Err(_) => break,
            }
        }
        got
    }
}

/// Sends `request` to `port` through the port-forward URL `url` and returns what came back
/// on the data channel (the port prefix removed).
pub async fn port_forward(
    url: &str,
    port: u16,
    request: &[u8],
    until: impl Fn(&str) -> bool,
) -> Result<String, String> {
    let sep = if url.contains('?') { '&' } else { '?' };
    let mut session = Session::connect(&format!("{url}{sep}port={port}")).await?;
    // Each channel opens with the port number.
    let opened = session
        .receive_until(Duration::from_secs(30), |r| {
            r.channels.get(&0).is_some_and(|d| d.len() >= 2)
                && r.channels.get(&1).is_some_and(|d| d.len() >= 2)
        })
        .await;
    let prefix = port.to_le_bytes();
    if opened.channels.get(&0).map(|d| &d[..2]) != Some(&prefix[..]) {
        return Err(format!("no port prefix on the data channel: {opened:?}"));
    }
    session.send(0, request).await?;
    // Data and errors after the two prefixes.
    let mut data = opened
        .channels
        .get(&0)
        .map_or(Vec::new(), |d| d[2..].to_vec());
    let mut errors = opened
        .channels
        .get(&1)
        .map_or(Vec::new(), |e| e[2..].to_vec());
    let got = session
        .receive_until(Duration::from_secs(60), |r| {
            let mut seen = data.clone();
            seen.extend(r.channels.get(&0).map_or(&[][..], |d| d));
            until(&String::from_utf8_lossy(&seen)) || r.channels.contains_key(&1)
        })
        .await;
    data.extend(got.channels.get(&0).map_or(&[][..], |d| d));
    errors.extend(got.channels.get(&1).map_or(&[][..], |e| e));
    if !errors.is_empty() {
        return Err(format!(
            "port-forward error channel: {}",
            String::from_utf8_lossy(&errors)
        ));
    }
    Ok(String::from_utf8_lossy(&data).into_owned())
}
