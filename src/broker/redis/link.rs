//! The subscriber link: which group channels Redis delivers to this node,
//! and how that is kept true across reconnections.
//!
//! Subscriptions are counted per group and changed under a per-group async
//! lock, so interleaved joins and leaves cannot leave Redis and the count
//! disagreeing. A joiner returns once Redis has run its `SUBSCRIBE`, which
//! `subscribed` promises the client. fred answers the subscription
//! commands when it writes them (Redis's confirmation arrives out of band),
//! so something answered in order has to ride behind it on the same
//! connection: for a group's first join, what the join writes anyway (the
//! occupancy script, or with occupancy off the presence write;
//! `Inner::subscribe_first`), elsewhere a `PING`. On Redis Cluster fred
//! waits for `SSUBSCRIBE`'s answer.
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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fred::prelude::{ClientLike, ClusterInterface, PubsubInterface, Value};
use fred::types::Message;
use fred::types::cluster::ClusterRouting;
use futures_util::StreamExt;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::MissedTickBehavior;

use super::history;
use super::{BrokerError, Inner};
use crate::hub::Member;
use crate::protocol::{self, Control};

/// How often the supervisor checks the link when nothing happens.
const SUPERVISE_EVERY: Duration = Duration::from_millis(250);
/// How often, on Redis Cluster, the slot owners are compared with those
/// the subscriber routes by (see [`Inner::slots_moved`]).
const TOPOLOGY_EVERY: Duration = Duration::from_secs(1);
/// Groups resubscribed concurrently after a reconnection.
const RESYNC_CONCURRENCY: usize = 64;

/// What Redis holds of a group's subscription, as far as we know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sub {
    None,
    /// Confirmed by Redis in this epoch (connection generation).
    Confirmed(u64),
    /// A command failed midway: Redis may or may not hold it.
    Unknown,
}

pub(super) struct SlotState {
    pub(super) sub: Sub,
    /// Removed from the group map; whoever holds it must look again.
    pub(super) dead: bool,
}

#[derive(Default)]
struct Members {
    by_session: HashMap<String, (Member, u32)>,
    total: u64,
}

/// One group with local members. `op` serializes subscription changes and
/// presence writes; `members` is written under `op` and read by the
/// heartbeat without waiting for `op`.
pub(super) struct Slot {
    pub(super) op: tokio::sync::Mutex<SlotState>,
    members: Mutex<Members>,
    /// The presence hash may not match `members` (a write failed).
    pub(super) presence_dirty: AtomicBool,
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

    pub(super) fn count(&self) -> u64 {
        self.members().total
    }

    pub(super) fn add(&self, member: &Member) {
        let mut m = self.members();
        m.by_session
            .entry(member.session.clone())
            .or_insert_with(|| (member.clone(), 0))
            .1 += 1;
        m.total += 1;
    }

    /// Removes one join of `session`: `None` when it was not a member,
    /// otherwise whether the session is gone and the members left.
    pub(super) fn remove(&self, session: &str) -> Option<(bool, u64)> {
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

    pub(super) fn snapshot(&self) -> Vec<Member> {
        self.members()
            .by_session
            .values()
            .map(|(m, _)| m.clone())
            .collect()
    }
}

impl Inner {
    // -- channels, groups and link state ------------------------------------

    pub(super) fn group_channel(&self, group: &str) -> String {
        // Not `format!`: one channel name per publication.
        let mut channel = String::with_capacity(self.prefix.len() + 6 + group.len());
        channel.push_str(&self.prefix);
        channel.push_str("group:");
        channel.push_str(group);
        channel
    }
    pub(super) fn control_channel(&self) -> String {
        super::control::control_channel(&self.prefix)
    }

    fn groups(&self) -> MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn slot(&self, group: &str) -> Arc<Slot> {
        self.groups()
            .entry(group.to_string())
            .or_insert_with(|| Arc::new(Slot::new()))
            .clone()
    }

    pub(super) fn existing_slot(&self, group: &str) -> Option<Arc<Slot>> {
        self.groups().get(group).cloned()
    }

    pub(super) fn slots(&self) -> Vec<(String, Arc<Slot>)> {
        self.groups()
            .iter()
            .map(|(g, s)| (g.clone(), s.clone()))
            .collect()
    }

    /// Drops a group that holds no member and no subscription (under its `op`).
    pub(super) fn remove_slot(&self, group: &str, slot: &Arc<Slot>, state: &mut SlotState) {
        state.dead = true;
        let mut groups = self.groups();
        if groups.get(group).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            groups.remove(group);
        }
    }

    /// Refuses a Redis user that may not use the group channels. Redis 7
    /// creates ACL users without any channel permission
    /// (`acl-pubsub-default resetchannels`), and fred answers a `SUBSCRIBE`
    /// when it writes it, so Redis's refusal would go unseen: the node would
    /// start, take joins and deliver nothing (and the refusal, arriving on
    /// the connection the node also publishes on, would be taken for the
    /// answer to the next command there). A channel permission covers
    /// `PUBLISH` and `SUBSCRIBE` alike: one `PUBLISH` to `<prefix>group:`,
    /// the channel of the empty group name, which no client can join (it
    /// reaches nobody), answers `NOPERM` where the permission is missing.
    /// The control channel is checked as its link subscribes
    /// (`ControlLink::start`): a message there would reach every node.
    pub(super) async fn check_channel_access(&self) -> Result<(), BrokerError> {
        let channel = self.group_channel("");
        match self.client.publish::<i64, _, _>(channel.as_str(), "").await {
            Ok(_) => Ok(()),
            Err(e) if e.details().starts_with("NOPERM") => {
                Err(channels_refused(&self.prefix, e.details()))
            }
            Err(e) => Err(BrokerError::Unavailable(e.to_string())),
        }
    }

    /// Fails fast while the command connection is down, rather than
    /// queueing commands that might still be sent after the caller gave up.
    pub(super) fn check_link(&self) -> Result<(), BrokerError> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable("Redis is unreachable".into()))
        }
    }

    /// Whether the control channel is in place: its connection connected
    /// and subscribed (always, before the control link is started).
    fn control_ready(&self) -> bool {
        self.control.get().is_none_or(|c| c.is_connected())
            && self.control_up.load(Ordering::Acquire)
    }

    fn connected(&self) -> bool {
        self.subscriber.is_connected()
            && self.client.is_connected()
            && !self.stale.load(Ordering::Acquire)
    }

    /// Records the link state; returns whether it changed.
    pub(super) fn set_up(&self, up: bool) -> bool {
        let changed = self.up.swap(up, Ordering::AcqRel) != up;
        if changed {
            if up {
                self.links_down.fetch_sub(1, Ordering::AcqRel);
            } else {
                self.links_down.fetch_add(1, Ordering::AcqRel);
            }
        }
        let all_up = self.links_down.load(Ordering::Acquire) == 0;
        self.metrics.redis_up.set(i64::from(all_up));
        changed
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Subscribes the group's channel and returns once Redis has run the
    /// subscription, which `subscribed` promises a client. fred answers a
    /// `SUBSCRIBE` when it writes it, so a `PING` goes right behind it (one
    /// write: fred flushes on `PING`) and its answer is the confirmation.
    /// fred waits for `SSUBSCRIBE`'s own answer.
    pub(super) async fn sub_channel(&self, group: &str) -> Result<(), fred::error::Error> {
        if self.sharded {
            return self.queue_subscribe(group).await;
        }
        let (subscribed, ran) = tokio::join!(self.queue_subscribe(group), self.caught_up());
        subscribed.and(ran)
    }

    // fred's command futures are 6-8 KB; these and the other calls on a
    // join's or a leave's path are boxed so that the broker's `subscribe`
    // and `unsubscribe` futures (boxed and moved whole, per join) stay small.
    /// Queues the group's subscription; returns once fred has written it
    /// (not on Redis Cluster, see [`sub_channel`](Self::sub_channel)). Only
    /// for a caller that queues a command behind it and waits for that.
    pub(super) async fn queue_subscribe(&self, group: &str) -> Result<(), fred::error::Error> {
        let channel = self.group_channel(group);
        if self.sharded {
            Box::pin(self.subscriber.ssubscribe(channel)).await
        } else {
            Box::pin(self.subscriber.subscribe(channel)).await
        }
    }

    /// Returns once Redis has run what was queued on the subscriber
    /// connection before this call (a `PING` answered in order).
    pub(super) async fn caught_up(&self) -> Result<(), fred::error::Error> {
        Box::pin(self.subscriber.ping::<Value>(None))
            .await
            .map(drop)
    }

    pub(super) async fn unsub_channel(&self, group: &str) -> Result<(), fred::error::Error> {
        let channel = self.group_channel(group);
        if self.sharded {
            Box::pin(self.subscriber.sunsubscribe(channel)).await
        } else {
            Box::pin(self.subscriber.unsubscribe(channel)).await
        }
    }

    // -- incoming messages ---------------------------------------------------

    pub(super) fn on_message(&self, message: Message) {
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

    /// Runs `deliver` as one burst of the handler (`BrokerHandler::in_burst`).
    pub(super) fn burst(&self, deliver: &mut dyn FnMut()) {
        match self.handler.get() {
            Some(handler) => handler.in_burst(deliver),
            None => deliver(),
        }
    }

    fn lagged(&self, n: u64) {
        self.count_lost(n);
        tracing::warn!(lost = n, "Redis messages lost: the dispatcher fell behind");
    }

    /// Messages that overflowed fred's buffer before the dispatcher read
    /// them: counted here and in `wsgate_messages_dropped_total{reason="broker_lag"}`.
    pub(super) fn count_lost(&self, n: u64) {
        self.lost_messages.fetch_add(n, Ordering::Relaxed);
        self.metrics
            .dropped(crate::metrics::DropReason::BrokerLag, n);
    }

    fn bad_message(&self, channel: &str, why: &str) {
        self.bad_envelopes.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(channel, why, "dropped a bad message from Redis");
    }

    // -- link health ----------------------------------------------------------

    /// Whether the connection answers a PING within 3 command timeouts.
    pub(super) async fn answers_ping<C: ClientLike>(&self, client: &C) -> bool {
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

    /// Whether the cluster's slot owners differ from those the subscriber
    /// routes by. Nothing else notices a resharding: when a slot moves,
    /// Redis drops its channels' sharded subscriptions with an unsolicited
    /// `SUNSUBSCRIBE`, which fred 10.1 discards, and no reconnection or
    /// topology event follows, so the moved groups would stay silent.
    /// Owners are compared by node id, which does not depend on how a
    /// host name was parsed.
    pub(super) async fn slots_moved(&self) -> bool {
        let Some(cached) = self.subscriber.cached_cluster_state() else {
            return false;
        };
        let fresh = match self.client.cluster_slots::<Value>().await {
            Ok(value) => ClusterRouting::from_cluster_slots(value, ""),
            Err(e) => Err(e),
        };
        let owners = |routing: &ClusterRouting| -> Vec<(u16, u16, String)> {
            let slots = routing.slots().iter();
            slots.map(|s| (s.start, s.end, s.id.to_string())).collect()
        };
        match fresh {
            Ok(fresh) => owners(&fresh) != owners(&cached),
            Err(e) => {
                tracing::debug!(error = %e, "could not read the cluster's slots");
                false
            }
        }
    }

    // -- resubscription -------------------------------------------------------

    /// Brings Redis in line with local state: with `full`, (re)subscribes
    /// every group not confirmed in this epoch (the control channel has its
    /// own connection, `control::ControlLink`); always
    /// drops subscriptions of groups that no longer have members.
    pub(super) async fn resync(&self, full: bool) -> Result<(), fred::error::Error> {
        let epoch = self.epoch.load(Ordering::Acquire);
        if full && self.history.is_on() {
            // A restarted Redis has no scripts; load them before the node
            // reports itself up again.
            history::PUBLISH.load(&self.client).await?;
            history::READ.load(&self.client).await?;
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

/// Flags a group for repair (subscription, presence and occupancy) when the
/// operation holding its lock is cancelled between a Redis command and its
/// bookkeeping: a dropped future may still have its command sent.
pub(super) struct Unsettled<'a> {
    inner: &'a Inner,
    slot: &'a Slot,
    armed: bool,
}

impl<'a> Unsettled<'a> {
    pub(super) fn new(inner: &'a Inner, slot: &'a Slot) -> Unsettled<'a> {
        Unsettled {
            inner,
            slot,
            armed: true,
        }
    }
    pub(super) fn settled(mut self) {
        self.armed = false;
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.slot.presence_dirty.store(true, Ordering::Release);
            self.inner.cleanup.store(true, Ordering::Release);
            self.inner.occupancy_unsure();
        }
    }
}

/// A start-up failure for a Redis user without the node's channels
/// (`why`: Redis's refusal), naming the grant.
pub(super) fn channels_refused(prefix: &str, why: &str) -> BrokerError {
    BrokerError::Unavailable(format!(
        "the Redis user may not publish or subscribe to the node's channels ({why}); \
         grant it every channel under the prefix, e.g. ACL SETUSER <user> &{prefix}*"
    ))
}

/// Watches the subscriber's connection: marks the link down when it drops
/// and, once it is back, resubscribes before marking it up.
pub(super) async fn supervise(
    inner: Arc<Inner>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
    mut changes: broadcast::Receiver<Vec<fred::types::ClusterStateChange>>,
) {
    let mut tick = tokio::time::interval(SUPERVISE_EVERY);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut topology = tokio::time::interval(TOPOLOGY_EVERY);
    topology.set_missed_tick_behavior(MissedTickBehavior::Delay);
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
            _ = topology.tick(), if inner.sharded => {
                if inner.slots_moved().await {
                    // The refreshed routing is reported on `changes`, which
                    // resubscribes every group (above).
                    tracing::info!("Redis Cluster slots moved; refreshing the subscriber's routing");
                    if let Err(e) = inner.subscriber.sync_cluster().await {
                        tracing::debug!(error = %e, "cluster routing refresh failed; retrying");
                    }
                }
            }
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
        // Not up again before the control channel is back too. Its
        // connection can reconnect up to a backoff later than the group
        // link's, and `control_up` drops only once fred reports that
        // reconnection: a node said it was up after a Redis restart with no
        // control subscription (seen in `resubscribes_after_redis_restart`,
        // a control command never received). Only the way up waits for it.
        if !inner.up.load(Ordering::Acquire) && !inner.control_ready() {
            continue;
        }
        if inner.set_up(true) {
            tracing::info!("Redis link up; subscriptions in place");
        }
    }
}

/// Most messages handed to the hub as one burst (see `in_burst`).
const BURST: usize = 64;

pub(super) async fn dispatch(inner: Arc<Inner>, mut messages: broadcast::Receiver<Message>) {
    loop {
        match messages.recv().await {
            // What else has arrived meanwhile joins this message's burst:
            // under load the sockets then get several frames per wake-up
            // and per write, as on a node that publishes itself.
            Ok(first) => {
                let mut first = Some(first);
                inner.burst(&mut || {
                    if let Some(message) = first.take() {
                        inner.on_message(message);
                    }
                    for _ in 1..BURST {
                        match messages.try_recv() {
                            Ok(message) => inner.on_message(message),
                            Err(broadcast::error::TryRecvError::Lagged(n)) => inner.lagged(n),
                            Err(_) => break,
                        }
                    }
                })
            }
            Err(RecvError::Lagged(n)) => inner.lagged(n),
            Err(RecvError::Closed) => break,
        }
    }
}

pub(super) fn is_timeout(e: &fred::error::Error) -> bool {
    *e.kind() == fred::error::ErrorKind::Timeout
}

/// Reopens a client's connection in the background, bounded in time.
pub(super) fn force_reconnect<C: ClientLike + Send + Sync + 'static>(client: C) {
    tokio::spawn(async move {
        let forced =
            tokio::time::timeout(Duration::from_secs(5), client.force_reconnection()).await;
        if let Ok(Err(e)) = forced {
            tracing::debug!(error = %e, "forced reconnection failed");
        }
    });
}
