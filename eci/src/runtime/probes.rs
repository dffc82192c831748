//! Readiness from the containers' readiness probes. The agent runs the probes in the pod and
//! the shim publishes every change of a probe's result as a containerd event on `/eci/probe` (a
//! `google.protobuf.Struct` with `container_id`, `probe`, `result`, ...); CRI has no field for
//! it. [`follow`] subscribes to containerd's event service and keeps the latest readiness result
//! per CRI container id in [`Readiness`].
//!
//! Hand-written: containerd's events API is one server-streaming call whose two messages are
//! declared here with prost; containerd's generated Rust clients (the `containerd-client`
//! crate) build on another tonic than the CRI client, for this single call.
//!
//! Known limit: events are not replayed. After `eci serve` restarts, an adopted container keeps
//! the readiness stored before the restart until its probe's result changes again.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tonic::transport::Channel;

/// The topic the shim publishes probe results on.
pub const PROBE_TOPIC: &str = "/eci/probe";
const SUBSCRIBE: &str = "/containerd.services.events.v1.Events/Subscribe";

/// containerd.services.events.v1.SubscribeRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct SubscribeRequest {
    #[prost(string, repeated, tag = "1")]
    filters: Vec<String>,
}

/// containerd.services.events.v1.Envelope.
#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(message, optional, tag = "1")]
    timestamp: Option<prost_types::Timestamp>,
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(string, tag = "3")]
    topic: String,
    #[prost(message, optional, tag = "4")]
    event: Option<prost_types::Any>,
}

/// The latest readiness probe result of each CRI container (true: the probe succeeds).
#[derive(Debug, Default)]
pub struct Readiness {
    results: Mutex<HashMap<String, bool>>,
}

impl Readiness {
    /// The latest result for `cri_id`; None before the first one.
    pub fn get(&self, cri_id: &str) -> Option<bool> {
        self.lock().get(cri_id).copied()
    }

    /// Drops what is known of a container that is gone.
    pub fn forget(&self, cri_id: &str) {
        self.lock().remove(cri_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, bool>> {
        self.results.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one event if it is a readiness result (the payload decoded from `value`).
    fn record(&self, value: &[u8]) {
        if let Some((container, ready)) = readiness_result(value) {
            self.lock().insert(container, ready);
        }
    }
}

/// `(container_id, succeeded)` of a `/eci/probe` payload when it is a readiness result.
fn readiness_result(value: &[u8]) -> Option<(String, bool)> {
    use prost::Message;
    use prost_types::value::Kind;
    let payload = prost_types::Struct::decode(value).ok()?;
    let text = |key: &str| match payload.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s.clone()),
        _ => None,
    };
    if text("probe")? != "readiness" {
        return None;
    }
    let ready = match text("result")?.as_str() {
        "success" => true,
        "failure" => false,
        _ => return None,
    };
    Some((text("container_id")?, ready))
}

/// Follows `/eci/probe` events of containerd namespace `namespace` into `readiness` for as
/// long as the process runs, subscribing again after containerd went away.
pub async fn follow(channel: Channel, namespace: String, readiness: std::sync::Arc<Readiness>) {
    loop {
        if let Err(e) = subscribe(channel.clone(), &namespace, &readiness).await {
            tracing::debug!("containerd events: {e}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn subscribe(
    channel: Channel,
    namespace: &str,
    readiness: &Readiness,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = SubscribeRequest {
        filters: vec![format!(
            "topic==\"{PROBE_TOPIC}\",namespace==\"{namespace}\""
        )],
    };
    let mut stream = grpc
        .server_streaming(
            tonic::Request::new(request),
            tonic::codegen::http::uri::PathAndQuery::from_static(SUBSCRIBE),
            tonic_prost::ProstCodec::<SubscribeRequest, Envelope>::default(),
        )
        .await?
        .into_inner();
    while let Some(envelope) = stream.message().await? {
        if envelope.topic == PROBE_TOPIC && envelope.namespace == namespace {
            if let Some(event) = &envelope.event {
                readiness.record(&event.value);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::{value::Kind, Struct, Value};

    fn payload(pairs: &[(&str, &str)]) -> Vec<u8> {
        let fields = pairs
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value {
                        kind: Some(Kind::StringValue(v.to_string())),
                    },
                )
            })
            .collect();
        Struct { fields }.encode_to_vec()
    }

    #[test]
    fn readiness_results_are_recorded_and_other_probes_ignored() {
        let r = Readiness::default();
        assert_eq!(r.get("c1"), None);
        r.record(&payload(&[
            ("container_id", "c1"),
            ("probe", "readiness"),
            ("result", "success"),
        ]));
        assert_eq!(r.get("c1"), Some(true));
        r.record(&payload(&[
            ("container_id", "c1"),
            ("probe", "liveness"),
            ("result", "failure"),
        ]));
        assert_eq!(
            r.get("c1"),
            Some(true),
            "a liveness result is not readiness"
        );
        r.record(&payload(&[
            ("container_id", "c1"),
            ("probe", "readiness"),
            ("result", "failure"),
        ]));
        assert_eq!(r.get("c1"), Some(false));
        r.record(b"\xff not a struct");
        r.forget("c1");
        assert_eq!(r.get("c1"), None);
    }
}
