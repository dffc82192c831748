//! Collects the exit status of the processes the agent started.
//!
//! libcontainer waits for its own helper processes by pid, so the reaper must never wait for
//! "any child": it only waits for the pids registered with it. A child that exits before it is
//! registered stays a zombie until [`Reaper::register`] collects it.

use crate::process::{ExitStatus, Process};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// The registry of processes to reap.
#[derive(Default)]
pub struct Reaper {
    processes: Mutex<HashMap<i32, Arc<Process>>>,
}

impl Reaper {
    /// Registers `process` and collects it at once if it has already exited.
    pub fn register(&self, process: Arc<Process>) {
        let pid = process.pid;
        self.processes.lock().insert(pid, process);
        self.reap_registered();
    }

    /// Waits (without blocking) for every registered pid; call on SIGCHLD.
    pub fn reap_registered(&self) {
        let mut processes = self.processes.lock();
        processes.retain(|&pid, process| match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => true,
            Ok(status) => match ExitStatus::from_wait(status, process.oom.as_ref().map(|(c, b)| (c, *b))) {
                Some(exit) => {
                    tracing::debug!(pid, container = %process.container_id, exec = %process.exec_id, code = exit.code, "process exited");
                    process.set_exited(exit);
                    false
                }
                // Stopped or continued: still ours to wait for.
                None => true,
            },
            Err(nix::Error::ECHILD) => {
                // Nobody else should reap our pids; report it rather than hang a waiter.
                tracing::error!(pid, "registered process was reaped elsewhere");
                process.set_exited(ExitStatus {
                    code: 255,
                    reason: eci_protocol::agent::ExitReason::EXIT_REASON_UNSPECIFIED,
                    signal: 0,
                    at_unix_nanos: crate::unix_nanos_now(),
                });
                false
            }
            Err(e) => {
                tracing::warn!(pid, error = %e, "waitpid");
                true
            }
        });
    }

    /// Collects exited children that nobody registered: helpers of a failed create, and (as
    /// PID 1) orphans re-parented to the agent. Only runs while it holds the runtime lock, because
    /// libcontainer waits for its own helpers by pid under that lock.
    pub fn reap_strays(&self) {
        let Some(_guard) = crate::container::RUNTIME_LOCK.try_lock() else {
            return;
        };
        loop {
            // Peek at the next zombie without collecting it.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match nix::sys::wait::waitid(nix::sys::wait::Id::All, flags) {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return,
                },
                Err(_) => return,
            };
            let registered = self.processes.lock().contains_key(&pid.as_raw());
            if registered {
                self.reap_registered();
            } else {
                tracing::debug!(pid = pid.as_raw(), "reaped a stray child");
                let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
            }
        }
    }

    /// Runs forever, reaping on every SIGCHLD and once a second. Must start before the first
    /// child is created.
    pub async fn run(self: Arc<Self>, mut sigchld: tokio::signal::unix::Signal) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            let this = self.clone();
            // The stray reaper may wait for the runtime lock's holder: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || {
                this.reap_registered();
                this.reap_strays();
            })
            .await;
        }
    }
}
