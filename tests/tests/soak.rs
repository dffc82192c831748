//! Soak and kill -9 matrix (issue 16) against a private containerd.
//!
//! - `soak_cycles_leave_nothing`: `ECI_SOAK_CYCLES` (40 here; `make soak`: 1,000) cycles of
//!   `ctr run --rm` (create, start, exit, delete), `ECI_SOAK_PARALLEL` (4) at a time, then a
//!   census of what the runtime holds; prints the cycle p50/p99 and `leaks: N`. Under
//!   `scripts/vm-tier`, a fresh test host after a failed one runs only the cycles left.
//! - `kill_matrix`: kill -9 of each runtime process (shim, pod init, agent; eci-vmm and
//!   virtiofsd in VM mode) and of containerd, at create, while the task runs and during an exec;
//!   each time the task must report an exit (or the create fail) and the census be clean after
//!   containerd's clean-up. Prints the matrix.
//!
//! The pods run in local mode here, or in VMs with `ECI_TEST_HYPERVISOR=eci-vmm` (the images of
//! `make kernel rootfs`, inside `scripts/testhost` on this project's machines: `make test-vm`).
//! In VM mode the agent is the guest's PID 1, out of the host's reach: its row is n/a there.

mod shim_common;

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use eci_tests::{
    census::{self, Census},
    containerd::{Containerd, ContainerdOptions},
    images::BUSYBOX_IMAGE,
};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use shim_common::*;

/// Local mode here, or VM mode (in the test host): what the shim config says and which
/// processes exist.
struct Mode {
    name: String,
    shim_config: String,
}

impl Mode {
    fn from_env() -> Self {
        if eci_tests::vm::vm_mode() {
            eci_tests::vm::require_vm_kvm("soak in VM mode");
            Self {
                name: "vm".into(),
                shim_config: eci_tests::vm::vm_shim_config(""),
            }
        } else {
            Self {
                name: "local".into(),
                shim_config: "hypervisor = \"none\"\n".into(),
            }
        }
    }

    /// Whether process `name` exists on the host in this mode.
    fn has(&self, name: &str) -> bool {
        match name {
            "eci-vmm" | "virtiofsd" => self.name == "vm",
            "eci-pod-init" | "eci-agent" => self.name == "local",
            _ => true,
        }
    }

    /// How long to wait for what takes `local` in local mode: a VM boots first, on an emulated
    /// host in the test host (upper bounds only; nothing is timed).
    fn patience(&self, local: Duration) -> Duration {
        if self.name == "vm" {
            local * 10
        } else {
            local
        }
    }
}

fn env_number(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A containerd of its own namespace (so that its cgroups are told apart from other tests') with
/// busybox imported and the mode's shim config written; None when the machine cannot run it.
fn soak_containerd(mode: &Mode, tag: &str) -> Option<(Containerd, String)> {
    let ctd = containerd_with(ContainerdOptions {
        namespace: Some(format!("eci-{tag}-{}", std::process::id())),
        ..Default::default()
    })?;
    let config = ctd.dir().join("shim-soak.toml");
    std::fs::write(&config, &mode.shim_config).unwrap();
    Some((ctd, config.display().to_string()))
}

/// `ctr run` of busybox `command` as `id` with the eci runtime and `config`; `extra` flags
/// before the image (e.g. `--rm`, `-d`).
fn ctr_run(ctd: &Containerd, config: &str, extra: &[&str], id: &str, command: &[&str]) -> Child {
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--runtime", ECI, "--runtime-config-path", config]);
    args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
    args.extend_from_slice(command);
    ctd.ctr_command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ctr")
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs one cycle and returns the census after it, the baseline of a soak or matrix:
/// containerd's lazily made state (snapshots, connections) is not a leak of what follows.
fn warm_up(ctd: &Containerd, config: &str) -> Census {
    let id = format!("warm-{}", std::process::id());
    let out = ctr_run(ctd, config, &["--rm"], &id, &["true"])
        .wait_with_output()
        .unwrap();
    assert!(
        out.status.success(),
        "warm-up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (baseline, leaks) = census::settle(
        ctd,
        &[pod_dir(ctd, &id)],
        &Census::take(ctd, &[]),
        Duration::from_secs(30),
    );
    assert!(leaks.is_empty(), "after the warm-up: {leaks:?}");
    baseline
}

/// Removes the namespace's (now empty) cgroup parents, which belong to no pod.
fn remove_namespace_cgroups(ctd: &Containerd) {
    for hierarchy in census::cgroup_hierarchies() {
        let _ = std::fs::remove_dir(hierarchy.join(&ctd.namespace));
    }
}

/// The cycles already run by earlier test hosts of this `scripts/vm-tier` run, which ended with
/// their host (`$VM_TIER_PROGRESS.soak`: a line per finished cycle, `ok MS` or `failed TEXT`).
/// A fresh host runs only the cycles left; its census covers the cycles it ran, since what a
/// failed host held went with it. vm-tier's rerun N of a failed soak is a whole soak again, with
/// a ledger of its own (`.soak.rerunN`).
struct Ledger {
    file: Option<std::fs::File>,
    samples: Vec<Duration>,
    failures: Vec<String>,
}

impl Ledger {
    fn open() -> Ledger {
        let Ok(progress) = std::env::var("VM_TIER_PROGRESS") else {
            return Ledger {
                file: None,
                samples: Vec::new(),
                failures: Vec::new(),
            };
        };
        let path = match std::env::var("VM_TIER_RERUN") {
            Ok(rerun) => format!("{progress}.soak.rerun{rerun}"),
            Err(_) => format!("{progress}.soak"),
        };
        let (mut samples, mut failures) = (Vec::new(), Vec::new());
        for line in std::fs::read_to_string(&path).unwrap_or_default().lines() {
            match line.split_once(' ') {
                Some(("ok", ms)) => samples.push(Duration::from_millis(ms.parse().unwrap())),
                Some(("failed", text)) => failures.push(text.to_owned()),
                _ => panic!("{path}: not a cycle record: {line:?}"),
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        Ledger {
            file: Some(file),
            samples,
            failures,
        }
    }

    fn done(&self) -> usize {
        self.samples.len() + self.failures.len()
    }

    fn record(&mut self, outcome: Result<Duration, String>) {
        use std::io::Write;
        let line = match &outcome {
            Ok(took) => format!("ok {}", took.as_millis()),
            Err(text) => format!("failed {}", text.replace('\n', " ")),
        };
        if let Some(file) = &mut self.file {
            writeln!(file, "{line}").unwrap();
        }
        match outcome {
            Ok(took) => self.samples.push(took),
            Err(text) => self.failures.push(text),
        }
    }
}

#[test]
fn soak_cycles_leave_nothing() {
    let mode = Mode::from_env();
    let Some((ctd, config)) = soak_containerd(&mode, "soak") else {
        return;
    };
    let cycles = env_number("ECI_SOAK_CYCLES", 40);
    let parallel = env_number("ECI_SOAK_PARALLEL", 4).max(1);
    let ledger = Mutex::new(Ledger::open());
    let earlier = ledger.lock().unwrap().done().min(cycles);
    let here = cycles - earlier;
    let baseline = warm_up(&ctd, &config);

    let next = Mutex::new(0usize);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    if *n >= here {
                        return;
                    }
                    *n += 1;
                    *n - 1
                };
                let id = format!("soak-{}-{i}", std::process::id());
                let t = Instant::now();
                let out = ctr_run(&ctd, &config, &["--rm"], &id, &["true"])
                    .wait_with_output()
                    .unwrap();
                let took = t.elapsed();
                ledger.lock().unwrap().record(if out.status.success() {
                    Ok(took)
                } else {
                    Err(format!(
                        "{id}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                });
            });
        }
    });
    let wall = started.elapsed();
    let pod_dirs: Vec<PathBuf> = (0..here)
        .map(|i| pod_dir(&ctd, &format!("soak-{}-{i}", std::process::id())))
        .collect();
    let (after, leaks) = census::settle(&ctd, &pod_dirs, &baseline, Duration::from_secs(60));
    let Ledger {
        mut samples,
        failures,
        ..
    } = ledger.into_inner().unwrap();
    samples.sort();
    println!(
        "soak ({} mode): {cycles} cycles of `ctr run --rm ... true`, {parallel} at a time, {:.1} s",
        mode.name,
        wall.as_secs_f64()
    );
    if earlier > 0 {
        println!(
            "  {earlier} of them ran in earlier test hosts that failed; this host ran {here} in \
             that time, and its census covers those"
        );
    }
    if !samples.is_empty() {
        println!(
            "cycle p50 {:.0} ms, p99 {:.0} ms, failed cycles {}",
            percentile(&samples, 0.50).as_secs_f64() * 1e3,
            percentile(&samples, 0.99).as_secs_f64() * 1e3,
            failures.len()
        );
    }
    println!("census after the cycles (baseline after one warm-up cycle):\n{after}");
    println!("leaks: {}", leaks.len());
    for leak in &leaks {
        println!("  {leak}");
    }
    remove_namespace_cgroups(&ctd);
    assert!(failures.is_empty(), "failed cycles: {failures:#?}");
    assert!(leaks.is_empty(), "leaks: {leaks:#?}");
}

/// Where in a task's life the victim is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AtCreate,
    Running,
    DuringExec,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::AtCreate => "at create",
            Phase::Running => "while running",
            Phase::DuringExec => "during exec",
        }
    }
}

/// The victims, by process name (`containerd` is the daemon).
const VICTIMS: [&str; 6] = [
    "containerd-shim-eci-v2",
    "eci-pod-init",
    "eci-agent",
    "eci-vmm",
    "virtiofsd",
    "containerd",
];

/// The pid of pod `id`'s process `name`, if it runs.
fn victim_pid(ctd: &Containerd, id: &str, name: &str) -> Option<i32> {
    if name == "containerd" {
        return ctd.pid().map(|p| p as i32);
    }
    let pod = pod_dir(ctd, id).display().to_string();
    let of_pod = format!("-id {id} ");
    census::runtime_processes(&ctd.socket)
        .into_iter()
        .find(|p| {
            let ours = p.cmdline.contains(&of_pod) || p.cmdline.contains(&pod);
            let what = match name {
                // Not the short-lived `start` and `delete` invocations: the server has -socket.
                "containerd-shim-eci-v2" => {
                    p.comm == "containerd-shim" && p.cmdline.contains("-socket")
                }
                "eci-agent" => p.comm == "eci-agent" && p.cmdline.contains("--local"),
                other => p.comm == other[..other.len().min(15)],
            };
            ours && what
        })
        .map(|p| p.pid)
}

/// Polls for `name` of pod `id` for up to `timeout`.
fn wait_victim(ctd: &Containerd, id: &str, name: &str, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(pid) = victim_pid(ctd, id, name) {
            return Some(pid);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One cell of the matrix.
struct Cell {
    outcome: String,
    clean: bool,
    leaks: Vec<String>,
}

/// Kills `victim` of a fresh task in `phase`; what the task reported and whether the census
/// came back to `baseline` after containerd's clean-up.
fn kill_scenario(
    mode: &Mode,
    ctd: &mut Containerd,
    config: &str,
    baseline: &Census,
    victim: &str,
    phase: Phase,
    n: usize,
) -> Cell {
    let id = format!("kill-{}-{n}", std::process::id());
    let mut events = Events::subscribe(ctd);
    let mut report = Vec::new();
    let wait = mode.patience(Duration::from_secs(30));
    match phase {
        Phase::AtCreate => {
            let run = ctr_run(ctd, config, &["-d"], &id, &["sleep", "3600"]);
            match wait_victim(ctd, &id, victim, mode.patience(Duration::from_secs(30))) {
                Some(pid) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                None => report.push(format!("{victim} never seen")),
            }
            let out = run.wait_with_output().unwrap();
            if victim == "containerd" {
                ctd.stop_daemon(Signal::SIGKILL);
                ctd.restart().expect("start containerd again");
                events = Events::subscribe(ctd);
            }
            if out.status.success() {
                report.push("created".into());
            } else {
                report.push("create failed".into());
            }
            if task_status(ctd, &id) == "RUNNING" {
                let _ = ctd.ctr(&["task", "kill", "-s", "SIGKILL", &id]);
            }
            if !out.status.success() && task_status(ctd, &id).is_empty() {
                // Nothing to report an exit: the create's failure was the report.
            } else {
                match events.exit_status(&id, "", wait) {
                    Some(s) => report.push(format!("exit {s}")),
                    None => report.push("NO EXIT".into()),
                }
            }
        }
        Phase::Running | Phase::DuringExec => {
            let out = ctr_run(ctd, config, &["-d"], &id, &["sleep", "3600"])
                .wait_with_output()
                .unwrap();
            assert!(
                out.status.success(),
                "run {id}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut exec = None;
            if phase == Phase::DuringExec {
                exec = Some(
                    ctd.ctr_command(&["task", "exec", "--exec-id", "e1", &id, "sleep", "3599"])
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap(),
                );
                // Started as containerd sees it (the shim published it): from then on its
                // exit must be reported. (Its process runs a little earlier, while the agent
                // still answers; a kill then fails the exec's start instead.)
                let started = events.find(mode.patience(Duration::from_secs(30)), |l| {
                    l.contains("/tasks/exec-started")
                        && l.contains(&format!("\"container_id\":\"{id}\""))
                        && l.contains("\"exec_id\":\"e1\"")
                });
                assert!(started.is_some(), "the exec never started");
            }
            match victim_pid(ctd, &id, victim) {
                Some(pid) => {
                    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                }
                None => report.push(format!("{victim} not found")),
            }
            if victim == "containerd" {
                ctd.stop_daemon(Signal::SIGKILL);
                ctd.restart().expect("start containerd again");
                events = Events::subscribe(ctd);
                let still = task_status(ctd, &id);
                report.push(format!("after restart {}", still.to_lowercase()));
                let _ = ctd.ctr(&["task", "kill", "-a", "-s", "SIGKILL", &id]);
            }
            if let Some(mut exec) = exec {
                if victim == "containerd" {
                    // ctr's connection died with the old daemon; the exec was killed above.
                    let _ = exec.kill();
                }
                let _ = exec.wait();
                match events.exit_status(&id, "e1", wait) {
                    Some(s) => report.push(format!("exec exit {s}")),
                    None if victim == "containerd-shim-eci-v2" => {
                        // containerd reports the task's exit for a dead shim, not its execs'.
                        report.push("exec gone".into())
                    }
                    None => report.push("NO EXEC EXIT".into()),
                }
            }
            match events.exit_status(&id, "", wait) {
                Some(s) => report.push(format!("exit {s}")),
                None => report.push("NO EXIT".into()),
            }
        }
    }
    // The follower's connection is no fd containerd leaked.
    drop(events);
    // containerd's clean-up as a user triggers it, then the census.
    let deadline = Instant::now() + mode.patience(Duration::from_secs(5));
    while Instant::now() < deadline {
        let status = task_status(ctd, &id);
        if status.is_empty() || status == "STOPPED" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ctd.ctr(&["task", "delete", &id]);
    let _ = ctd.ctr(&["container", "delete", &id]);
    let (_, leaks) = census::settle(
        ctd,
        &[pod_dir(ctd, &id)],
        baseline,
        mode.patience(Duration::from_secs(30)),
    );
    let reported = report
        .iter()
        .any(|r| r.starts_with("exit") || r == "create failed")
        && !report.iter().any(|r| r.starts_with("NO "));
    let mut leaks = leaks;
    if !reported {
        // What containerd and the shim said about it, for the failure message.
        let log = std::fs::read_to_string(ctd.dir().join("containerd.log")).unwrap_or_default();
        leaks.extend(
            log.lines()
                .filter(|l| l.contains(&id) && (l.contains("exit") || l.contains("e1")))
                .map(str::to_owned),
        );
    }
    Cell {
        outcome: report.join(", "),
        clean: leaks.is_empty() && reported,
        leaks,
    }
}

/// Whether `ECI_KILL_ONLY` (comma-separated `<victim>[:<phase>]`, empty for all) takes this
/// cell: CI runs the VM-only cells, a developer one cell.
fn selected(only: &str, victim: &str, phase: Phase) -> bool {
    only.trim().is_empty()
        || only.split(',').map(str::trim).any(|choice| {
            let (v, p) = choice.split_once(':').unwrap_or((choice, ""));
            v == victim && (p.is_empty() || p == phase.name())
        })
}

#[test]
fn kill_only_selects_the_named_cells() {
    assert!(selected("", "eci-vmm", Phase::Running));
    assert!(selected("eci-vmm,virtiofsd", "virtiofsd", Phase::AtCreate));
    assert!(!selected(
        "eci-vmm,virtiofsd",
        "containerd",
        Phase::AtCreate
    ));
    assert!(selected(
        "eci-vmm:during exec",
        "eci-vmm",
        Phase::DuringExec
    ));
    assert!(!selected("eci-vmm:during exec", "eci-vmm", Phase::Running));
}

#[test]
fn kill_matrix() {
    let mode = Mode::from_env();
    let Some((mut ctd, config)) = soak_containerd(&mode, "kill") else {
        return;
    };
    // A cell that fails is read from the shim's debug log. VM mode's config asks for it already,
    // and a second `log_level` key would make every shim refuse the file.
    let mut shim_config = mode.shim_config.clone();
    if !shim_config.contains("log_level") {
        shim_config.push_str("log_level = \"debug\"\n");
    }
    std::fs::write(&config, shim_config).unwrap();
    let baseline = warm_up(&ctd, &config);
    let phases = [Phase::AtCreate, Phase::Running, Phase::DuringExec];
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut n = 0;
    let only = std::env::var("ECI_KILL_ONLY").unwrap_or_default();
    for victim in VICTIMS {
        let mut cells = Vec::new();
        for phase in phases {
            if !selected(&only, victim, phase) {
                cells.push("not selected (ECI_KILL_ONLY)".into());
                continue;
            }
            if !mode.has(victim) {
                cells.push(format!("n/a ({} mode)", mode.name));
                continue;
            }
            n += 1;
            // containerd's fd count moves with its restarts: compare the rest, fds after.
            let mut base = baseline.clone();
            if victim == "containerd" {
                base.containerd_fds = None;
            }
            let cell = kill_scenario(&mode, &mut ctd, &config, &base, victim, phase, n);
            let mark = if cell.clean { "clean" } else { "LEAK" };
            cells.push(format!("{} [{mark}]", cell.outcome));
            if !cell.clean {
                bad.push(format!(
                    "{victim} {}: {} {:?}",
                    phase.name(),
                    cell.outcome,
                    cell.leaks
                ));
            }
        }
        rows.push((victim, cells));
    }
    println!(
        "kill -9 matrix ({} mode): what the task reported; census after clean-up",
        mode.name
    );
    println!("| victim | {} |", phases.map(Phase::name).join(" | "));
    println!("| --- | --- | --- | --- |");
    for (victim, cells) in rows {
        println!("| {victim} | {} |", cells.join(" | "));
    }
    remove_namespace_cgroups(&ctd);
    assert!(bad.is_empty(), "{bad:#?}");
}
