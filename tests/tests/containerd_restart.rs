//! containerd stopped (SIGTERM) or killed (SIGKILL) and started again while eci pods run
//! (local mode): the tasks are still listed as running, exec, kill and delete work, an exit that
//! happens while containerd is down and one after it is back both reach containerd as
//! /tasks/exit events, and nothing is left at the end.

mod shim_common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use eci_tests::containerd::Containerd;
use nix::sys::signal::Signal;
use shim_common::*;

/// `ctr events` in the background: its lines, as they come.
struct Events {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Events {
    fn follow(ctd: &Containerd) -> Self {
        let mut child = ctd
            .ctr_command(&["events"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("ctr events");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a /tasks/exit of the init process of `id` with `status`.
    fn wait_exit(&mut self, id: &str, status: u32, timeout: Duration) {
        let wanted = |l: &str| {
            l.contains("/tasks/exit")
                && l.contains(&format!("\"container_id\":\"{id}\""))
                && l.contains(&format!("\"id\":\"{id}\""))
                && l.contains(&format!("\"exit_status\":{status}"))
        };
        if self.seen.iter().any(|l| wanted(l)) {
            return;
        }
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = wanted(&line);
                    self.seen.push(line);
                    if done {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "no /tasks/exit of {id} with status {status} within {timeout:?}; events:\n{}",
            self.seen.join("\n")
        );
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn restart_while_pods_run(signal: Signal) {
    let Some(mut ctd) = containerd_with_busybox() else {
        return;
    };
    let (long, during, after) = (unique("long"), unique("during"), unique("after"));
    run_detached_local(&ctd, &long, &["sleep", "3600"]);
    run_detached_local(&ctd, &after, &["sleep", "3600"]);
    // Exits while containerd is down.
    run_detached_local(&ctd, &during, &["sh", "-c", "sleep 2; exit 3"]);
    ctd.stop_daemon(signal);
    std::thread::sleep(Duration::from_secs(4));
    ctd.restart().expect("start containerd again");
    let mut events = Events::follow(&ctd);

    assert_eq!(task_status(&ctd, &long), "RUNNING", "{}", ctd.log_tail());
    assert_eq!(task_status(&ctd, &after), "RUNNING");
    // The exit that happened while containerd was down reaches it once it is back.
    events.wait_exit(&during, 3, Duration::from_secs(30));
    wait_stopped(&ctd, &during);
    let out = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        &long,
        "echo",
        "still here",
    ]);
    assert_eq!(out, "still here\n");
    // An exit after the restart.
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &after]);
    events.wait_exit(&after, 137, Duration::from_secs(30));
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &long]);
    events.wait_exit(&long, 137, Duration::from_secs(30));
    for id in [&long, &during, &after] {
        wait_stopped(&ctd, id);
        ctd.ctr_ok(&["task", "delete", id]);
        ctd.ctr_ok(&["container", "delete", id]);
    }
    drop(events);
    assert_nothing_left(&ctd, &[long, during, after]);
}

#[test]
fn containerd_stopped_with_sigterm_and_started_again() {
    restart_while_pods_run(Signal::SIGTERM);
}

#[test]
fn containerd_killed_with_sigkill_and_started_again() {
    restart_while_pods_run(Signal::SIGKILL);
}
