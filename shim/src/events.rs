//! The agent's pod-feature events (probe results, lifecycle hooks, agent kills) as containerd
//! events.
//!
//! The payload is a `google.protobuf.Struct`: containerd 1.6's `ctr events` (and any other
//! subscriber) can only print events whose Any type it knows, and gogo registers the well-known
//! types, while a type of our own would be skipped as "cannot unmarshal".

use std::collections::HashMap;

use containerd_shim::protos::protobuf::well_known_types::struct_::{value::Kind, Struct, Value};
use eci_protocol::agent::{
    ExitReason, LifecycleEvent, LifecycleHook, ProbeEvent, ProbeKind, ProbeResult,
    WaitProcessResponse,
};

/// Topic of probe results (and of liveness kills).
pub const PROBE_TOPIC: &str = "/eci/probe";
/// Topic of lifecycle hook runs (and of postStart kills).
pub const LIFECYCLE_TOPIC: &str = "/eci/lifecycle";

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
        ..Default::default()
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
        ..Default::default()
    }
}

fn boolean(b: bool) -> Value {
    Value {
        kind: Some(Kind::BoolValue(b)),
        ..Default::default()
    }
}

fn to_struct(fields: impl IntoIterator<Item = (&'static str, Value)>) -> Struct {
    Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

/// RFC 3339 time of a Unix-nanoseconds timestamp (now when the agent sent none).
fn rfc3339(unix_nanos: i64) -> String {
    let at = if unix_nanos > 0 {
        chrono::DateTime::from_timestamp_nanos(unix_nanos)
    } else {
        chrono::Utc::now()
    };
    at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Kubernetes' name of a probe kind.
pub fn probe_kind_name(kind: Result<ProbeKind, i32>) -> &'static str {
    match kind {
        Ok(ProbeKind::LIVENESS) => "liveness",
        Ok(ProbeKind::READINESS) => "readiness",
        Ok(ProbeKind::STARTUP) => "startup",
        _ => "unknown",
    }
}

/// Name of a probe result.
pub fn probe_result_name(result: Result<ProbeResult, i32>) -> &'static str {
    match result {
        Ok(ProbeResult::SUCCESS) => "success",
        Ok(ProbeResult::FAILURE) => "failure",
        _ => "unknown",
    }
}

/// Kubernetes' name of a lifecycle hook.
pub fn hook_name(hook: Result<LifecycleHook, i32>) -> &'static str {
    match hook {
        Ok(LifecycleHook::POST_START) => "postStart",
        Ok(LifecycleHook::PRE_STOP) => "preStop",
        _ => "unknown",
    }
}

/// `/eci/probe` payload of a probe result change.
pub fn probe(event: &ProbeEvent, unix_nanos: i64) -> Struct {
    to_struct([
        ("container_id", string(&event.container_id)),
        ("probe", string(probe_kind_name(event.kind.enum_value()))),
        (
            "result",
            string(probe_result_name(event.result.enum_value())),
        ),
        ("message", string(&event.message)),
        ("consecutive", number(event.consecutive.into())),
        ("time", string(rfc3339(unix_nanos))),
    ])
}

/// `/eci/lifecycle` payload of a hook run.
pub fn lifecycle(event: &LifecycleEvent, unix_nanos: i64) -> Struct {
    to_struct([
        ("container_id", string(&event.container_id)),
        ("hook", string(hook_name(event.hook.enum_value()))),
        ("succeeded", boolean(event.succeeded)),
        // Also as text: `ctr events` prints Struct values with Go's encoding/json, whose
        // omitempty drops a false bool_value.
        (
            "result",
            string(if event.succeeded {
                "success"
            } else {
                "failure"
            }),
        ),
        ("message", string(&event.message)),
        ("time", string(rfc3339(unix_nanos))),
    ])
}

/// An exit the agent caused itself, as an event.
pub struct AgentKill {
    pub topic: &'static str,
    /// `LivenessProbeFailed` or `PostStartHookFailed`.
    pub reason: &'static str,
    pub payload: Struct,
}

/// The event telling why the agent killed a container, for the exits the agent caused itself
/// (a liveness probe's failure threshold, a failed postStart hook); None for ordinary exits.
/// containerd's TaskExit has no field for a reason.
pub fn agent_kill(container_id: &str, exit: &WaitProcessResponse) -> Option<AgentKill> {
    let (topic, reason, kind) = match exit.reason.enum_value() {
        Ok(ExitReason::LIVENESS_PROBE_FAILED) => {
            (PROBE_TOPIC, "LivenessProbeFailed", ("probe", "liveness"))
        }
        Ok(ExitReason::POST_START_HOOK_FAILED) => (
            LIFECYCLE_TOPIC,
            "PostStartHookFailed",
            ("hook", "postStart"),
        ),
        _ => return None,
    };
    let payload = to_struct([
        ("container_id", string(container_id)),
        (kind.0, string(kind.1)),
        ("result", string("killed")),
        ("reason", string(reason)),
        ("message", string(&exit.message)),
        ("exit_status", number(f64::from(exit.exit_code))),
        ("time", string(rfc3339(exit.exited_at_unix_nanos))),
    ]);
    Some(AgentKill {
        topic,
        reason,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &Struct, key: &str) -> String {
        match &s.fields[key].kind {
            Some(Kind::StringValue(v)) => v.clone(),
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn probe_event_names_container_kind_result_message_and_time() {
        let event = ProbeEvent {
            container_id: "c1".into(),
            kind: ProbeKind::READINESS.into(),
            result: ProbeResult::FAILURE.into(),
            message: "connection refused".into(),
            consecutive: 3,
            ..Default::default()
        };
        let s = probe(&event, 1_700_000_000_123_456_789);
        assert_eq!(text(&s, "container_id"), "c1");
        assert_eq!(text(&s, "probe"), "readiness");
        assert_eq!(text(&s, "result"), "failure");
        assert_eq!(text(&s, "message"), "connection refused");
        assert_eq!(text(&s, "time"), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(s.fields["consecutive"].kind, Some(Kind::NumberValue(3.0)));
    }

    #[test]
    fn lifecycle_event_names_the_hook() {
        let event = LifecycleEvent {
            container_id: "c2".into(),
            hook: LifecycleHook::PRE_STOP.into(),
            succeeded: false,
            message: "exit status 1".into(),
            ..Default::default()
        };
        let s = lifecycle(&event, 0);
        assert_eq!(text(&s, "hook"), "preStop");
        assert_eq!(s.fields["succeeded"].kind, Some(Kind::BoolValue(false)));
        assert_eq!(text(&s, "result"), "failure");
        assert!(text(&s, "time").ends_with('Z'));
    }

    #[test]
    fn only_agent_kills_get_a_reason_event() {
        let mut exit = WaitProcessResponse {
            exit_code: 137,
            reason: ExitReason::LIVENESS_PROBE_FAILED.into(),
            message: "probe failed 3 times".into(),
            ..Default::default()
        };
        let kill = agent_kill("c3", &exit).unwrap();
        let s = kill.payload;
        assert_eq!(kill.topic, PROBE_TOPIC);
        assert_eq!(text(&s, "reason"), "LivenessProbeFailed");
        assert_eq!(text(&s, "message"), "probe failed 3 times");
        exit.reason = ExitReason::POST_START_HOOK_FAILED.into();
        let kill = agent_kill("c3", &exit).unwrap();
        let s = kill.payload;
        assert_eq!(kill.topic, LIFECYCLE_TOPIC);
        assert_eq!(kill.reason, "PostStartHookFailed");
        assert_eq!(text(&s, "hook"), "postStart");
        for reason in [
            ExitReason::EXITED,
            ExitReason::SIGNALED,
            ExitReason::OOM_KILLED,
        ] {
            exit.reason = reason.into();
            assert!(agent_kill("c3", &exit).is_none(), "{reason:?}");
        }
    }
}
