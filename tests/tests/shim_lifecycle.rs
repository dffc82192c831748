//! containerd-shim-eci-v2: resource release after many cycles and after crashes, hooks, and
//! clear errors for bad runtime options and specs.

mod shim_common;

use std::time::Duration;

use eci_tests::images::BUSYBOX_IMAGE;
use shim_common::*;

#[test]
fn fifty_create_delete_cycles_leave_nothing() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let mut ids = Vec::new();
    for i in 0..50 {
        let id = unique("cycle");
        let out = ctd.ctr_ok(&[
            "run",
            "--rm",
            "--runtime",
            ECI,
            BUSYBOX_IMAGE,
            &id,
            "echo",
            &i.to_string(),
        ]);
        assert_eq!(out, format!("{i}\n"));
        ids.push(id);
    }
    assert_nothing_left(&ctd, &ids);
    assert!(
        ctd.ctr_ok(&["task", "ls"]).lines().count() <= 1,
        "tasks left"
    );
}

/// Host pid of the agent of pod `pod_id`.
fn agent_pid(ctd: &eci_tests::containerd::Containerd, pod_id: &str) -> Option<u32> {
    let dir = pod_dir(ctd, pod_id);
    processes_with(dir.to_str().unwrap())
        .into_iter()
        .find(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            exe.file_name().is_some_and(|n| n == "eci-agent")
        })
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    for _ in 0..200 {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

/// True when `pid` has exited: no longer in /proc, or a zombie not yet reaped.
fn is_gone_or_zombie(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses and may contain any byte.
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
}

fn is_running(ctd: &eci_tests::containerd::Containerd, id: &str) -> bool {
    ctd.ctr_ok(&["task", "ls"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(id) && l.contains("RUNNING"))
}

#[test]
fn killing_the_agent_ends_the_task_non_zero_and_releases_everything() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("agentkill");
    let run = ctd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            ECI,
            BUSYBOX_IMAGE,
            &id,
            "sleep",
            "3117",
        ])
        .spawn()
        .unwrap();
    wait_for("the task to run", || is_running(&ctd, &id).then_some(()));
    let agent = wait_for("the agent", || agent_pid(&ctd, &id));
    let workload: Vec<u32> = processes_with("sleep 3117");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = run.wait_with_output().unwrap().status;
    assert_eq!(
        status.code(),
        Some(137),
        "task must exit non-zero when its agent dies"
    );
    for pid in workload {
        let alive = !is_gone_or_zombie(pid);
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !(alive && String::from_utf8_lossy(&cmdline).contains("3117")),
            "workload {pid} survived its agent"
        );
    }
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn killed_shim_is_cleaned_up_by_the_delete_action() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("shimkill");
    run_detached(&ctd, &id, &["sleep", "300"]);
    let agent = wait_for("the agent", || agent_pid(&ctd, &id));
    let shim = *shim_processes(&ctd).first().expect("shim process");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices the dead shim and runs `containerd-shim-eci-v2 delete`.
    wait_for("the agent to be killed", || {
        is_gone_or_zombie(agent).then_some(())
    });
    wait_for("the task to go", || {
        (!ctd.ctr_ok(&["task", "ls"]).contains(&id)).then_some(())
    });
    ctd.ctr_ok(&["container", "delete", &id]);
    assert_nothing_left(&ctd, &[id]);
}

fn write_config(dir: &std::path::Path, text: &str) -> String {
    let path = dir.join("shim.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `ctr run --rm` of busybox `true` as container `id` with the shim options file `config`.
fn run_true_with_runtime_config(
    ctd: &eci_tests::containerd::Containerd,
    config: &str,
    id: &str,
) -> std::process::Output {
    ctd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        "--runtime-config-path",
        config,
        BUSYBOX_IMAGE,
        id,
        "true",
    ])
}

#[test]
fn bad_runtime_options_give_clear_errors() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        (
            "/nonexistent/eci/shim.toml".to_owned(),
            "/nonexistent/eci/shim.toml",
        ),
        (
            write_config(tmp.path(), "hypervisor = \"kvm\"\n"),
            "hypervisor",
        ),
    ];
    let mut ids = Vec::new();
    for (config, expected) in cases {
        let id = unique("badopt");
        let out = run_true_with_runtime_config(&ctd, &config, &id);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(expected),
            "error must name {expected:?}: {stderr}"
        );
        ctd.ctr(&["container", "delete", &id]);
        ids.push(id);
    }
    // VM mode where no guest can boot (PVM, no KVM) or without guest images: refused at once,
    // saying why, never a wait for a guest.
    let id = unique("vmm");
    let config = write_config(
        tmp.path(),
        "hypervisor = \"eci-vmm\"\nkernel = \"/nonexistent/eci/vmlinux\"\n",
    );
    let started = std::time::Instant::now();
    let out = run_true_with_runtime_config(&ctd, &config, &id);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("eci-vmm")
            && (stderr.contains("cannot run here") || stderr.contains("/nonexistent/eci/vmlinux")),
        "{stderr}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "refused at once"
    );
    ctd.ctr(&["container", "delete", &id]);
    ids.push(id);
    assert_nothing_left(&ctd, &ids);
}

/// `ctr oci spec` with `edit` applied, written to `dir/config.json`, rooted at a busybox rootfs.
fn spec_file(
    ctd: &eci_tests::containerd::Containerd,
    dir: &std::path::Path,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let rootfs = dir.join("rootfs");
    eci_tests::rootfs::build_busybox_rootfs(&rootfs).unwrap();
    let mut spec: serde_json::Value = serde_json::from_str(&ctd.ctr_ok(&["oci", "spec"])).unwrap();
    spec["root"]["path"] = rootfs.display().to_string().into();
    spec["root"]["readonly"] = false.into();
    spec["process"]["env"] = serde_json::json!(["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    // ctr's default is the namespace's cgroup, shared by every container: let the shim give
    // each container its own (/<namespace>/<id>).
    spec["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    edit(&mut spec);
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    path.display().to_string()
}

#[test]
fn bad_spec_gives_a_clear_error() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let spec = spec_file(&ctd, tmp.path(), |s| {
        s["process"]["args"] = serde_json::json!(["true"]);
        s["process"]["cwd"] = "relative/dir".into();
    });
    let id = unique("badspec");
    let out = ctd.ctr(&["run", "--rm", "--runtime", ECI, "--config", &spec, &id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cwd"),
        "error must name the field: {stderr}"
    );
    ctd.ctr(&["container", "delete", &id]);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
fn create_runtime_hook_runs_on_the_host_with_state() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state.json");
    let hook = serde_json::json!([{ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", state.display())], "timeout": 10 }]);
    let failing = serde_json::json!([{ "path": "/bin/sh", "args": ["sh", "-c", "echo hook says no >&2; exit 3"] }]);
    let poststart = tmp.path().join("poststart.json");
    let poststop = tmp.path().join("poststop.json");
    let good = spec_file(&ctd, tmp.path(), |s| {
        s["process"]["args"] = serde_json::json!(["echo", "ran"]);
        s["hooks"] = serde_json::json!({
            "createRuntime": hook,
            "poststart": [{ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", poststart.display())] }],
            "poststop": [{ "path": "/bin/sh", "args": ["sh", "-c", format!("cat > {}", poststop.display())] }],
        });
    });
    let id = unique("hook");
    let out = ctd.ctr_ok(&["run", "--rm", "--runtime", ECI, "--config", &good, &id]);
    assert_eq!(out, "ran\n");
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state).expect("hook wrote its file")).unwrap();
    assert_eq!(written["id"], id.as_str());
    assert_eq!(written["status"], "created");
    assert!(written["pid"].as_u64().unwrap_or(0) > 1, "{written}");
    let started: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&poststart).expect("poststart ran")).unwrap();
    assert_eq!(started["status"], "running");
    let stopped: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&poststop).expect("poststop ran")).unwrap();
    assert_eq!(stopped["status"], "stopped");
    assert_eq!(stopped["id"], id.as_str());

    let bad_dir = tmp.path().join("bad");
    std::fs::create_dir(&bad_dir).unwrap();
    let bad = spec_file(&ctd, &bad_dir, |s| {
        s["process"]["args"] = serde_json::json!(["echo", "must not run"]);
        s["hooks"] = serde_json::json!({ "createRuntime": failing });
    });
    let bad_id = unique("badhook");
    let out = ctd.ctr(&["run", "--rm", "--runtime", ECI, "--config", &bad, &bad_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a failing createRuntime hook must fail the create"
    );
    assert!(
        stderr.contains("createRuntime") && stderr.contains("hook says no"),
        "{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("must not run"));
    ctd.ctr(&["container", "delete", &bad_id]);

    // A hook past its timeout is killed and fails the create.
    let slow_dir = tmp.path().join("slow");
    std::fs::create_dir(&slow_dir).unwrap();
    let slow = spec_file(&ctd, &slow_dir, |s| {
        s["process"]["args"] = serde_json::json!(["true"]);
        s["hooks"] = serde_json::json!({ "prestart": [{ "path": "/bin/sleep", "args": ["sleep", "29"], "timeout": 1 }] });
    });
    let slow_id = unique("slowhook");
    let started = std::time::Instant::now();
    let out = ctd.ctr(&["run", "--rm", "--runtime", ECI, "--config", &slow, &slow_id]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("timed out"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout was not applied"
    );
    ctd.ctr(&["container", "delete", &slow_id]);
    assert!(
        processes_with("sleep 29").iter().all(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| s.contains(") Z"))
                .unwrap_or(true)
        }),
        "the timed-out hook must be killed"
    );
    assert_nothing_left(&ctd, &[id, bad_id, slow_id]);
}

/// `ECI_SHIM_CONFIG` in containerd's environment reaches the shims it starts: a bad file named
/// there fails `ctr run` with its name, and the runtime options' path still wins over it.
#[test]
fn shim_config_from_containerds_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("env-shim.toml");
    std::fs::write(&bad, "hypervisor = \"kvm\"\n").unwrap();
    let Some(ctd) = containerd_with(eci_tests::containerd::ContainerdOptions {
        env: vec![("ECI_SHIM_CONFIG".into(), bad.display().to_string())],
        ..Default::default()
    }) else {
        return;
    };
    let id = unique("envcfg");
    let out = ctd.ctr(&["run", "--rm", "--runtime", ECI, BUSYBOX_IMAGE, &id, "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a bad ECI_SHIM_CONFIG must fail");
    assert!(
        stderr.contains("env-shim.toml") && stderr.contains("hypervisor"),
        "error must name the file and field: {stderr}"
    );
    ctd.ctr(&["container", "delete", &id]);

    let good = write_config(tmp.path(), &shim_config_base());
    let id2 = unique("envcfg");
    let out = run_true_with_runtime_config(&ctd, &good, &id2);
    assert!(
        out.status.success(),
        "the runtime options' config wins over ECI_SHIM_CONFIG: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(&ctd, &[id, id2]);
}

/// Namespaces (mnt, net, uts) of process `pid` as `readlink` prints them.
fn namespaces_of(pid: &str) -> String {
    ["mnt", "net", "uts"]
        .iter()
        .map(|ns| {
            let link = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
            format!("{}\n", link.display())
        })
        .collect()
}

/// Every OCI hook kind runs where the runtime spec puts it: prestart, createRuntime, poststart
/// and poststop in the runtime's (host's) namespaces, run by the shim; createContainer and
/// startContainer in the container's namespaces, run by the agent (startContainer after
/// pivot_root, so its path and files are the container's). Each gets the state on stdin.
#[test]
fn every_hook_kind_runs_where_the_spec_puts_it() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    // Hooks in the runtime's mount namespace write to `out`; startContainer, in the container's
    // root, writes to the same directory bound at /hooks.
    let hook = |kind: &str, dir: &str| {
        let script = format!(
            "cat > {dir}/{kind}.json; for ns in mnt net uts; do readlink /proc/self/ns/$ns; \
             done > {dir}/{kind}.ns; echo {kind} >> {dir}/order"
        );
        serde_json::json!([{ "path": "/bin/sh", "args": ["sh", "-c", script],
                             "env": ["PATH=/usr/bin:/bin"], "timeout": 10 }])
    };
    let host_dir = out.display().to_string();
    let spec = spec_file(&ctd, tmp.path(), |s| {
        s["process"]["args"] = serde_json::json!(["sleep", "60"]);
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/hooks", "type": "bind", "source": host_dir,
            "options": ["rbind", "rw"]
        }));
        s["hooks"] = serde_json::json!({
            "prestart": hook("prestart", &host_dir),
            "createRuntime": hook("createRuntime", &host_dir),
            "createContainer": hook("createContainer", &host_dir),
            "startContainer": hook("startContainer", "/hooks"),
            "poststart": hook("poststart", &host_dir),
            "poststop": hook("poststop", &host_dir),
        });
    });
    let id = unique("allhooks");
    ctd.ctr_ok(&["run", "-d", "--runtime", ECI, "--config", &spec, &id]);
    let pid = wait_for("the task's pid", || {
        ctd.ctr_ok(&["task", "ls"])
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
    });
    let host_ns = namespaces_of("self");
    let container_ns = namespaces_of(&pid);
    assert_ne!(
        host_ns, container_ns,
        "the container has namespaces of its own"
    );
    wait_for("poststart", || {
        out.join("poststart.ns").exists().then_some(())
    });
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_for("the task to stop", || {
        ctd.ctr_ok(&["task", "ls"])
            .lines()
            .any(|l| l.starts_with(&format!("{id} ")) && l.contains("STOPPED"))
            .then_some(())
    });
    ctd.ctr_ok(&["task", "delete", &id]);
    ctd.ctr_ok(&["container", "delete", &id]);

    let read = |name: &str| {
        std::fs::read_to_string(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for kind in ["prestart", "createRuntime", "poststart", "poststop"] {
        assert_eq!(
            read(&format!("{kind}.ns")),
            host_ns,
            "{kind} runs on the host"
        );
    }
    for kind in ["createContainer", "startContainer"] {
        assert_eq!(
            read(&format!("{kind}.ns")),
            container_ns,
            "{kind} runs in the container's namespaces"
        );
    }
    for kind in [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ] {
        let state: serde_json::Value = serde_json::from_str(&read(&format!("{kind}.json")))
            .unwrap_or_else(|e| panic!("{kind}'s state: {e}"));
        assert_eq!(state["id"], id.as_str(), "{kind}'s state: {state}");
    }
    // The container hooks run when the agent creates and starts the container; the host's
    // prestart and createRuntime hooks need the created container's pid, so they come after
    // createContainer (see the README's limits).
    let order: Vec<String> = read("order").lines().map(str::to_owned).collect();
    assert_eq!(
        order,
        [
            "createContainer",
            "prestart",
            "createRuntime",
            "startContainer",
            "poststart",
            "poststop"
        ],
    );
    assert_nothing_left(&ctd, &[id]);
}
