//! Waiting for the shim's own children.
//!
//! The shim library reaps every child of the shim (it is a subreaper, so orphaned processes of a
//! dead sandbox land here too) and reports exits through its monitor. Children the shim starts
//! itself (sandbox processes, hooks) are therefore waited for through a monitor subscription that
//! exists before the child does, never with `waitpid` of their own.

use std::time::Duration;

use containerd_shim::{
    asynchronous::monitor::{monitor_subscribe, monitor_unsubscribe},
    monitor::{Subject, Topic},
};
use tokio::sync::oneshot;

/// A subscription for the exit of one pid, taken before that pid exists.
pub struct ExitSubscription {
    inner: containerd_shim::asynchronous::monitor::Subscription,
}

impl ExitSubscription {
    pub async fn new() -> std::io::Result<Self> {
        let inner = monitor_subscribe(Topic::Pid)
            .await
            .map_err(std::io::Error::other)?;
        Ok(Self { inner })
    }

    /// Waits for `pid` to exit; returns its status as the shell reports it (128 + signal when
    /// killed).
    pub async fn wait(mut self, pid: i32) -> i32 {
        let mut code = 255;
        while let Some(event) = self.inner.rx.recv().await {
            if matches!(event.subject, Subject::Pid(p) if p == pid) {
                code = event.exit_code;
                break;
            }
        }
        let _ = monitor_unsubscribe(self.inner.id).await;
        code
    }

    /// Like [`Self::wait`], in the background: the receiver gets the status.
    pub fn watch(self, pid: i32) -> oneshot::Receiver<i32> {
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let _ = tx.send(self.wait(pid).await);
        });
        rx
    }

    /// Waits at most `timeout`; on expiry kills `pid` with SIGKILL and still waits for its exit.
    /// Returns the status and whether the timeout struck.
    pub async fn wait_or_kill(self, pid: i32, timeout: Duration) -> (i32, bool) {
        let mut rx = self.watch(pid);
        match tokio::time::timeout(timeout, &mut rx).await {
            Ok(code) => (code.unwrap_or(255), false),
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                (rx.await.unwrap_or(255), true)
            }
        }
    }
}
