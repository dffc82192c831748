//! `eci exec -it`: attaches to the CRI streaming URL of an exec (containerd's streaming server)
//! over the Kubernetes websocket channel protocol: every binary message starts with one byte of
//! stream id (0 stdin, 1 stdout, 2 stderr, 3 error/status JSON, 4 resize JSON; 255 close in v5).

use std::io::{IsTerminal, Write};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use super::CliError;

/// Preferred first: v5 can signal the end of stdin, v4 is what older servers speak.
pub const PROTOCOLS: &str = "v5.channel.k8s.io, v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// A terminal size, as the resize channel's JSON wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TermSize {
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Attaches the process's terminal (raw mode with `tty`) to the exec at `uri`; returns the
/// command's exit code.
pub async fn attach(uri: &str, stdin: bool, tty: bool) -> Result<i32, CliError> {
    let raw = if tty { RawMode::enter() } else { None };
    // With a tty the session always carries sizes (none when stdin is not a terminal).
    let resizes = tty.then(watch_terminal_size);
    let input = stdin.then(tokio::io::stdin);
    let result = stream_exec(uri, input, std::io::stdout(), std::io::stderr(), resizes).await;
    drop(raw);
    result
}

fn ws_url(uri: &str) -> String {
    if let Some(rest) = uri.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = uri.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        uri.to_string()
    }
}

/// The exec session: copies `stdin` to the command, its output to `stdout`/`stderr`, sends
/// terminal sizes, and returns the exit code from the status channel.
pub async fn stream_exec<R: AsyncRead + Unpin>(
    uri: &str,
    mut stdin: Option<R>,
    mut stdout: impl Write,
    mut stderr: impl Write,
    mut resizes: Option<mpsc::UnboundedReceiver<TermSize>>,
) -> Result<i32, CliError> {
    // A terminal session (it carries sizes) ends with the shell's exit, not with the end of
    // stdin.
    let tty = resizes.is_some();
    let stream_error =
        |e: &dyn std::fmt::Display| CliError::Other(format!("exec stream {uri}: {e}"));
    let mut request = ws_url(uri)
        .into_client_request()
        .map_err(|e| stream_error(&e))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(PROTOCOLS),
    );
    let (socket, response) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| stream_error(&e))?;
    let v5 = response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_some_and(|p| p.as_bytes() == b"v5.channel.k8s.io");
    let (mut sink, mut source) = socket.split();
    let mut buffer = vec![0u8; 32 * 1024];
    let mut exit: Option<Result<i32, CliError>> = None;
    loop {
        // Sizes first: the terminal's initial size must reach the command before any input.
        tokio::select! {
            biased;
            size = next_size(&mut resizes), if resizes.is_some() => {
                match size {
                    Some(size) => {
                        let mut frame = vec![RESIZE];
                        frame.extend(serde_json::to_vec(&size).unwrap_or_default());
                        sink.send(Message::binary(frame)).await.map_err(|e| stream_error(&e))?;
                    }
                    None => resizes = None,
                }
            }
            message = source.next() => {
                let data = match message {
                    None | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Binary(data))) => data,
                    Some(Ok(_)) => continue,
                    // A reset after the status arrived is the server closing: not an error.
                    Some(Err(_)) if exit.is_some() => break,
                    Some(Err(e)) => return Err(stream_error(&e)),
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                match channel {
                    STDOUT => write_all(&mut stdout, payload),
                    STDERR => write_all(&mut stderr, payload),
                    STATUS if !payload.is_empty() => exit = Some(exit_code(payload)),
                    _ => {}
                }
            }
            read = read_some(&mut stdin, &mut buffer), if stdin.is_some() => {
                match read {
                    Ok(0) | Err(_) => {
                        stdin = None;
                        if v5 {
                            let _ = sink.send(Message::binary(vec![CLOSE, STDIN])).await;
                        } else if !tty {
                            // v4 has no way to close stdin: a command that reads to the end
                            // (cat) keeps waiting. Say so instead of hanging silently.
                            let _ = writeln!(
                                stderr,
                                "eci: end of stdin cannot be passed on (the server speaks \
                                 v4.channel.k8s.io); the command keeps its stdin open"
                            );
                        }
                    }
                    Ok(n) => {
                        let mut frame = Vec::with_capacity(n + 1);
                        frame.push(STDIN);
                        frame.extend_from_slice(&buffer[..n]);
                        sink.send(Message::binary(frame)).await.map_err(|e| stream_error(&e))?;
                    }
                }
            }
        }
    }
    exit.unwrap_or_else(|| {
        Err(CliError::Other(format!(
            "exec stream {uri} ended without an exit status"
        )))
    })
}

async fn read_some<R: AsyncRead + Unpin>(
    reader: &mut Option<R>,
    buffer: &mut [u8],
) -> std::io::Result<usize> {
    match reader {
        Some(reader) => reader.read(buffer).await,
        None => std::future::pending().await,
    }
}

async fn next_size(resizes: &mut Option<mpsc::UnboundedReceiver<TermSize>>) -> Option<TermSize> {
    match resizes {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

fn write_all(out: &mut impl Write, data: &[u8]) {
    // A closed stdout (e.g. `| head`) must not end the session with an error.
    let _ = out.write_all(data).and_then(|_| out.flush());
}

/// The exit code in a Kubernetes Status document of the status channel.
pub fn exit_code(payload: &[u8]) -> Result<i32, CliError> {
    let status: serde_json::Value = serde_json::from_slice(payload)
        .map_err(|e| CliError::Other(format!("bad exec status from the server: {e}")))?;
    if status["status"] == "Success" {
        return Ok(0);
    }
    let causes = status["details"]["causes"].as_array();
    let code = causes
        .into_iter()
        .flatten()
        .find(|cause| cause["reason"] == "ExitCode")
        .and_then(|cause| cause["message"].as_str())
        .and_then(|message| message.parse().ok());
    code.ok_or_else(|| {
        CliError::Other(format!(
            "exec failed: {}",
            status["message"].as_str().unwrap_or("no message")
        ))
    })
}

/// The terminal in raw mode until dropped (only when stdin is a terminal).
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> Option<RawMode> {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{tcsetattr, SetArg};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

fn terminal_size() -> Option<TermSize> {
    use std::os::fd::AsRawFd;
    let mut size = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one `winsize` into the valid, exclusively borrowed `size`.
    let rc = unsafe {
        nix::libc::ioctl(
            std::io::stdout().as_raw_fd(),
            nix::libc::TIOCGWINSZ,
            &mut size,
        )
    };
    (rc == 0 && size.ws_col > 0).then_some(TermSize {
        width: size.ws_col,
        height: size.ws_row,
    })
}

/// The current terminal size, then every new one on SIGWINCH.
fn watch_terminal_size() -> mpsc::UnboundedReceiver<TermSize> {
    let (sender, receiver) = mpsc::unbounded_channel();
    if let Some(size) = terminal_size() {
        let _ = sender.send(size);
    }
    if let Ok(mut winch) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
    {
        tokio::spawn(async move {
            while winch.recv().await.is_some() {
                if let Some(size) = terminal_size() {
                    if sender.send(size).is_err() {
                        break;
                    }
                }
            }
        });
    }
    receiver
}

#[cfg(test)]
mod tests;
