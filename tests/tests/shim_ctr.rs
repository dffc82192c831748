//! containerd-shim-eci-v2 end to end with `ctr` and a private containerd: local mode here, VM
//! mode when run by scripts/vm-tier with `ECI_TEST_HYPERVISOR=eci-vmm` (make test does both).

mod shim_common;

use shim_common::*;

#[test]
fn ctr_run_echo_prints_and_leaves_nothing() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("echo");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "echo",
        "hello",
    ]);
    assert_eq!(out, "hello\n");
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn ctr_run_exit_code_is_the_programs() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    for runtime in [ECI, RUNC] {
        let id = unique("exit");
        let out = ctd.ctr(&[
            "run",
            "--rm",
            "--runtime",
            runtime,
            eci_tests::images::BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]);
        assert_eq!(
            out.status.code(),
            Some(7),
            "{runtime}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n", "{runtime}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("err"),
            "{runtime}"
        );
    }
}

#[test]
fn ctr_run_with_tty() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("tty");
    // `ctr run -t` uses the terminal on its stdin for both directions: give it a pty and read
    // the container's output from the pty's leader.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut cmd = ctd.ctr_command(&[
        "run",
        "--rm",
        "-t",
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "tty; echo done",
    ]);
    cmd.stdin(std::process::Stdio::from(pty.slave));
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut leader = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once ctr, the last holder of the follower, exits.
        while let Ok(n) = leader.read(&mut buf) {
            if n == 0 {
                break;
            }
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let status = child.wait().unwrap();
    let text = reader.join().unwrap();
    assert!(status.success(), "ctr -t failed: {text}");
    assert!(
        text.contains("/dev/pts/") || text.contains("/dev/console"),
        "not a tty: {text}"
    );
    assert!(
        text.contains("done\r"),
        "a tty turns \\n into \\r\\n: {text:?}"
    );
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn ctr_task_exec_runs_in_the_container() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("exec");
    run_detached(&ctd, &id, &["sh", "-c", "echo marker > /tmp/m; sleep 300"]);
    let mut out = String::new();
    for _ in 0..50 {
        out = ctd.ctr_ok(&["task", "exec", "--exec-id", "e1", &id, "cat", "/tmp/m"]);
        if out == "marker\n" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(out, "marker\n");
    let failing = ctd.ctr(&["task", "exec", "--exec-id", "e2", &id, "sh", "-c", "exit 3"]);
    assert_eq!(failing.status.code(), Some(3));
    // ctr deletes an exec once it ended; its id can then be used again, as with runc.
    let again = ctd.ctr_ok(&["task", "exec", "--exec-id", "e2", &id, "echo", "again"]);
    assert_eq!(again, "again\n");
    kill_and_delete(&ctd, &id, &["-s", "SIGKILL"]);
    assert_nothing_left(&ctd, &[id]);
}

/// An exec'd process is confined by the container's seccomp profile like its init (containerd's
/// default profile through `ctr run --seccomp`).
#[test]
fn exec_gets_the_containers_seccomp_profile() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("seccomp");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--seccomp",
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "sleep",
        "300",
    ]);
    let status = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "s",
        &id,
        "cat",
        "/proc/self/status",
    ]);
    assert!(
        status.lines().any(|l| l == "Seccomp:\t2"),
        "the exec runs without the filter: {status}"
    );
    kill_and_delete(&ctd, &id, &["-s", "SIGKILL"]);
    assert_nothing_left(&ctd, &[id]);
}

/// `ctr task kill <kill_flags> id`, then, once the task has stopped, deletes the task and the
/// container.
fn kill_and_delete(ctd: &eci_tests::containerd::Containerd, id: &str, kill_flags: &[&str]) {
    let mut kill = vec!["task", "kill"];
    kill.extend_from_slice(kill_flags);
    kill.push(id);
    ctd.ctr_ok(&kill);
    wait_stopped(ctd, id);
    ctd.ctr_ok(&["task", "delete", id]);
    ctd.ctr_ok(&["container", "delete", id]);
}

/// A running `ctr events`, given a moment to subscribe before the caller acts.
fn subscribe_events(ctd: &eci_tests::containerd::Containerd) -> std::process::Child {
    let events = ctd
        .events_command()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    events
}

/// Waits `settle` for the last events to arrive, stops `ctr events` and returns what it printed.
fn collect_events(mut events: std::process::Child, settle: std::time::Duration) -> String {
    std::thread::sleep(settle);
    let _ = events.kill();
    String::from_utf8_lossy(&events.wait_with_output().unwrap().stdout).into_owned()
}

#[test]
fn kill_gives_137_like_runc() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    for runtime in [ECI, RUNC] {
        let id = unique("kill");
        let mut run = ctd
            .ctr_command(&[
                "run",
                "--rm",
                "--runtime",
                runtime,
                eci_tests::images::BUSYBOX_IMAGE,
                &id,
                "sleep",
                "300",
            ])
            .spawn()
            .unwrap();
        wait_running(&ctd, &id);
        ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
        let status = run.wait().unwrap();
        assert_eq!(status.code(), Some(137), "{runtime}");
    }
}

#[test]
fn metrics_ps_pause_resume() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("ops");
    run_detached(&ctd, &id, &["sh", "-c", "sleep 300 & wait"]);
    let metrics = ctd.ctr_ok(&["task", "metrics", &id]);
    assert!(
        metrics.contains("memory.usage_in_bytes") || metrics.contains("memory.usage"),
        "{metrics}"
    );
    assert!(metrics.contains("pids.current"), "{metrics}");

    // The shell forks sleep after it started: wait for both (slow in a VM on an emulated host).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (ps, pids) = loop {
        let ps = ctd.ctr_ok(&["task", "ps", &id]);
        let pids: Vec<u32> = ps
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect();
        if pids.len() >= 2 || std::time::Instant::now() > deadline {
            break (ps, pids);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(pids.len() >= 2, "sh and sleep expected: {ps}");
    if !vm_mode() {
        // Local mode: host pids (a VM's processes have only guest pids).
        let comms: Vec<String> = pids
            .iter()
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .collect();
        assert!(
            comms.contains(&"sleep".to_owned()),
            "host pids expected, got {pids:?} = {comms:?}"
        );
    }

    ctd.ctr_ok(&["task", "pause", &id]);
    assert_eq!(task_status(&ctd, &id), "PAUSED");
    ctd.ctr_ok(&["task", "resume", &id]);
    assert_eq!(task_status(&ctd, &id), "RUNNING");

    kill_and_delete(&ctd, &id, &["-a", "-s", "SIGKILL"]);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn events_show_exit_status() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("events");
    let events = subscribe_events(&ctd);
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "exit 5",
    ]);
    assert_eq!(out.status.code(), Some(5));
    let text = collect_events(events, std::time::Duration::from_millis(300));
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&id))
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(topics.contains(&topic), "{topic} missing in {text}");
    }
    let exit = text
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains(&id))
        .unwrap();
    assert!(
        exit.contains("\"exit_status\":5") && exit.contains("exited_at"),
        "{exit}"
    );
}

#[test]
fn stdin_reaches_the_container_and_closes() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("stdin");
    let mut child = ctd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            ECI,
            eci_tests::images::BUSYBOX_IMAGE,
            &id,
            "sh",
            "-c",
            "wc -l; cat",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"one\ntwo\nthree\n").unwrap();
        // Dropping stdin closes it: ctr calls CloseIO and `wc` sees EOF.
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", ctd.log_tail());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn exec_events() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("execev");
    run_detached(&ctd, &id, &["sleep", "300"]);
    let events = subscribe_events(&ctd);
    assert_eq!(
        ctd.ctr_ok(&["task", "exec", "--exec-id", "ev1", &id, "echo", "x"]),
        "x\n"
    );
    let text = collect_events(events, std::time::Duration::from_millis(300));
    for topic in ["/tasks/exec-added", "/tasks/exec-started"] {
        assert!(
            text.lines().any(|l| l.contains(topic) && l.contains("ev1")),
            "{topic} missing: {text}"
        );
    }
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/exit") && l.contains("\"id\":\"ev1\"")),
        "exec exit missing: {text}"
    );
    kill_and_delete(&ctd, &id, &["-s", "SIGKILL"]);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn oom_kill_publishes_tasks_oom() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("oom");
    let events = subscribe_events(&ctd);
    // 32 MiB limit; the shell doubles a string until the kernel's OOM killer ends it.
    let out = ctd.ctr(&[
        "run",
        "--rm",
        "--memory-limit",
        "33554432",
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "x=0123456789; while :; do x=$x$x; done",
    ]);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the OOM killer must end the task"
    );
    let text = collect_events(events, std::time::Duration::from_millis(800));
    // A run that failed before its task started (say, a pod whose VM never came up) is not the
    // OOM path under test: say what ctr said instead of blaming the missing event.
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/start") && l.contains(&id)),
        "the task never started; ctr: {}\nevents: {text}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.lines()
            .any(|l| l.contains("/tasks/oom") && l.contains(&id)),
        "/tasks/oom missing: {text}"
    );
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn file_and_binary_log_uris() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("file.log");
    let id = unique("filelog");
    let uri = format!("file://{}", log.display());
    ctd.ctr_ok(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &id,
        "sh",
        "-c",
        "echo to-file; echo err-to-file >&2",
    ]);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("to-file\n") && text.contains("err-to-file\n"),
        "{text:?}"
    );

    // A binary:// logger gets stdout on fd 3 and stderr on fd 4 and closes fd 5 when ready.
    let logger = tmp.path().join("logger.sh");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\necho \"$CONTAINER_NAMESPACE/$CONTAINER_ID $*\" > {dir}/args\nexec 5>&-\ncat <&3 > {dir}/out &\ncat <&4 > {dir}/err\nwait\n",
            dir = tmp.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let bin_id = unique("binlog");
    let uri = format!("binary://{}?tag=t1", logger.display());
    ctd.ctr_ok(&[
        "run",
        "--rm",
        "--log-uri",
        &uri,
        "--runtime",
        ECI,
        eci_tests::images::BUSYBOX_IMAGE,
        &bin_id,
        "sh",
        "-c",
        "echo to-binary; echo err-to-binary >&2",
    ]);
    let read = |name: &str| {
        let path = tmp.path().join(name);
        for _ in 0..100 {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if !text.is_empty() {
                return text;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        String::new()
    };
    assert_eq!(read("out"), "to-binary\n");
    assert_eq!(read("err"), "err-to-binary\n");
    assert_eq!(read("args"), format!("{}/{bin_id} tag t1\n", ctd.namespace));
    assert_nothing_left(&ctd, &[id, bin_id]);
}
