//! containerd-shim-eci-v2 under CRI (RuntimeClass handler `eci`): one pod, two containers in one
//! shim and one sandbox, ExecSync, container logs, stop and remove. Driven by a Rust CRI client
//! (`k8s-cri`), since the test machines have no crictl.

mod shim_common;

use std::time::Duration;

use eci_tests::images;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use shim_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_with_two_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((ctd, mut cri)) = cri_containerd(tmp.path()).await else {
        return;
    };

    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_config = host_network_pod("pod", unique("uid"), &logs);
    let pod_id = cri
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod_config.clone()),
            runtime_handler: "eci".into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", ctd.log_tail()))
        .into_inner()
        .pod_sandbox_id;

    let mut ids = vec![pod_id.clone()];
    for name in ["c1", "c2"] {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: images::BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: vec![
                "sh".into(),
                "-c".into(),
                format!("echo hello from {name}; echo {name} > /tmp/who; sleep 300"),
            ],
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let id = cri
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod_id.clone(),
                config: Some(config),
                sandbox_config: Some(pod_config.clone()),
            })
            .await
            .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}\n{}", ctd.log_tail()))
            .into_inner()
            .container_id;
        cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        ids.push(id);
    }

    // One shim process and one sandbox (agent) for the whole pod.
    let socket = ctd.socket.display().to_string();
    // The shim's clone that is PID 1 of the pod's namespace (comm eci-pod-init) does not count.
    let shims: Vec<u32> = processes_with(&socket)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap_or_default()
                .trim()
                != "eci-pod-init"
        })
        .filter(|p| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
            )
            .contains("containerd-shim-eci-v2")
        })
        .collect();
    let cmdlines: Vec<String> = shims
        .iter()
        .map(|p| {
            String::from_utf8_lossy(
                &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
            )
            .replace('\0', " ")
        })
        .collect();
    assert_eq!(shims.len(), 1, "one shim per pod: {cmdlines:?}");
    let pod_dir = pod_dir(&ctd, &pod_id);
    assert!(
        pod_dir.exists(),
        "the pod's sandbox lives in {}",
        pod_dir.display()
    );
    for id in &ids[1..] {
        assert!(
            !pod_dir_exists_for(&ctd, id),
            "container {id} must not get a pod of its own"
        );
    }

    // ExecSync in the first container sees that container's files, with exit code and output.
    let exec = cri
        .exec_sync(ExecSyncRequest {
            container_id: ids[1].clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /tmp/who; echo oops >&2; exit 3".into(),
            ],
            timeout: 10,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync: {e}"))
        .into_inner();
    assert_eq!(exec.exit_code, 3);
    assert_eq!(String::from_utf8_lossy(&exec.stdout), "c1\n");
    assert_eq!(String::from_utf8_lossy(&exec.stderr), "oops\n");

    // Container logs in CRI's format: "<time> stdout F hello from c1".
    for name in ["c1", "c2"] {
        let path = logs.join(format!("{name}.log"));
        let mut text = String::new();
        for _ in 0..100 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.contains("hello from") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            text.contains(&format!(" stdout F hello from {name}")),
            "{}: {text:?}",
            path.display()
        );
    }

    // UpdateContainerResources reaches the container's cgroup (through the Task API's Update).
    let update = k8s_cri::v1::UpdateContainerResourcesRequest {
        container_id: ids[1].clone(),
        linux: Some(k8s_cri::v1::LinuxContainerResources {
            memory_limit_in_bytes: 64 << 20,
            ..Default::default()
        }),
        ..Default::default()
    };
    cri.update_container_resources(update)
        .await
        .unwrap_or_else(|e| panic!("UpdateContainerResources: {e}"));
    let metrics = ctd.ctr_ok(&["task", "metrics", &ids[1]]);
    assert!(
        metrics.contains(&(64u64 << 20).to_string()),
        "memory limit applied: {metrics}"
    );

    for id in &ids[1..] {
        cri.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        })
        .await
        .unwrap_or_else(|e| panic!("StopContainer: {e}"));
    }
    cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
    cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    assert_nothing_left(&ctd, &ids);
}

fn pod_dir_exists_for(ctd: &eci_tests::containerd::Containerd, id: &str) -> bool {
    pod_dir(ctd, id).exists()
}
