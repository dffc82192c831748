//! The runtime helper: a short-lived, single-threaded `eci-agent` process that runs
//! libcontainer's create (or exec) and exits.
//!
//! Why a process: libcontainer clones its helper processes with raw `clone3`, and the child
//! then allocates. Cloned from the multi-threaded agent, the child inherits whatever locks other
//! threads held at that instant (the allocator's, above all; musl's is global) and can deadlock
//! for ever: seen here once, a container init of the musl build hung in a futex during a
//! 100-run benchmark. A single-threaded process has no
//! such locks in flight. The container process the helper creates is re-parented to the agent
//! (a child subreaper) when the helper exits, so the agent waits for it as its own child.
//!
//! Interface: `eci-agent --runtime-helper <JSON HelperRequest>`; fds 0-2 are the container
//! process's stdio (or /dev/null with a tty); fd 3 receives the JSON [`HelperReply`]; fd 4
//! ([`LOG_FD`]) is the agent's log.

use crate::container::AgentExecutor;
use crate::error::error_chain;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

/// The helper's fd of the agent's log.
pub const LOG_FD: i32 = 4;

/// The argument that selects helper mode.
pub const HELPER_FLAG: &str = "--runtime-helper";

/// What the helper does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HelperOp {
    /// Create a container from `bundle/config.json` (init waits for start).
    Create {
        /// The agent's bundle directory.
        bundle: PathBuf,
    },
    /// Run the process of `process_json` in the container.
    Exec {
        /// The process document.
        process_json: PathBuf,
    },
}

/// A request to the helper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelperRequest {
    /// Container id.
    pub id: String,
    /// libcontainer's state root.
    pub runtime_root: PathBuf,
    /// Console socket for a tty process.
    pub console_socket: Option<PathBuf>,
    /// Whether fds 0-2 carry the process's stdio (false with a tty).
    pub pass_stdio: bool,
    /// The operation.
    pub op: HelperOp,
    /// The container's seccomp profile for an exec (see [`AgentExecutor::seccomp`]).
    #[serde(default)]
    pub seccomp: Option<oci_spec::runtime::LinuxSeccomp>,
    /// Capabilities the executor applies after installing the seccomp profile (see
    /// [`crate::container::defer_capabilities`]); libcontainer sees none in the spec then.
    #[serde(default)]
    pub capabilities_after_seccomp: Option<oci_spec::runtime::LinuxCapabilities>,
}

/// The helper's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum HelperReply {
    /// The new process's pid.
    Pid(i32),
    /// Why it failed (whole error chain).
    Error(String),
}

fn dup_stdio(fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: fds 0-2 are open for the helper's whole life (the agent set them up).
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

fn run(req: &HelperRequest) -> Result<i32, String> {
    let mut b = ContainerBuilder::new(req.id.clone(), SyscallType::default())
        .with_root_path(&req.runtime_root)
        .map_err(|e| error_chain(&e))?
        .with_executor(AgentExecutor {
            seccomp: req.seccomp.clone(),
            capabilities_after_seccomp: req.capabilities_after_seccomp.clone(),
        })
        .with_console_socket(req.console_socket.as_ref());
    if req.pass_stdio {
        let io = |fd| dup_stdio(fd).map_err(|e| format!("duplicate stdio: {e}"));
        b = b.with_stdin(io(0)?).with_stdout(io(1)?).with_stderr(io(2)?);
    }
    match &req.op {
        HelperOp::Create { bundle } => {
            let container = b
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("create the container: {}", error_chain(&e)))?;
            container
                .pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| "created container has no init pid".to_string())
        }
        HelperOp::Exec { process_json } => b
            .as_tenant()
            .with_process(Some(process_json))
            .with_detach(true)
            .build()
            .map(|p| p.as_raw())
            .map_err(|e| format!("exec in the container: {}", error_chain(&e))),
    }
}

/// Helper mode's main: runs the request in `arg`, writes the reply to fd 3, returns the exit
/// code.
pub fn main(arg: &str) -> i32 {
    let reply = match serde_json::from_str::<HelperRequest>(arg) {
        Ok(req) => match run(&req) {
            Ok(pid) => HelperReply::Pid(pid),
            Err(e) => HelperReply::Error(e),
        },
        Err(e) => HelperReply::Error(format!("helper request: {e}")),
    };
    // SAFETY: the agent passes the reply pipe as fd 3 and nothing else in this process uses it.
    let mut out = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(3) });
    let text = serde_json::to_vec(&reply).unwrap_or_default();
    let ok = out.write_all(&text).is_ok();
    match (reply, ok) {
        (HelperReply::Pid(_), true) => 0,
        _ => 1,
    }
}
