//! The Redis broker: cluster mode.
//!
//! Each node keeps one subscriber client (one connection, or one per primary
//! on Redis Cluster) holding a subscription for exactly the groups with a
//! local member, plus the control channel; a second, ordinary client carries
//! publishes, the node registry and presence. Two clients because a RESP2
//! connection in subscribed mode cannot run other commands.
//!
//! Subscriptions are counted per group and changed under a per-group async
//! lock, so interleaved joins and leaves cannot leave Redis and the count
//! disagreeing, and a joiner returns only once the subscription is
//! confirmed.
//!
//! The broker, not fred, decides what to resubscribe after a reconnection.
//! fred 10.1's `SubscriberClient::manage_subscriptions` replays the
//! channels fred tracks, but sends a `PSUBSCRIBE` with no argument when no
//! pattern is in use, which Redis rejects (so the replay reports failure and
//! is not retried), and it would also replay channels whose `UNSUBSCRIBE`
//! failed during the outage. Instead, every reconnection bumps an epoch; a
//! group's subscription counts as in place only if it was confirmed in the
//! current epoch, and the supervisor task resubscribes the rest (and retries
//! failed unsubscribes) before reporting the link up. Clients stay
//! connected throughout; only `is_up()` (and `wsgate_redis_up`) drop.
//!
//! On Redis Cluster, group channels use sharded pub/sub (`SSUBSCRIBE` /
//! `SPUBLISH`), so a message only crosses to the shard that owns its channel;
//! the control channel stays on classic pub/sub, which reaches every node.
//!
//! Keys (all under `redis.prefix`): `node:<id>` (JSON [`NodeInfo`], expiring
//! after `node_ttl`), `nodes` (sorted set, score = last heartbeat in unix
//! ms; entries older than `node_ttl` are pruned) and
//! `presence:<group>:<node>` (hash session → JSON [`Member`], expiring after
//! `node_ttl`). A node that dies stops refreshing them, so it drops out of
//! the listing and of presence within `node_ttl`; every key expires once no
//! node is left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Client, ClientLike, EventInterface, Expiration, HashesInterface, KeysInterface,
    PubsubInterface, SortedSetsInterface, Value,
};
use fred::types::{ClusterHash, CustomCommand, Message};
use futures_util::StreamExt;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

mod history;

use super::{Broker, BrokerError, BrokerHandler, HistoryPolicy, NodeInfo, Recovery};
use crate::config::RedisConfig;
use crate::hub::Member;
use crate::ops::metrics::Metrics;
use crate::protocol::{self, Control, Position, Publication};
use crate::redis_client;

/// Messages buffered between fred's reader and our dispatcher.
const MESSAGE_BUFFER: usize = 16_384;
/// How often the supervisor checks the link when nothing happens.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// Groups resubscribed concurrently after a reconnection.
const RESYNC_CONCURRENCY: usize = 64;
/// Commands per pipeline in the heartbeat.
const PIPELINE_CHUNK: usize = 512;
/// Most nodes the listing and presence consider.
const MAX_NODES: i64 = 10_000;

/// What Redis holds of a group's subscription, as far as we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    None,
    /// Confirmed by Redis in this epoch (connection generation).
    Confirmed(u64),
    /// A command failed midway: Redis may or may not hold it.
    Unknown,
}

struct SlotState {
    sub: Sub,
    /// Removed from the group map; whoever holds it must look again.
    dead: bool,
}

#[derive(Default)]
struct Members {
    by_session: HashMap<String, (Member, u32)>,
    total: u64,
}

/// One group with local members. `op` serializes subscription changes and
/// presence writes; `members` is written under `op` and read by the
/// heartbeat without waiting for `op`.
struct Slot {
    op: tokio::sync::Mutex<SlotState>,
    members: Mutex<Members>,
    /// The presence hash may not match `members` (a write failed).
    presence_dirty: AtomicBool,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            op: tokio::sync::Mutex::new(SlotState {
                sub: Sub::None,
                dead: false,
            }),
            members: Mutex::new(Members::default()),
            presence_dirty: AtomicBool::new(false),
        }
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self) -> u64 {
        self.members().total
    }

    fn add(&self, member: &Member) {
        let mut m = self.members();
        m.by_session
            .entry(member.session.clone())
            .or_insert_with(|| (member.clone(), 0))
            .1 += 1;
        m.total += 1;
    }

    /// Removes one join of `session`: `None` when it was not a member,
    /// otherwise whether the session is gone and the members left.
    fn remove(&self, session: &str) -> Option<(bool, u64)> {
        let mut m = self.members();
        let entry = m.by_session.get_mut(session)?;
        entry.1 -= 1;
        let gone = entry.1 == 0;
        if gone {
            m.by_session.remove(session);
        }
        m.total -= 1;
        Some((gone, m.total))
    }

    fn snapshot(&self) -> Vec<Member> {
        self.members()
            .by_session
            .values()
            .map(|(m, _)| m.clone())
            .collect()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unavailable(e: fred::error::Error) -> BrokerError {
    BrokerError::Unavailable(e.to_string())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

struct Inner {
    node_id: String,
    prefix: String,
    node_ttl: Duration,
    heartbeat: Duration,
    command_timeout: Duration,
    /// Redis Cluster: group channels are sharded.
    sharded: bool,
    history: HistoryPolicy,
    client: Client,
    subscriber: SubscriberClient,
    metrics: Arc<Metrics>,
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    groups: Mutex<HashMap<String, Arc<Slot>>>,
    /// Connection generation; bumped on every disconnection and reconnection.
    epoch: AtomicU64,
    up: AtomicBool,
    /// A heartbeat timed out on a connection that still looks open.
    stale: AtomicBool,
    /// Some group may hold a subscription it should not (a failed UNSUBSCRIBE).
    cleanup: AtomicBool,
    heartbeat_now: Notify,
    bad_envelopes: AtomicU64,
    lost_messages: AtomicU64,
}

impl Inner {
    fn group_channel(&self, group: &str) -> String {
        format!("{}group:{group}", self.prefix)
    }
    fn control_channel(&self) -> String {
        format!("{}control", self.prefix)
    }
    fn node_key(&self) -> String {
        format!("{}node:{}", self.prefix, self.node_id)
    }
    fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    fn presence_key(&self, group: &str, node: &str) -> String {
        format!("{}presence:{group}:{node}", self.prefix)
    }
    fn ttl_ms(&self) -> i64 {
        self.node_ttl.as_millis().min(i64::MAX as u128) as i64
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, group: &str) -> Arc<Slot> {
        self.groups()
            .entry(group.to_string())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    fn existing_slot(&self, group: &str) -> Option<Arc<Slot>> {
        self.groups().get(group).cloned()
    }

    fn slots(&self) -> Vec<(String, Arc<Slot>)> {
        self.groups()
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect()
    }

    /// Drops a group that holds no member and no subscription (under its `op`).
    fn remove_slot(&self, group: &str, slot: &Arc<Slot>, state: &mut SlotState) {
        state.dead = true;
        let mut groups = self.groups();
        if groups.get(group).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            groups.remove(group);
        }
    }

    /// Fails fast while the command connection is down, rather than
    /// queueing commands that might still be sent after the caller gave up.
    fn check_link(&self) -> Result<(), BrokerError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("Redis is unreachable".into()))
        }
    }

    fn connected(&self) -> bool {
        self.subscriber.is_connected()
            && self.client.is_connected()
            && !self.stale.load(Ordering::Acquire)
    }

    /// Records the link state; returns whether it changed.
    fn set_up(&self, up: bool) -> bool {
        self.metrics.redis_up.set(i64::from(up));
        self.up.swap(up, Ordering::AcqRel) != up
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    async fn sub_channel(&self, group: &str) -> Result<(), fred::error::Error> {
        let channel = self.group_channel(group);
        if self.sharded {
            self.subscriber.ssubscribe(channel).await
        } else {
            self.subscriber.subscribe(channel).await
        }
    }

    async fn unsub_channel(&self, group: &str) -> Result<(), fred::error::Error> {
        let channel = self.group_channel(group);
        if self.sharded {
            self.subscriber.sunsubscribe(channel).await
        } else {
            self.subscriber.unsubscribe(channel).await
        }
    }

    // -- incoming messages ---------------------------------------------------

    fn on_message(&self, message: Message) {
        let Some(handler) = self.handler.get() else {
            tracing::debug!(
                channel = &*message.channel,
                "message before a handler was attached"
            );
            return;
        };
        let Some(payload) = message.value.as_bytes() else {
            self.bad_message(&message.channel, "payload is not a string");
            return;
        };
        let channel: &str = &message.channel;
        if let Some(group) = channel
            .strip_prefix(self.prefix.as_str())
            .and_then(|c| c.strip_prefix("group:"))
        {
            match protocol::decode_envelope(group, payload) {
                Ok(publication) => handler.on_publication(publication),
                Err(e) => self.bad_message(channel, &e.to_string()),
            }
        } else if channel == self.control_channel() {
            match serde_json::from_slice::<Control>(payload) {
                Ok(control) => handler.on_control(control),
                Err(_) => self.bad_message(channel, "not a control command"),
            }
        } else {
            self.bad_message(channel, "unexpected channel");
        }
    }

    fn bad_message(&self, channel: &str, why: &str) {
        self.bad_envelopes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(channel, why, "dropped a bad message from Redis");
    }

    // -- presence ---------------------------------------------------------

    /// Adds a member to the group's presence hash; `first` clears what an
    /// earlier, failed cleanup may have left there.
    async fn presence_add(&self, group: &str, slot: &Slot, member: &Member, first: bool) {
        if !self.client.is_connected() {
            slot.presence_dirty.store(true, Ordering::Release);
            return;
        }
        let key = self.presence_key(group, &self.node_id);
        let pipeline = self.client.pipeline();
        if first {
            let _: Result<(), _> = pipeline.del(&key).await;
        }
        let _: Result<(), _> = pipeline
            .hset(&key, (member.session.as_str(), json(member)))
            .await;
        let _: Result<(), _> = pipeline.pexpire(&key, self.ttl_ms(), None).await;
        if let Err(e) = pipeline.all::<Value>().await {
            tracing::debug!(group, error = %e, "presence write failed; the heartbeat will repair it");
            slot.presence_dirty.store(true, Ordering::Release);
        }
    }

    async fn presence_remove(&self, group: &str, slot: &Slot, session: Option<&str>) {
        if !self.client.is_connected() {
            slot.presence_dirty.store(true, Ordering::Release);
            return;
        }
        let key = self.presence_key(group, &self.node_id);
        let result: Result<i64, _> = match session {
            Some(session) => self.client.hdel(&key, session).await,
            None => self.client.del(&key).await,
        };
        if let Err(e) = result {
            tracing::debug!(group, error = %e, "presence delete failed; the heartbeat will repair it");
            slot.presence_dirty.store(true, Ordering::Release);
        }
    }

    /// Rewrites a group's presence hash from local state (under its `op`).
    async fn presence_rewrite(&self, group: &str, slot: &Slot) -> Result<(), fred::error::Error> {
        let key = self.presence_key(group, &self.node_id);
        let members = slot.snapshot();
        let pipeline = self.client.pipeline();
        let _: () = pipeline.del(&key).await?;
        if !members.is_empty() {
            let fields: Vec<(String, String)> = members
                .iter()
                .map(|m| (m.session.clone(), json(m)))
                .collect();
            let _: () = pipeline.hset(&key, fields).await?;
            let _: () = pipeline.pexpire(&key, self.ttl_ms(), None).await?;
        }
        pipeline.all::<Value>().await?;
        Ok(())
    }

    // -- heartbeat ----------------------------------------------------------

    async fn heartbeat_once(&self) {
        if !self.client.is_connected() {
            return;
        }
        let now = now_ms();
        let connections = self
            .handler
            .get()
            .map(|h| h.local_node().connections)
            .unwrap_or(0);
        let info = NodeInfo {
            node: self.node_id.clone(),
            connections,
            last_seen_ms: now,
        };
        let oldest = now.saturating_sub(self.node_ttl.as_millis() as u64);
        let pipeline = self.client.pipeline();
        let queued: Result<(), fred::error::Error> = async {
            let _: () = pipeline
                .set(
                    self.node_key(),
                    json(&info),
                    Some(Expiration::PX(self.ttl_ms())),
                    None,
                    false,
                )
                .await?;
            let _: () = pipeline
                .zadd(
                    self.nodes_key(),
                    None,
                    None,
                    false,
                    false,
                    (now as f64, self.node_id.as_str()),
                )
                .await?;
            let _: () = pipeline
                .zremrangebyscore(self.nodes_key(), f64::NEG_INFINITY, (oldest as f64) - 1.0)
                .await?;
            // The set outlives its last live node by node_ttl, no longer.
            let _: () = pipeline
                .pexpire(self.nodes_key(), self.ttl_ms(), None)
                .await?;
            Ok(())
        }
        .await;
        let registered = queued.and(pipeline.all::<Value>().await.map(|_| ()));
        if let Err(e) = &registered {
            tracing::debug!(error = %e, "node registration failed");
        }

        self.refresh_presence().await;

        let pinged = self.subscriber.ping::<Value>(None).await.map(|_| ());
        if let Err(e) = &pinged {
            tracing::debug!(error = %e, "subscriber ping failed");
        }
        // A connection that is open but answers nothing (state lost in a
        // NAT or firewall, a host gone without a reset) still looks
        // connected, and fred's unresponsive check is reset by every write.
        // A timed-out heartbeat is the sign: report the link down and reopen
        // the connection; the supervisor resubscribes once it is back.
        // A slow Redis can time out a heartbeat too, so a timeout is only a
        // hint: a PING with a long deadline (3 command timeouts) decides.
        let stale_client =
            registered.as_ref().is_err_and(is_timeout) && !self.answers_ping(&self.client).await;
        let stale_subscriber =
            pinged.as_ref().is_err_and(is_timeout) && !self.answers_ping(&self.subscriber).await;
        if stale_client || stale_subscriber {
            if !self.stale.swap(true, Ordering::AcqRel) {
                tracing::warn!("Redis stopped answering; reconnecting");
            }
            self.set_up(false);
            if stale_client {
                force_reconnect(self.client.clone());
            }
            if stale_subscriber {
                force_reconnect(self.subscriber.clone());
            }
        } else if registered.is_ok() && pinged.is_ok() {
            self.stale.store(false, Ordering::Release);
        }
    }

    /// Whether the connection answers a PING within 3 command timeouts.
    async fn answers_ping<C: ClientLike>(&self, client: &C) -> bool {
        let options = fred::types::config::Options {
            timeout: Some(self.command_timeout * 3),
            ..Default::default()
        };
        client
            .with_options(&options)
            .ping::<Value>(None)
            .await
            .is_ok()
    }

    /// Extends every local group's presence hash; rewrites those that are
    /// missing (expired, Redis restarted) or known to be off.
    async fn refresh_presence(&self) {
        let mut dirty = Vec::new();
        let mut live = Vec::new();
        for (group, slot) in self.slots() {
            if slot.presence_dirty.load(Ordering::Acquire) {
                dirty.push((group, slot));
            } else if slot.count() > 0 {
                live.push((group, slot));
            }
        }
        for chunk in live.chunks(PIPELINE_CHUNK) {
            let pipeline = self.client.pipeline();
            for (group, _) in chunk {
                let key = self.presence_key(group, &self.node_id);
                let _: Result<(), _> = pipeline.pexpire(key, self.ttl_ms(), None).await;
            }
            let results = pipeline.try_all::<i64>().await;
            if results.len() != chunk.len() {
                // The whole pipeline failed; try again on the next beat.
                return;
            }
            for ((group, slot), result) in chunk.iter().zip(results) {
                if matches!(result, Ok(0)) {
                    dirty.push((group.clone(), slot.clone()));
                }
            }
        }
        for (group, slot) in dirty {
            let state = slot.op.lock().await;
            if state.dead {
                continue;
            }
            slot.presence_dirty.store(false, Ordering::Release);
            if let Err(e) = self.presence_rewrite(&group, &slot).await {
                slot.presence_dirty.store(true, Ordering::Release);
                tracing::debug!(group, error = %e, "presence rewrite failed");
                return;
            }
        }
    }

    // -- resubscription -------------------------------------------------------

    /// Brings Redis in line with local state: with `full`, (re)subscribes the
    /// control channel and every group not confirmed in this epoch; always
    /// drops subscriptions of groups that no longer have members.
    async fn resync(&self, full: bool) -> Result<(), fred::error::Error> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if full {
            self.subscriber.subscribe(self.control_channel()).await?;
            if self.history.is_on() {
                // A restarted Redis has no scripts; load them before the
                // node reports itself up again.
                history::PUBLISH.load(&self.client).await?;
                history::READ.load(&self.client).await?;
            }
        }
        self.cleanup.store(false, Ordering::Release);
        let results: Vec<Result<(), fred::error::Error>> = futures_util::stream::iter(self.slots())
            .map(|(group, slot)| async move { self.resync_group(&group, &slot, epoch, full).await })
            .buffer_unordered(RESYNC_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().collect()
    }

    async fn resync_group(
        &self,
        group: &str,
        slot: &Arc<Slot>,
        epoch: u64,
        full: bool,
    ) -> Result<(), fred::error::Error> {
        let mut state = slot.op.lock().await;
        if state.dead {
            return Ok(());
        }
        let result = if slot.count() > 0 {
            if state.sub == Sub::Confirmed(epoch) || !(full || state.sub == Sub::Unknown) {
                return Ok(());
            }
            state.sub = Sub::Unknown;
            self.sub_channel(group)
                .await
                .map(|()| state.sub = Sub::Confirmed(epoch))
        } else if state.sub == Sub::None {
            self.remove_slot(group, slot, &mut state);
            Ok(())
        } else {
            self.unsub_channel(group).await.map(|()| {
                state.sub = Sub::None;
                self.remove_slot(group, slot, &mut state);
            })
        };
        if result.is_err() {
            self.cleanup.store(true, Ordering::Release);
        }
        result
    }
}

/// Flags a group for repair (subscription and presence) when the operation
/// holding its lock is cancelled between a Redis command and its bookkeeping:
/// a dropped future may still have its command sent.
struct Unsettled<'a> {
    inner: &'a Inner,
    slot: &'a Slot,
    armed: bool,
}

impl<'a> Unsettled<'a> {
    fn new(inner: &'a Inner, slot: &'a Slot) -> Unsettled<'a> {
        Unsettled {
            inner,
            slot,
            armed: true,
        }
    }
    fn settled(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.slot.presence_dirty.store(true, Ordering::Release);
            self.inner.cleanup.store(true, Ordering::Release);
        }
    }
}

/// Watches the subscriber's connection: marks the link down when it drops
/// and, once it is back, resubscribes before marking it up.
async fn supervise(
    inner: Arc<Inner>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut changes: broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
) {
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut full = false;
    loop {
        tokio::select! {
            r = reconnects.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    tracing::info!("Redis reconnected; resubscribing");
                    inner.bump_epoch();
                    inner.set_up(false);
                    full = true;
                }
                Err(RecvError::Closed) => break,
            },
            r = changes.recv() => match r {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    // Slots may have moved, and sharded subscriptions with them.
                    tracing::info!("Redis Cluster topology changed; resubscribing");
                    inner.bump_epoch();
                    inner.set_up(false);
                    full = true;
                }
                Err(RecvError::Closed) => break,
            },
            _ = tick.tick() => {}
        }
        if !inner.connected() {
            if !full {
                inner.bump_epoch();
                full = true;
            }
            if inner.set_up(false) {
                tracing::warn!("Redis link down; delivery across nodes paused");
            }
            continue;
        }
        if full || inner.cleanup.load(Ordering::Acquire) {
            match inner.resync(full).await {
                Ok(()) => {
                    if full {
                        inner.heartbeat_now.notify_one();
                    }
                    full = false;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "resubscription incomplete; retrying");
                    if full {
                        inner.set_up(false);
                        continue;
                    }
                }
            }
        }
        if inner.set_up(true) {
            tracing::info!("Redis link up; subscriptions in place");
        }
    }
}

async fn dispatch(inner: Arc<Inner>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            Ok(message) => inner.on_message(message),
            Err(RecvError::Lagged(n)) => {
                inner.lost_messages.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(lost = n, "Redis messages lost: the dispatcher fell behind");
            }
            Err(RecvError::Closed) => break,
        }
    }
}

fn is_timeout(e: &fred::error::Error) -> bool {
    *e.kind() == fred::error::ErrorKind::Timeout
}

/// Reopens a client's connection in the background, bounded in time.
fn force_reconnect<C: ClientLike + Send + Sync + 'static>(client: C) {
    tokio::spawn(async move {
        let forced =
            tokio::time::timeout(Duration::from_secs(5), client.force_reconnection()).await;
        if let Ok(Err(e)) = forced {
            tracing::debug!(error = %e, "forced reconnection failed");
        }
    });
}

async fn heartbeat(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.heartbeat.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = inner.heartbeat_now.notified() => {}
        }
        inner.heartbeat_once().await;
    }
}

/// The cluster broker. Build it with [`RedisBroker::connect`]; stop it with
/// [`RedisBroker::shutdown`] (dropping it stops its tasks too, but leaves
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
        RedisBroker::connect_with(cfg, node_id, metrics, HistoryPolicy::off()).await
    }

    /// As [`RedisBroker::connect`], keeping history for the groups of `history`.
    pub async fn connect_with(
        cfg: &RedisConfig,
        node_id: String,
        metrics: Arc<Metrics>,
        history: HistoryPolicy,
    ) -> Result<Arc<RedisBroker>, BrokerError> {
        let setup = |e: redis_client::RedisSetupError| BrokerError::Unavailable(e.to_string());
        metrics.redis_up.set(0);
        let client = redis_client::client(cfg).map_err(setup)?;
        let subscriber = redis_client::subscriber(cfg, MESSAGE_BUFFER).map_err(setup)?;
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
            client,
            subscriber,
            metrics,
            handler: OnceLock::new(),
            groups: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            up: AtomicBool::new(false),
            stale: AtomicBool::new(false),
            cleanup: AtomicBool::new(false),
            heartbeat_now: Notify::new(),
            bad_envelopes: AtomicU64::new(0),
            lost_messages: AtomicU64::new(0),
        });
        let broker = Arc::new(RedisBroker {
            inner: inner.clone(),
            tasks: Mutex::new(Vec::new()),
            connections: Mutex::new(vec![client_conn, subscriber_conn]),
            closed: AtomicBool::new(false),
        });
        if let Err(e) = inner.resync(true).await {
            broker.shutdown().await;
            return Err(unavailable(e));
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

    /// Leaves the cluster: stops the tasks, removes this node's registry
    /// entry and presence, and closes both connections. Bounded by a few
    /// command timeouts; safe to call more than once.
    pub async fn shutdown(&self) {
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
            let pipeline = inner.client.pipeline();
            let queued: Result<(), fred::error::Error> = async {
                let _: () = pipeline.del(inner.node_key()).await?;
                let _: () = pipeline
                    .zrem(inner.nodes_key(), inner.node_id.as_str())
                    .await?;
                for (group, _) in inner.slots() {
                    let _: () = pipeline
                        .del(inner.presence_key(&group, &inner.node_id))
                        .await?;
                }
                Ok(())
            }
            .await;
            if let Err(e) = queued.and(pipeline.all::<Value>().await.map(|_| ())) {
                tracing::warn!(error = %e, "could not remove this node from Redis; it expires instead");
            }
        }
        let bound = Duration::from_secs(2);
        let _ = tokio::time::timeout(bound, inner.subscriber.quit()).await;
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

    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let inner = &self.inner;
        inner.check_link()?;
        let oldest = now_ms().saturating_sub(inner.node_ttl.as_millis() as u64);
        inner
            .client
            .zrangebyscore(
                inner.nodes_key(),
                oldest as f64,
                f64::INFINITY,
                false,
                Some((0, MAX_NODES)),
            )
            .await
            .map_err(unavailable)
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
            runtime.spawn(async move {
                let _ = inner.subscriber.quit().await;
                let _ = inner.client.quit().await;
            });
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError> {
        if publications.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        inner.check_link()?;
        // One pipeline, in order: plain publishes, and the history script
        // for history groups (it publishes too).
        let pipeline = inner.client.pipeline();
        let mut scripted = Vec::with_capacity(publications.len());
        for p in &publications {
            let channel = inner.group_channel(&p.group);
            let with_history = inner.history.applies(&p.group);
            let queued: Result<(), _> = if with_history {
                let args = history::publish_args(&inner.history, &channel, p, inner.sharded);
                scripted.push(Some((history::keys(&channel), args.clone())));
                // Pipelines have no EVALSHA method in fred 10; routed by the
                // first key (argument 2), which shares the channel's slot.
                let mut call: Vec<String> = vec![history::PUBLISH.sha1().to_string(), "2".into()];
                call.extend(history::keys(&channel));
                call.extend(args);
                pipeline
                    .custom::<(), _>(
                        CustomCommand::new_static("EVALSHA", ClusterHash::Offset(2), false),
                        call,
                    )
                    .await
            } else {
                scripted.push(None);
                let envelope = protocol::encode_envelope(p);
                if inner.sharded {
                    pipeline.spublish(channel, envelope).await
                } else {
                    pipeline.publish(channel, envelope).await
                }
            };
            queued.map_err(unavailable)?;
        }
        let results = pipeline.try_all::<Value>().await;
        let mut positions = Vec::with_capacity(publications.len());
        for (result, script) in results.into_iter().zip(scripted) {
            let Some((keys, args)) = script else {
                result.map_err(unavailable)?;
                positions.push(None);
                continue;
            };
            let reply = match result {
                Err(e) if e.details().starts_with("NOSCRIPT") => {
                    // Redis lost its scripts (restart, SCRIPT FLUSH) after
                    // this node loaded them: load and run it once more.
                    history::PUBLISH
                        .evalsha_with_reload::<Value, _, _>(&inner.client, keys, args)
                        .await
                }
                other => other,
            }
            .map_err(unavailable)?;
            let position = reply
                .convert::<Vec<String>>()
                .ok()
                .and_then(history::parse_position)
                .ok_or_else(|| BrokerError::Unavailable("unexpected history reply".into()))?;
            positions.push(Some(position));
        }
        Ok(positions)
    }

    async fn history(
        &self,
        group: &str,
        since: Option<&Position>,
    ) -> Result<Recovery, BrokerError> {
        let inner = &self.inner;
        inner.check_link()?;
        let channel = inner.group_channel(group);
        let reply: Vec<String> = history::READ
            .evalsha_with_reload(
                &inner.client,
                history::keys(&channel),
                history::read_args(&inner.history, since),
            )
            .await
            .map_err(unavailable)?;
        history::parse_read(group, since, reply)
            .ok_or_else(|| BrokerError::Unavailable("unexpected history reply".into()))
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
            if state.sub != Sub::Confirmed(epoch) {
                if inner.subscriber.is_connected() {
                    state.sub = Sub::Unknown;
                    if let Err(e) = inner.sub_channel(group).await {
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
            inner.presence_add(group, &slot, member, count == 0).await;
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
            inner.presence_remove(group, &slot, None).await;
            if state.sub != Sub::None {
                state.sub = Sub::Unknown;
                let result = if inner.subscriber.is_connected() {
                    inner.unsub_channel(group).await
                } else {
                    Err(fred::error::Error::new(
                        fred::error::ErrorKind::IO,
                        "not connected",
                    ))
                };
                if let Err(e) = result {
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

    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError> {
        let nodes = self.live_nodes().await?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let pipeline = inner.client.pipeline();
        for node in &nodes {
            let _: () = pipeline
                .hgetall(inner.presence_key(group, node))
                .await
                .map_err(unavailable)?;
        }
        let mut members = Vec::new();
        for result in pipeline.try_all::<HashMap<String, String>>().await {
            for raw in result.map_err(unavailable)?.into_values() {
                match serde_json::from_str::<Member>(&raw) {
                    Ok(member) => members.push(member),
                    Err(_) => tracing::debug!(group, "skipped a malformed presence entry"),
                }
            }
        }
        members.sort_by(|a, b| (&a.node, &a.session).cmp(&(&b.node, &b.session)));
        Ok(members)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let ids = self.live_nodes().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let pipeline = inner.client.pipeline();
        for id in &ids {
            let _: () = pipeline
                .get(format!("{}node:{id}", inner.prefix))
                .await
                .map_err(unavailable)?;
        }
        let mut nodes = Vec::new();
        for result in pipeline.try_all::<Option<String>>().await {
            // A missing key is a node that stopped (or was removed) since.
            if let Some(raw) = result.map_err(unavailable)? {
                match serde_json::from_str::<NodeInfo>(&raw) {
                    Ok(info) => nodes.push(info),
                    Err(_) => tracing::debug!("skipped a malformed node entry"),
                }
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }

    fn is_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    fn attach(&self, handler: Arc<dyn BrokerHandler>) {
        if self.inner.handler.set(handler).is_err() {
            tracing::warn!("broker handler attached twice; keeping the first");
        }
        self.inner.heartbeat_now.notify_one();
    }
}
