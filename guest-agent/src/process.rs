//! A process the agent started (a container's init or an exec): its pid, its stdio ends waiting
//! for stream connections, and its exit status once the reaper collected it.

use crate::cgroup::OomCounter;
use eci_protocol::agent::{ExitReason, WaitProcessResponse};
use nix::sys::wait::WaitStatus;
use parking_lot::Mutex;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use tokio::sync::watch;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code like runc: the status, or 128 + signal.
    pub code: i32,
    /// Why it ended.
    pub reason: ExitReason,
    /// The killing signal, 0 when it returned normally.
    pub signal: u32,
    /// Unix time of the exit in nanoseconds.
    pub at_unix_nanos: i64,
}

impl ExitStatus {
    /// Builds the status from a wait result; a SIGKILL counts as an OOM kill when the memory
    /// cgroup's OOM-kill counter moved past `oom_baseline` meanwhile.
    pub fn from_wait(status: WaitStatus, oom: Option<(&OomCounter, u64)>) -> Option<Self> {
        let at_unix_nanos = crate::unix_nanos_now();
        match status {
            WaitStatus::Exited(_, code) => Some(Self {
                code,
                reason: ExitReason::EXITED,
                signal: 0,
                at_unix_nanos,
            }),
            WaitStatus::Signaled(_, sig, _) => {
                let signal = sig as i32 as u32;
                let oom_killed = sig == nix::sys::signal::Signal::SIGKILL
                    && oom.is_some_and(|(counter, baseline)| counter.read() > baseline);
                Some(Self {
                    code: 128 + signal as i32,
                    reason: if oom_killed {
                        ExitReason::OOM_KILLED
                    } else {
                        ExitReason::SIGNALED
                    },
                    signal,
                    at_unix_nanos,
                })
            }
            _ => None,
        }
    }

    /// The wire form.
    pub fn to_response(self) -> WaitProcessResponse {
        WaitProcessResponse {
            exit_code: self.code,
            exited_at_unix_nanos: self.at_unix_nanos,
            reason: self.reason.into(),
            signal: self.signal,
            ..Default::default()
        }
    }
}

/// The agent's ends of a process's stdio, each taken once by a stream connection.
#[derive(Default)]
pub struct StdioEnds {
    /// Write end of the stdin pipe (or a dup of the tty master).
    pub stdin: Option<OwnedFd>,
    /// Read end of the stdout pipe (or a dup of the tty master).
    pub stdout: Option<OwnedFd>,
    /// Read end of the stderr pipe.
    pub stderr: Option<OwnedFd>,
    /// The tty master, kept for resizes.
    pub tty: Option<OwnedFd>,
    /// The attached stdin connection, kept so that CloseStdin can end it.
    pub stdin_conn: Option<UnixStream>,
    /// Set once stdin was closed; later stdin streams are refused.
    pub stdin_closed: bool,
}

/// One process of a container.
pub struct Process {
    /// Container it belongs to.
    pub container_id: String,
    /// "" for the init process.
    pub exec_id: String,
    /// PID in the agent's PID namespace.
    pub pid: i32,
    /// OOM counter of the container's memory cgroup and its value when the process started.
    pub oom: Option<(OomCounter, u64)>,
    /// Stdio ends not yet handed to streams.
    pub stdio: Mutex<StdioEnds>,
    exit: watch::Sender<Option<ExitStatus>>,
}

impl Process {
    /// A running process with its stdio ends.
    pub fn new(
        container_id: &str,
        exec_id: &str,
        pid: i32,
        oom: Option<OomCounter>,
        stdio: StdioEnds,
    ) -> Self {
        let oom = oom.map(|c| {
            let baseline = c.read();
            (c, baseline)
        });
        Self {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            pid,
            oom,
            stdio: Mutex::new(stdio),
            exit: watch::channel(None).0,
        }
    }

    /// Records the exit (called by the reaper once).
    pub fn set_exited(&self, status: ExitStatus) {
        self.exit.send_replace(Some(status));
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited.
    pub async fn wait(&self) -> ExitStatus {
        let mut rx = self.exit.subscribe();
        loop {
            if let Some(status) = *rx.borrow_and_update() {
                return status;
            }
            if rx.changed().await.is_err() {
                unreachable!("the sender lives in self");
            }
        }
    }
}
