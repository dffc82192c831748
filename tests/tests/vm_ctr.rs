//! VM tier, through containerd and ctr: what only a pod in its own VM shows. That it really is
//! a VM (the guest kernel, the pod's vCPUs and memory), the process spec applied in the guest,
//! host binds through virtio-fs, one VM per pod, and that killing eci-vmm, virtiofsd or the shim
//! ends the task and leaves nothing behind, also over many cycles, and that a guest kernel panic
//! ends the pod with a report. (The full kill -9 matrix and soak with VM pods are
//! `make soak-vm`.)
//!
//! The container basics shared with local mode (echo, exit codes, tty, exec, kill, metrics,
//! events, stdin, OOM, log URIs) are `shim_ctr.rs`, which scripts/vm-tier runs in VM mode too.

mod shim_common;

use std::time::Duration;

use eci_tests::containerd::Containerd;
use eci_tests::images::BUSYBOX_IMAGE;
use shim_common::*;

fn vm_containerd(test: &str) -> Containerd {
    eci_tests::vm::require_vm_kvm(test);
    let options = eci_tests::containerd::ContainerdOptions {
        shim_config: Some(eci_tests::vm::vm_shim_config("")),
        ..Default::default()
    };
    containerd_with(options).expect("containerd for the VM tier")
}

fn run_rm(ctd: &Containerd, extra: &[&str], id: &str, command: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--runtime", ECI];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
    args.extend_from_slice(command);
    ctd.ctr_ok(&args)
}

/// eci-vmm and virtiofsd processes of pod `pod_id` (their command lines name its directory).
fn vm_processes(ctd: &Containerd, pod_id: &str) -> Vec<(u32, String)> {
    let dir = pod_dir(ctd, pod_id).display().to_string();
    processes_with(&dir)
        .into_iter()
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_owned())
        })
        .collect()
}

fn pid_of(ctd: &Containerd, pod_id: &str, comm: &str) -> u32 {
    vm_processes(ctd, pod_id)
        .into_iter()
        .find(|(_, c)| c == comm)
        .unwrap_or_else(|| {
            panic!(
                "no {comm} for pod {pod_id}: {:?}",
                vm_processes(ctd, pod_id)
            )
        })
        .0
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn the_container_runs_on_the_guest_kernel_with_the_pods_size() {
    let ctd = vm_containerd("the_container_runs_on_the_guest_kernel_with_the_pods_size");
    let host_release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let id = unique("size");
    let out = run_rm(
        &ctd,
        &[
            "--annotation",
            "io.eci.vcpus=2",
            "--annotation",
            "io.eci.memory-mib=1024",
        ],
        &id,
        &[
            "sh",
            "-c",
            "uname -r; grep -c ^processor /proc/cpuinfo; grep MemTotal /proc/meminfo",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_ne!(lines[0], host_release.trim(), "the host's kernel answered");
    assert!(
        lines[0].ends_with("-eci"),
        "the guest kernel is ours: {out}"
    );
    assert_eq!(lines[1], "2", "vCPUs of the pod: {out}");
    let mem_kib: u64 = lines[2]
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    // 1024 MiB for the pod plus the documented overhead, minus what the kernel reserves.
    let guest_kib = (1024 + eci_shim::vm::sizing::GUEST_OVERHEAD_MIB) * 1024;
    assert!(
        mem_kib <= guest_kib && mem_kib > 1000 * 1024,
        "MemTotal {mem_kib} kB for a 1024 MiB pod: {out}"
    );
    assert_nothing_left(&ctd, &[id]);
}

/// env, cwd, user, an rlimit and a read-only rootfs from the OCI spec, applied in the guest.
#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn the_process_spec_is_applied_in_the_guest() {
    let ctd = vm_containerd("the_process_spec_is_applied_in_the_guest");
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("config.json");
    let out = ctd.ctr_ok(&["oci", "spec"]);
    let mut doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    doc["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u; id -g; ulimit -n; touch /x 2>/dev/null && echo writable || echo read-only"
    ]);
    doc["process"]["env"] = serde_json::json!(["PATH=/bin:/usr/bin", "GREETING=hello-vm"]);
    doc["process"]["cwd"] = serde_json::json!("/tmp");
    doc["process"]["user"] = serde_json::json!({"uid": 1000, "gid": 1000});
    doc["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
    doc["root"]["readonly"] = serde_json::json!(true);
    let rootfs = tmp.path().join("rootfs");
    eci_tests::rootfs::build_busybox_rootfs(&rootfs).unwrap();
    doc["root"]["path"] = rootfs.display().to_string().into();
    // Each container its own cgroup (/<namespace>/<id>), not ctr's shared default.
    doc["linux"].as_object_mut().unwrap().remove("cgroupsPath");
    std::fs::write(&spec, doc.to_string()).unwrap();
    let id = unique("spec");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        "--config",
        spec.to_str().unwrap(),
        &id,
    ]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["hello-vm", "/tmp", "1000", "1000", "123", "read-only"],
        "{out}"
    );
    assert_nothing_left(&ctd, &[id]);
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn a_host_bind_mount_is_shared_both_ways() {
    let ctd = vm_containerd("a_host_bind_mount_is_shared_both_ways");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("from-host"), "host says hi\n").unwrap();
    let mount = format!(
        "type=bind,src={},dst=/data,options=rbind:rw",
        tmp.path().display()
    );
    let id = unique("share");
    let out = run_rm(
        &ctd,
        &["--mount", &mount],
        &id,
        &[
            "sh",
            "-c",
            "cat /data/from-host; echo guest wrote > /data/from-guest",
        ],
    );
    assert_eq!(out, "host says hi\n");
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("from-guest")).unwrap(),
        "guest wrote\n"
    );
    assert_nothing_left(&ctd, &[id]);
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn containers_of_one_pod_share_one_vm() {
    let ctd = vm_containerd("containers_of_one_pod_share_one_vm");
    let pod = unique("pod");
    let second = unique("second");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        ECI,
        "--annotation",
        "io.kubernetes.cri.container-type=sandbox",
        BUSYBOX_IMAGE,
        &pod,
        "sh",
        "-c",
        "echo first > /dev/shm/mark 2>/dev/null; sleep 600",
    ]);
    let sandbox_annotation = format!("io.kubernetes.cri.sandbox-id={pod}");
    ctd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        ECI,
        "--annotation",
        "io.kubernetes.cri.container-type=container",
        "--annotation",
        &sandbox_annotation,
        BUSYBOX_IMAGE,
        &second,
        "sleep",
        "600",
    ]);
    let release = |id: &str| {
        ctd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            "rel",
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])
    };
    assert_eq!(
        release(&pod),
        release(&second),
        "both containers run in one guest"
    );
    let vmms: Vec<_> = vm_processes(&ctd, &pod)
        .into_iter()
        .filter(|(_, c)| c == "eci-vmm")
        .collect();
    assert_eq!(vmms.len(), 1, "one eci-vmm for the pod: {vmms:?}");
    assert!(
        !pod_dir(&ctd, &second).exists(),
        "the second container has no pod of its own"
    );
    for id in [&second, &pod] {
        ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
        wait_stopped(&ctd, id);
        ctd.ctr_ok(&["task", "delete", id]);
        ctd.ctr_ok(&["container", "delete", id]);
    }
    assert_nothing_left(&ctd, &[pod]);
}

/// Starts a long-running pod, kills `victim` (eci-vmm, virtiofsd or the pod's shim) with
/// SIGKILL, and checks that ctr sees the task exit non-zero and that nothing is left.
fn kill_and_check(test: &str, victim: &str) {
    let ctd = vm_containerd(test);
    let id = unique("kill");
    let mut run = ctd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            ECI,
            BUSYBOX_IMAGE,
            &id,
            "sleep",
            "600",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for _ in 0..6000 {
        if task_status(&ctd, &id) == "RUNNING" {
            break;
        }
        if let Ok(Some(_)) = run.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if task_status(&ctd, &id) != "RUNNING" {
        let _ = run.kill();
        let out = run.wait_with_output().unwrap();
        panic!(
            "the pod did not start ({}):\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            ctd.log_tail()
        );
    }
    let pid = match victim {
        "shim" => *shim_processes(&ctd).first().expect("the pod's shim"),
        comm => pid_of(&ctd, &id, comm),
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let status = run.wait_with_output().unwrap().status;
    assert_ne!(
        status.code(),
        Some(0),
        "{victim} killed: ctr must see a failed task"
    );
    if victim == "shim" {
        // containerd runs the shim's delete action; ctr run --rm may leave the container record.
        let _ = ctd.ctr(&["container", "delete", &id]);
    }
    assert_nothing_left(&ctd, &[id]);
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn killing_eci_vmm_ends_the_task_and_releases_everything() {
    kill_and_check("killing_eci_vmm", "eci-vmm");
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn killing_virtiofsd_ends_the_task_and_releases_everything() {
    kill_and_check("killing_virtiofsd", "virtiofsd");
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn killing_the_shim_ends_the_task_and_releases_everything() {
    kill_and_check("killing_the_shim", "shim");
}

/// A guest kernel panic (here the compulsory one of `vm.panic_on_oom = 2` when a container's
/// memory cgroup runs out) ends the VM: ctr sees a failed task, the shim's log says that the
/// sandbox ended under its containers with the guest console's panic line and eci-vmm's own
/// reason, and nothing is left.
#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn a_guest_kernel_panic_ends_the_pod_and_the_shim_reports_it() {
    let ctd = vm_containerd("a_guest_kernel_panic_ends_the_pod_and_the_shim_reports_it");
    let id = unique("panic");
    let mut args = vec!["run", "--rm", "--privileged", "--memory-limit", "33554432"];
    args.extend_from_slice(&["--runtime", ECI, BUSYBOX_IMAGE, &id, "sh", "-c"]);
    args.push("echo 2 >/proc/sys/vm/panic_on_oom && x=0123456789 && while :; do x=$x$x; done");
    let out = ctd.ctr(&args);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the guest panicked: ctr must see a failed task"
    );
    let log = std::fs::read_to_string(ctd.dir().join("containerd.log")).unwrap_or_default();
    let report = log
        .lines()
        .find(|l| l.contains("the sandbox ended under its containers"))
        .unwrap_or_else(|| panic!("no report of the sandbox's end:\n{}", ctd.log_tail()));
    assert!(
        report.contains("Kernel panic"),
        "the report carries the console's panic line: {report}"
    );
    // The guest's reset ends eci-vmm on its own, and the reason is in its log: the shim did not
    // end it for virtiofsd going first while it released the guest's memory.
    assert!(
        report.contains("eci-vmm: guest stopped: "),
        "the report carries eci-vmm's reason: {report}"
    );
    let _ = ctd.ctr(&["container", "delete", &id]);
    assert_nothing_left(&ctd, &[id]);
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn twenty_create_delete_cycles_leave_nothing() {
    let ctd = vm_containerd("twenty_create_delete_cycles_leave_nothing");
    // One at a time: each cycle boots and ends a VM (docs/testhost.md: concurrent boots in the
    // test host are not reliable).
    let ids: Vec<String> = (0..20).map(|_| unique("cycle")).collect();
    for id in &ids {
        assert_eq!(run_rm(&ctd, &[], id, &["echo", "cycle"]), "cycle\n");
    }
    assert_nothing_left(&ctd, &ids);
}
