//! Feed demand, on the node's side: what happens to the `occupied` /
//! `vacated` events the broker decides (see [`crate::broker::occupancy`]).
//!
//! The broker emits each transition on exactly one node; here that node
//! counts it and, with `occupancy.webhook_url`, POSTs it signed
//! ([`webhook`]). The Redis stream is written by the broker itself, in the
//! same atomic step as the transition. In-process consumers (the demo feed)
//! take their own receiver from [`Broker::occupancy_events`].
//!
//! Why apart from the broker: the broker knows Redis, not HTTP; the webhook
//! knows HTTP, not Redis. Both sit behind a channel that never blocks the
//! session that joined or left (a full queue drops the event and counts it).

pub mod webhook;

use std::sync::Arc;

use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::broker::occupancy::OccupancySettings;
use crate::broker::{Broker, OccupancyEvent, OccupancyKind};
use crate::config::Config;
use crate::metrics::{Metrics, OccupancyEventLabel, WebhookResult};

/// The broker's occupancy settings from `[occupancy]` (`None`: off).
pub fn settings(config: &Config) -> Option<OccupancySettings> {
    let o = &config.occupancy;
    o.enabled.then(|| OccupancySettings {
        linger: o.linger,
        stream: (!o.stream.is_empty()).then(|| o.stream.clone()),
        stream_maxlen: o.stream_maxlen,
        queue: o.queue,
    })
}

/// Starts counting this node's events and, when configured, the webhook.
/// The tasks end when the broker is dropped; abort them at shutdown.
pub fn start(
    config: &Config,
    broker: &Arc<dyn Broker>,
    metrics: &Arc<Metrics>,
) -> Result<Vec<JoinHandle<()>>, webhook::WebhookError> {
    let mut tasks = Vec::new();
    let Some(events) = broker.occupancy_events() else {
        return Ok(tasks);
    };
    tasks.push(tokio::spawn(count(events, metrics.clone())));
    if let Some(hook) = webhook::Webhook::new(&config.occupancy)? {
        let events = broker
            .occupancy_events()
            .expect("occupancy is on: it answered once");
        tasks.push(tokio::spawn(hook.run(events, metrics.clone())));
    }
    Ok(tasks)
}

async fn count(mut events: Receiver<OccupancyEvent>, metrics: Arc<Metrics>) {
    loop {
        match events.recv().await {
            Ok(event) => metrics.occupancy_event(match event.event {
                OccupancyKind::Occupied => OccupancyEventLabel::Occupied,
                OccupancyKind::Vacated => OccupancyEventLabel::Vacated,
            }),
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

/// Receives the next event; a receiver that fell behind counts what it
/// lost as dropped webhooks and goes on with what is left.
pub(crate) async fn next(
    events: &mut Receiver<OccupancyEvent>,
    metrics: &Metrics,
) -> Option<OccupancyEvent> {
    loop {
        match events.recv().await {
            Ok(event) => return Some(event),
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(dropped = n, "occupancy webhook queue full; events dropped");
                metrics.webhook(WebhookResult::Dropped, n);
            }
            Err(RecvError::Closed) => return None,
        }
    }
}
