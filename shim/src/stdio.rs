//! Host side of a process's stdio: containerd's FIFOs, `file://` and `binary://` log URIs, joined
//! to the agent's stream connections.
//!
//! Output FIFOs are opened read-write so that opening never blocks and never fails for want of a
//! reader. The stdin FIFO is opened read-only (off the runtime, waiting for its writer) so that
//! the writer closing it is EOF for the process, as with runc's shim; containerd's CloseIO ends
//! stdin as well.

use std::{
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::fs::OpenOptionsExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use eci_protocol::{agent::StdioConfig, stream::StreamKind};
use tokio::{
    io::{AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::unix::pipe,
    sync::oneshot,
    task::JoinHandle,
};

use crate::{agent, reaper::ExitSubscription};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("{what} `{uri}`: unsupported URI scheme (fifo path, file:// or binary://)")]
    Scheme { what: &'static str, uri: String },
    #[error("{what} `{uri}`")]
    Open {
        what: &'static str,
        uri: String,
        source: std::io::Error,
    },
    #[error("log binary {}", path.display())]
    Logger {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Agent(#[from] agent::AgentError),
}

/// What containerd asked for.
#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    pub fn config(&self) -> StdioConfig {
        StdioConfig {
            stdin: !self.stdin.is_empty(),
            stdout: !self.stdout.is_empty(),
            stderr: !self.stderr.is_empty() && !self.terminal,
            terminal: self.terminal,
            ..Default::default()
        }
    }
}

/// Where an output stream goes.
#[derive(Debug, PartialEq)]
enum Target {
    Fifo(PathBuf),
    File(PathBuf),
    Binary { path: PathBuf, args: Vec<String> },
}

fn parse_target(what: &'static str, uri: &str) -> Result<Target, StdioError> {
    if uri.starts_with('/') {
        return Ok(Target::Fifo(PathBuf::from(uri)));
    }
    let bad = || StdioError::Scheme {
        what,
        uri: uri.to_owned(),
    };
    let url = url::Url::parse(uri).map_err(|_| bad())?;
    match url.scheme() {
        "fifo" => Ok(Target::Fifo(PathBuf::from(url.path()))),
        "file" => Ok(Target::File(PathBuf::from(url.path()))),
        "binary" => {
            let args = url.query_pairs().flat_map(|(k, v)| {
                let mut pair = vec![k.into_owned()];
                if !v.is_empty() {
                    pair.push(v.into_owned());
                }
                pair
            });
            Ok(Target::Binary {
                path: PathBuf::from(url.path()),
                args: args.collect(),
            })
        }
        _ => Err(bad()),
    }
}

type Sink = Box<dyn AsyncWrite + Unpin + Send>;

/// The live stdio of one process.
pub struct ProcessIo {
    stdin_close: Option<oneshot::Sender<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl ProcessIo {
    /// Opens the host ends, connects the agent's streams of `container_id`/`exec_id` and starts
    /// copying. Call between CreateContainer/ExecProcess and the start of the process.
    pub async fn attach(
        paths: &StdioPaths,
        endpoint: &agent::Endpoint,
        container_id: &str,
        exec_id: &str,
        namespace: &str,
    ) -> Result<Self, StdioError> {
        let config = paths.config();
        let (stdout_sink, stderr_sink) = open_outputs(paths, container_id, namespace).await?;
        let mut outputs = Vec::new();
        for (kind, sink) in [
            (StreamKind::STDOUT, stdout_sink),
            (StreamKind::STDERR, stderr_sink),
        ] {
            if let Some(mut sink) = sink {
                let mut stream = agent::open_stream(endpoint, container_id, exec_id, kind).await?;
                outputs.push(tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut stream, &mut sink).await;
                    let _ = sink.shutdown().await;
                }));
            }
        }
        let mut stdin_close = None;
        if config.stdin {
            let stream =
                agent::open_stream(endpoint, container_id, exec_id, StreamKind::STDIN).await?;
            let (tx, rx) = oneshot::channel();
            stdin_close = Some(tx);
            tokio::spawn(copy_stdin(PathBuf::from(&paths.stdin), stream, rx));
        }
        Ok(Self {
            stdin_close,
            outputs,
        })
    }

    /// Ends the process's stdin once what containerd already wrote is delivered.
    pub fn close_stdin(&mut self) {
        if let Some(tx) = self.stdin_close.take() {
            let _ = tx.send(());
        }
    }

    /// Waits until the outputs reached their end (the process and everything that inherited its
    /// stdio closed them), at most `timeout`; later output is dropped.
    pub async fn finish_output(&mut self, timeout: Duration) {
        let outputs = std::mem::take(&mut self.outputs);
        let aborts: Vec<_> = outputs.iter().map(|h| h.abort_handle()).collect();
        if tokio::time::timeout(timeout, futures_join(outputs))
            .await
            .is_err()
        {
            aborts.iter().for_each(|a| a.abort());
        }
    }
}

impl Drop for ProcessIo {
    fn drop(&mut self) {
        self.close_stdin();
        self.outputs.iter().for_each(|h| h.abort());
    }
}

async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

/// Copies containerd's stdin FIFO into the agent's stdin stream until the FIFO's writer closes
/// it (EOF) or containerd's CloseIO, then ends the process's stdin.
async fn copy_stdin(
    path: PathBuf,
    mut stream: tokio::net::UnixStream,
    mut close: oneshot::Receiver<()>,
) {
    // A read-only open waits for the writer (containerd's client), so that its close is EOF.
    // A detached thread, not the blocking pool: an open that never returns (the FIFO vanished
    // unopened) must not hold up the shim's exit.
    let open_path = path.clone();
    let (opened_tx, mut opening) = oneshot::channel();
    std::thread::spawn(move || {
        let _ = opened_tx.send(std::fs::File::open(open_path));
    });
    let fifo = tokio::select! {
        opened = &mut opening => opened.ok().and_then(|f| f.ok()),
        _ = &mut close => {
            // Nobody ever wrote: release the blocked open by opening the writer side once.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&path);
            let _ = tokio::time::timeout(Duration::from_secs(1), opening).await;
            None
        }
    };
    if let Some(Ok(mut fifo)) = fifo.map(pipe::Receiver::from_file) {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            tokio::select! {
                read = fifo.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => if stream.write_all(&buf[..n]).await.is_err() { return },
                },
                _ = &mut close => {
                    // Deliver what is already in the FIFO, then end stdin.
                    while let Ok(n) = fifo.try_read(&mut buf) {
                        if n == 0 || stream.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn open_outputs(
    paths: &StdioPaths,
    container_id: &str,
    namespace: &str,
) -> Result<(Option<Sink>, Option<Sink>), StdioError> {
    let config = paths.config();
    let stdout = (config.stdout)
        .then(|| parse_target("stdout", &paths.stdout))
        .transpose()?;
    let stderr = (config.stderr)
        .then(|| parse_target("stderr", &paths.stderr))
        .transpose()?;
    if let Some(Target::Binary { path, args }) = &stdout {
        let (out, err) = spawn_logger(path, args, container_id, namespace).await?;
        return Ok((Some(out), stderr.is_some().then_some(err)));
    }
    let stdout_sink = match stdout {
        Some(t) => Some(open_sink("stdout", &paths.stdout, t).await?),
        None => None,
    };
    let stderr_sink = match stderr {
        Some(t) => Some(open_sink("stderr", &paths.stderr, t).await?),
        None => None,
    };
    Ok((stdout_sink, stderr_sink))
}

async fn open_sink(what: &'static str, uri: &str, target: Target) -> Result<Sink, StdioError> {
    let open_error = |source| StdioError::Open {
        what,
        uri: uri.to_owned(),
        source,
    };
    match target {
        Target::Fifo(path) => {
            let fifo = pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(&path)
                .map_err(open_error)?;
            Ok(Box::new(fifo))
        }
        Target::File(path) => {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(open_error)?;
            }
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(open_error)?;
            Ok(Box::new(file))
        }
        Target::Binary { .. } => Err(StdioError::Scheme {
            what,
            uri: uri.to_owned(),
        }),
    }
}

/// Starts a `binary://` logger the way containerd's shims do: stdout on fd 3, stderr on fd 4,
/// and fd 5 closed by the logger when it is ready.
async fn spawn_logger(
    path: &Path,
    args: &[String],
    container_id: &str,
    namespace: &str,
) -> Result<(Sink, Sink), StdioError> {
    let logger_error = |source| StdioError::Logger {
        path: path.to_owned(),
        source,
    };
    let (out_tx, out_rx) = pipe::pipe().map_err(logger_error)?;
    let (err_tx, err_rx) = pipe::pipe().map_err(logger_error)?;
    let (ready_tx, ready_rx) = pipe::pipe().map_err(logger_error)?;
    let inherited: [OwnedFd; 3] = [
        out_rx.into_blocking_fd().map_err(logger_error)?,
        err_rx.into_blocking_fd().map_err(logger_error)?,
        ready_tx.into_blocking_fd().map_err(logger_error)?,
    ];
    let raw: Vec<i32> = inherited.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut command = std::process::Command::new(path);
    command
        .args(args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: the closure only calls fcntl/dup2 (async-signal-safe) on descriptors that stay
    // open in the parent until spawn returns.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            // Move the sources above the targets first so that no dup2 clobbers a later source.
            let mut high = [0i32; 3];
            for (i, fd) in raw.iter().enumerate() {
                high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 10);
                if high[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, fd) in high.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let subscription = ExitSubscription::new().await.map_err(logger_error)?;
    let child = command.spawn().map_err(logger_error)?;
    drop(inherited);
    let exit = subscription.watch(child.id() as i32);
    let mut ready_rx = ready_rx;
    let mut byte = [0u8; 1];
    // Ready when the logger closes fd 5, or gone when it exits first.
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            _ = ready_rx.read(&mut byte) => Ok(()),
            code = exit => Err(std::io::Error::other(format!("exited with status {} before it was ready", code.unwrap_or(255)))),
        }
    })
    .await;
    match ready {
        Ok(Ok(())) => Ok((Box::new(out_tx), Box::new(err_tx))),
        Ok(Err(e)) => Err(logger_error(e)),
        Err(_) => Err(logger_error(std::io::Error::other("not ready within 10s"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_output_targets() {
        assert_eq!(
            parse_target("stdout", "/run/fifo/x-stdout").unwrap(),
            Target::Fifo("/run/fifo/x-stdout".into())
        );
        assert_eq!(
            parse_target("stdout", "file:///var/log/x.log").unwrap(),
            Target::File("/var/log/x.log".into())
        );
        assert_eq!(
            parse_target("stdout", "binary:///usr/bin/logger?id=7&verbose").unwrap(),
            Target::Binary {
                path: "/usr/bin/logger".into(),
                args: vec!["id".into(), "7".into(), "verbose".into()]
            }
        );
        let err = parse_target("stderr", "http://x/y")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("stderr") && err.contains("http://x/y"),
            "{err}"
        );
    }

    #[test]
    fn terminal_has_no_stderr_stream() {
        let paths = StdioPaths {
            stdin: "/i".into(),
            stdout: "/o".into(),
            stderr: "/e".into(),
            terminal: true,
        };
        let config = paths.config();
        assert!(config.stdin && config.stdout && !config.stderr && config.terminal);
        let none = StdioPaths::default().config();
        assert!(!none.stdin && !none.stdout && !none.stderr);
    }

    #[tokio::test]
    async fn file_sink_appends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/out.log");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "a\n").unwrap();
        let uri = format!("file://{}", path.display());
        let mut sink = open_sink("stdout", &uri, parse_target("stdout", &uri).unwrap())
            .await
            .unwrap();
        sink.write_all(b"b\n").await.unwrap();
        sink.shutdown().await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
    }

    #[tokio::test]
    async fn fifo_sink_opens_without_a_reader_and_delivers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let mut sink = open_sink("stdout", path.to_str().unwrap(), Target::Fifo(path.clone()))
            .await
            .unwrap();
        sink.write_all(b"hello").await.unwrap();
        let mut reader = pipe::OpenOptions::new().open_receiver(&path).unwrap();
        drop(sink);
        let mut got = String::new();
        reader.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "hello");
    }
}
