//! The broker carries publications and control commands between nodes.
//!
//! Sessions and the API talk to a `dyn Broker`; what arrives from it goes to
//! a [`BrokerHandler`] (the node's dispatcher, which feeds the hub). The
//! in-process [`memory::MemoryBroker`] serves single-node mode: publishing
//! calls the handler directly. The Redis broker (cluster mode) implements
//! the same trait, so nothing above this module changes between the two.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::hub::Member;
use crate::protocol::{Control, Publication};

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

/// What the broker calls when something arrives for this node.
pub trait BrokerHandler: Send + Sync + 'static {
    fn on_publication(&self, publication: Publication);
    fn on_control(&self, control: Control);
    /// This node's members of a group (for presence).
    fn local_presence(&self, group: &str) -> Vec<Member>;
    /// This node's entry in the cluster listing.
    fn local_node(&self) -> NodeInfo;
}

#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publishes messages, in order, to every node with a member of their group.
    async fn publish(&self, publications: Vec<Publication>) -> Result<(), BrokerError>;
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
    /// Sends a command to every node, this one included.
    async fn control(&self, control: Control) -> Result<(), BrokerError>;
    /// Members of a group across the cluster.
    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError>;
    /// The live nodes.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError>;
    /// Whether the broker can carry messages now (for `/readyz`).
    fn is_up(&self) -> bool;
    /// Connects the handler that receives what arrives. Called once, at start-up.
    fn attach(&self, handler: Arc<dyn BrokerHandler>);
}
