//! A small typed CRI client (k8s-cri v1 over tonic on containerd's unix socket): the calls the
//! runtime needs, each returning the part of the answer that matters.

use std::{collections::HashMap, path::PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient,
    AuthConfig, ContainerConfig, ContainerFilter, ContainerStats, ContainerStatsFilter,
    ContainerStatus, CreateContainerRequest, ExecRequest, ExecSyncRequest, ImageSpec,
    ImageStatusRequest, ListContainerStatsRequest, ListContainersRequest, ListImagesRequest,
    ListPodSandboxRequest, PodSandbox, PodSandboxConfig, PodSandboxFilter, PodSandboxStatus,
    PodSandboxStatusRequest, PullImageRequest, RemoveContainerRequest, RemoveImageRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest,
    StopPodSandboxRequest,
};
use tonic::{
    transport::{Channel, Endpoint, Uri},
    Code,
};

use crate::backend::BackendError;

/// A failed CRI call: which call and containerd's gRPC status.
#[derive(Debug, thiserror::Error)]
#[error("CRI {call}: {}", status.message())]
pub struct CriError {
    pub call: &'static str,
    pub status: tonic::Status,
}

impl CriError {
    pub fn is_not_found(&self) -> bool {
        self.status.code() == Code::NotFound
    }
}

impl From<CriError> for BackendError {
    fn from(err: CriError) -> Self {
        match err.status.code() {
            Code::NotFound => BackendError::NotFound(err.to_string()),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                BackendError::Unavailable(err.to_string())
            }
            Code::FailedPrecondition => BackendError::Conflict(err.to_string()),
            _ => BackendError::Internal(err.to_string()),
        }
    }
}

type Result<T> = std::result::Result<T, CriError>;

/// Wraps a gRPC status of call `name`.
fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> CriError {
    move |status| CriError { call: name, status }
}

/// Registry credentials of one pull.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullAuth {
    pub server: String,
    pub username: String,
    pub password: String,
}

/// Clone-able CRI client; the connection is made lazily (and re-made after failures by tonic),
/// so `eci serve` starts even when containerd is not up yet.
#[derive(Debug, Clone)]
pub struct CriClient {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    /// The connection itself, for containerd's other services (events).
    channel: Channel,
}

impl CriClient {
    pub fn connect_lazy(socket: PathBuf) -> Self {
        let channel = Endpoint::from_static("http://[::]:50051")
            // Streams of large image pulls are answered when done; no timeout on the channel.
            .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }));
        Self {
            runtime: RuntimeServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            images: ImageServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20),
            channel,
        }
    }

    /// The connection to containerd (its other gRPC services share it).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    pub async fn run_pod_sandbox(&self, config: PodSandboxConfig, handler: &str) -> Result<String> {
        let request = RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.into(),
        };
        Ok(self
            .runtime
            .clone()
            .run_pod_sandbox(request)
            .await
            .map_err(call("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .clone()
            .stop_pod_sandbox(request)
            .await
            .map_err(call("StopPodSandbox"))?;
        Ok(())
    }

    pub async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let request = RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime
            .clone()
            .remove_pod_sandbox(request)
            .await
            .map_err(call("RemovePodSandbox"))?;
        Ok(())
    }

    pub async fn pod_sandbox_status(&self, id: &str) -> Result<PodSandboxStatus> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.runtime
            .clone()
            .pod_sandbox_status(request)
            .await
            .map_err(call("PodSandboxStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| CriError {
                call: "PodSandboxStatus",
                status: tonic::Status::internal("answer without status"),
            })
    }

    /// PID of the sandbox's process (containerd's verbose info), whose network namespace is
    /// the pod's.
    pub async fn sandbox_pid(&self, id: &str) -> Result<Option<u32>> {
        let request = PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: true,
        };
        let info = self
            .runtime
            .clone()
            .pod_sandbox_status(request)
            .await
            .map_err(call("PodSandboxStatus"))?
            .into_inner()
            .info;
        Ok(info
            .get("info")
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
            .and_then(|v| v.get("pid").and_then(|p| p.as_u64()))
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0))
    }

    /// Sandboxes whose labels contain all of `labels`.
    pub async fn list_pod_sandboxes(
        &self,
        labels: HashMap<String, String>,
    ) -> Result<Vec<PodSandbox>> {
        let request = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter {
                label_selector: labels,
                ..Default::default()
            }),
        };
        Ok(self
            .runtime
            .clone()
            .list_pod_sandbox(request)
            .await
            .map_err(call("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    pub async fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        Ok(self
            .runtime
            .clone()
            .create_container(request)
            .await
            .map_err(call("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    pub async fn start_container(&self, id: &str) -> Result<()> {
        let request = StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .clone()
            .start_container(request)
            .await
            .map_err(call("StartContainer"))?;
        Ok(())
    }

    /// Stops with `timeout` seconds between SIGTERM and SIGKILL.
    pub async fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        let request = StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.runtime
            .clone()
            .stop_container(request)
            .await
            .map_err(call("StopContainer"))?;
        Ok(())
    }

    pub async fn remove_container(&self, id: &str) -> Result<()> {
        let request = RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime
            .clone()
            .remove_container(request)
            .await
            .map_err(call("RemoveContainer"))?;
        Ok(())
    }

    pub async fn container_status(&self, id: &str) -> Result<ContainerStatus> {
        let request = k8s_cri::v1::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.runtime
            .clone()
            .container_status(request)
            .await
            .map_err(call("ContainerStatus"))?
            .into_inner()
            .status
            .ok_or_else(|| CriError {
                call: "ContainerStatus",
                status: tonic::Status::internal("answer without status"),
            })
    }

    pub async fn list_containers(&self, sandbox_id: &str) -> Result<Vec<k8s_cri::v1::Container>> {
        let request = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: sandbox_id.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .runtime
            .clone()
            .list_containers(request)
            .await
            .map_err(call("ListContainers"))?
            .into_inner()
            .containers)
    }

    /// Runs `cmd` to completion (at most `timeout` seconds, 0 = no limit): stdout, stderr, exit
    /// code.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<(Vec<u8>, Vec<u8>, i32)> {
        let request = ExecSyncRequest {
            container_id: id.into(),
            cmd,
            timeout,
        };
        let answer = self
            .runtime
            .clone()
            .exec_sync(request)
            .await
            .map_err(call("ExecSync"))?
            .into_inner();
        Ok((answer.stdout, answer.stderr, answer.exit_code))
    }

    /// The streaming server URL of an interactive exec.
    pub async fn exec_url(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: bool,
        tty: bool,
    ) -> Result<String> {
        let request = ExecRequest {
            container_id: id.into(),
            cmd,
            tty,
            stdin,
            stdout: true,
            // With a tty stderr is merged into stdout; CRI refuses both.
            stderr: !tty,
        };
        Ok(self
            .runtime
            .clone()
            .exec(request)
            .await
            .map_err(call("Exec"))?
            .into_inner()
            .url)
    }

    /// Stats of the containers of one sandbox.
    pub async fn list_container_stats(&self, sandbox_id: &str) -> Result<Vec<ContainerStats>> {
        let request = ListContainerStatsRequest {
            filter: Some(ContainerStatsFilter {
                pod_sandbox_id: sandbox_id.into(),
                ..Default::default()
            }),
        };
        Ok(self
            .runtime
            .clone()
            .list_container_stats(request)
            .await
            .map_err(call("ListContainerStats"))?
            .into_inner()
            .stats)
    }

    /// Pulls `image` (with credentials when given); returns the image reference (digest id).
    pub async fn pull_image(&self, image: &str, auth: Option<&PullAuth>) -> Result<String> {
        let request = PullImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            auth: auth.map(|a| AuthConfig {
                username: a.username.clone(),
                password: a.password.clone(),
                server_address: a.server.clone(),
                ..Default::default()
            }),
            sandbox_config: None,
        };
        Ok(self
            .images
            .clone()
            .pull_image(request)
            .await
            .map_err(call("PullImage"))?
            .into_inner()
            .image_ref)
    }

    /// The image's id when it is present (pulled and unpacked), `None` when it is not.
    pub async fn image_id(&self, image: &str) -> Result<Option<String>> {
        let request = ImageStatusRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        Ok(self
            .images
            .clone()
            .image_status(request)
            .await
            .map_err(call("ImageStatus"))?
            .into_inner()
            .image
            .map(|i| i.id))
    }

    pub async fn list_images(&self) -> Result<Vec<k8s_cri::v1::Image>> {
        Ok(self
            .images
            .clone()
            .list_images(ListImagesRequest { filter: None })
            .await
            .map_err(call("ListImages"))?
            .into_inner()
            .images)
    }

    pub async fn remove_image(&self, image: &str) -> Result<()> {
        let request = RemoveImageRequest {
            image: Some(ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
        };
        self.images
            .clone()
            .remove_image(request)
            .await
            .map_err(call("RemoveImage"))?;
        Ok(())
    }
}
