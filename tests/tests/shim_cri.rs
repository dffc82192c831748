//! containerd-shim-eci-v2 under CRI (RuntimeClass handler `eci`): one pod, two containers in one
//! shim and one sandbox, ExecSync, container logs, stop and remove. Driven by a Rust CRI client
//! (`k8s-cri`), since the test machines have no crictl.

mod shim_common;

use std::time::Duration;

use eci_tests::{containerd::ContainerdOptions, images};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    runtime_service_client::RuntimeServiceClient, ContainerConfig, ContainerMetadata,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, NamespaceOption, PodSandboxConfig, PodSandboxMetadata,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use shim_common::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI's NamespaceMode NODE: the pod uses the host network (no CNI needed).
const NAMESPACE_MODE_NODE: i32 = 2;

async fn cri_client(socket: std::path::PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect to CRI");
    RuntimeServiceClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_pod_with_two_containers() {
    let tmp = tempfile::tempdir().unwrap();
    let shim_config = tmp.path().join("shim.toml");
    std::fs::write(
        &shim_config,
        "hypervisor = \"none\"\nlog_level = \"debug\"\n",
    )
    .unwrap();
    let cni_dir = tmp.path().join("cni");
    std::fs::create_dir_all(&cni_dir).unwrap();
    let extra_config = format!(
        r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.eci]
      runtime_type = "{shim}"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.eci.options]
        ConfigPath = "{config}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        pause = images::PAUSE_IMAGE,
        shim = shim_binary().display(),
        config = shim_config.display(),
        cni = cni_dir.display(),
    );
    let options = ContainerdOptions {
        cri: true,
        extra_config,
        namespace: Some("k8s.io".into()),
        ..Default::default()
    };
    let Some(ctd) = containerd_with(options) else {
        return;
    };
    ctd.import_pause().expect("import pause");
    let mut cri = cri_client(ctd.socket.clone()).await;

    let logs = tmp.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "pod".into(),
            uid: unique("uid"),
            namespace: "default".into(),
            attempt: 0,
        }),
        // Host-network pods have no UTS namespace of their own, hence no hostname (as kubelet).
        log_directory: logs.display().to_string(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NAMESPACE_MODE_NODE,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
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
