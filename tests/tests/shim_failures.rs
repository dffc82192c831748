//! The shim on its error paths: whatever fails after the shim took a host resource, the
//! resource is released, and a container the agent may still run is never forgotten.

mod shim_common;

use containerd_shim::protos::{shim::shim::CreateTaskRequest, types::mount::Mount};
use shim_common::{direct::DirectShim, *};

/// The local-mode launch fails after the pod's init and agent were cloned (here: the pid file
/// cannot be written, a directory is in its way): neither is left running.
#[test]
fn failed_launch_leaves_no_pod_init_or_agent() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("launchfail");
    std::fs::create_dir_all(pod_dir(&ctd, &id).join("sandbox.pid")).unwrap();
    let out = ctr_run_local(&ctd, &["-d"], &id, &["sleep", "100"]);
    assert!(!out.status.success(), "the run succeeded");
    let _ = ctd.ctr(&["container", "delete", &id]);
    assert_nothing_left(&ctd, &[id]);
}

/// The first create of a pod fails after its sandbox started (here: the rootfs mount fails):
/// the shim stops the sandbox itself, without waiting for containerd's Delete and Shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_first_create_stops_the_sandbox_at_once() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let pod_id = unique("direct");
    let shim = DirectShim::start(&ctd, &pod_id).await;
    let (bundle, _busybox) = direct::bundle(shim.dir(), &["sleep", "100"]);
    let req = CreateTaskRequest {
        id: pod_id.clone(),
        bundle: bundle.display().to_string(),
        rootfs: vec![Mount {
            type_: "eci-no-such-fs".into(),
            source: "none".into(),
            ..Default::default()
        }],
        options: Some(shim.options.clone()).into(),
        ..Default::default()
    };
    let err = shim.client.create(direct::ctx(), &req).await.unwrap_err();
    assert!(err.to_string().contains("mount rootfs"), "{err}");
    let pod = pod_dir(&ctd, &pod_id);
    let mut agents = Vec::new();
    for _ in 0..100 {
        agents = processes_with(pod.to_str().unwrap());
        if agents.is_empty() && !pod.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(agents.is_empty(), "agent still running: {agents:?}");
    assert!(!pod.exists(), "pod directory {} stays", pod.display());
    shim.shutdown().await;
    assert_nothing_left(&ctd, &[pod_id]);
}

/// The agent cannot remove a stopped container (a child cgroup it did not make sits in the
/// container's cgroup): the delete fails and the task stays listed, so that a retry, once the
/// obstacle is gone, releases everything.
#[test]
fn failed_remove_keeps_the_task_until_a_retry_succeeds() {
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let id = unique("removefail");
    run_detached_local(&ctd, &id, &["sleep", "1000"]);
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &id]);
    wait_stopped(&ctd, &id);
    let obstacle = container_cgroup(&ctd, &id).join("obstacle");
    std::fs::create_dir(&obstacle).unwrap();
    let out = ctd.ctr(&["task", "delete", &id]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::remove_dir(&obstacle);
    assert!(!out.status.success(), "the delete succeeded");
    assert!(stderr.contains("RemoveContainer"), "{stderr}");
    assert_eq!(task_status(&ctd, &id), "STOPPED", "the task was forgotten");
    ctd.ctr_ok(&["task", "delete", &id]);
    ctd.ctr_ok(&["container", "delete", &id]);
    assert_nothing_left(&ctd, &[id]);
}
