//! Pod features on top of the container core (issue 6): `io.eci.*` probes and lifecycle hooks,
//! graceful stop, pod sysctls, pod volumes and the extra statistics.
//!
//! [`PodFeatures`] is the per-container state (parsed annotations, probe results, why the agent
//! killed it, its background tasks); [`volumes::PodVolumes`] the per-pod volumes. The agent calls
//! in at create (spec rewriting), start (probes, postStart), stop, wait (exit reason), stats and
//! remove (tasks aborted, volumes released with the pod's last container).

pub mod action;
pub mod lifecycle;
pub mod manager;
pub mod probe;
pub mod stats;
pub mod volumes;

use eci_protocol::agent::{
    event, Event, ExitReason, LifecycleEvent, LifecycleHook, ProbeEvent, ProbeKind, ProbeResult,
    ProbeState, ProbeStatusResponse, WaitProcessResponse,
};
use eci_protocol::annotations::PodAnnotations;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Where probe and hook results go (the agent's GetEvent queue).
pub trait EventSink: Send + Sync {
    /// Queues one event.
    fn push(&self, event: Event);
}

/// One container's pod-feature state.
pub struct PodFeatures {
    /// Container id.
    pub id: String,
    /// Its parsed `io.eci.*` annotations.
    pub annotations: PodAnnotations,
    /// Current probe results, one per configured probe.
    probes: Mutex<Vec<ProbeState>>,
    /// Startup probe passed (or there is none).
    started: tokio::sync::watch::Sender<bool>,
    /// Set when the agent decided to kill the container (liveness, postStart): the init's exit
    /// then carries this reason and message.
    kill_reason: Mutex<Option<(ExitReason, String)>>,
    /// A stop sequence is under way.
    stopping: AtomicBool,
    /// Probe and hook tasks, aborted on remove.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Previous CPU sample for usage_nanocores.
    pub(crate) cpu_sample: Mutex<Option<(u64, Instant)>>,
    /// Pod volumes this container mounts: (volume name, host path, path in the container).
    pub volume_mounts: Vec<(String, std::path::PathBuf, String)>,
}

impl PodFeatures {
    /// State for a container with these annotations.
    pub fn new(
        id: &str,
        annotations: PodAnnotations,
        volume_mounts: Vec<(String, std::path::PathBuf, String)>,
    ) -> Self {
        let mut probes = Vec::new();
        for (kind, present) in [
            (ProbeKind::STARTUP, annotations.startup.is_some()),
            (ProbeKind::LIVENESS, annotations.liveness.is_some()),
            (ProbeKind::READINESS, annotations.readiness.is_some()),
        ] {
            if present {
                probes.push(ProbeState {
                    kind: kind.into(),
                    result: ProbeResult::PROBE_RESULT_UNKNOWN.into(),
                    ..Default::default()
                });
            }
        }
        let started = annotations.startup.is_none();
        Self {
            id: id.to_string(),
            annotations,
            probes: Mutex::new(probes),
            started: tokio::sync::watch::channel(started).0,
            kill_reason: Mutex::default(),
            stopping: AtomicBool::new(false),
            tasks: Mutex::default(),
            cpu_sample: Mutex::default(),
            volume_mounts,
        }
    }

    /// Records a task to abort on remove.
    pub fn add_task(&self, handle: tokio::task::AbortHandle) {
        let mut tasks = self.tasks.lock();
        tasks.retain(|t| !t.is_finished());
        tasks.push(handle);
    }

    /// Aborts every probe and hook task.
    pub fn abort_tasks(&self) {
        for t in self.tasks.lock().drain(..) {
            t.abort();
        }
    }
    /// Marks the stop sequence as started; false when one already runs.
    pub fn begin_stop(&self) -> bool {
        !self.stopping.swap(true, Ordering::SeqCst)
    }

    /// Whether a stop sequence runs.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Records why the agent kills the container (first reason wins).
    pub fn set_kill_reason(&self, reason: ExitReason, message: String) {
        let mut r = self.kill_reason.lock();
        if r.is_none() {
            *r = Some((reason, message));
        }
    }

    /// Applies the agent's kill reason to the init's exit (an OOM kill stays an OOM kill).
    pub fn apply_kill_reason(&self, resp: &mut WaitProcessResponse) {
        if resp.reason.enum_value() == Ok(ExitReason::OOM_KILLED) {
            return;
        }
        if let Some((reason, message)) = self.kill_reason.lock().clone() {
            resp.reason = reason.into();
            resp.message = message;
        }
    }

    /// Updates one probe's state; returns the event to publish when the result changed.
    pub(crate) fn record_probe(
        &self,
        kind: ProbeKind,
        result: ProbeResult,
        message: &str,
        consecutive: u32,
    ) -> Option<ProbeEvent> {
        let mut probes = self.probes.lock();
        let state = probes
            .iter_mut()
            .find(|p| p.kind.enum_value() == Ok(kind))?;
        let changed = state.result.enum_value() != Ok(result);
        state.result = result.into();
        state.message = message.to_string();
        state.consecutive = consecutive;
        state.last_probe_unix_nanos = crate::unix_nanos_now();
        changed.then(|| ProbeEvent {
            container_id: self.id.clone(),
            kind: kind.into(),
            result: result.into(),
            message: message.to_string(),
            consecutive,
            ..Default::default()
        })
    }

    /// ProbeStatus of this container; `running` is whether its init still runs.
    pub fn status(&self, running: bool) -> ProbeStatusResponse {
        let probes = self.probes.lock().clone();
        let result_of = |kind: ProbeKind| {
            probes
                .iter()
                .find(|p| p.kind.enum_value() == Ok(kind))
                .map(|p| p.result.enum_value() == Ok(ProbeResult::SUCCESS))
        };
        let started = *self.started.borrow();
        let ready = running && started && result_of(ProbeKind::READINESS).unwrap_or(true);
        ProbeStatusResponse {
            probes,
            ready,
            started,
            ..Default::default()
        }
    }
}

/// An event now.
pub fn event(kind: event::Kind) -> Event {
    Event {
        timestamp_unix_nanos: crate::unix_nanos_now(),
        kind: Some(kind),
        ..Default::default()
    }
}

/// A lifecycle hook's result as an event.
pub fn lifecycle_event(id: &str, hook: LifecycleHook, succeeded: bool, message: &str) -> Event {
    event(event::Kind::Lifecycle(LifecycleEvent {
        container_id: id.to_string(),
        hook: hook.into(),
        succeeded,
        message: message.to_string(),
        ..Default::default()
    }))
}

/// Shared handles the background tasks need.
#[derive(Clone)]
pub struct Ctx {
    /// The container, its reaper and its base process.
    pub target: Arc<action::Target>,
    /// The container's pod-feature state.
    pub features: Arc<PodFeatures>,
    /// Event sink.
    pub events: Arc<dyn EventSink>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use eci_protocol::annotations;

    fn features(ann: &[(&str, &str)]) -> PodFeatures {
        let map = ann
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PodFeatures::new("c1", annotations::parse(&map).unwrap(), Vec::new())
    }

    #[test]
    fn probe_results_change_once_per_transition() {
        let f = features(&[(annotations::PROBE_READINESS, r#"{"tcpSocket":{"port":80}}"#)]);
        let s = f.status(true);
        assert_eq!(s.probes.len(), 1);
        assert_eq!(
            s.probes[0].result.enum_value(),
            Ok(ProbeResult::PROBE_RESULT_UNKNOWN)
        );
        assert!(s.started && !s.ready, "not ready before the first success");
        let e = f
            .record_probe(ProbeKind::READINESS, ProbeResult::FAILURE, "refused", 1)
            .expect("first result is a change");
        assert_eq!((e.container_id.as_str(), e.consecutive), ("c1", 1));
        assert!(f
            .record_probe(ProbeKind::READINESS, ProbeResult::FAILURE, "refused", 2)
            .is_none());
        assert!(f
            .record_probe(ProbeKind::READINESS, ProbeResult::SUCCESS, "ok", 1)
            .is_some());
        assert!(f.status(true).ready);
        assert!(!f.status(false).ready, "an exited container is not ready");
        // A probe kind that is not configured records nothing.
        assert!(f
            .record_probe(ProbeKind::LIVENESS, ProbeResult::FAILURE, "x", 1)
            .is_none());
    }

    #[test]
    fn startup_probe_gates_started_and_kill_reasons_apply() {
        let f = features(&[(
            annotations::PROBE_STARTUP,
            r#"{"exec":{"command":["true"]}}"#,
        )]);
        assert!(!f.status(true).started);
        f.started.send_replace(true);
        assert!(f.status(true).started && f.status(true).ready);

        let mut resp = WaitProcessResponse {
            reason: ExitReason::SIGNALED.into(),
            exit_code: 137,
            ..Default::default()
        };
        f.apply_kill_reason(&mut resp);
        assert_eq!(resp.reason.enum_value(), Ok(ExitReason::SIGNALED));
        f.set_kill_reason(ExitReason::LIVENESS_PROBE_FAILED, "liveness".into());
        f.set_kill_reason(ExitReason::POST_START_HOOK_FAILED, "later".into());
        f.apply_kill_reason(&mut resp);
        assert_eq!(
            (resp.reason.enum_value(), resp.message.as_str()),
            (Ok(ExitReason::LIVENESS_PROBE_FAILED), "liveness"),
            "the first reason wins"
        );
        let mut oom = WaitProcessResponse {
            reason: ExitReason::OOM_KILLED.into(),
            ..Default::default()
        };
        f.apply_kill_reason(&mut oom);
        assert_eq!(oom.reason.enum_value(), Ok(ExitReason::OOM_KILLED));
        assert!(
            f.begin_stop() && !f.begin_stop(),
            "one stop sequence at a time"
        );
    }
}
