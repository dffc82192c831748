//! PID 1 after init: runs the agent in a child process and reaps every zombie.
//!
//! Splitting init from the agent (as tini does for Docker) keeps the reaping out of the agent's
//! way: the container core waits for its own children (container processes are children of the
//! agent process, which is also their child subreaper) and gets their exit statuses, while PID 1
//! reaps only what the kernel re-parents to it (orphans outside the agent's subtree, and
//! everything left once the agent is gone) with waitpid(-1). No status is ever stolen, and the
//! agent needs no knowledge of init.

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::console::pid1_log;
use super::error::Pid1Error;
use super::power::power_off;

/// Signals PID 1 handles synchronously (sigwait): blocked before the fork, so none is lost.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGPWR,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(sig);
    }
    set
}

/// Forks; the child unblocks signals and runs `agent`, exiting with its return value. The parent
/// supervises it and powers the VM off once it is gone. Must be called while PID 1 is still
/// single-threaded (fork copies only the calling thread).
pub fn spawn_agent_and_supervise(agent: impl FnOnce() -> i32) -> ! {
    let signals = handled_signals();
    if let Err(e) = signals.thread_block() {
        power_off(&format!("blocking signals: {e}"));
    }
    // SAFETY: PID 1 is single-threaded here (no runtime or thread has been started), so the child
    // may run arbitrary code after fork.
    match unsafe { fork() } {
        Err(e) => power_off(&super::error_chain(&Pid1Error::Fork(e))),
        Ok(ForkResult::Child) => {
            if let Err(e) =
                nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&signals), None)
            {
                pid1_log!("agent: unblocking signals: {e}");
                std::process::exit(1);
            }
            std::process::exit(agent())
        }
        Ok(ForkResult::Parent { child }) => supervise(child, &signals),
    }
}

fn supervise(agent: Pid, signals: &SigSet) -> ! {
    let mut orphans_reaped: u64 = 0;
    // Children that exited before the signals were blocked sent a SIGCHLD nobody saw.
    if let Some(reason) = reap_all(agent, &mut orphans_reaped) {
        power_off(&reason);
    }
    loop {
        let sig = match signals.wait() {
            Ok(sig) => sig,
            Err(e) => power_off(&super::error_chain(&Pid1Error::Signals(e))),
        };
        match sig {
            Signal::SIGCHLD => {
                if let Some(reason) = reap_all(agent, &mut orphans_reaped) {
                    pid1_log!("reaped {orphans_reaped} orphaned processes");
                    power_off(&reason);
                }
            }
            Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR => {
                pid1_log!("{sig} received: stopping the agent");
                let _ = kill(agent, Signal::SIGTERM);
            }
            other => pid1_log!("{other} ignored"),
        }
    }
}

/// Reaps every exited child. Returns why to power off when the agent itself is gone.
fn reap_all(agent: Pid, orphans_reaped: &mut u64) -> Option<String> {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => {
                return Some(format!("agent exited with status {code}"));
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == agent => {
                return Some(format!("agent killed by {sig}"));
            }
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return None,
            Ok(_) => *orphans_reaped += 1,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                pid1_log!("waitpid: {e}");
                return None;
            }
        }
    }
}
