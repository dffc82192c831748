//! The agent's pod-feature registry: per-container [`Ctx`] (features and tasks), per-pod
//! volumes with their member containers, and the pod-wide sysctls of SetupSandbox.

use super::volumes::PodVolumes;
use super::{action, lifecycle, probe, Ctx, EventSink, PodFeatures};
use crate::container::Container;
use crate::error::{AgentError, Result};
use crate::reaper::Reaper;
use eci_protocol::agent::{ProbeStatusResponse, StatsContainerResponse, WaitProcessResponse};
use eci_protocol::annotations::PodAnnotations;
use eci_protocol::validate::sysctl_namespace;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Pods {
    /// Volumes by sandbox id.
    volumes: HashMap<String, PodVolumes>,
    /// Containers by sandbox id.
    members: HashMap<String, HashSet<String>>,
    /// Sandbox of each container.
    sandbox_of: HashMap<String, String>,
}

/// A sandbox created after members of its pod (which made the pod without volumes) adds the
/// volumes it declares.
fn add_late_volumes(pod: &mut PodVolumes, is_sandbox: bool, a: &PodAnnotations) -> Result<()> {
    if !is_sandbox {
        return Ok(());
    }
    for (name, volume) in &a.volumes {
        if pod.get(name).is_none() {
            pod.add(name, volume).map_err(|e| {
                AgentError::FailedPrecondition(format!("pod volume {name:?}: {}", e.chain()))
            })?;
        }
    }
    Ok(())
}

/// Pod features of every container.
pub struct PodManager {
    volumes_root: PathBuf,
    events: Arc<dyn EventSink>,
    pods: Mutex<Pods>,
    containers: Mutex<HashMap<String, Ctx>>,
    sysctls: Mutex<HashMap<String, String>>,
}

/// What [`PodManager::prepare`] found for a container being created.
pub struct Prepared {
    /// Parsed annotations.
    pub annotations: PodAnnotations,
    /// Pod volumes it mounts: (name, host path, container path).
    pub volume_mounts: Vec<(String, PathBuf, String)>,
}

impl PodManager {
    /// A registry whose pod volumes live under `volumes_root`.
    pub fn new(volumes_root: PathBuf, events: Arc<dyn EventSink>) -> Self {
        Self {
            volumes_root,
            events,
            pods: Mutex::default(),
            containers: Mutex::default(),
            sysctls: Mutex::default(),
        }
    }

    /// Records the pod-wide sysctls (already validated).
    pub fn set_pod_sysctls(&self, sysctls: HashMap<String, String>) {
        *self.sysctls.lock() = sysctls;
    }

    /// Before a container is created (blocking: mounts): creates the pod's volumes when it is
    /// the sandbox (from its `annotations`, parsed by the request's validation), rewrites its
    /// volume mounts, merges the pod sysctls its namespaces can take, and makes it a member of
    /// its pod. Undo with [`PodManager::release`].
    pub fn prepare(
        &self,
        id: &str,
        sandbox_id: &str,
        spec: &mut Spec,
        annotations: PodAnnotations,
    ) -> Result<Prepared> {
        let sandbox = if sandbox_id.is_empty() {
            id
        } else {
            sandbox_id
        }
        .to_string();
        let mut pods = self.pods.lock();
        if !pods.volumes.contains_key(&sandbox) {
            let declared: &[_] = if sandbox == id {
                &annotations.volumes
            } else {
                &[]
            };
            let volumes = PodVolumes::create(&self.volumes_root.join(&sandbox), declared)?;
            pods.volumes.insert(sandbox.clone(), volumes);
        }
        pods.members
            .entry(sandbox.clone())
            .or_default()
            .insert(id.to_string());
        pods.sandbox_of.insert(id.to_string(), sandbox.clone());
        let pod = pods.volumes.get_mut(&sandbox).expect("inserted above");
        let rewritten = add_late_volumes(pod, id == sandbox, &annotations)
            .and_then(|()| super::volumes::rewrite_mounts(spec, pod));
        drop(pods);
        let volume_mounts = match rewritten {
            Ok(v) => v,
            Err(e) => {
                self.release(id);
                return Err(e);
            }
        };
        self.merge_pod_sysctls(spec);
        Ok(Prepared {
            annotations,
            volume_mounts,
        })
    }

    /// Adds the pod sysctls the container does not set itself and whose namespace it owns.
    fn merge_pod_sysctls(&self, spec: &mut Spec) {
        let pod = self.sysctls.lock().clone();
        if pod.is_empty() {
            return;
        }
        let linux = spec.linux_mut().get_or_insert_with(Default::default);
        let has = |t| {
            linux
                .namespaces()
                .as_ref()
                .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
        };
        let owned: Vec<(String, String)> = pod
            .into_iter()
            .filter(|(k, _)| match sysctl_namespace(k) {
                Some("network") => has(LinuxNamespaceType::Network),
                Some("ipc") => has(LinuxNamespaceType::Ipc),
                Some("uts") => has(LinuxNamespaceType::Uts) && k.ends_with("domainname"),
                _ => false,
            })
            .collect();
        let mut sysctl = linux.sysctl().clone().unwrap_or_default();
        for (k, v) in owned {
            sysctl.entry(k).or_insert(v);
        }
        linux.set_sysctl(Some(sysctl));
    }

    /// Registers a created container.
    pub fn register(
        &self,
        container: Arc<Container>,
        reaper: Arc<Reaper>,
        base_process: oci_spec::runtime::Process,
        prepared: Prepared,
    ) {
        let features = Arc::new(PodFeatures::new(
            &container.id,
            prepared.annotations,
            prepared.volume_mounts,
        ));
        let ctx = Ctx {
            target: Arc::new(action::Target {
                container: container.clone(),
                reaper,
                base_process,
            }),
            features,
            events: self.events.clone(),
        };
        self.containers.lock().insert(container.id.clone(), ctx);
    }

    fn ctx(&self, id: &str) -> Result<Ctx> {
        self.containers
            .lock()
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::no_container(id))
    }

    /// After StartContainer: probes and the postStart hook begin.
    pub fn on_started(&self, id: &str) {
        if let Ok(ctx) = self.ctx(id) {
            probe::spawn_all(&ctx);
            lifecycle::spawn_post_start(&ctx);
        }
    }

    /// StopContainer: starts the stop sequence (signal 0 means SIGTERM, grace 0 the
    /// annotation's or 30 s).
    pub fn stop(
        &self,
        id: &str,
        signal: u32,
        grace_seconds: u32,
        skip_pre_stop: bool,
    ) -> Result<()> {
        let ctx = self.ctx(id)?;
        if *ctx.target.container.state.lock() == crate::container::State::Created {
            return Err(AgentError::FailedPrecondition(format!(
                "container {id:?} was not started: remove it instead"
            )));
        }
        let signal = if signal == 0 {
            libc::SIGTERM
        } else {
            signal as i32
        };
        let grace = if grace_seconds == 0 {
            ctx.features.annotations.grace()
        } else {
            Duration::from_secs(grace_seconds.into())
        };
        lifecycle::spawn_stop(&ctx, signal, grace, skip_pre_stop);
        Ok(())
    }

    /// The init's exit with the agent's kill reason applied.
    pub fn apply_kill_reason(&self, id: &str, resp: &mut WaitProcessResponse) {
        if let Ok(ctx) = self.ctx(id) {
            ctx.features.apply_kill_reason(resp);
        }
    }

    /// ProbeStatus.
    pub fn probe_status(&self, id: &str) -> Result<ProbeStatusResponse> {
        let ctx = self.ctx(id)?;
        let c = &ctx.target.container;
        let running =
            c.init.exit_status().is_none() && *c.state.lock() != crate::container::State::Created;
        Ok(ctx.features.status(running))
    }

    /// Adds nanocores, load, limits, networks and filesystems to `resp`; the first call of a
    /// container samples for [`super::stats::FIRST_WINDOW`].
    pub async fn enrich_stats(&self, id: &str, resp: &mut StatsContainerResponse) -> Result<()> {
        let ctx = self.ctx(id)?;
        let c = ctx.target.container.clone();
        let sample =
            |c: &Container| super::stats::cpu_usage_ns(&c.cgroup).map(|u| (u, Instant::now()));
        let previous = *ctx.features.cpu_sample.lock();
        let previous = match previous {
            Some(p) => Some(p),
            None => {
                let first = sample(&c);
                tokio::time::sleep(super::stats::FIRST_WINDOW).await;
                first
            }
        };
        let now = sample(&c);
        *ctx.features.cpu_sample.lock() = now;
        let nanocores = match (previous, now) {
            (Some(a), Some(b)) => super::stats::nanocores(a, b),
            _ => 0,
        };
        let mut out = std::mem::take(resp);
        let features = ctx.features.clone();
        let out = tokio::task::spawn_blocking(move || {
            let pid = c.init.exit_status().is_none().then_some(c.init.pid);
            super::stats::enrich(&mut out, &c.cgroup, pid, &features.volume_mounts, nanocores);
            out
        })
        .await
        .map_err(|e| AgentError::io("statistics task", std::io::Error::other(e)))?;
        *resp = out;
        Ok(())
    }

    /// Stops the container's probe and hook tasks (before it is killed on remove).
    pub fn abort_tasks(&self, id: &str) {
        if let Ok(ctx) = self.ctx(id) {
            ctx.features.abort_tasks();
        }
    }

    /// Forgets a container; its pod's volumes go with the pod's last container. Blocking.
    pub fn release(&self, id: &str) {
        if let Some(ctx) = self.containers.lock().remove(id) {
            ctx.features.abort_tasks();
        }
        let mut pods = self.pods.lock();
        let Some(sandbox) = pods.sandbox_of.remove(id) else {
            return;
        };
        let empty = pods.members.get_mut(&sandbox).is_some_and(|m| {
            m.remove(id);
            m.is_empty()
        });
        if empty {
            pods.members.remove(&sandbox);
            if let Some(mut v) = pods.volumes.remove(&sandbox) {
                v.teardown();
            }
        }
    }

    /// Removes every pod volume (DestroySandbox, shutdown). Blocking.
    pub fn teardown_all(&self) {
        let mut pods = self.pods.lock();
        for (_, mut v) in pods.volumes.drain() {
            v.teardown();
        }
        pods.members.clear();
        pods.sandbox_of.clear();
    }
}
