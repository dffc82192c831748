//! The [`Controller`]: implements [`Backend`] over CRI. Each group is driven by its own
//! [`GroupWorker`] task; the controller stores new groups, routes commands to their workers,
//! serves the live reads (logs, exec, metrics) and image caches, and reconciles the store with
//! containerd when `eci serve` starts.
//!
//! Reconcile policy (after `eci serve` restarted): a group whose sandbox is still ready in CRI is
//! adopted as it is (same sandbox, containers, IP); a group whose sandbox is gone, or that was
//! interrupted while starting, restarting or updating, is recreated from its spec (a new
//! sandbox, hence possibly a new IP, with a `Recreated` warning event); a group that was being
//! deleted is deleted; terminal groups stay as they are. CRI sandboxes labelled with this
//! server's data dir and a group id the store does not know are removed (leftovers of a
//! creation or deletion the restart interrupted); other servers' sandboxes are never touched.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use k8s_cri::v1::{ContainerState as CriState, PodSandboxState};
use tokio::sync::mpsc;

use crate::{
    backend::{Backend, BackendError, LogStream},
    model::{
        ContainerGroupSpec, EventType, ExecRequest, ExecResponse, GroupMetrics, GroupStatus,
        ImageCacheSpec, LogOptions, UpdateImageCacheRequest, ValidatedUpdate,
    },
    store::Store,
};

use super::{
    cri::CriClient,
    group::{Command, GroupWorker, Start},
    images, logs, metrics,
    policy::Backoff,
    probes, translate,
};

/// The containerd namespace of everything CRI makes.
const CRI_NAMESPACE: &str = "k8s.io";

/// How the runtime reaches containerd and shapes pods.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// `eci serve --data-dir`: pod log and volume directories live under `<data-dir>/pods`.
    pub data_dir: PathBuf,
    /// containerd's gRPC socket (CRI is served there).
    pub containerd_socket: PathBuf,
    /// CRI runtime handler of every sandbox (`eci`: our shim).
    pub runtime_handler: String,
    pub backoff: Backoff,
    /// How often workers poll CRI for container states.
    pub poll_interval: Duration,
    /// `eci serve --gpu-pool`: PCI addresses of this node's GPUs (bound to vfio-pci), taken
    /// by groups in order and passed to their pods as `io.eci.vfio`.
    pub gpu_pool: Vec<String>,
}

impl RuntimeConfig {
    /// Defaults: handler `eci`, kubelet's back-off (or the `ECI_RESTART_BACKOFF_*` variables),
    /// polling every 500 ms.
    pub fn new(data_dir: PathBuf, containerd_socket: PathBuf) -> Self {
        Self {
            data_dir,
            containerd_socket,
            runtime_handler: "eci".into(),
            backoff: Backoff::from_env(),
            poll_interval: Duration::from_millis(500),
            gpu_pool: Vec::new(),
        }
    }
}

pub(crate) struct Inner {
    pub store: Store,
    pub cri: CriClient,
    pub config: RuntimeConfig,
    /// Readiness probe results from containerd's `/eci/probe` events.
    pub readiness: Arc<probes::Readiness>,
    cpu_samples: metrics::CpuSamples,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Command>>>,
}

impl Inner {
    /// Called by a worker when its group is gone.
    pub fn forget(&self, id: &str) {
        self.workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}

/// The runtime: cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller over `store`; connects to containerd lazily. Call [`Controller::reconcile`]
    /// once at start-up (inside the tokio runtime).
    pub fn new(store: Store, config: RuntimeConfig) -> Self {
        let cri = CriClient::connect_lazy(config.containerd_socket.clone());
        Self {
            inner: Arc::new(Inner {
                store,
                cri,
                config,
                readiness: Arc::default(),
                cpu_samples: metrics::CpuSamples::default(),
                workers: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn cri(&self) -> &CriClient {
        &self.inner.cri
    }

    fn spawn_worker(&self, id: &str, spec: ContainerGroupSpec, start: Start) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), tx);
        let worker = GroupWorker::new(id.to_string(), self.inner.clone(), spec);
        tokio::spawn(worker.run(start, rx));
    }

    /// Sends a command to the group's worker. A stored group without a worker (reconcile could
    /// not reach containerd at start-up) gets one that adopts what the store records.
    fn send(&self, id: &str, command: Command) -> Result<(), BackendError> {
        let has_worker = self
            .inner
            .workers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id);
        if !has_worker {
            let record = self
                .inner
                .store
                .group(id)?
                .ok_or_else(|| BackendError::NotFound(format!("container group {id}")))?;
            let start = if record.sandbox_id.is_some() {
                Start::Adopt
            } else {
                Start::Idle
            };
            self.spawn_worker(id, record.spec, start);
        }
        let workers = self.inner.workers.lock().unwrap_or_else(|p| p.into_inner());
        let tx = workers
            .get(id)
            .ok_or_else(|| BackendError::NotFound(format!("container group {id}")))?;
        tx.send(command)
            .map_err(|_| BackendError::Conflict(format!("container group {id} is going away")))
    }

    /// Matches the store with containerd (see the module doc) and starts a worker per group.
    /// Also starts following the pods' readiness probe results (before any worker runs, so
    /// that none is missed).
    pub async fn reconcile(&self) -> Result<(), BackendError> {
        tokio::spawn(probes::follow(
            self.inner.cri.channel(),
            CRI_NAMESPACE.to_string(),
            self.inner.readiness.clone(),
        ));
        let store = &self.inner.store;
        let records = store.group_records()?;
        let known: std::collections::HashSet<String> =
            records.iter().map(|r| r.id.clone()).collect();
        let mut unreachable_cri = None;
        for record in records {
            let sandbox_ready = match &record.sandbox_id {
                Some(sandbox) => match self.inner.cri.pod_sandbox_status(sandbox).await {
                    Ok(status) => status.state == PodSandboxState::SandboxReady as i32,
                    Err(e) if e.is_not_found() => false,
                    Err(e) => {
                        // containerd unreachable: keep the group as recorded; its worker
                        // supervises it once CRI answers.
                        tracing::warn!(group = %record.id, "reconcile: {e}");
                        let start = if record.sandbox_id.is_some() {
                            Start::Adopt
                        } else {
                            Start::Idle
                        };
                        self.spawn_worker(&record.id, record.spec, start);
                        unreachable_cri = Some(e);
                        continue;
                    }
                },
                None => false,
            };
            let start = match record.status {
                GroupStatus::Terminating => {
                    self.spawn_worker(&record.id, record.spec, Start::Adopt);
                    self.send(&record.id, Command::Delete)?;
                    continue;
                }
                status if status.is_terminal() => Start::Adopt,
                GroupStatus::Running if sandbox_ready => Start::Adopt,
                _ => Start::Fresh,
            };
            if start == Start::Fresh {
                store.add_event(
                    &record.id,
                    EventType::Warning,
                    "Recreated",
                    &format!(
                        "{} when eci serve restarted; recreating the group",
                        if sandbox_ready || record.sandbox_id.is_none() {
                            format!("interrupted while {}", record.status)
                        } else {
                            "pod sandbox gone".to_string()
                        }
                    ),
                )?;
                self.remove_sandboxes_of(&record.id).await;
                for container in store.containers(&record.id)? {
                    store.update_container(&record.id, &container.name, |r| {
                        r.cri_container_id = None;
                    })?;
                }
                store.set_group_sandbox(&record.id, None, None)?;
            }
            if start == Start::Adopt && record.sandbox_id.is_none() {
                // A terminal group that never got a sandbox: nothing to adopt, only commands.
                self.spawn_worker(&record.id, record.spec, Start::Idle);
                continue;
            }
            self.spawn_worker(&record.id, record.spec, start);
        }
        if let Some(e) = unreachable_cri {
            return Err(e.into());
        }
        // Sandboxes of this server (same data dir) whose group the store does not know.
        let ours = HashMap::from([(
            translate::LABEL_DATA_DIR.to_string(),
            self.inner.config.data_dir.display().to_string(),
        )]);
        let all = self.inner.cri.list_pod_sandboxes(ours).await?;
        for sandbox in all {
            let Some(group) = sandbox.labels.get(translate::LABEL_GROUP_ID) else {
                continue;
            };
            if !known.contains(group) {
                tracing::info!(group, sandbox = %sandbox.id, "removing an orphaned sandbox");
                self.remove_sandbox(&sandbox.id).await;
            }
        }
        Ok(())
    }

    async fn remove_sandboxes_of(&self, group_id: &str) {
        let labels = HashMap::from([(translate::LABEL_GROUP_ID.to_string(), group_id.to_string())]);
        if let Ok(found) = self.inner.cri.list_pod_sandboxes(labels).await {
            for sandbox in found {
                self.remove_sandbox(&sandbox.id).await;
            }
        }
    }

    async fn remove_sandbox(&self, sandbox_id: &str) {
        let cri = &self.inner.cri;
        if let Ok(containers) = cri.list_containers(sandbox_id).await {
            for c in containers {
                let _ = cri.stop_container(&c.id, 0).await;
                let _ = cri.remove_container(&c.id).await;
            }
        }
        let _ = cri.stop_pod_sandbox(sandbox_id).await;
        if let Err(e) = cri.remove_pod_sandbox(sandbox_id).await {
            tracing::warn!(sandbox = sandbox_id, "{e}");
        }
    }

    fn group_status(&self, id: &str) -> Result<GroupStatus, BackendError> {
        Ok(self
            .inner
            .store
            .group(id)?
            .ok_or_else(|| BackendError::NotFound(format!("container group {id}")))?
            .status)
    }

    /// The CRI id of a container of the group (app or init), if it has a current instance.
    fn cri_container(&self, id: &str, container: &str) -> Result<Option<String>, BackendError> {
        self.group_status(id)?;
        let record = self
            .inner
            .store
            .containers(id)?
            .into_iter()
            .find(|c| c.name == container)
            .ok_or_else(|| {
                BackendError::NotFound(format!("container {container} in group {id}"))
            })?;
        Ok(record.cri_container_id)
    }
}

#[async_trait]
impl Backend for Controller {
    async fn create_group(&self, spec: ContainerGroupSpec) -> Result<String, BackendError> {
        if let Some(cache_id) = &spec.image_cache_id {
            images::check_cache_usable(&self.inner.store, cache_id, &spec)?;
        }
        let mut spec = spec;
        let id = self
            .inner
            .store
            .insert_group(&spec, GroupStatus::Scheduling)?;
        crate::backend::take_gpus(
            &self.inner.store,
            &id,
            &mut spec,
            &self.inner.config.gpu_pool,
        )?;
        self.spawn_worker(&id, spec, Start::Fresh);
        Ok(id)
    }

    async fn delete_group(&self, id: &str) -> Result<(), BackendError> {
        self.group_status(id)?;
        self.inner
            .store
            .set_group_status(id, GroupStatus::Terminating)?;
        self.send(id, Command::Delete)
    }

    async fn restart_group(&self, id: &str) -> Result<(), BackendError> {
        match self.group_status(id)? {
            GroupStatus::Running | GroupStatus::Succeeded | GroupStatus::Failed => {}
            other => {
                return Err(BackendError::Conflict(format!(
                    "container group {id} is {other}; restart needs Running, Succeeded or Failed"
                )))
            }
        }
        let has_sandbox = self
            .inner
            .store
            .group(id)?
            .and_then(|g| g.sandbox_id)
            .is_some();
        if !has_sandbox {
            return Err(BackendError::Conflict(format!(
                "container group {id} has no pod sandbox to restart in"
            )));
        }
        self.inner
            .store
            .set_group_status(id, GroupStatus::Restarting)?;
        self.send(id, Command::Restart)
    }

    async fn update_group(&self, id: &str, update: ValidatedUpdate) -> Result<(), BackendError> {
        match self.group_status(id)? {
            GroupStatus::Running => {}
            other => {
                return Err(BackendError::Conflict(format!(
                    "container group {id} is {other}; update needs Running"
                )))
            }
        }
        self.inner
            .store
            .set_group_status(id, GroupStatus::Updating)?;
        self.send(id, Command::Update(Box::new(update)))
    }

    async fn exec(
        &self,
        id: &str,
        container: &str,
        request: ExecRequest,
    ) -> Result<ExecResponse, BackendError> {
        if request.command.is_empty() {
            return Err(BackendError::Invalid {
                field: "command".into(),
                reason: "must not be empty".into(),
            });
        }
        let cri_id = self.cri_container(id, container)?.ok_or_else(|| {
            BackendError::Conflict(format!("container {container} is not running"))
        })?;
        let status = self.inner.cri.container_status(&cri_id).await?;
        if status.state != CriState::ContainerRunning as i32 {
            return Err(BackendError::Conflict(format!(
                "container {container} is not running"
            )));
        }
        if request.sync {
            if request.stdin || request.tty {
                return Err(BackendError::Invalid {
                    field: "sync".into(),
                    reason: "stdin and tty need sync=false (a streaming exec)".into(),
                });
            }
            let (stdout, stderr, exit_code) = self
                .inner
                .cri
                .exec_sync(&cri_id, request.command, 0)
                .await?;
            Ok(ExecResponse::Completed {
                stdout: String::from_utf8_lossy(&stdout).into_owned(),
                stderr: String::from_utf8_lossy(&stderr).into_owned(),
                exit_code,
            })
        } else {
            let url = self
                .inner
                .cri
                .exec_url(&cri_id, request.command, request.stdin, request.tty)
                .await?;
            Ok(ExecResponse::Stream {
                web_socket_uri: url,
            })
        }
    }

    async fn logs(
        &self,
        id: &str,
        container: &str,
        options: LogOptions,
    ) -> Result<LogStream, BackendError> {
        let cri_id = self.cri_container(id, container)?.ok_or_else(|| {
            BackendError::Conflict(format!("container {container} has not been created yet"))
        })?;
        let status = self.inner.cri.container_status(&cri_id).await?;
        Ok(logs::stream(
            self.inner.cri.clone(),
            cri_id,
            PathBuf::from(status.log_path),
            options,
        ))
    }

    async fn metrics(&self, id: &str) -> Result<GroupMetrics, BackendError> {
        let record = self
            .inner
            .store
            .group(id)?
            .ok_or_else(|| BackendError::NotFound(format!("container group {id}")))?;
        let sandbox = record.sandbox_id.clone().ok_or_else(|| {
            BackendError::Conflict(format!("container group {id} has no pod sandbox yet"))
        })?;
        let containers = self.inner.store.containers(id)?;
        metrics::collect(
            &self.inner.cri,
            &self.inner.cpu_samples,
            &sandbox,
            &record.spec,
            &containers,
        )
        .await
    }

    async fn create_image_cache(&self, spec: ImageCacheSpec) -> Result<String, BackendError> {
        let id = self.inner.store.insert_image_cache(&spec)?;
        tokio::spawn(images::create_cache(
            self.inner.store.clone(),
            self.inner.cri.clone(),
            id.clone(),
            spec,
        ));
        Ok(id)
    }

    async fn update_image_cache(
        &self,
        id: &str,
        patch: UpdateImageCacheRequest,
    ) -> Result<(), BackendError> {
        let changed =
            self.inner
                .store
                .update_image_cache(id, patch.name.as_deref(), patch.retention_days)?;
        if !changed {
            return Err(BackendError::NotFound(format!("image cache {id}")));
        }
        Ok(())
    }

    async fn delete_image_cache(&self, id: &str) -> Result<(), BackendError> {
        images::delete_cache(&self.inner.store, &self.inner.cri, id).await
    }
}
