//! The Redis broker: cluster mode.
//!
//! Each node keeps one subscriber client (one connection, or one per primary
//! on Redis Cluster) holding a subscription for exactly the groups with a
//! local member, and publishes its groups' messages on that same connection.
//! It speaks RESP3 (Redis 6 and later), where a subscribed connection runs
//! other commands too: Redis then answers a publish and delivers the node's
//! own copy of it in one write, read with one wake-up of fred's task, where
//! a publish on a second connection took a read and a wake-up on each
//! (docs/performance.md, round seventeen). A second, ordinary client carries
//! the node registry, presence, occupancy, history reads and control
//! commands, but for a group's first join and last leave on the node: their
//! script rides beside the `SUBSCRIBE` or `UNSUBSCRIBE` on the subscriber
//! connection, one write each way (round eighteen), and its answer tells
//! the joiner that Redis holds the subscription (with occupancy off, the
//! join's presence write does; round nineteen). The control channel has
//! a subscriber of its own (`control`).
//!
//! This file is the broker itself: the state its parts share (`Inner`),
//! joining and leaving the cluster, and the [`Broker`] implementation. The
//! parts are split by what they keep in step with Redis, so each one's
//! commands and keys can be read in one place:
//! - `link`: the subscriber connection, per-group subscriptions, and the
//!   reconnect epochs that decide what to resubscribe after an outage;
//! - `presence`: presence hashes and the node registry, renewed by the
//!   heartbeat (it also watches for connections that stopped answering),
//!   and the [`Presence`](super::Presence) and
//!   [`NodeRegistry`](super::NodeRegistry) implementations that read them;
//! - `history`: offsets and kept publications, assigned by Lua scripts at
//!   publish time, which is why publishing lives there too, with the
//!   [`History`](super::History) implementation;
//! - `snapshot`: the latest publication of `groups.snapshot` groups, kept
//!   by a script in the same publish batch, and the
//!   [`Snapshots`](super::Snapshots) implementation.
//! - `occupancy`: which nodes hold each group, the `occupied` / `vacated`
//!   events and their stream (Lua scripts on first join and last leave).
//! - `transitions`: a group's first join and last leave on this node, which
//!   write the subscription, presence and occupancy together.
//! - `shards`: [`ShardedBroker`], one broker per independent server of
//!   `redis.shards`, each group placed on one of them.
//! - `requests`: several commands in order, one request each: why the
//!   broker sends no fred pipeline (late writes, one `writev` a command).

mod control;
mod history;
pub mod idempotency;
mod link;
mod occupancy;
mod presence;
mod requests;
mod shards;
mod snapshot;
mod transitions;

use control::ControlLink;
pub use control::RedisControl;
use requests::Request;
pub use shards::{ShardedBroker, shard_of};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Client, ClientLike, EventInterface, KeysInterface, PubsubInterface, SortedSetsInterface, Value,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::{Broker, BrokerError, BrokerHandler, ControlSender, HistoryPolicy, SnapshotPolicy};
use crate::config::RedisConfig;
use crate::hub::Member;
use crate::metrics::Metrics;
use crate::protocol::{Control, Position, Publication};
use crate::redis_client;
use link::{Slot, Sub, Unsettled, dispatch, supervise};
use presence::heartbeat;
use transitions::Via;

/// Messages buffered between fred's reader and our dispatcher.
const MESSAGE_BUFFER: usize = 16_384;

/// A command not sent because its connection is down.
fn not_connected() -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::IO, "not connected")
}

fn unavailable(e: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The state the broker's parts share, behind one `Arc` so the background
/// tasks (dispatch, supervisor, heartbeat) can hold it without the broker.
struct Inner {
    node_id: String,
    prefix: String,
    node_ttl: Duration,
    heartbeat: Duration,
    command_timeout: Duration,
    /// Redis Cluster: group channels are sharded.
    sharded: bool,
    history: HistoryPolicy,
    snapshots: SnapshotPolicy,
    client: Client,
    subscriber: SubscriberClient,
    metrics: Arc<Metrics>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    groups: Mutex<HashMap<String, Arc<Slot>>>,
    /// Connection generation; bumped on every disconnection and reconnection.
    epoch: AtomicU64,
    up: AtomicBool,
    /// Links of this node's brokers that are down, shared by the shards of
    /// a [`ShardedBroker`] (1 for a lone broker) so `wsgate_redis_up` is 1
    /// only while all are up.
    links_down: Arc<AtomicUsize>,
    /// The control channel is subscribed on its own connection
    /// ([`ControlLink`]); the node is up only with both in place, so a
    /// revocation sent meanwhile is not missed by a node that says it is up.
    control_up: AtomicBool,
    /// The control channel's own subscriber connection (set once started).
    control: OnceLock<fred::clients::SubscriberClient>,
    /// A heartbeat timed out on a connection that still looks open.
    stale: AtomicBool,
    /// Some group may hold a subscription it should not (a failed UNSUBSCRIBE).
    cleanup: AtomicBool,
    heartbeat_now: Notify,
    bad_envelopes: AtomicU64,
    lost_messages: AtomicU64,
    /// Set by `start_occupancy`; off until then.
    occupancy: OnceLock<occupancy::RedisOccupancy>,
}

/// The cluster broker. Build it with [`RedisBroker::connect`]; stop it with
/// [`Broker::shutdown`] (dropping it stops its tasks too, but leaves
/// the node's registry entry to expire).
pub struct RedisBroker {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    connections: Mutex<Vec<fred::types::ConnectHandle>>,
    closed: AtomicBool,
}

impl RedisBroker {
    /// Connects both clients, subscribes the control channel and registers
    /// the node. Fails if Redis cannot be reached within a few command
    /// timeouts; after that, outages are ridden out (see [`Broker::is_up`]).
    pub async fn connect(
        cfg: &RedisConfig,
        node_id: String,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        RedisBroker::connect_with(
            cfg,
            node_id,
            metrics,
            HistoryPolicy::off(),
            SnapshotPolicy::off(),
        )
        .await
    }

    /// As [`RedisBroker::connect`], keeping history for the groups of
    /// `history` and the latest publication of those of `snapshots`.
    pub async fn connect_with(
        cfg: &RedisConfig,
        node_id: String,
        metrics: Arc<Metrics>,
        history: HistoryPolicy,
        snapshots: SnapshotPolicy,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let links_down = Arc::new(AtomicUsize::new(1));
        RedisBroker::connect_shard(cfg, node_id, metrics, history, snapshots, links_down).await
    }

    /// As [`RedisBroker::connect_with`], as one of the shards whose links
    /// `links_down` counts (it starts counting this one as down).
    async fn connect_shard(
        cfg: &RedisConfig,
        node_id: String,
        metrics: Arc<Metrics>,
        history: HistoryPolicy,
        snapshots: SnapshotPolicy,
        links_down: Arc<AtomicUsize>,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let setup = |e: redis_client::RedisSetupError| BrokerError::Unavailable(e.to_string());
        metrics.redis_up.set(0);
        let client = redis_client::client(cfg).map_err(setup)?;
        let subscriber = redis_client::publishing_subscriber(cfg, MESSAGE_BUFFER).map_err(setup)?;
        // Listen before connecting so no event is missed.
        let messages = subscriber.message_rx();
        let reconnects = subscriber.reconnect_rx();
        let changes = subscriber.cluster_change_rx();
        let within = cfg.command_timeout.max(Duration::from_secs(1)) * 3;
        let client_conn = redis_client::connect(&client, within)
            .await
            .map_err(setup)?;
        let subscriber_conn = match redis_client::connect(&subscriber, within).await {
            Ok(handle) => handle,
            Err(e) => {
                let _ = client.quit().await;
                return Err(setup(e));
            }
        };
        let inner = Arc::new(Inner {
            node_id,
            prefix: cfg.prefix.clone(),
            node_ttl: cfg.node_ttl,
            heartbeat: cfg.heartbeat,
            command_timeout: cfg.command_timeout,
            sharded: subscriber.is_clustered(),
            history,
            snapshots,
            client,
            subscriber,
            metrics,
            handler: OnceLock::new(),
            groups: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            up: AtomicBool::new(false),
            links_down,
            control_up: AtomicBool::new(true),
            control: OnceLock::new(),
            stale: AtomicBool::new(false),
            cleanup: AtomicBool::new(false),
            heartbeat_now: Notify::new(),
            bad_envelopes: AtomicU64::new(0),
            lost_messages: AtomicU64::new(0),
            occupancy: OnceLock::new(),
        });
        let broker = Arc::new(RedisBroker {
            inner: inner.clone(),
            tasks: Mutex::new(Vec::new()),
            connections: Mutex::new(vec![client_conn, subscriber_conn]),
            closed: AtomicBool::new(false),
        });
        if let Err(e) = inner.check_channel_access().await {
            broker.shutdown().await;
            return Err(e);
        }
        if let Err(e) = inner.resync(true).await {
            broker.shutdown().await;
            return Err(unavailable(e));
        }
        match ControlLink::start(cfg, inner.clone(), within).await {
            Ok((link, connection)) => {
                let _ = inner.control.set(link.subscriber);
                broker.lock_tasks().extend(link.tasks);
                broker
                    .connections
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(connection);
            }
            Err(e) => {
                broker.shutdown().await;
                return Err(e);
            }
        }
        inner.heartbeat_once().await;
        inner.set_up(true);
        // The events of the first connection are behind us; the supervisor
        // reacts to later ones only.
        let (mut reconnects, mut changes) = (reconnects, changes);
        while reconnects.try_recv().is_ok() {}
        while changes.try_recv().is_ok() {}
        let tasks = vec![
            tokio::spawn(dispatch(inner.clone(), messages)),
            tokio::spawn(supervise(inner.clone(), reconnects, changes)),
            tokio::spawn(heartbeat(inner.clone())),
        ];
        broker.lock_tasks().extend(tasks);
        tracing::info!(
            node = %inner.node_id,
            cluster = inner.sharded,
            "connected to Redis"
        );
        Ok(broker)
    }

    fn lock_tasks(&self) -> MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Messages from Redis that were not valid envelopes or commands.
    pub fn bad_envelopes(&self) -> u64 {
        self.inner.bad_envelopes.load(Ordering::Relaxed)
    }

    /// Messages lost because the dispatcher fell behind fred's buffer.
    pub fn lost_messages(&self) -> u64 {
        self.inner.lost_messages.load(Ordering::Relaxed)
    }

    /// Groups this node holds a subscription for (or is settling).
    pub fn local_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self
            .inner
            .slots()
            .into_iter()
            .filter(|(_, s)| s.count() > 0)
            .map(|(g, _)| g)
            .collect();
        groups.sort();
        groups
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in self.lock_tasks().drain(..) {
            task.abort();
        }
        if !self.closed.load(Ordering::Acquire)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let inner = self.inner.clone();
            let control = self.inner.control.get().cloned();
            runtime.spawn(async move {
                if let Some(control) = control {
                    let _ = control.quit().await;
                }
                let _ = inner.subscriber.quit().await;
                let _ = inner.client.quit().await;
            });
        }
    }
}

#[async_trait]
impl ControlSender for RedisBroker {
    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.check_link()?;
        let _: i64 = inner
            .client
            .publish(inner.control_channel(), json(&control))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError> {
        // Offsets are assigned by the history scripts as they publish.
        self.inner.publish(publications).await
    }

    async fn subscribe(&self, group: &str, member: &Member) -> Result<(), BrokerError> {
        let inner = &self.inner;
        loop {
            let slot = inner.slot(group);
            let mut state = slot.op.lock().await;
            if state.dead {
                continue;
            }
            let unsettled = Unsettled::new(inner, &slot);
            let epoch = inner.epoch.load(Ordering::Acquire);
            let count = slot.count();
            // Presence and occupancy already written with the subscription.
            let mut joined = false;
            if state.sub != Sub::Confirmed(epoch) {
                if inner.subscriber.is_connected() {
                    state.sub = Sub::Unknown;
                    let result = if count == 0 {
                        joined = true;
                        inner.subscribe_first(group, &slot, member).await
                    } else {
                        inner.sub_channel(group).await
                    };
                    if let Err(e) = result {
                        // It may reach Redis after all: the supervisor
                        // settles the group (unsubscribes it if unused).
                        inner.cleanup.store(true, Ordering::Release);
                        unsettled.settled();
                        return Err(unavailable(e));
                    }
                    state.sub = Sub::Confirmed(epoch);
                } else {
                    // Redis is away: count the member now and let the
                    // supervisor subscribe the group once the link is back.
                    // Nothing can be published meanwhile and `/readyz` is
                    // 503, so the join loses nothing, and a client that
                    // reached this node is not turned away for the outage.
                    state.sub = Sub::Unknown;
                    inner.cleanup.store(true, Ordering::Release);
                }
            }
            slot.add(member);
            if !joined {
                if count == 0 {
                    inner
                        .first_joined(group, &slot, member, Via::Commands)
                        .await;
                } else {
                    inner.presence_add(group, &slot, member, false).await;
                }
            }
            unsettled.settled();
            return Ok(());
        }
    }

    async fn unsubscribe(&self, group: &str, session: &str) -> Result<(), BrokerError> {
        let inner = &self.inner;
        loop {
            let Some(slot) = inner.existing_slot(group) else {
                return Ok(());
            };
            let mut state = slot.op.lock().await;
            if state.dead {
                continue;
            }
            let Some((session_gone, left)) = slot.remove(session) else {
                return Ok(());
            };
            let unsettled = Unsettled::new(inner, &slot);
            if left > 0 {
                if session_gone {
                    inner.presence_remove(group, &slot, Some(session)).await;
                }
                unsettled.settled();
                return Ok(());
            }
            if state.sub == Sub::None {
                inner.last_left(group, &slot, Via::Commands).await;
            } else {
                state.sub = Sub::Unknown;
                if let Err(e) = inner.unsubscribe_last(group, &slot).await {
                    // Settled by the supervisor once Redis answers again.
                    tracing::debug!(group, error = %e, "unsubscribe deferred");
                    inner.cleanup.store(true, Ordering::Release);
                    unsettled.settled();
                    return Ok(());
                }
                state.sub = Sub::None;
            }
            // A presence hash left behind by a failed delete expires on its
            // own, or is cleared by the group's next first join.
            inner.remove_slot(group, &slot, &mut state);
            unsettled.settled();
            return Ok(());
        }
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire) && self.inner.control_up.load(Ordering::Acquire)
    }

    fn attach(&self, handler: Arc<dyn BrokerHandler>) {
        if self.inner.handler.set(handler).is_err() {
            tracing::warn!("broker handler attached twice; keeping the first");
        }
        self.inner.heartbeat_now.notify_one();
    }
    /// Leaves the cluster: stops the tasks, removes this node's registry
    /// entry and presence, and closes both connections. Bounded by a few
    /// command timeouts; safe to call more than once.
    async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = self.lock_tasks().drain(..).collect();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        let inner = &self.inner;
        inner.set_up(false);
        if inner.client.is_connected() {
            inner.occupancy_shutdown().await;
            let client = &inner.client;
            let mut commands: Vec<Request<'_, Value>> = vec![
                Box::pin(client.del(inner.node_key())),
                Box::pin(client.zrem(inner.nodes_key(), inner.node_id.as_str())),
            ];
            for (group, _) in inner.slots() {
                commands.push(Box::pin(
                    client.del(inner.presence_key(&group, &inner.node_id)),
                ));
            }
            if let Err(e) = requests::all_in_order(commands).await {
                tracing::warn!(error = %e, "could not remove this node from Redis; it expires instead");
            }
        }
        let bound = Duration::from_secs(2);
        let _ = tokio::time::timeout(bound, inner.subscriber.quit()).await;
        if let Some(control) = self.inner.control.get() {
            let _ = tokio::time::timeout(bound, control.quit()).await;
        }
        let _ = tokio::time::timeout(bound, inner.client.quit()).await;
        let connections: Vec<_> = self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for mut conn in connections {
            if tokio::time::timeout(bound, &mut conn).await.is_err() {
                conn.abort();
            }
        }
        tracing::info!(node = %inner.node_id, "left the Redis cluster");
    }
}

#[cfg(test)]
mod sizes {
    //! The broker's `subscribe` and `unsubscribe` are boxed (async-trait)
    //! and moved whole on every join and leave; the Redis calls they await
    //! are boxed so that a fred command's future (6-8 KB) is not part of
    //! theirs. Sizes, not timings.

    use std::future::Future;
    use std::mem::size_of;

    use super::link::Slot;
    use super::{Inner, Via};
    use crate::hub::Member;

    fn one<A, R: Future>(_: fn(A) -> R) -> usize {
        size_of::<R>()
    }
    fn two<A, B, R: Future>(_: fn(A, B) -> R) -> usize {
        size_of::<R>()
    }
    fn three<A, B, C, R: Future>(_: fn(A, B, C) -> R) -> usize {
        size_of::<R>()
    }
    fn four<A, B, C, D, R: Future>(_: fn(A, B, C, D) -> R) -> usize {
        size_of::<R>()
    }
    fn five<A, B, C, D, E, R: Future>(_: fn(A, B, C, D, E) -> R) -> usize {
        size_of::<R>()
    }

    #[test]
    fn a_join_and_a_leave_hold_no_redis_command_inline() {
        let client = fred::clients::Client::default();
        let command = size_of_val(&fred::interfaces::KeysInterface::del::<i64, _>(
            &client, "k",
        ));
        type I = &'static Inner;
        type S = &'static str;
        let steps = [
            ("sub_channel", two::<I, S, _>(Inner::sub_channel)),
            ("queue_subscribe", two::<I, S, _>(Inner::queue_subscribe)),
            ("caught_up", one::<I, _>(Inner::caught_up)),
            ("unsub_channel", two::<I, S, _>(Inner::unsub_channel)),
            (
                "first_joined",
                five::<I, S, &'static Slot, &'static Member, Via, _>(Inner::first_joined),
            ),
            (
                "last_left",
                four::<I, S, &'static Slot, Via, _>(Inner::last_left),
            ),
            (
                "subscribe_first",
                four::<I, S, &'static Slot, &'static Member, _>(Inner::subscribe_first),
            ),
            (
                "unsubscribe_last",
                three::<I, S, &'static Slot, _>(Inner::unsubscribe_last),
            ),
            (
                "presence_add",
                five::<I, S, &'static Slot, &'static Member, bool, _>(Inner::presence_add),
            ),
            (
                "presence_remove",
                four::<I, S, &'static Slot, Option<&'static str>, _>(Inner::presence_remove),
            ),
        ];
        for (step, bytes) in steps {
            println!("{step:<17} {bytes:>6} B (one fred DEL {command} B)");
            assert!(
                bytes < command / 4,
                "{step}'s future is {bytes} B, a fred command's {command} B: a Redis call is held inline"
            );
        }
    }
}
