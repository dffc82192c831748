//! containerd stopped (SIGTERM) or killed (SIGKILL) and started again while eci pods run
//! (local mode, or VM pods with `ECI_TEST_HYPERVISOR=eci-vmm` in `make test-vm`): the tasks are
//! still listed as running, exec, kill and delete work, an exit that happens while containerd is
//! down and one after it is back both reach containerd as /tasks/exit events, and nothing is
//! left at the end.

mod shim_common;

use std::time::Duration;

use nix::sys::signal::Signal;
use shim_common::*;

/// Waits for a /tasks/exit of `id`'s init process with `status`.
fn wait_exit(events: &Events, id: &str, status: u32, timeout: Duration) {
    let got = events.exit_status(id, "", timeout);
    assert_eq!(
        got,
        Some(status),
        "/tasks/exit of {id}; events:\n{}",
        events.all().join("\n")
    );
}

/// An upper bound for an exit to travel to containerd (a VM pod's crosses the guest, on an
/// emulated host in the test host).
fn exit_wait() -> Duration {
    if eci_tests::vm::vm_mode() {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(30)
    }
}

fn restart_while_pods_run(signal: Signal) {
    let Some(mut ctd) = containerd_with_busybox() else {
        return;
    };
    let (long, during, after) = (unique("long"), unique("during"), unique("after"));
    run_detached(&ctd, &long, &["sleep", "3600"]);
    run_detached(&ctd, &after, &["sleep", "3600"]);
    // Exits while containerd is down.
    run_detached(&ctd, &during, &["sh", "-c", "sleep 2; exit 3"]);
    ctd.stop_daemon(signal);
    std::thread::sleep(Duration::from_secs(4));
    // The shims' events wait until the test listens: an event is delivered to the subscribers
    // of the moment, and one that reached containerd before the test subscribed would be lost
    // to the test, not to containerd.
    ctd.restart_with_shim_events_held()
        .expect("start containerd again");
    let events = Events::subscribe(&ctd);
    ctd.let_shim_events_through().expect("shim events through");

    assert_eq!(task_status(&ctd, &long), "RUNNING", "{}", ctd.log_tail());
    assert_eq!(task_status(&ctd, &after), "RUNNING");
    // The exit that happened while containerd was down reaches it once it is back.
    wait_exit(&events, &during, 3, exit_wait());
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
    wait_exit(&events, &after, 137, exit_wait());
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &long]);
    wait_exit(&events, &long, 137, exit_wait());
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
