//! Occupancy: which groups have a member anywhere in the cluster, told as
//! events when that changes (feed demand: a backend produces data for a
//! group only while someone watches it).
//!
//! A group is *occupied* from its first member anywhere until its last one
//! has been gone for the linger (`occupancy.linger`); a join within the
//! linger cancels the pending `vacated`, so a page reload does not make the
//! feed stop and start. Each transition is one event cluster-wide, emitted
//! by the node that decided it (the Redis broker decides in a Lua script,
//! atomically; the in-process broker is the whole cluster).
//!
//! This file holds what both brokers share: the event, the [`Emitter`] that
//! hands events to the node (webhook, demo feed) without ever waiting, and
//! [`LocalOccupancy`], the in-process broker's counting. The node counts a
//! group once per connection that joined it, not per message: occupancy
//! costs nothing on the message path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use wildmatch::WildMatch;

/// What happened to a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OccupancyKind {
    /// Its first member anywhere in the cluster joined.
    Occupied,
    /// Its last member left `linger` ago and nobody came back.
    Vacated,
}

impl OccupancyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OccupancyKind::Occupied => "occupied",
            OccupancyKind::Vacated => "vacated",
        }
    }
}

/// One transition, as the webhook posts it and the stream holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OccupancyEvent {
    pub event: OccupancyKind,
    pub group: String,
    /// When the transition was decided, unix milliseconds.
    pub ts: u64,
    /// Unique per event: receivers drop repeats (webhook retries).
    pub id: String,
}

impl OccupancyEvent {
    pub fn new(event: OccupancyKind, group: &str) -> OccupancyEvent {
        OccupancyEvent {
            event,
            group: group.to_string(),
            ts: crate::clock::unix_ms(),
            id: new_event_id(),
        }
    }
}

/// A random event id (128 bits, hex).
pub fn new_event_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// An occupied group and its members across the cluster (0 while it
/// lingers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupOccupancy {
    pub group: String,
    pub members: u64,
}

/// The occupied groups a pattern selected, in name order.
#[derive(Debug, Clone, Default)]
pub struct OccupiedGroups {
    pub groups: Vec<GroupOccupancy>,
    /// More groups matched than the limit allowed (or than one listing
    /// looks through).
    pub truncated: bool,
}

/// How a broker tracks occupancy (from `[occupancy]`).
#[derive(Debug, Clone)]
pub struct OccupancySettings {
    pub linger: Duration,
    /// The stream's name under the Redis prefix; `None`: no stream.
    pub stream: Option<String>,
    pub stream_maxlen: u64,
    /// Events held for each in-process receiver.
    pub queue: usize,
}

/// Hands this node's events to in-process receivers (the webhook, the demo
/// feed). A `broadcast` channel: sending never waits, and a receiver that
/// falls `queue` events behind loses the oldest and is told how many.
#[derive(Clone)]
pub struct Emitter {
    tx: broadcast::Sender<OccupancyEvent>,
}

impl Emitter {
    pub fn new(queue: usize) -> Emitter {
        Emitter {
            tx: broadcast::channel(queue.max(1)).0,
        }
    }

    pub fn emit(&self, event: OccupancyEvent) {
        tracing::debug!(event = event.event.as_str(), group = %event.group, "occupancy");
        // No receiver is fine: nobody listens on this node.
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<OccupancyEvent> {
        self.tx.subscribe()
    }
}

/// Whether `pattern` can select groups: group characters plus `*` and `?`,
/// 1 to 128 of them.
pub fn is_valid_pattern(pattern: &str) -> bool {
    !pattern.is_empty()
        && pattern.len() <= 128
        && pattern
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-*?".contains(&b))
}

/// The part of `pattern` before its first wildcard: every match starts so.
pub fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// Occupancy for the in-process broker: member counts per group, and a
/// timer per lingering group.
pub struct LocalOccupancy {
    emitter: Emitter,
    linger: Duration,
    state: Arc<Mutex<LocalState>>,
}

#[derive(Default)]
struct LocalState {
    members: HashMap<String, u64>,
    /// Groups whose last member left, with the generation of their timer
    /// (a timer that finds another generation was cancelled).
    lingering: HashMap<String, u64>,
    generation: u64,
}

fn lock(state: &Mutex<LocalState>) -> MutexGuard<'_, LocalState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl LocalOccupancy {
    pub fn new(settings: &OccupancySettings) -> LocalOccupancy {
        LocalOccupancy {
            emitter: Emitter::new(settings.queue),
            linger: settings.linger,
            state: Arc::new(Mutex::new(LocalState::default())),
        }
    }

    pub fn emitter(&self) -> &Emitter {
        &self.emitter
    }

    /// One more member of `group`.
    pub fn join(&self, group: &str) {
        let mut state = lock(&self.state);
        let count = state.members.entry(group.to_string()).or_insert(0);
        *count += 1;
        if *count == 1 && state.lingering.remove(group).is_none() {
            drop(state);
            self.emitter
                .emit(OccupancyEvent::new(OccupancyKind::Occupied, group));
        }
    }

    /// One member of `group` left; the last one starts the linger. Needs a
    /// Tokio runtime (the timer is a task).
    pub fn leave(&self, group: &str) {
        let mut state = lock(&self.state);
        let Some(count) = state.members.get_mut(group) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.members.remove(group);
        state.generation += 1;
        let generation = state.generation;
        state.lingering.insert(group.to_string(), generation);
        drop(state);
        let (shared, emitter, linger) = (self.state.clone(), self.emitter.clone(), self.linger);
        let group = group.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(linger).await;
            let mut state = lock(&shared);
            if state.lingering.get(&group) == Some(&generation) {
                state.lingering.remove(&group);
                drop(state);
                emitter.emit(OccupancyEvent::new(OccupancyKind::Vacated, &group));
            }
        });
    }

    /// The occupied groups matching `pattern` (lingering ones with 0
    /// members), at most `limit`.
    pub fn list(&self, pattern: &str, limit: usize) -> OccupiedGroups {
        let matcher = WildMatch::new(pattern);
        let state = lock(&self.state);
        let mut groups: Vec<GroupOccupancy> = state
            .members
            .iter()
            .map(|(g, n)| (g, *n))
            .chain(state.lingering.keys().map(|g| (g, 0)))
            .filter(|(g, _)| matcher.matches(g))
            .map(|(g, n)| GroupOccupancy {
                group: g.clone(),
                members: n,
            })
            .collect();
        drop(state);
        groups.sort_by(|a, b| a.group.cmp(&b.group));
        let truncated = groups.len() > limit;
        groups.truncate(limit);
        OccupiedGroups { groups, truncated }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(linger: Duration) -> OccupancySettings {
        OccupancySettings {
            linger,
            stream: None,
            stream_maxlen: 10,
            queue: 16,
        }
    }

    #[tokio::test]
    async fn one_event_per_transition_and_the_linger_cancels_a_vacate() {
        let occ = LocalOccupancy::new(&settings(Duration::from_millis(100)));
        let mut rx = occ.emitter().subscribe();
        occ.join("g");
        occ.join("g");
        let e = rx.recv().await.unwrap();
        assert_eq!((e.event, e.group.as_str()), (OccupancyKind::Occupied, "g"));
        occ.leave("g");
        occ.leave("g");
        // Back within the linger: nothing at all.
        occ.join("g");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(rx.try_recv().is_err());
        assert_eq!(occ.list("*", 10).groups[0].members, 1);
        occ.leave("g");
        assert_eq!(occ.list("g", 10).groups[0].members, 0, "lingering");
        let e = rx.recv().await.unwrap();
        assert_eq!(e.event, OccupancyKind::Vacated);
        assert!(occ.list("*", 10).groups.is_empty());
    }

    #[test]
    fn patterns() {
        assert!(is_valid_pattern("market.*"));
        assert!(!is_valid_pattern(""));
        assert!(!is_valid_pattern("a b"));
        assert!(!is_valid_pattern(&"a".repeat(129)));
        assert_eq!(literal_prefix("market.*"), "market.");
        assert_eq!(literal_prefix("a?b*"), "a");
        assert_eq!(literal_prefix("exact"), "exact");
    }
}
