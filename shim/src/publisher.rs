//! Task events to containerd that survive a containerd restart.
//!
//! containerd-shim's `RemotePublisher` tries an event five times within about 15 s and drops it
//! then, so an exit that happens while containerd is down (a restart, a crash) may never reach
//! it. This publisher keeps the events in order in a bounded queue and forwards each one until
//! containerd takes it, connecting again (with back-off) whenever the connection broke.

use std::time::Duration;

use containerd_shim::protos::{
    protobuf::MessageDyn,
    shim::{event::Envelope, events::ForwardRequest},
    shim_async::EventsClient,
};
use tokio::sync::mpsc;

/// Events waiting for containerd at most; beyond, new ones are dropped (and logged).
const QUEUE: usize = 4096;
/// How long one forward may take before the connection is taken for broken.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The queue's sending end; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    queue: mpsc::Sender<Envelope>,
}

impl EventPublisher {
    /// A publisher to containerd's ttrpc `address` (`TTRPC_ADDRESS`, with or without
    /// `unix://`). Connects lazily, in the background task it starts.
    pub fn start(address: &str) -> Self {
        let address = if address.contains("://") {
            address.to_owned()
        } else {
            format!("unix://{address}")
        };
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(forward_forever(address, events));
        Self { queue }
    }

    /// Queues `event` on `topic` of containerd namespace `namespace`.
    pub fn publish(&self, topic: &str, namespace: &str, event: Box<dyn MessageDyn>) {
        let mut envelope = Envelope::new();
        envelope.set_topic(topic.to_owned());
        envelope.set_namespace(namespace.to_owned());
        match (
            containerd_shim::util::timestamp(),
            containerd_shim::util::convert_to_any(event),
        ) {
            (Ok(at), Ok(any)) => {
                envelope.set_timestamp(at);
                envelope.set_event(any);
            }
            (Err(e), _) | (_, Err(e)) => {
                log::error!("event {topic} not published: {e}");
                return;
            }
        }
        if let Err(e) = self.queue.try_send(envelope) {
            log::error!("event {topic} dropped: {e} (containerd takes no events)");
        }
    }
}

/// Forwards the queued events in order, each until containerd takes it.
async fn forward_forever(address: String, mut events: mpsc::Receiver<Envelope>) {
    let mut client: Option<EventsClient> = None;
    while let Some(envelope) = events.recv().await {
        let mut delay = RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            if client.is_none() {
                client = ttrpc::r#async::Client::connect(&address)
                    .await
                    .ok()
                    .map(EventsClient::new);
            }
            if let Some(c) = &client {
                let request = ForwardRequest {
                    envelope: Some(envelope.clone()).into(),
                    ..Default::default()
                };
                let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
                match c.forward(ctx, &request).await {
                    Ok(_) => break,
                    Err(e) => {
                        if failures == 0 {
                            log::warn!("forward {} to containerd: {e}; retrying", envelope.topic);
                        }
                        client = None;
                    }
                }
            }
            failures += 1;
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_MAX);
        }
        if failures > 0 {
            log::info!(
                "event {} reached containerd after {failures} retries",
                envelope.topic
            );
        }
    }
}
