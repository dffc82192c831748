//! A CRI client (k8s-cri over tonic) on a containerd unix socket, for tests that check or drive
//! containerd's CRI directly (there is no crictl on the test machines).

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    ListContainersRequest, ListPodSandboxRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// A tonic channel to the CRI server on the unix socket `socket`.
pub async fn channel(socket: PathBuf) -> Result<Channel, tonic::transport::Error> {
    // The URI is required by tonic but unused: the connector dials the socket.
    Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
}

/// CRI runtime and image service clients of one containerd.
#[derive(Clone)]
pub struct Cri {
    pub runtime: RuntimeServiceClient<Channel>,
    pub images: ImageServiceClient<Channel>,
}

impl Cri {
    pub async fn connect(socket: PathBuf) -> Result<Self, tonic::transport::Error> {
        let channel = channel(socket).await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// A container's CPU usage (ns) and memory working set (bytes) from CRI ContainerStats,
    /// each None when CRI left it out.
    pub async fn cpu_and_working_set(
        &mut self,
        container_id: &str,
    ) -> Result<(Option<u64>, Option<u64>), tonic::Status> {
        cpu_and_working_set(&mut self.runtime, container_id).await
    }

    /// Ids of every pod sandbox CRI knows.
    pub async fn sandbox_ids(&mut self) -> Result<Vec<String>, tonic::Status> {
        Ok(self
            .runtime
            .list_pod_sandbox(ListPodSandboxRequest::default())
            .await?
            .into_inner()
            .items
            .into_iter()
            .map(|s| s.id)
            .collect())
    }

    /// Ids of every container CRI knows.
    pub async fn container_ids(&mut self) -> Result<Vec<String>, tonic::Status> {
        self.container_ids_where(|_| true).await
    }

    /// Ids of the containers CRI reports running.
    pub async fn running_container_ids(&mut self) -> Result<Vec<String>, tonic::Status> {
        self.container_ids_where(|c| {
            c.state == k8s_cri::v1::ContainerState::ContainerRunning as i32
        })
        .await
    }

    async fn container_ids_where(
        &mut self,
        keep: impl Fn(&k8s_cri::v1::Container) -> bool,
    ) -> Result<Vec<String>, tonic::Status> {
        Ok(self
            .runtime
            .list_containers(ListContainersRequest::default())
            .await?
            .into_inner()
            .containers
            .into_iter()
            .filter(|c| keep(c))
            .map(|c| c.id)
            .collect())
    }

    /// The pod's IP and the path of its network namespace (from the runtime spec in the
    /// verbose status); empty strings when CRI reports none.
    pub async fn pod_ip_and_netns(
        &mut self,
        pod_id: &str,
    ) -> Result<(String, String), tonic::Status> {
        let status = self
            .runtime
            .pod_sandbox_status(k8s_cri::v1::PodSandboxStatusRequest {
                pod_sandbox_id: pod_id.into(),
                verbose: true,
            })
            .await?
            .into_inner();
        let ip = status
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default();
        let info: serde_json::Value =
            serde_json::from_str(status.info.get("info").map(String::as_str).unwrap_or("{}"))
                .unwrap_or_default();
        let netns = info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .unwrap_or_default()
            .to_owned();
        Ok((ip, netns))
    }

    /// Stops and removes every container and pod sandbox (cleanup after a failed test, so that
    /// CNI releases addresses and containerd its shims).
    pub async fn remove_everything(&mut self) -> Result<(), tonic::Status> {
        for id in self.container_ids().await? {
            self.runtime
                .remove_container(RemoveContainerRequest { container_id: id })
                .await?;
        }
        for id in self.sandbox_ids().await? {
            self.runtime
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: id.clone(),
                })
                .await?;
            self.runtime
                .remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await?;
        }
        Ok(())
    }
}

/// Runs `future` to completion on a fresh runtime in its own thread, so that sync code (tests,
/// Drop) can call CRI whether or not it already runs inside a tokio runtime.
pub fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(future)
    })
    .join()
    .expect("CRI thread panicked")
}

/// [`Cri::cpu_and_working_set`] through a bare runtime client.
pub async fn cpu_and_working_set(
    runtime: &mut RuntimeServiceClient<Channel>,
    container_id: &str,
) -> Result<(Option<u64>, Option<u64>), tonic::Status> {
    let stats = runtime
        .container_stats(k8s_cri::v1::ContainerStatsRequest {
            container_id: container_id.into(),
        })
        .await?
        .into_inner()
        .stats
        .unwrap_or_default();
    let cpu = stats
        .cpu
        .and_then(|c| c.usage_core_nano_seconds)
        .map(|v| v.value);
    let working_set = stats
        .memory
        .and_then(|m| m.working_set_bytes)
        .map(|v| v.value);
    Ok((cpu, working_set))
}
