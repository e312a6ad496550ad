//! Presence and the node registry: soft state in Redis, renewed by each
//! node's heartbeat, so a node that dies needs nobody to clean up after it.
//!
//! Keys (all under `redis.prefix`): `node:<id>` (JSON [`NodeInfo`], expiring
//! after `node_ttl`), `nodes` (sorted set, score = last heartbeat in unix
//! ms; entries older than `node_ttl` are pruned) and
//! `presence:<group>:<node>` (hash session → JSON [`Member`], expiring after
//! `node_ttl`). A node that dies stops refreshing them, so it drops out of
//! the listing and of presence within `node_ttl`; every key expires once no
//! node is left.
//!
//! With occupancy on and outside Redis Cluster, a group's first join and
//! last leave on a node write (and delete) its presence hash inside the
//! occupancy script instead (`Inner::first_joined` in `transitions`): one
//! command rather than presence's own commands beside the script. With
//! occupancy off, those presence commands go beside the `SUBSCRIBE` or
//! `UNSUBSCRIBE` on the subscriber connection (`presence_add_on`).
//!
//! The heartbeat is also the link's liveness probe (see `heartbeat_once`):
//! its commands are the ones that time out when a connection silently died.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{
    ClientLike, Expiration, HashesInterface, KeysInterface, SortedSetsInterface, Value,
};
use tokio::time::MissedTickBehavior;

use super::link::{Slot, force_reconnect, is_timeout};
use super::requests::{self, Request};
use super::{Inner, RedisBroker, json, unavailable};
use crate::broker::{BrokerError, NodeInfo, NodeRegistry, Presence};
use crate::hub::Member;

/// Most nodes the listing and presence consider.
const MAX_NODES: i64 = 10_000;

impl Inner {
    pub(super) fn node_key(&self) -> String {
        format!("{}node:{}", self.prefix, self.node_id)
    }
    pub(super) fn nodes_key(&self) -> String {
        format!("{}nodes", self.prefix)
    }
    pub(super) fn presence_key(&self, group: &str, node: &str) -> String {
        format!("{}presence:{group}:{node}", self.prefix)
    }
    pub(super) fn ttl_ms(&self) -> i64 {
        self.node_ttl.as_millis().min(i64::MAX as u128) as i64
    }

    // -- presence ---------------------------------------------------------

    /// Adds a member to the group's presence hash; `first` clears what an
    /// earlier, failed cleanup may have left there.
    pub(super) async fn presence_add(
        &self,
        group: &str,
        slot: &Slot,
        member: &Member,
        first: bool,
    ) {
        if !self.client.is_connected() {
            slot.presence_dirty.store(true, Ordering::Release);
            return;
        }
        self.presence_add_on(&self.client, group, slot, member, first)
            .await;
    }

    /// [`presence_add`](Self::presence_add) on `client`: the command
    /// client, or with occupancy off the subscriber connection behind a
    /// first join's `SUBSCRIBE` (`transitions`). Returns whether it was
    /// written; if not, the heartbeat repairs it.
    pub(super) async fn presence_add_on<C: HashesInterface + KeysInterface + Sync>(
        &self,
        client: &C,
        group: &str,
        slot: &Slot,
        member: &Member,
        first: bool,
    ) -> bool {
        let key = self.presence_key(group, &self.node_id);
        let entry = vec![(member.session.clone(), json(member))];
        match self.presence_write_on(client, &key, first, entry).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(group, error = %e, "presence write failed; the heartbeat will repair it");
                slot.presence_dirty.store(true, Ordering::Release);
                false
            }
        }
    }

    pub(super) async fn presence_remove(&self, group: &str, slot: &Slot, session: Option<&str>) {
        if !self.client.is_connected() {
            slot.presence_dirty.store(true, Ordering::Release);
            return;
        }
        self.presence_remove_on(&self.client, group, slot, session)
            .await;
    }

    /// [`presence_remove`](Self::presence_remove) on `client` (see
    /// [`presence_add_on`](Self::presence_add_on)).
    pub(super) async fn presence_remove_on<C: HashesInterface + KeysInterface + Sync>(
        &self,
        client: &C,
        group: &str,
        slot: &Slot,
        session: Option<&str>,
    ) {
        let key = self.presence_key(group, &self.node_id);
        // Boxed: see `sub_channel`.
        let result: Result<i64, _> = match session {
            Some(session) => Box::pin(client.hdel(&key, session)).await,
            None => Box::pin(client.del(&key)).await,
        };
        if let Err(e) = result {
            tracing::debug!(group, error = %e, "presence delete failed; the heartbeat will repair it");
            slot.presence_dirty.store(true, Ordering::Release);
        }
    }

    /// Rewrites a group's presence hash from local state (under its `op`).
    async fn presence_rewrite(&self, group: &str, slot: &Slot) -> Result<(), fred::error::Error> {
        let key = self.presence_key(group, &self.node_id);
        let entries = slot
            .snapshot()
            .iter()
            .map(|m| (m.session.clone(), json(m)))
            .collect();
        self.presence_write(&key, true, entries).await
    }

    /// Writes `entries` (session, JSON member) to the presence hash `key`
    /// and renews its expiry, after a `DEL` when `clear`; with no entries,
    /// only the `DEL`. Queued together: one write to Redis.
    async fn presence_write(
        &self,
        key: &str,
        clear: bool,
        entries: Vec<(String, String)>,
    ) -> Result<(), fred::error::Error> {
        self.presence_write_on(&self.client, key, clear, entries)
            .await
    }

    /// [`presence_write`](Self::presence_write) on `client`.
    async fn presence_write_on<C: HashesInterface + KeysInterface + Sync>(
        &self,
        client: &C,
        key: &str,
        clear: bool,
        entries: Vec<(String, String)>,
    ) -> Result<(), fred::error::Error> {
        let mut commands: Vec<Request<'_, Value>> = Vec::with_capacity(3);
        if clear {
            commands.push(Box::pin(client.del(key)));
        }
        if !entries.is_empty() {
            commands.push(Box::pin(client.hset(key, entries)));
            commands.push(Box::pin(client.pexpire(key, self.ttl_ms(), None)));
        }
        requests::all_in_order(commands).await.map(|_| ())
    }

    // -- heartbeat ----------------------------------------------------------

    pub(super) async fn heartbeat_once(&self) {
        if !self.client.is_connected() {
            return;
        }
        let now = crate::clock::unix_ms();
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
        let client = &self.client;
        let expiry = Some(Expiration::PX(self.ttl_ms()));
        let commands: Vec<Request<'_, Value>> = vec![
            Box::pin(client.set(self.node_key(), json(&info), expiry, None, false)),
            Box::pin(client.zadd(
                self.nodes_key(),
                None,
                None,
                false,
                false,
                (now as f64, self.node_id.as_str()),
            )),
            Box::pin(client.zremrangebyscore(
                self.nodes_key(),
                f64::NEG_INFINITY,
                (oldest as f64) - 1.0,
            )),
            // The set outlives its last live node by node_ttl, no longer.
            Box::pin(client.pexpire(self.nodes_key(), self.ttl_ms(), None)),
        ];
        let registered = requests::all_in_order(commands).await.map(|_| ());
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
        for chunk in live.chunks(requests::CHUNK) {
            let commands: Vec<Request<'_, i64>> = chunk
                .iter()
                .map(|(group, _)| {
                    let key = self.presence_key(group, &self.node_id);
                    Box::pin(self.client.pexpire(key, self.ttl_ms(), None)) as Request<'_, i64>
                })
                .collect();
            let results = requests::in_order(commands).await;
            if results.iter().all(Result::is_err) {
                // Redis is not answering; try again on the next beat.
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
}

pub(super) async fn heartbeat(inner: Arc<Inner>) {
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

impl RedisBroker {
    /// The nodes that beat within `node_ttl`: the listing and presence read
    /// only theirs, so a dead node's leftover keys are never shown.
    async fn live_nodes(&self) -> Result<Vec<String>, BrokerError> {
        let inner = &self.inner;
        inner.check_link()?;
        let oldest = crate::clock::unix_ms().saturating_sub(inner.node_ttl.as_millis() as u64);
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

#[async_trait]
impl Presence for RedisBroker {
    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError> {
        let nodes = self.live_nodes().await?;
        if nodes.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let commands: Vec<Request<'_, HashMap<String, String>>> = nodes
            .iter()
            .map(|node| {
                Box::pin(inner.client.hgetall(inner.presence_key(group, node)))
                    as Request<'_, HashMap<String, String>>
            })
            .collect();
        let mut members = Vec::new();
        for hash in requests::all_in_order(commands)
            .await
            .map_err(unavailable)?
        {
            for raw in hash.into_values() {
                match serde_json::from_str::<Member>(&raw) {
                    Ok(member) => members.push(member),
                    Err(_) => tracing::debug!(group, "skipped a malformed presence entry"),
                }
            }
        }
        members.sort_by(|a, b| (&a.node, &a.session).cmp(&(&b.node, &b.session)));
        Ok(members)
    }
}

#[async_trait]
impl NodeRegistry for RedisBroker {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        let ids = self.live_nodes().await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let commands: Vec<Request<'_, Option<String>>> = ids
            .iter()
            .map(|id| {
                Box::pin(inner.client.get(format!("{}node:{id}", inner.prefix)))
                    as Request<'_, Option<String>>
            })
            .collect();
        let mut nodes = Vec::new();
        let entries = requests::all_in_order(commands)
            .await
            .map_err(unavailable)?;
        // A missing key (None) is a node that stopped (or was removed) since.
        for raw in entries.into_iter().flatten() {
            match serde_json::from_str::<NodeInfo>(&raw) {
                Ok(info) => nodes.push(info),
                Err(_) => tracing::debug!("skipped a malformed node entry"),
            }
        }
        nodes.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(nodes)
    }
}
