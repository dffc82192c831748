//! Process stdio: the pipes (or the tty) a process gets, and the stream endpoint where clients
//! attach to them, one connection per stream (see `stream.proto`). Copies run on plain threads
//! with blocking I/O: a few per process, no polling.

use crate::error::{AgentError, Result};
use crate::process::{Process, StdioEnds};
use eci_protocol::agent::StdioConfig;
use eci_protocol::framing::{read_frame, write_frame};
use eci_protocol::stream::{StreamAck, StreamHeader, StreamKind};
use nix::fcntl::OFlag;
use std::fs::File;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The container side of a process's stdio, handed to libcontainer.
#[derive(Default)]
pub struct ChildStdio {
    /// Becomes fd 0, 1 and 2 (None: the tty, set up by libcontainer).
    pub stdin: Option<OwnedFd>,
    /// Fd 1.
    pub stdout: Option<OwnedFd>,
    /// Fd 2.
    pub stderr: Option<OwnedFd>,
}

fn dev_null(write: bool) -> Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|e| AgentError::io("open /dev/null", e))?;
    Ok(f.into())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::io("create a stdio pipe", e))
}

/// Pipes for a process without a terminal: requested streams get a pipe, the others /dev/null.
pub fn pipes(cfg: &StdioConfig) -> Result<(ChildStdio, StdioEnds)> {
    let mut child = ChildStdio::default();
    let mut ends = StdioEnds::default();
    if cfg.stdin {
        let (r, w) = pipe()?;
        child.stdin = Some(r);
        ends.stdin = Some(w);
    } else {
        child.stdin = Some(dev_null(false)?);
    }
    for (wanted, child_end, agent_end) in [
        (cfg.stdout, &mut child.stdout, &mut ends.stdout),
        (cfg.stderr, &mut child.stderr, &mut ends.stderr),
    ] {
        if wanted {
            let (r, w) = pipe()?;
            *child_end = Some(w);
            *agent_end = Some(r);
        } else {
            *child_end = Some(dev_null(true)?);
        }
    }
    Ok((child, ends))
}

/// A listening socket that receives a tty master from libcontainer (its `--console-socket`).
///
/// It lives in a private directory of its own under the temp dir rather than in the bundle: a
/// unix socket path is limited to 108 bytes, which a state dir plus a 64-character CRI id exceeds.
pub struct ConsoleSocket {
    listener: UnixListener,
    dir: PathBuf,
}

impl ConsoleSocket {
    /// Listens at a fresh private path (see [`ConsoleSocket::path`]).
    pub fn bind() -> Result<Self> {
        let template = std::env::temp_dir().join("eci-tty.XXXXXX");
        let dir = nix::unistd::mkdtemp(&template)
            .map_err(|e| AgentError::io("create the console socket directory", e))?;
        let path = dir.join("s");
        match UnixListener::bind(&path) {
            Ok(listener) => Ok(Self { listener, dir }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(AgentError::io(
                    format!("bind console socket {}", path.display()),
                    e,
                ))
            }
        }
    }

    /// Where libcontainer connects to hand over the tty master.
    pub fn path(&self) -> PathBuf {
        self.dir.join("s")
    }

    /// Receives the master once libcontainer has sent it (it has when the build returned) and
    /// returns the process's stdio ends, all on the tty.
    pub fn receive(self, cfg: &StdioConfig) -> Result<StdioEnds> {
        self.listener
            .set_nonblocking(true)
            .map_err(|e| AgentError::io("console socket", e))?;
        let (conn, _) = self
            .listener
            .accept()
            .map_err(|e| AgentError::io("accept the tty master from the container", e))?;
        conn.set_nonblocking(false)
            .map_err(|e| AgentError::io("console socket", e))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| AgentError::io("console socket", e))?;
        let master = recv_fd(&conn)?;
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(|e| AgentError::io("duplicate the tty master", e))
        };
        Ok(StdioEnds {
            stdin: if cfg.stdin { Some(dup(&master)?) } else { None },
            stdout: if cfg.stdout {
                Some(dup(&master)?)
            } else {
                None
            },
            tty: Some(master),
            ..Default::default()
        })
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn recv_fd(conn: &UnixStream) -> Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| AgentError::io("receive the tty master", e))?;
    for cmsg in msg
        .cmsgs()
        .map_err(|e| AgentError::io("receive the tty master", e))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: SCM_RIGHTS just installed `fd` in this process; nothing else owns it.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
    Err(AgentError::FailedPrecondition(
        "the container sent no tty master".into(),
    ))
}

/// Sets the window size of a tty master.
pub fn resize(master: &OwnedFd, rows: u16, cols: u16) -> Result<()> {
    use std::os::fd::AsRawFd;
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the valid pointer; the fd is an open tty master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(AgentError::io(
            "resize the tty",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Finds the process a stream header addresses.
pub trait ProcessLookup: Send + Sync + 'static {
    /// The process, or why there is none.
    fn lookup(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>>;
}

/// Serves stream connections from `listener` forever, each on its own thread.
pub fn serve_streams(listener: StreamListener, lookup: Arc<dyn ProcessLookup>) {
    loop {
        match listener.accept() {
            Ok(conn) => {
                let lookup = lookup.clone();
                std::thread::Builder::new()
                    .name("stream".into())
                    .spawn(move || handle_stream(conn, lookup.as_ref()))
                    .map(drop)
                    .unwrap_or_else(|e| tracing::error!(error = %e, "spawn a stream thread"));
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept a stream connection");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Where stream connections arrive.
pub enum StreamListener {
    /// Local mode.
    Unix(UnixListener),
    /// Guest mode (vsock port 1025).
    Vsock(vsock::VsockListener),
}

impl StreamListener {
    /// The next connection. A vsock connection is handled through `UnixStream` too: every call
    /// made on it (read, write, shutdown, SO_RCVTIMEO) is independent of the address family.
    fn accept(&self) -> std::io::Result<UnixStream> {
        match self {
            Self::Unix(l) => Ok(l.accept()?.0),
            Self::Vsock(l) => {
                let (s, _) = l.accept()?;
                let fd: OwnedFd = s.into();
                Ok(UnixStream::from(fd))
            }
        }
    }
}

/// Acks a stream; from then on it carries data, which may pause for as long as it likes.
/// False when the client is gone.
fn accept(conn: &mut UnixStream) -> bool {
    let ok = StreamAck {
        ok: true,
        ..Default::default()
    };
    if write_frame(conn, &ok).is_err() {
        return false;
    }
    let _ = conn.set_read_timeout(None);
    true
}

fn refuse(conn: &mut UnixStream, error: String) {
    tracing::warn!(%error, "stream refused");
    let _ = write_frame(
        conn,
        &StreamAck {
            ok: false,
            error,
            ..Default::default()
        },
    );
}

fn handle_stream(mut conn: UnixStream, lookup: &dyn ProcessLookup) {
    // A client that never sends its header must not hold a thread forever.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let header: StreamHeader = match read_frame(&mut conn) {
        Ok(h) => h,
        Err(e) => return refuse(&mut conn, format!("stream header: {e}")),
    };
    if let Err(e) = eci_protocol::validate::stream_header(&header) {
        return refuse(&mut conn, e.to_string());
    }
    if header.kind.enum_value() == Ok(StreamKind::PORT_FORWARD) {
        return forward_port(conn, header.port as u16);
    }
    let process = match lookup.lookup(&header.container_id, &header.exec_id) {
        Ok(p) => p,
        Err(e) => return refuse(&mut conn, e.chain()),
    };
    let kind = header.kind.enum_value_or_default();
    let fd = {
        let mut ends = process.stdio.lock();
        let taken = match kind {
            StreamKind::STDIN if ends.stdin_closed => None,
            StreamKind::STDIN => ends.stdin.take(),
            StreamKind::STDOUT => ends.stdout.take(),
            StreamKind::STDERR => ends.stderr.take(),
            StreamKind::STREAM_KIND_UNSPECIFIED | StreamKind::PORT_FORWARD => None,
        };
        if taken.is_some() && kind == StreamKind::STDIN {
            ends.stdin_conn = conn.try_clone().ok();
        }
        taken
    };
    let Some(fd) = fd else {
        return refuse(
            &mut conn,
            format!("{kind:?} of this process is not available (not requested, closed or already attached)"),
        );
    };
    if !accept(&mut conn) {
        return;
    }
    let mut file = File::from(fd);
    match kind {
        StreamKind::STDIN => {
            copy(&mut conn, &mut file);
            // Dropping the write end gives the process EOF.
            drop(file);
            process.stdio.lock().stdin_conn = None;
        }
        _ => {
            copy(&mut file, &mut conn);
            let _ = conn.shutdown(Shutdown::Write);
        }
    }
}

/// A PORT_FORWARD stream (validated): acked once the pod's port answered, then spliced to it.
fn forward_port(mut conn: UnixStream, port: u16) {
    let tcp = match crate::port_forward::connect(port) {
        Ok(tcp) => tcp,
        Err(e) => return refuse(&mut conn, e),
    };
    if accept(&mut conn) {
        crate::port_forward::splice(conn, tcp);
    }
}

/// Copies until EOF or an error on either side. A tty master reports the end of the slave
/// side as EIO, which ends the copy like EOF.
pub(crate) fn copy(from: &mut impl Read, to: &mut impl Write) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Ends a process's stdin: drops the pipe end if no stream took it, or ends the attached stream.
pub fn close_stdin(process: &Process) {
    let mut ends = process.stdio.lock();
    ends.stdin_closed = true;
    ends.stdin = None;
    if let Some(conn) = ends.stdin_conn.take() {
        let _ = conn.shutdown(Shutdown::Read);
    }
}
