//! Independent Redis shards (`redis.shards`): one [`RedisBroker`] per
//! server, each group on one of them. With one server (or a Redis Cluster,
//! which spreads its channels itself) it is that server's broker, passed
//! through, so the node is built the same way in every Redis mode.
//!
//! Why: a Redis server carries a bounded number of pub/sub messages a
//! second, and a Redis Cluster does not add to it the way its key
//! capacity grows (classic pub/sub is broadcast to every member; sharded
//! pub/sub keeps a channel on one shard, but every shard still pays for the
//! cluster bus). Independent servers share nothing, so each one added
//! carries its part of the groups. Centrifugo's Redis engine does the same.
//!
//! A group's channel, history, latest value and presence all live on the
//! group's shard, so each is still one round trip to one server and a
//! history publish stays atomic. Placement is Redis Cluster's hash slot of
//! the group name (CRC16, a stable and documented function) spread over the
//! shards by jump consistent hashing (Lamping and Veach, 2014): adding a
//! server at the end of the list moves only the groups the new one takes.
//! What belongs to no group stays on the first shard: the node registry,
//! the control channel and, through `redis.url`, the token cache and
//! idempotency keys. Every node registers on every shard too, because each
//! shard's presence and occupancy scripts read their own shard's registry
//! to tell live holders from dead ones.
//!
//! Each shard keeps its own occupancy keys (the groups it holds); this node's
//! events from all of them are merged into one receiver, and the groups API
//! merges their listings. The occupancy stream is per shard.

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::future::join_all;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::RedisBroker;
use crate::broker::{
    Broker, BrokerError, BrokerHandler, ControlSender, History, HistoryPolicy, NodeInfo,
    NodeRegistry, Occupancy, OccupancyEvent, OccupiedGroups, Presence, Recovery, SnapshotPolicy,
    Snapshots, occupancy::OccupancySettings,
};
use crate::config::RedisConfig;
use crate::hub::Member;
use crate::metrics::Metrics;
use crate::protocol::{Control, Position, Publication};

/// The index of `group`'s shard among `shards` (at least 1).
pub fn shard_of(group: &str, shards: usize) -> usize {
    let slot = fred::util::redis_keyslot(group.as_bytes());
    jump_hash(u64::from(slot), shards.max(1))
}

/// Jump consistent hash (Lamping and Veach, "A Fast, Minimal Memory,
/// Consistent Hash Algorithm", 2014): a bucket in `0..buckets` for `key`,
/// moving only `1/(n+1)` of the keys when bucket `n` is added.
fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j) = (-1i64, 0i64);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// A broker over independent Redis servers; see the module doc.
pub struct ShardedBroker {
    shards: Vec<Arc<RedisBroker>>,
    /// This node's occupancy events from every shard; `None` while off.
    events: std::sync::OnceLock<broadcast::Sender<OccupancyEvent>>,
    forwarders: Mutex<Vec<JoinHandle<()>>>,
}

impl ShardedBroker {
    /// Connects one broker per `cfg.shards` entry, in order, or one for
    /// `cfg.url` (a server or a Redis Cluster) when fewer than two are
    /// listed; fails (and closes what it opened) if any cannot be reached.
    pub async fn connect(
        cfg: &RedisConfig,
        node_id: String,
        metrics: Arc<Metrics>,
        history: HistoryPolicy,
        snapshots: SnapshotPolicy,
    ) -> Result<Arc<ShardedBroker>, BrokerError> {
        let servers: Vec<RedisConfig> = if cfg.shards.len() < 2 {
            vec![cfg.clone()]
        } else {
            let server = |url: &String| RedisConfig {
                url: Some(url.clone()),
                cluster: false,
                shards: Vec::new(),
                ..cfg.clone()
            };
            cfg.shards.iter().map(server).collect()
        };
        let links_down = Arc::new(AtomicUsize::new(servers.len()));
        let mut shards: Vec<Arc<RedisBroker>> = Vec::with_capacity(servers.len());
        for shard_cfg in &servers {
            let connected = RedisBroker::connect_shard(
                shard_cfg,
                node_id.clone(),
                metrics.clone(),
                history.clone(),
                snapshots.clone(),
                links_down.clone(),
            )
            .await;
            match connected {
                Ok(broker) => shards.push(broker),
                Err(e) => {
                    join_all(shards.iter().map(|s| s.shutdown())).await;
                    return Err(e);
                }
            }
        }
        Ok(Arc::new(ShardedBroker {
            shards,
            events: std::sync::OnceLock::new(),
            forwarders: Mutex::new(Vec::new()),
        }))
    }

    /// The shards, in `redis.shards` order.
    pub fn shards(&self) -> &[Arc<RedisBroker>] {
        &self.shards
    }

    fn of(&self, group: &str) -> &RedisBroker {
        match self.shards.len() {
            1 => &self.shards[0],
            n => &self.shards[shard_of(group, n)],
        }
    }

    fn first(&self) -> &RedisBroker {
        &self.shards[0]
    }

    /// Turns occupancy on for every shard and merges their events. Call
    /// once, right after connecting.
    pub fn start_occupancy(&self, settings: OccupancySettings) {
        let sender = broadcast::channel(settings.queue.max(1)).0;
        if self.events.set(sender.clone()).is_err() {
            return;
        }
        let mut forwarders = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
        for shard in &self.shards {
            shard.start_occupancy(settings.clone());
            let Some(mut events) = shard.occupancy_events() else {
                continue;
            };
            let sender = sender.clone();
            forwarders.push(tokio::spawn(async move {
                loop {
                    match events.recv().await {
                        // No receiver is fine, as for one broker.
                        Ok(event) => drop(sender.send(event)),
                        Err(RecvError::Lagged(n)) => {
                            tracing::warn!(lost = n, "occupancy events lost between shards");
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            }));
        }
    }
}

impl Drop for ShardedBroker {
    fn drop(&mut self) {
        for task in self
            .forwarders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

#[async_trait]
impl ControlSender for ShardedBroker {
    /// On the first shard, where every node's control link listens.
    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        self.first().control(control).await
    }
}

#[async_trait]
impl Broker for ShardedBroker {
    /// Each shard's part in one call, all shards at once; the answer keeps
    /// the order of `publications`. Order holds within a group (one shard),
    /// not across groups on different shards. A shard that fails fails the
    /// call, though the other shards' parts may have gone out, as when one
    /// server's pipeline fails midway.
    async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError> {
        let n = self.shards.len();
        if n == 1 {
            return self.shards[0].publish(publications).await;
        }
        let mut parts: Vec<(Vec<usize>, Vec<Publication>)> = vec![(Vec::new(), Vec::new()); n];
        let total = publications.len();
        for (i, p) in publications.into_iter().enumerate() {
            let part = &mut parts[shard_of(&p.group, n)];
            part.0.push(i);
            part.1.push(p);
        }
        let (indices, batches): (Vec<_>, Vec<_>) = parts.into_iter().unzip();
        let answers = join_all(
            self.shards
                .iter()
                .zip(batches)
                .filter(|(_, batch)| !batch.is_empty())
                .map(|(shard, batch)| shard.publish(batch)),
        )
        .await;
        let mut positions = vec![None; total];
        let used = indices.into_iter().filter(|ix| !ix.is_empty());
        for (ix, answer) in used.zip(answers) {
            for (i, position) in ix.into_iter().zip(answer?) {
                positions[i] = position;
            }
        }
        Ok(positions)
    }

    async fn subscribe(&self, group: &str, member: &Member) -> Result<(), BrokerError> {
        self.of(group).subscribe(group, member).await
    }

    async fn unsubscribe(&self, group: &str, session: &str) -> Result<(), BrokerError> {
        self.of(group).unsubscribe(group, session).await
    }

    /// Up only with every shard: a node that cannot reach some groups'
    /// shard is not ready to serve all groups.
    fn is_up(&self) -> bool {
        self.shards.iter().all(|s| s.is_up())
    }

    fn attach(&self, handler: Arc<dyn BrokerHandler>) {
        for shard in &self.shards {
            shard.attach(handler.clone());
        }
    }

    async fn shutdown(&self) {
        join_all(self.shards.iter().map(|s| s.shutdown())).await;
    }
}

#[async_trait]
impl History for ShardedBroker {
    async fn history(
        &self,
        group: &str,
        since: Option<&Position>,
    ) -> Result<Recovery, BrokerError> {
        self.of(group).history(group, since).await
    }
}

#[async_trait]
impl Snapshots for ShardedBroker {
    fn keeps_latest(&self, group: &str) -> bool {
        self.of(group).keeps_latest(group)
    }

    async fn latest(&self, group: &str) -> Result<Option<Publication>, BrokerError> {
        self.of(group).latest(group).await
    }
}

#[async_trait]
impl Presence for ShardedBroker {
    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError> {
        self.of(group).presence(group).await
    }
}

#[async_trait]
impl NodeRegistry for ShardedBroker {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        self.first().nodes().await
    }
}

#[async_trait]
impl Occupancy for ShardedBroker {
    /// Every shard's listing, merged in name order and cut at `limit`.
    async fn occupied(&self, pattern: &str, limit: usize) -> Result<OccupiedGroups, BrokerError> {
        let mut merged = OccupiedGroups::default();
        for listing in join_all(self.shards.iter().map(|s| s.occupied(pattern, limit))).await {
            let listing = listing?;
            merged.truncated |= listing.truncated;
            merged.groups.extend(listing.groups);
        }
        merged.groups.sort_by(|a, b| a.group.cmp(&b.group));
        if merged.groups.len() > limit {
            merged.groups.truncate(limit);
            merged.truncated = true;
        }
        Ok(merged)
    }

    fn occupancy_events(&self) -> Option<broadcast::Receiver<OccupancyEvent>> {
        self.events.get().map(|s| s.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published test vectors of the algorithm (the Go, Python and Elixir
    /// ports share them), so nodes built from any version, or a tool in
    /// another language, place groups alike.
    #[test]
    fn jump_hash_matches_the_reference() {
        let vectors: [(u64, usize, usize); 10] = [
            (1, 1, 0),
            (42, 57, 43),
            (0xDEAD_10CC, 1, 0),
            (0xDEAD_10CC, 666, 361),
            (256, 1024, 520),
            (1, 128, 55),
            (129, 128, 120),
            (u64::MAX, 128, 92),
            (4, 2, 1),
            (7, 2, 0),
        ];
        for (key, buckets, bucket) in vectors {
            assert_eq!(jump_hash(key, buckets), bucket, "key {key} of {buckets}");
        }
    }

    /// The values docs/protocol.md's Python `shard_of` gives (for backends
    /// that publish straight to a shard).
    #[test]
    fn placement_matches_the_documented_python() {
        for (group, shards, shard) in [
            ("market.AAPL", 3, 2),
            ("market.MSFT", 3, 0),
            ("user.42", 3, 1),
            ("user.42", 8, 6),
            ("h.0", 8, 4),
        ] {
            assert_eq!(shard_of(group, shards), shard, "{group} of {shards}");
        }
    }

    #[test]
    fn groups_spread_and_move_little_when_a_shard_is_added() {
        let groups: Vec<String> = (0..10_000).map(|i| format!("market.S{i}")).collect();
        let mut per_shard = [0usize; 3];
        for g in &groups {
            per_shard[shard_of(g, 3)] += 1;
        }
        for count in per_shard {
            assert!((2_900..=3_800).contains(&count), "{per_shard:?}");
        }
        let moved = groups
            .iter()
            .filter(|g| shard_of(g, 3) != shard_of(g, 4))
            .count();
        // A fourth shard takes about a quarter; nothing else moves.
        assert!((2_000..=3_000).contains(&moved), "{moved}");
        for g in &groups {
            let (before, after) = (shard_of(g, 3), shard_of(g, 4));
            assert!(
                before == after || after == 3,
                "{g} moved {before} -> {after}"
            );
        }
        assert_eq!(shard_of("anything", 1), 0);
    }
}
