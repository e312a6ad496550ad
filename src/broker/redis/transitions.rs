//! A group's first join and last leave on this node: what they write to
//! Redis beside the group's subscription (presence, occupancy) and on which
//! connection.
//!
//! Why a file of its own: these two moments touch three parts at once (the
//! subscriber link, presence and occupancy) and are a new user's whole Redis
//! cost beside the token cache, so how their commands share writes is
//! decided in one place. Where presence rides in the occupancy script (not
//! on Redis Cluster), the script is queued on the subscriber connection
//! together with the `SUBSCRIBE` or `UNSUBSCRIBE`, and Redis reads and
//! answers each pair at once (docs/performance.md, round eighteen);
//! elsewhere the writes go on the command client as before. Later joins
//! and leaves of a group only add or remove a presence entry (`presence`).

use std::sync::atomic::Ordering;

use fred::prelude::ClientLike;

use super::link::Slot;
use super::occupancy::RedisOccupancy;
use super::{Inner, not_connected};
use crate::hub::Member;

/// Whether Redis refused a command for keys in more than one slot.
fn is_cross_slot(e: &fred::error::Error) -> bool {
    e.details().starts_with("CROSSSLOT")
}

/// The connection a group's join or leave script runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// The command client.
    Commands,
    /// The subscriber connection, queued beside the group's `SUBSCRIBE` or
    /// `UNSUBSCRIBE` (see [`Inner::subscribe_first`]); with occupancy off,
    /// presence's own commands go there instead.
    Subscriber,
}

impl Inner {
    /// The group got its first member on this node (under its `op` lock,
    /// so this node's joins and leaves of a group reach Redis in order):
    /// its presence hash is written afresh and its occupancy counted.
    /// Never fails the join: a failure is repaired by the heartbeat
    /// (presence) and the next sweep tick (occupancy).
    ///
    /// One script does both where it can: with occupancy on and not on
    /// Redis Cluster, whose scripts take keys of one slot only (the
    /// occupancy keys share `{occ}`, presence hashes are spread). That is
    /// one command per new user's group where it was four. A server that
    /// looks like one Redis but enforces slots all the same (a sharding
    /// proxy, a managed "sharded" endpoint) answers `CROSSSLOT`: the node
    /// then writes them apart, for this join and from then on.
    ///
    /// `via`: the connection the script runs on (with occupancy off, the
    /// presence commands); written apart, both go on the command client.
    /// Returns whether the script ran (so that Redis
    /// had run what was queued before it on `via`).
    pub(super) async fn first_joined(
        &self,
        group: &str,
        slot: &Slot,
        member: &Member,
        via: Via,
    ) -> bool {
        if let Some(occ) = self.together() {
            let result = self.occ_join(occ, group, Some(member), via).await;
            let ran = result.is_ok();
            if !self.refused_together(occ, slot, group, result) {
                return ran;
            }
        } else if via == Via::Subscriber && self.occupancy.get().is_none() {
            return self
                .presence_add_on(&self.subscriber, group, slot, member, true)
                .await;
        }
        // Both on the command client, queued in this order: one write to
        // Redis, not two round trips one after the other.
        tokio::join!(
            self.presence_add(group, slot, member, true),
            self.occupancy_joined(group)
        );
        false
    }

    /// The group lost its last member on this node (under its `op` lock):
    /// its presence hash is deleted and its occupancy counted down; one
    /// script where [`first_joined`](Self::first_joined) uses one.
    pub(super) async fn last_left(&self, group: &str, slot: &Slot, via: Via) {
        if let Some(occ) = self.together() {
            let result = self.occ_leave(occ, group, true, via).await;
            if !self.refused_together(occ, slot, group, result) {
                return;
            }
        } else if via == Via::Subscriber && self.occupancy.get().is_none() {
            return self
                .presence_remove_on(&self.subscriber, group, slot, None)
                .await;
        }
        tokio::join!(
            self.presence_remove(group, slot, None),
            self.occupancy_left(group)
        );
    }

    /// A group's first member on this node, whose subscription is not in
    /// place (under its `op` lock): subscribes the group and does what
    /// [`first_joined`](Self::first_joined) does. Where one script does the
    /// latter, it is queued on the subscriber connection right behind the
    /// `SUBSCRIBE`: Redis reads both at once and answers both in one write,
    /// where the script on the command client waited for the subscription
    /// and took a round trip of its own (a new user's own group is such a
    /// join; docs/performance.md, round eighteen).
    ///
    /// Returns once Redis has run the subscription: the script's answer
    /// says so (with occupancy off, the presence write's, queued behind the
    /// `SUBSCRIBE` the same way), and where it did not run (an error, or
    /// written apart after `CROSSSLOT`) a `PING` on the subscriber confirms
    /// it. Fails as the subscription does; the script's writes are then taken
    /// back (a leave, on the subscriber connection behind them) before the
    /// join is refused.
    pub(super) async fn subscribe_first(
        &self,
        group: &str,
        slot: &Slot,
        member: &Member,
    ) -> Result<(), fred::error::Error> {
        if !self.beside_subscription() {
            self.sub_channel(group).await?;
            self.first_joined(group, slot, member, Via::Commands).await;
            return Ok(());
        }
        let (subscribed, ran) = tokio::join!(
            self.queue_subscribe(group),
            self.first_joined(group, slot, member, Via::Subscriber)
        );
        let subscribed = match subscribed {
            Ok(()) if !ran => self.caught_up().await,
            other => other,
        };
        if subscribed.is_err() {
            // On the same connection as the script: a refused join's
            // commands may still be on their way (timed out, not lost), and
            // the take-back must reach Redis after them.
            self.last_left(group, slot, Via::Subscriber).await;
        }
        subscribed
    }

    /// A group's last member on this node left and its subscription is to
    /// go (under its `op` lock): unsubscribes the group and does what
    /// [`last_left`](Self::last_left) does, the `UNSUBSCRIBE` and the script
    /// queued together on the subscriber connection where one script does
    /// the latter (with occupancy off, the presence `DEL`). The script goes
    /// last in both pairs: fred flushes its socket right after any
    /// `EVALSHA`, so a command queued behind one would be a write of its
    /// own. Fails as the unsubscription does (at once while the subscriber
    /// is disconnected).
    pub(super) async fn unsubscribe_last(
        &self,
        group: &str,
        slot: &Slot,
    ) -> Result<(), fred::error::Error> {
        if !self.subscriber.is_connected() {
            self.last_left(group, slot, Via::Commands).await;
            return Err(not_connected());
        }
        if !self.beside_subscription() {
            self.last_left(group, slot, Via::Commands).await;
            return self.unsub_channel(group).await;
        }
        let (unsubscribed, ()) = tokio::join!(
            self.unsub_channel(group),
            self.last_left(group, slot, Via::Subscriber)
        );
        unsubscribed
    }

    /// A join or leave script may or may not have run (its caller was
    /// cancelled): the next sweep compares this node's groups with Redis.
    pub(super) fn occupancy_unsure(&self) {
        if let Some(occ) = self.occupancy.get() {
            occ.dirty.store(true, Ordering::Release);
        }
    }

    /// Whether Redis refused a combined script for its slots, so the
    /// writes are still to be made apart (and from now on are). Any other
    /// failure leaves both to their repairs.
    fn refused_together(
        &self,
        occ: &RedisOccupancy,
        slot: &Slot,
        group: &str,
        result: Result<(), fred::error::Error>,
    ) -> bool {
        match result {
            Ok(()) => false,
            Err(e) if is_cross_slot(&e) => {
                if occ.together.swap(false, Ordering::AcqRel) {
                    tracing::info!(
                        error = %e,
                        "Redis enforces hash slots behind a single endpoint: presence is written beside the occupancy scripts from now on"
                    );
                }
                true
            }
            Err(e) => {
                tracing::debug!(group, error = %e, "presence and occupancy deferred");
                slot.presence_dirty.store(true, Ordering::Release);
                occ.dirty.store(true, Ordering::Release);
                false
            }
        }
    }

    /// Whether a first join's and last leave's writes go on the subscriber
    /// connection beside the (un)subscription: one script where presence
    /// rides in it, presence's own commands with occupancy off; neither on
    /// Redis Cluster, where the channel and the keys live on different
    /// shards.
    fn beside_subscription(&self) -> bool {
        !self.sharded
            && self
                .occupancy
                .get()
                .is_none_or(|occ| occ.together.load(Ordering::Acquire))
    }

    /// Occupancy, when presence may ride in its scripts.
    fn together(&self) -> Option<&RedisOccupancy> {
        self.occupancy
            .get()
            .filter(|occ| occ.together.load(Ordering::Acquire))
    }

    /// Occupancy alone counts the group's first member on this node.
    async fn occupancy_joined(&self, group: &str) {
        let Some(occ) = self.occupancy.get() else {
            return;
        };
        if let Err(e) = self.occ_join(occ, group, None, Via::Commands).await {
            tracing::debug!(group, error = %e, "occupancy join deferred");
            occ.dirty.store(true, Ordering::Release);
        }
    }

    /// Occupancy alone counts the group's last member on this node.
    async fn occupancy_left(&self, group: &str) {
        let Some(occ) = self.occupancy.get() else {
            return;
        };
        if let Err(e) = self.occ_leave(occ, group, false, Via::Commands).await {
            tracing::debug!(group, error = %e, "occupancy leave deferred");
            occ.dirty.store(true, Ordering::Release);
        }
    }
}
