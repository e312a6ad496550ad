//! The broker carries publications and control commands between nodes.
//!
//! Sessions and the API talk to a `dyn Broker`; what arrives from it goes to
//! a [`BrokerHandler`] (the node's dispatcher, which feeds the hub). The
//! in-process [`memory::MemoryBroker`] serves single-node mode: publishing
//! queues for the handler, and after one scheduler round hands it what the
//! round queued as one burst (`memory_queue`). The Redis broker (cluster mode) implements
//! the same traits, so nothing above this module changes between the two.
//!
//! [`Broker`] is the message path; [`History`], [`Snapshots`], [`Presence`]
//! and [`NodeRegistry`] are the read-side services every broker also provides
//! (see [`Broker`] for why they are separate traits).
//!
//! History (`history.*`) lives in the broker too, because offsets must be
//! assigned where publications are ordered: the broker that carries a
//! publication gives it the next offset of its group in the same step, so
//! the order of offsets is the order of delivery on every node.

pub mod idempotency;
pub mod idempotency_memory;
pub mod memory;
mod memory_queue;
pub mod occupancy;
pub mod redis;
mod snapshot;
pub use snapshot::{MAX_MEMORY_SNAPSHOT_BYTES, SnapshotPolicy};

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use wildmatch::WildMatch;

pub use occupancy::{OccupancyEvent, OccupancyKind, OccupiedGroups};

use crate::config::HistoryConfig;
use crate::hub::Member;
use crate::protocol::{Control, Position, Publication};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker unavailable: {0}")]
    Unavailable(String),
}

/// A live node, as the cluster listing shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeInfo {
    pub node: String,
    pub connections: u64,
    pub last_seen_ms: u64,
}

/// Which groups keep history, and how much (`history.*`).
#[derive(Debug, Clone)]
pub struct HistoryPolicy {
    patterns: Vec<WildMatch>,
    pub size: usize,
    pub ttl: Duration,
    pub meta_ttl: Duration,
}

impl HistoryPolicy {
    pub fn new(cfg: &HistoryConfig) -> HistoryPolicy {
        HistoryPolicy {
            patterns: cfg.groups.iter().map(|p| WildMatch::new(p)).collect(),
            size: cfg.size,
            ttl: cfg.ttl,
            meta_ttl: cfg.meta_ttl,
        }
    }

    /// No group keeps history.
    pub fn off() -> HistoryPolicy {
        HistoryPolicy::new(&HistoryConfig::default())
    }

    /// Whether any group keeps history (the publish API then answers offsets).
    pub fn is_on(&self) -> bool {
        !self.patterns.is_empty()
    }

    pub fn applies(&self, group: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(group))
    }
}

/// The epoch of a history group that has never been published (or whose
/// state expired): its position is offset 0 of this epoch. Nothing is
/// stored for it, so subscribing creates no state; a subscriber holding it
/// recovers whatever the group's first epoch published since, while all of
/// it is still kept. Random epochs never start with `~`.
pub const UNPUBLISHED_EPOCH: &str = "~";

/// A new random epoch: it names one continuous run of a group's offsets.
pub fn new_epoch() -> String {
    let bytes: [u8; 6] = rand::random();
    hex::encode(bytes)
}

/// What a group's history says to a subscriber.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// The group's latest offset and epoch.
    pub position: Position,
    /// With `since`: whether everything after it is here (`publications`).
    pub recovered: Option<bool>,
    /// The publications after `since`, in order (empty unless recovered).
    pub publications: Vec<Publication>,
}

impl Recovery {
    /// Decides a recovery from the group's current position and the
    /// publications history still holds after `since` (in offset order).
    /// Recovered means: same epoch and no offset missing between `since`
    /// and the current position.
    /// `unpublished` is the broker's epoch for groups never published
    /// ([`UNPUBLISHED_EPOCH`], or one per process for the in-process broker,
    /// whose state does not outlive it).
    pub fn decide(
        since: Option<&Position>,
        position: Position,
        after_since: Vec<Publication>,
        unpublished: &str,
    ) -> Recovery {
        let Some(since) = since else {
            return Recovery {
                position,
                recovered: None,
                publications: Vec::new(),
            };
        };
        // Subscribed before the group's first publication: everything the
        // current epoch published is what was missed.
        let from_unpublished = since.epoch == unpublished && since.offset == 0;
        let complete = (since.epoch == position.epoch || from_unpublished)
            && since.offset <= position.offset
            && (since.offset == position.offset || {
                let offsets = after_since
                    .iter()
                    .map(|p| p.position.as_ref().map(|p| p.offset));
                // Exactly since+1 ..= position.offset, in order.
                after_since.len() as u64 == position.offset - since.offset
                    && offsets
                        .zip(since.offset + 1..)
                        .all(|(got, want)| got == Some(want))
            });
        Recovery {
            position,
            recovered: Some(complete),
            publications: if complete { after_since } else { Vec::new() },
        }
    }
}

/// What the broker calls when something arrives for this node.
pub trait BrokerHandler: Send + Sync + 'static {
    fn on_publication(&self, publication: Publication);
    /// Runs `deliver`, which hands this handler several publications that
    /// arrived together (a batch publish, or what Redis sent at once), as
    /// one burst: the handler may hold back waking the recipients until the
    /// end, so each gets the burst as one write. Synchronous, on purpose.
    fn in_burst(&self, deliver: &mut dyn FnMut()) {
        deliver()
    }
    fn on_control(&self, control: Control);
    /// This node's members of a group (for presence).
    fn local_presence(&self, group: &str) -> Vec<Member>;
    /// This node's entry in the cluster listing.
    fn local_node(&self) -> NodeInfo;
}

/// The message path between nodes: publish, subscribe, control, liveness
/// and shutdown. The read-side services are separate traits because each
/// backend keeps them in whatever store suits it (Redis keys, a NATS
/// JetStream stream or key-value bucket, this process's hub); a broker
/// provides all three, so one `Arc<dyn Broker>` reaches them.
#[async_trait]
pub trait Broker:
    ControlSender + History + Snapshots + Presence + NodeRegistry + Occupancy + Send + Sync + 'static
{
    /// Publishes messages, in order, to every node with a member of their
    /// group. Publications to history groups get the next offset of their
    /// group; the answer holds it (`None` for a group without history).
    /// Offsets are assigned here, not in [`History`], because this is where
    /// publications are ordered.
    async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError>;
    /// One more local member wants a group's messages. Called on every
    /// join, not only the first: the broker counts members per group, holds
    /// its subscription while the count is above zero, and returns only once
    /// the subscription is in place (also for later joiners while the first
    /// one's subscription is still being made), so a publish made afterwards
    /// is received. `member` is recorded for cluster-wide presence.
    async fn subscribe(&self, group: &str, member: &Member) -> Result<(), BrokerError>;
    /// One local member left a group (`session` is the member's session id).
    /// The subscription is dropped when the count reaches zero. Every
    /// successful `subscribe` is matched by exactly one `unsubscribe`.
    async fn unsubscribe(&self, group: &str, session: &str) -> Result<(), BrokerError>;
    /// Whether the broker can carry messages now (for `/readyz`).
    fn is_up(&self) -> bool;
    /// Connects the handler that receives what arrives. Called once, at start-up.
    fn attach(&self, handler: Arc<dyn BrokerHandler>);
    /// Leaves the cluster at the end of a drain: stops background work,
    /// removes what this node published about itself (registry entry,
    /// presence) rather than leaving it to expire, and closes connections.
    /// Bounded in time; safe to call more than once.
    async fn shutdown(&self);
}

/// Cluster-wide commands. Its own trait because a tool can send them
/// without being a node (`wsgate token revoke` closes sockets on every node
/// without joining the cluster); every broker sends them too.
#[async_trait]
pub trait ControlSender: Send + Sync {
    /// Sends a command to every node (this one included, for a broker).
    async fn control(&self, control: Control) -> Result<(), BrokerError>;
}

/// A group's kept publications, read back for recovery.
#[async_trait]
pub trait History: Send + Sync {
    /// A history group's current position and, with `since`, what it
    /// still holds after it. A group never published answers offset 0 of
    /// [`UNPUBLISHED_EPOCH`] and stores nothing (subscribing must not create
    /// state an attacker could multiply).
    async fn history(&self, group: &str, since: Option<&Position>)
    -> Result<Recovery, BrokerError>;
}

/// The latest publication of `groups.snapshot` groups (see `snapshot`).
#[async_trait]
pub trait Snapshots: Send + Sync {
    /// Whether this group's latest publication is kept.
    fn keeps_latest(&self, group: &str) -> bool;
    /// The group's latest publication, with its `seq`; `None` when it has
    /// none (never published, or expired). Reading stores nothing.
    async fn latest(&self, group: &str) -> Result<Option<Publication>, BrokerError>;
}

/// Who is in a group, across the cluster.
#[async_trait]
pub trait Presence: Send + Sync {
    /// Members of a group across the cluster.
    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError>;
}

/// Feed demand: the groups with a member anywhere (or lingering), and the
/// `occupied` / `vacated` events this node emits (see [`occupancy`]).
#[async_trait]
pub trait Occupancy: Send + Sync {
    /// The occupied groups matching `pattern` (`*`, `?`), at most `limit`.
    async fn occupied(&self, pattern: &str, limit: usize) -> Result<OccupiedGroups, BrokerError>;
    /// The events this node emits; `None` when occupancy is off.
    fn occupancy_events(&self) -> Option<tokio::sync::broadcast::Receiver<OccupancyEvent>>;
}

/// The cluster listing.
#[async_trait]
pub trait NodeRegistry: Send + Sync {
    /// The live nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: epoch.into(),
        }
    }

    fn kept(offsets: std::ops::RangeInclusive<u64>) -> Vec<Publication> {
        offsets
            .map(|o| Publication {
                group: "g".into(),
                data: serde_json::value::RawValue::from_string(o.to_string()).unwrap(),
                position: Some(at(o, "e")),
                ts: None,
                trace: None,
                seq: None,
            })
            .collect()
    }

    #[test]
    fn recovery_needs_the_same_epoch_and_every_offset() {
        let decide = |since: Option<Position>, now: u64, after| {
            let r = Recovery::decide(since.as_ref(), at(now, "e"), after, UNPUBLISHED_EPOCH);
            (r.recovered, r.publications.len())
        };
        assert_eq!(decide(None, 5, vec![]), (None, 0));
        assert_eq!(decide(Some(at(5, "e")), 5, vec![]), (Some(true), 0));
        assert_eq!(decide(Some(at(2, "e")), 5, kept(3..=5)), (Some(true), 3));
        // The oldest missed message is gone.
        assert_eq!(decide(Some(at(1, "e")), 5, kept(3..=5)), (Some(false), 0));
        // One in the middle is missing (an entry that did not decode).
        let mut holey = kept(3..=5);
        holey.remove(1);
        assert_eq!(decide(Some(at(2, "e")), 5, holey), (Some(false), 0));
        // Another epoch, or an offset the group never reached.
        assert_eq!(decide(Some(at(2, "x")), 5, vec![]), (Some(false), 0));
        assert_eq!(decide(Some(at(9, "e")), 5, vec![]), (Some(false), 0));
        // Subscribed before anything was published: all of the first
        // epoch's offsets are what it missed.
        assert_eq!(decide(Some(at(0, "~")), 3, kept(1..=3)), (Some(true), 3));
        assert_eq!(decide(Some(at(0, "~")), 3, kept(2..=3)), (Some(false), 0));
        assert_eq!(decide(Some(at(0, "~")), 0, vec![]), (Some(true), 0));
    }

    #[test]
    fn policy_matches_patterns() {
        let policy = HistoryPolicy::new(&HistoryConfig {
            groups: vec!["market.*".into(), "news".into()],
            ..HistoryConfig::default()
        });
        assert!(policy.is_on());
        assert!(policy.applies("market.AAPL"));
        assert!(policy.applies("news"));
        assert!(!policy.applies("newsroom"));
        assert!(!HistoryPolicy::off().is_on());
    }
}
