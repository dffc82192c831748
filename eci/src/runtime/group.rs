//! One task per container group: it owns the group's CRI objects and is the only writer of its
//! state after creation. It starts the group (images, sandbox, init containers in order, app
//! containers), then supervises it by polling CRI (restart policy with back-off, container
//! statuses, group phase) and applies the commands of the API (restart, update, delete).

use std::{collections::HashMap, sync::Arc, time::Instant};

use chrono::{TimeZone, Utc};
use k8s_cri::v1::{ContainerState as CriState, PodSandboxConfig};
use tokio::sync::mpsc;

use crate::{
    backend::BackendError,
    model::{
        Container, ContainerGroupSpec, ContainerState, EventType, GroupStatus, ValidatedUpdate,
    },
};

use super::{
    controller::Inner,
    images,
    policy::{self, group_phase},
    translate::{self, PodLayout},
};

/// First delay before a teardown that CRI refused is tried again; it doubles up to
/// [`TEARDOWN_RETRY_MAX`].
const TEARDOWN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const TEARDOWN_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// What the API asks of a running group.
#[derive(Debug)]
pub enum Command {
    Restart,
    Update(Box<ValidatedUpdate>),
    Delete,
}

/// How the worker begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Create everything (a new group, or one recreated by reconcile).
    Fresh,
    /// The sandbox and containers exist (reconcile after `eci serve` restarted): supervise them.
    Adopt,
    /// Nothing to start or supervise (a terminal group without sandbox): only wait for commands.
    Idle,
}

/// The worker's view of one container instance.
#[derive(Debug, Clone, Default)]
struct Tracked {
    cri_id: Option<String>,
    /// CRI metadata attempt of the current instance (log file `<name>/<attempt>.log`).
    attempt: u32,
    /// Consecutive crash restarts (drives the back-off).
    crashes: u32,
    started: Option<Instant>,
    /// Set while waiting out the back-off before a restart.
    restart_at: Option<Instant>,
    /// The CRI state seen last, to act on changes only.
    last_state: Option<i32>,
    /// The `ready` stored last for the current instance.
    ready: Option<bool>,
}

pub struct GroupWorker {
    id: String,
    inner: Arc<Inner>,
    spec: ContainerGroupSpec,
    layout: PodLayout,
    sandbox: Option<(String, PodSandboxConfig)>,
    tracked: HashMap<String, Tracked>,
}

type Result<T> = std::result::Result<T, BackendError>;

impl GroupWorker {
    pub fn new(id: String, inner: Arc<Inner>, spec: ContainerGroupSpec) -> Self {
        let layout = PodLayout::new(&inner.config.data_dir, &id);
        Self {
            id,
            inner,
            spec,
            layout,
            sandbox: None,
            tracked: HashMap::new(),
        }
    }

    fn event(&self, event_type: EventType, reason: &str, message: &str) {
        if let Err(e) = self
            .inner
            .store
            .add_event(&self.id, event_type, reason, message)
        {
            tracing::warn!(group = %self.id, "storing event {reason}: {e}");
        }
    }

    fn set_status(&self, status: GroupStatus) {
        if let Err(e) = self.inner.store.set_group_status(&self.id, status) {
            tracing::warn!(group = %self.id, "storing status {status}: {e}");
        }
    }

    fn stored_status(&self) -> Option<GroupStatus> {
        self.inner
            .store
            .group(&self.id)
            .ok()
            .flatten()
            .map(|g| g.status)
    }

    fn update_container(
        &self,
        name: &str,
        change: impl FnOnce(&mut crate::store::ContainerRecord),
    ) {
        if let Err(e) = self.inner.store.update_container(&self.id, name, change) {
            tracing::warn!(group = %self.id, container = name, "storing container: {e}");
        }
    }

    /// Runs the group until it is deleted (or the command channel closes).
    pub async fn run(mut self, start: Start, mut commands: mpsc::UnboundedReceiver<Command>) {
        let started = match start {
            Start::Adopt => self.adopt().await,
            Start::Idle => Ok(()),
            Start::Fresh => {
                let outcome = {
                    let starting = self.start();
                    tokio::pin!(starting);
                    tokio::select! {
                        result = &mut starting => Some(result),
                        command = recv_delete(&mut commands) => { let _ = command; None }
                    }
                };
                match outcome {
                    Some(result) => result,
                    None => {
                        self.teardown().await;
                        return;
                    }
                }
            }
        };
        if let Err(e) = started {
            self.event(EventType::Warning, "Failed", &e.to_string());
            self.set_status(GroupStatus::Failed);
        }
        let poll = self.inner.config.poll_interval;
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Delete) => {
                        self.teardown().await;
                        return;
                    }
                    Some(Command::Restart) => {
                        if let Err(e) = self.restart().await {
                            self.event(EventType::Warning, "Failed", &format!("restart: {e}"));
                            self.set_status(GroupStatus::Failed);
                        }
                    }
                    Some(Command::Update(update)) => {
                        if let Err(e) = self.update(*update).await {
                            self.event(EventType::Warning, "Failed", &format!("update: {e}"));
                            self.set_status(GroupStatus::Failed);
                        }
                    }
                },
                _ = tokio::time::sleep(poll) => self.poll().await,
            }
        }
    }

    /// Pending -> images -> sandbox -> init containers -> app containers -> Running.
    async fn start(&mut self) -> Result<()> {
        self.set_status(GroupStatus::Pending);
        self.event(EventType::Normal, "Scheduled", "assigned to this node");
        images::ensure_group_images(&self.inner, &self.id, &self.spec).await?;
        self.layout
            .prepare(&self.spec)
            .map_err(|e| BackendError::Internal(format!("preparing pod directories: {e}")))?;
        let config = translate::sandbox_config(&self.id, &self.spec, &self.layout);
        let sandbox_id = self
            .inner
            .cri
            .run_pod_sandbox(config.clone(), &self.inner.config.runtime_handler)
            .await?;
        let ip = self
            .inner
            .cri
            .pod_sandbox_status(&sandbox_id)
            .await
            .ok()
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .filter(|ip| !ip.is_empty());
        self.inner
            .store
            .set_group_sandbox(&self.id, Some(&sandbox_id), ip.as_deref())?;
        self.event(
            EventType::Normal,
            "SandboxCreated",
            &format!(
                "pod sandbox {sandbox_id} ready{}",
                ip.map(|ip| format!(", IP {ip}")).unwrap_or_default()
            ),
        );
        self.sandbox = Some((sandbox_id, config));
        self.run_containers().await
    }

    /// Init containers one by one to completion, then every app container; status Running.
    async fn run_containers(&mut self) -> Result<()> {
        for container in self.spec.init_containers.clone() {
            if !self.run_init(&container).await? {
                self.set_status(GroupStatus::Failed);
                return Ok(());
            }
        }
        for container in self.spec.containers.clone() {
            self.create_and_start(&container, false).await?;
        }
        self.set_status(GroupStatus::Running);
        Ok(())
    }

    /// Runs an init container until it exits 0 (true), retrying failures with back-off unless
    /// the policy is Never (false: the group failed).
    async fn run_init(&mut self, container: &Container) -> Result<bool> {
        loop {
            let cri_id = self.create_and_start(container, true).await?;
            let (exit_code, reason) = self.wait_exit(&cri_id).await?;
            self.record_exit(&container.name, &cri_id).await;
            if exit_code == 0 {
                return Ok(true);
            }
            self.event(
                EventType::Warning,
                "InitFailed",
                &format!(
                    "init container {} exited with {exit_code} ({reason})",
                    container.name
                ),
            );
            if !policy::retry_init(self.spec.restart_policy) {
                return Ok(false);
            }
            let tracked = self.tracked.entry(container.name.clone()).or_default();
            let delay = self.inner.config.backoff.delay(tracked.crashes);
            tracked.crashes += 1;
            self.event(
                EventType::Warning,
                "BackOff",
                &format!(
                    "back-off {:.1}s restarting failed init container {}",
                    delay.as_secs_f64(),
                    container.name
                ),
            );
            tokio::time::sleep(delay).await;
            self.update_container(&container.name, |r| r.status.restart_count += 1);
        }
    }

    async fn wait_exit(&self, cri_id: &str) -> Result<(i32, String)> {
        loop {
            let status = self.inner.cri.container_status(cri_id).await?;
            if status.state == CriState::ContainerExited as i32 {
                return Ok((status.exit_code, status.reason));
            }
            tokio::time::sleep(self.inner.config.poll_interval).await;
        }
    }

    /// Creates (removing the previous instance) and starts one container; returns its CRI id.
    async fn create_and_start(&mut self, container: &Container, init: bool) -> Result<String> {
        let (sandbox_id, sandbox_config) = self
            .sandbox
            .clone()
            .ok_or_else(|| BackendError::Internal("no sandbox".into()))?;
        let previous = self
            .tracked
            .get(&container.name)
            .cloned()
            .unwrap_or_default();
        if let Some(old) = &previous.cri_id {
            // A failure is logged; the new instance is made anyway.
            let _ = self.remove_container(old, 0).await;
        }
        let attempt = if previous.cri_id.is_some() {
            previous.attempt + 1
        } else {
            previous.attempt
        };
        let config = translate::container_config(
            &self.id,
            &self.spec,
            container,
            init,
            attempt,
            &self.layout,
        )
        .map_err(|e| match e {
            translate::TranslateError::Invalid { field, reason } => {
                BackendError::Invalid { field, reason }
            }
        })?;
        if let Some(dir) = self.layout.log_dir().join(&config.log_path).parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let cri_id = self
            .inner
            .cri
            .create_container(&sandbox_id, config, sandbox_config)
            .await?;
        self.event(
            EventType::Normal,
            "Created",
            &format!("created container {}", container.name),
        );
        let tracked = self.tracked.entry(container.name.clone()).or_default();
        tracked.cri_id = Some(cri_id.clone());
        tracked.attempt = attempt;
        tracked.restart_at = None;
        tracked.last_state = None;
        let ready_when_started = container.readiness_probe.is_none();
        tracked.ready = Some(ready_when_started);
        let id_for_store = cri_id.clone();
        self.update_container(&container.name, |r| {
            r.cri_container_id = Some(id_for_store);
            r.status.image = container.image.clone();
            r.status.state = ContainerState::Waiting;
            r.status.reason = Some("ContainerCreating".into());
            r.status.message = None;
            r.status.exit_code = None;
            r.status.finished_at = None;
            r.status.ready = false;
        });
        self.inner.cri.start_container(&cri_id).await?;
        self.tracked
            .get_mut(&container.name)
            .expect("tracked above")
            .started = Some(Instant::now());
        // CRI's own start time, which every later status sync copies: a time of ours here
        // would change under clients without a restart.
        let started_at = match self.inner.cri.container_status(&cri_id).await {
            Ok(status) => nanos_to_time(status.started_at),
            Err(_) => None,
        }
        .unwrap_or_else(Utc::now);
        self.update_container(&container.name, |r| {
            r.status.state = ContainerState::Running;
            r.status.reason = None;
            r.status.started_at = Some(started_at);
            // With a readiness probe: not ready until the probe says so (as kubelet).
            r.status.ready = ready_when_started;
        });
        self.event(
            EventType::Normal,
            "Started",
            &format!("started container {}", container.name),
        );
        Ok(cri_id)
    }

    /// Copies CRI's view of an exited container into the store.
    async fn record_exit(&self, name: &str, cri_id: &str) {
        let Ok(status) = self.inner.cri.container_status(cri_id).await else {
            return;
        };
        self.update_container(name, |r| apply_cri_status(r, &status));
    }

    /// Stops and removes one CRI container; the first failure other than "not found".
    async fn remove_container(&self, cri_id: &str, grace: i64) -> Result<()> {
        self.inner.readiness.forget(cri_id);
        let mut failure = None;
        if let Err(e) = self.inner.cri.stop_container(cri_id, grace).await {
            if !e.is_not_found() {
                tracing::warn!(group = %self.id, "{e}");
                failure = Some(e);
            }
        }
        if let Err(e) = self.inner.cri.remove_container(cri_id).await {
            if !e.is_not_found() {
                tracing::warn!(group = %self.id, "{e}");
                failure = failure.or(Some(e));
            }
        }
        failure.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Takes over the sandbox and containers recorded in the store.
    async fn adopt(&mut self) -> Result<()> {
        let record = self
            .inner
            .store
            .group(&self.id)?
            .ok_or_else(|| BackendError::NotFound(self.id.clone()))?;
        let sandbox_id = record
            .sandbox_id
            .ok_or_else(|| BackendError::Internal("adopting a group without sandbox".into()))?;
        let config = translate::sandbox_config(&self.id, &self.spec, &self.layout);
        self.sandbox = Some((sandbox_id, config));
        for container in self.inner.store.containers(&self.id)? {
            let mut tracked = Tracked {
                cri_id: container.cri_container_id.clone(),
                // Probe results are not replayed: keep what was stored until the next one.
                ready: Some(container.status.ready),
                ..Default::default()
            };
            if let Some(cri_id) = &container.cri_container_id {
                if let Ok(status) = self.inner.cri.container_status(cri_id).await {
                    tracked.attempt = status.metadata.as_ref().map_or(0, |m| m.attempt);
                    if status.state == CriState::ContainerRunning as i32 {
                        tracked.started = Some(Instant::now());
                    }
                }
                // Otherwise (gone, or CRI not answering yet) the first poll that sees it decides:
                // a missing container counts as exited and is restarted by policy.
            }
            self.tracked.insert(container.name, tracked);
        }
        self.event(
            EventType::Normal,
            "Reconciled",
            "found again after eci serve restarted",
        );
        Ok(())
    }

    /// One supervision pass over the app containers.
    async fn poll(&mut self) {
        let status = self.stored_status();
        // Terminal groups have nothing left to restart; transitional ones belong to a command.
        if status != Some(GroupStatus::Running) {
            return;
        }
        if self.sandbox.is_none() {
            return;
        }
        let mut phases = Vec::new();
        for container in self.spec.containers.clone() {
            let tracked = self
                .tracked
                .get(&container.name)
                .cloned()
                .unwrap_or_default();
            if let Some(due) = tracked.restart_at {
                if Instant::now() >= due {
                    if let Err(e) = self.restart_container(&container).await {
                        // Try again later, backing off like a crash (e.g. the sandbox is gone).
                        let backoff = self.inner.config.backoff;
                        if let Some(t) = self.tracked.get_mut(&container.name) {
                            let delay = backoff.delay(t.crashes);
                            t.crashes = t.crashes.saturating_add(1);
                            t.restart_at = Some(Instant::now() + delay);
                        }
                        self.event(
                            EventType::Warning,
                            "Failed",
                            &format!("restarting {}: {e}", container.name),
                        );
                    }
                }
                phases.push((ContainerState::Waiting, None));
                continue;
            }
            let Some(cri_id) = tracked.cri_id.clone() else {
                phases.push((ContainerState::Waiting, None));
                continue;
            };
            let cri_status = match self.inner.cri.container_status(&cri_id).await {
                Ok(s) => s,
                Err(e) if e.is_not_found() => {
                    // Removed behind our back: treat as exited with an unknown code.
                    let mut s = k8s_cri::v1::ContainerStatus {
                        state: CriState::ContainerExited as i32,
                        exit_code: -1,
                        reason: "ContainerMissing".into(),
                        ..Default::default()
                    };
                    s.id = cri_id.clone();
                    s
                }
                Err(e) => {
                    tracing::debug!(group = %self.id, "{e}");
                    return;
                }
            };
            let exited = cri_status.state == CriState::ContainerExited as i32;
            if tracked.last_state != Some(cri_status.state) {
                self.update_container(&container.name, |r| apply_cri_status(r, &cri_status));
                if let Some(t) = self.tracked.get_mut(&container.name) {
                    t.last_state = Some(cri_status.state);
                }
                if exited {
                    self.on_exit(&container, &cri_status, tracked.started);
                }
            }
            let state = container_state(cri_status.state);
            let waiting_restart = self
                .tracked
                .get(&container.name)
                .is_some_and(|t| t.restart_at.is_some());
            if state == ContainerState::Running && !waiting_restart {
                self.follow_readiness(&container, &cri_id);
            }
            if waiting_restart {
                phases.push((ContainerState::Waiting, None));
            } else {
                phases.push((state, exited.then_some(cri_status.exit_code)));
            }
        }
        let phase = group_phase(self.spec.restart_policy, &phases);
        if Some(phase) != status && self.stored_status() == status {
            self.set_status(phase);
            if phase.is_terminal() {
                self.event(
                    if phase == GroupStatus::Failed {
                        EventType::Warning
                    } else {
                        EventType::Normal
                    },
                    phase.as_str(),
                    &format!("every container has terminated; group {phase}"),
                );
            }
        }
    }

    /// Stores `ready` of a running container as its readiness probe says (always ready without
    /// one); before the probe's first result the last stored value stands.
    fn follow_readiness(&mut self, container: &Container, cri_id: &str) {
        let Some(tracked) = self.tracked.get_mut(&container.name) else {
            return;
        };
        let ready = if container.readiness_probe.is_none() {
            true
        } else {
            self.inner
                .readiness
                .get(cri_id)
                .unwrap_or(tracked.ready.unwrap_or(false))
        };
        if tracked.ready != Some(ready) {
            tracked.ready = Some(ready);
            self.update_container(&container.name, |r| r.status.ready = ready);
        }
    }

    /// An app container exited: schedule its restart by policy, with back-off.
    fn on_exit(
        &mut self,
        container: &Container,
        status: &k8s_cri::v1::ContainerStatus,
        started: Option<Instant>,
    ) {
        let exit = status.exit_code;
        self.event(
            if exit == 0 {
                EventType::Normal
            } else {
                EventType::Warning
            },
            "Exited",
            &format!(
                "container {} exited with {exit}{}",
                container.name,
                if status.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", status.reason)
                }
            ),
        );
        let backoff = self.inner.config.backoff;
        let policy = self.spec.restart_policy;
        let tracked = self.tracked.entry(container.name.clone()).or_default();
        let ran_for = started.map(|s| s.elapsed());
        let Some((delay, crashes)) =
            policy::next_restart(policy, &backoff, exit, tracked.crashes, ran_for)
        else {
            return;
        };
        tracked.crashes = crashes;
        tracked.restart_at = Some(Instant::now() + delay);
        self.event(
            EventType::Warning,
            "BackOff",
            &format!(
                "back-off {:.1}s restarting container {}",
                delay.as_secs_f64(),
                container.name
            ),
        );
        self.update_container(&container.name, |r| {
            r.status.state = ContainerState::Waiting;
            r.status.reason = Some("CrashLoopBackOff".into());
            r.status.ready = false;
        });
    }

    async fn restart_container(&mut self, container: &Container) -> Result<()> {
        self.create_and_start(container, false).await?;
        self.update_container(&container.name, |r| r.status.restart_count += 1);
        Ok(())
    }

    /// Restart of the whole group in its sandbox: stop every container, run init containers
    /// and app containers again.
    async fn restart(&mut self) -> Result<()> {
        self.event(
            EventType::Normal,
            "Restarting",
            "restarting every container of the group",
        );
        self.stop_all().await;
        for t in self.tracked.values_mut() {
            t.crashes = 0;
        }
        self.run_containers().await
    }

    /// Recreates the changed containers in the same sandbox (the pod IP stays).
    async fn update(&mut self, update: ValidatedUpdate) -> Result<()> {
        self.event(
            EventType::Normal,
            "Updating",
            &format!("recreating containers {:?}", update.changed_containers),
        );
        let old_spec = std::mem::replace(&mut self.spec, update.spec.clone());
        self.inner.store.set_group_spec(&self.id, &update.spec)?;
        images::ensure_group_images(&self.inner, &self.id, &changed_only(&update)).await?;
        for container in update.spec.containers.iter() {
            if !update.changed_containers.contains(&container.name) {
                continue;
            }
            let grace = old_spec.termination_grace_period_seconds;
            if let Some(old) = self
                .tracked
                .get(&container.name)
                .and_then(|t| t.cri_id.clone())
            {
                self.event(
                    EventType::Normal,
                    "Killing",
                    &format!("stopping container {} for the update", container.name),
                );
                self.inner.cri.stop_container(&old, grace).await.ok();
            }
            self.create_and_start(container, false).await?;
        }
        if update.resized {
            // CRI cannot resize a sandbox; the containers' own limits changed above.
            self.event(
                EventType::Normal,
                "Resized",
                &format!(
                    "group size now {} vCPU / {} GiB; the pod sandbox keeps its size until it is recreated",
                    update.spec.cpu, update.spec.memory
                ),
            );
        }
        self.set_status(GroupStatus::Running);
        self.event(EventType::Normal, "Updated", "update applied");
        Ok(())
    }

    /// Stops and removes every container of the group (grace period of the spec).
    async fn stop_all(&mut self) {
        let grace = self.spec.termination_grace_period_seconds;
        let ids: Vec<(String, String)> = self
            .tracked
            .iter()
            .filter_map(|(name, t)| t.cri_id.clone().map(|id| (name.clone(), id)))
            .collect();
        let stops = ids.iter().map(|(_, id)| self.remove_container(id, grace));
        futures::future::join_all(stops).await;
        for (name, _) in ids {
            if let Some(t) = self.tracked.get_mut(&name) {
                // Keep the attempt so the next instance gets a fresh log file.
                t.attempt += 1;
                t.cri_id = None;
                t.restart_at = None;
                t.last_state = None;
            }
            self.update_container(&name, |r| {
                r.cri_container_id = None;
                if r.status.state == ContainerState::Running {
                    r.status.state = ContainerState::Terminated;
                    r.status.reason = Some("Killed".into());
                    r.status.finished_at = Some(Utc::now());
                }
                r.status.ready = false;
            });
        }
    }

    /// Deletion: stop and remove everything in CRI, then the pod directories and the record.
    /// Until CRI has confirmed that every sandbox of the group is gone, the record stays
    /// (Terminating, with a `FailedKillPod` warning event) and the removal is retried with
    /// back-off: a group forgotten while its pod may still run would never be cleaned up.
    async fn teardown(&mut self) {
        self.set_status(GroupStatus::Terminating);
        self.event(EventType::Normal, "Killing", "stopping the group");
        let mut last_failure = String::new();
        let mut attempt = 0;
        loop {
            let failures = self.remove_from_cri().await;
            if failures.is_empty() {
                break;
            }
            let failure = failures.join("; ");
            if failure != last_failure {
                self.event(EventType::Warning, "FailedKillPod", &failure);
                last_failure = failure;
            }
            let delay = TEARDOWN_RETRY
                .saturating_mul(1 << attempt.min(5))
                .min(TEARDOWN_RETRY_MAX);
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
        self.forget_group();
    }

    /// One pass of stopping and removing the group's containers and sandboxes in CRI; the
    /// failures (a sandbox or container that is gone already is no failure).
    async fn remove_from_cri(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        self.stop_all().await;
        let mut sandboxes: Vec<String> = self.sandbox.iter().map(|(id, _)| id.clone()).collect();
        // Whatever else carries the group's label (e.g. a sandbox made while the delete came).
        let labels = HashMap::from([(translate::LABEL_GROUP_ID.to_string(), self.id.clone())]);
        match self.inner.cri.list_pod_sandboxes(labels).await {
            Ok(found) => sandboxes.extend(found.into_iter().map(|s| s.id)),
            Err(e) => failures.push(e.to_string()),
        }
        sandboxes.sort();
        sandboxes.dedup();
        for sandbox in sandboxes {
            match self.inner.cri.list_containers(&sandbox).await {
                Ok(containers) => {
                    for c in containers {
                        if let Err(e) = self.remove_container(&c.id, 0).await {
                            failures.push(e.to_string());
                        }
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => failures.push(e.to_string()),
            }
            for result in [
                self.inner.cri.stop_pod_sandbox(&sandbox).await,
                self.inner.cri.remove_pod_sandbox(&sandbox).await,
            ] {
                if let Err(e) = result {
                    if !e.is_not_found() {
                        tracing::warn!(group = %self.id, "{e}");
                        failures.push(e.to_string());
                    }
                }
            }
        }
        failures
    }

    /// The group is gone from CRI: its directories and its record go too.
    fn forget_group(&mut self) {
        if let Err(e) = self.layout.remove() {
            tracing::warn!(group = %self.id, "removing {}: {e}", self.layout.root().display());
        }
        if let Err(e) = self.inner.store.delete_group(&self.id) {
            tracing::warn!(group = %self.id, "deleting the record: {e}");
        }
        self.inner.forget(&self.id);
    }
}

/// Waits for a Delete; other commands that arrive while the group starts are dropped with a log
/// line (the API answers 409 for them while the group is not Running).
async fn recv_delete(commands: &mut mpsc::UnboundedReceiver<Command>) -> Option<()> {
    loop {
        match commands.recv().await {
            Some(Command::Delete) => return Some(()),
            Some(other) => tracing::warn!("ignoring {other:?} while the group starts"),
            None => return std::future::pending().await,
        }
    }
}

/// A spec holding only the changed containers (to pull their images).
fn changed_only(update: &ValidatedUpdate) -> ContainerGroupSpec {
    let mut spec = update.spec.clone();
    spec.containers
        .retain(|c| update.changed_containers.contains(&c.name));
    spec.init_containers.clear();
    // The update names its images explicitly: no cache matching.
    spec.auto_match_image_cache = false;
    spec.image_cache_id = None;
    spec
}

pub fn container_state(cri_state: i32) -> ContainerState {
    match CriState::try_from(cri_state) {
        Ok(CriState::ContainerRunning) => ContainerState::Running,
        Ok(CriState::ContainerExited) => ContainerState::Terminated,
        _ => ContainerState::Waiting,
    }
}

fn nanos_to_time(nanos: i64) -> Option<chrono::DateTime<Utc>> {
    (nanos > 0).then(|| Utc.timestamp_nanos(nanos))
}

/// Copies CRI's container status (state, exit code, reason, times) into a stored record.
pub fn apply_cri_status(
    record: &mut crate::store::ContainerRecord,
    status: &k8s_cri::v1::ContainerStatus,
) {
    let state = container_state(status.state);
    record.status.state = state;
    record.status.started_at = nanos_to_time(status.started_at).or(record.status.started_at);
    if state == ContainerState::Terminated {
        record.status.exit_code = Some(status.exit_code);
        record.status.finished_at = nanos_to_time(status.finished_at).or(Some(Utc::now()));
        record.status.reason = Some(if status.reason.is_empty() {
            if status.exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            }
        } else {
            status.reason.clone()
        });
        record.status.message = (!status.message.is_empty()).then(|| status.message.clone());
        record.status.ready = false;
    } else if state == ContainerState::Running {
        // `ready` is the readiness probe's (GroupWorker::follow_readiness).
        record.status.reason = None;
        record.status.exit_code = None;
        record.status.finished_at = None;
    }
}
