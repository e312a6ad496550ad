//! The hub: this node's connections and the groups they are in.
//!
//! It is purely local and synchronous: it knows nothing of sockets, Redis or
//! SQL. A session registers a [`ConnHandle`] after `welcome`; the hub then
//! routes group messages into that connection's bounded queue and asks it to
//! close (slow consumer, disconnect, revoke, drain) through its
//! [`CloseSignal`]. Locks are never held across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use indexmap::IndexMap;
use wildmatch::WildMatch;

use crate::config::ConflateRule;
use crate::metrics::{DropReason, Metrics};
use crate::protocol::{CloseCode, Position, Publication, message_frame};
pub use crate::queue::{ConflationKey, Outbound, OutboundQueue, Pushed, deferring_wakes};
use crate::token::{Credential, TokenDigest};

pub type ConnId = u64;

/// A one-shot "please close with this code" for one connection. The first
/// code wins; later requests are ignored. Only the connection's own task
/// waits on it (it keeps one waker), so waiting costs a couple of atomics
/// rather than a notifier's lock.
///
/// A request goes through [`ConnHandle::request_close`], which also wakes
/// the consumer of the connection's queue: the serve loop, which always
/// waits on its queue, then only reads the code on each wake-up instead of
/// registering here (2.4 % of a 10,000-subscriber fan-out's samples). The
/// waker here serves the waits that do not watch the queue: a write in
/// flight, a coalescing window.
#[derive(Default)]
pub struct CloseSignal {
    code: AtomicU16,
    waiting: AtomicWaker,
}

impl CloseSignal {
    fn request(&self, code: CloseCode) -> bool {
        let first = self
            .code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.waiting.wake();
        }
        first
    }

    /// Ready with the code once a close is requested; else the task is
    /// woken by the request.
    pub fn poll_requested(&self, cx: &mut Context<'_>) -> Poll<CloseCode> {
        if let Some(code) = self.code() {
            return Poll::Ready(code);
        }
        self.waiting.register(cx.waker());
        // A request between the check and the registration woke nobody.
        match self.code() {
            Some(code) => Poll::Ready(code),
            None => Poll::Pending,
        }
    }

    /// Waits until a close is requested and returns its code.
    pub async fn requested(&self) -> CloseCode {
        std::future::poll_fn(|cx| self.poll_requested(cx)).await
    }

    pub fn code(&self) -> Option<CloseCode> {
        CloseCode::from_u16(self.code.load(Ordering::Acquire))
    }
}

/// What the hub holds of one authenticated connection.
pub struct ConnHandle {
    pub id: ConnId,
    pub user_id: String,
    pub session: String,
    /// The connection's token and its digest; an in-band `refresh` swaps
    /// them, so revocation and re-validation follow the current token.
    pub credential: Credential,
    pub queue: OutboundQueue,
    pub close: CloseSignal,
}

impl ConnHandle {
    /// Asks the connection to close with `code`; false if a close was
    /// requested already (the first code wins).
    pub fn request_close(&self, code: CloseCode) -> bool {
        let first = self.close.request(code);
        if first {
            // After the code is stored: a loop that registered on its queue
            // before this wake-up reads the code when woken, and one that
            // registers after it reads the code before it waits.
            self.queue.wake_consumer();
        }
        first
    }
}

/// A member of a group, as presence reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    pub user_id: String,
    pub session: String,
    pub node: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("too many groups on this connection")]
    TooManyGroups,
    #[error("connection is not registered")]
    NotRegistered,
}

/// What a join changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    /// The connection was not in the group before.
    pub new_member: bool,
    /// The group had no local member before: the node must now listen to it.
    pub first_local: bool,
}

#[derive(Default)]
struct State {
    conns: HashMap<ConnId, Entry>,
    groups: HashMap<String, Members>,
}

/// A group's local members in the order they joined: a broadcast wakes them
/// in that order, which is roughly the order their sockets, tasks and queues
/// were allocated in, so the walk through their memory (and the kernel's)
/// is close to sequential rather than hash-random.
type Members = IndexMap<ConnId, Arc<ConnHandle>>;

struct Entry {
    handle: Arc<ConnHandle>,
    /// A list, not a set: a connection is in few groups (at most
    /// `limits.max_groups_per_connection`), and an empty or one-group list
    /// costs far less per socket than a hash set (docs/performance.md).
    groups: Vec<String>,
}

/// Connections replaying a group's history: group → connection → state.
type Held = HashMap<String, HashMap<ConnId, Hold>>;

/// One connection's view of one group around a history replay.
enum Hold {
    /// Replay in progress: live messages wait here, in arrival order.
    Holding(Vec<(Option<Position>, Outbound)>),
    /// Replay written up to `upto`: a live message of the same epoch at or
    /// below it was already sent (it was still on its way from Redis when
    /// the history was read), so it is dropped. Ends at the first newer one.
    Skipping(Position),
}

/// Whether a message at `position` is one the replay up to `upto` covered.
fn covered(position: Option<&Position>, upto: &Position) -> bool {
    position.is_some_and(|p| p.epoch == upto.epoch && p.offset <= upto.offset)
}

pub struct Hub {
    node: String,
    max_groups: usize,
    /// Connections replaying history (see [`Hub::hold`]).
    held: Mutex<Held>,
    /// How many (connection, group) pairs are held; deliveries check it
    /// without the lock, so the common case pays one atomic load.
    held_count: AtomicUsize,
    /// Most messages held for one connection and group (its queue size).
    max_held: usize,
    /// `groups.conflate`, with each group pattern compiled once: it is
    /// matched on every publication.
    conflate: Vec<(WildMatch, ConflateRule)>,
    state: RwLock<State>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(node: String, max_groups: usize, metrics: Arc<Metrics>) -> Hub {
        Hub {
            node,
            max_groups,
            held: Mutex::default(),
            held_count: AtomicUsize::new(0),
            max_held: crate::config::LimitsConfig::default().outbound_queue,
            conflate: Vec::new(),
            state: RwLock::default(),
            metrics,
        }
    }

    /// Most live messages held for one connection while it replays history
    /// (`limits.outbound_queue`); past it the connection is a slow consumer.
    pub fn with_max_held(mut self, max_held: usize) -> Hub {
        self.max_held = max_held;
        self
    }

    /// Groups whose messages slow readers receive conflated (`groups.conflate`).
    pub fn with_conflation(mut self, rules: Vec<ConflateRule>) -> Hub {
        self.conflate = rules
            .into_iter()
            .map(|rule| (WildMatch::new(&rule.groups), rule))
            .collect();
        self
    }

    /// The conflation key of a publication, when its group is conflated and
    /// its data has the key (a string, number or boolean).
    fn conflation_key(&self, publication: &Publication) -> Option<Arc<ConflationKey>> {
        let (_, rule) = self
            .conflate
            .iter()
            .find(|(pattern, _)| pattern.matches(&publication.group))?;
        let data: serde_json::Value = serde_json::from_str(publication.data.get()).ok()?;
        let mut value = &data;
        for part in rule.key.split('.') {
            value = value.get(part)?;
        }
        let key = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            serde_json::Value::Bool(b) => b.to_string(),
            _ => return None,
        };
        Some(Arc::new(ConflationKey {
            group: publication.group.clone(),
            key,
        }))
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(&self, handle: Arc<ConnHandle>) {
        self.write().conns.insert(
            handle.id,
            Entry {
                handle,
                groups: Vec::new(),
            },
        );
    }

    /// Removes a connection from the hub and every group; returns the groups
    /// it was in.
    pub fn unregister(&self, id: ConnId) -> Vec<String> {
        let mut state = self.write();
        let Some(entry) = state.conns.remove(&id) else {
            return Vec::new();
        };
        let mut left = Vec::with_capacity(entry.groups.len());
        for group in entry.groups {
            if let Some(members) = state.groups.get_mut(&group) {
                members.swap_remove(&id);
                if members.is_empty() {
                    state.groups.remove(&group);
                }
            }
            left.push(group);
        }
        self.metrics.groups.set(state.groups.len() as i64);
        drop(state);
        // Any hold of this connection, also one whose join never finished.
        let mut held = self.lock_held();
        held.retain(|_, conns| {
            if conns.remove(&id).is_some() {
                self.held_count.fetch_sub(1, Ordering::AcqRel);
            }
            !conns.is_empty()
        });
        drop(held);
        left
    }

    pub fn join(&self, id: ConnId, group: &str) -> Result<Joined, JoinError> {
        let mut state = self.write();
        let state = &mut *state;
        let entry = state.conns.get_mut(&id).ok_or(JoinError::NotRegistered)?;
        if entry.groups.iter().any(|g| g == group) {
            return Ok(Joined {
                new_member: false,
                first_local: false,
            });
        }
        if entry.groups.len() >= self.max_groups {
            return Err(JoinError::TooManyGroups);
        }
        // Grown one at a time: most connections stay in one or two groups.
        entry.groups.reserve_exact(1);
        entry.groups.push(group.to_string());
        let handle = entry.handle.clone();
        let members = state.groups.entry(group.to_string()).or_default();
        let first_local = members.is_empty();
        members.insert(id, handle);
        self.metrics.groups.set(state.groups.len() as i64);
        Ok(Joined {
            new_member: true,
            first_local,
        })
    }

    /// Returns `(was_member, group_now_empty)`.
    pub fn leave(&self, id: ConnId, group: &str) -> (bool, bool) {
        let mut state = self.write();
        let was_member = state
            .conns
            .get_mut(&id)
            .and_then(|e| {
                let at = e.groups.iter().position(|g| g == group)?;
                Some(e.groups.swap_remove(at))
            })
            .is_some();
        if !was_member {
            return (false, false);
        }
        let mut emptied = false;
        if let Some(members) = state.groups.get_mut(group) {
            members.swap_remove(&id);
            if members.is_empty() {
                state.groups.remove(group);
                emptied = true;
            }
        }
        self.metrics.groups.set(state.groups.len() as i64);
        drop(state);
        // A replay's leftover filter for this group is moot now.
        self.release(id, group);
        (true, emptied)
    }

    /// Takes every connection of `user_id` out of `group` (the backend
    /// revoked it) and queues an unsolicited `unsubscribed` for each, after
    /// the last message of the group it got. Returns the sessions that left,
    /// for the caller to tell the broker (exactly once each: a `leave` or
    /// `unregister` racing this finds them gone).
    pub fn remove_user(&self, user_id: &str, group: &str) -> Vec<String> {
        let leaving: Vec<Arc<ConnHandle>> = {
            let mut state = self.write();
            let state = &mut *state;
            let Some(members) = state.groups.get_mut(group) else {
                return Vec::new();
            };
            let leaving: Vec<Arc<ConnHandle>> = members
                .values()
                .filter(|h| h.user_id == user_id)
                .cloned()
                .collect();
            for handle in &leaving {
                members.swap_remove(&handle.id);
            }
            if members.is_empty() {
                state.groups.remove(group);
            }
            let frame = crate::protocol::Reply::Unsubscribed { group, id: None }.encode();
            for handle in &leaving {
                if let Some(entry) = state.conns.get_mut(&handle.id)
                    && let Some(at) = entry.groups.iter().position(|g| g == group)
                {
                    entry.groups.swap_remove(at);
                }
                // Under the lock: no message of the group is queued after it.
                if handle.queue.push(Outbound::frame(frame.clone())) == Pushed::Full {
                    handle.request_close(CloseCode::SlowConsumer);
                }
            }
            self.metrics.groups.set(state.groups.len() as i64);
            leaving
        };
        for handle in &leaving {
            // A replay's leftover filter for this group is moot now.
            self.release(handle.id, group);
        }
        leaving.iter().map(|h| h.session.clone()).collect()
    }

    /// Whether connection `id` is in `group` now.
    pub fn is_member(&self, id: ConnId, group: &str) -> bool {
        self.read()
            .conns
            .get(&id)
            .is_some_and(|e| e.groups.iter().any(|g| g == group))
    }

    /// The groups with at least one local member.
    pub fn groups(&self) -> Vec<String> {
        self.read().groups.keys().cloned().collect()
    }

    /// Delivers a publication to every local member of its group: the frame
    /// is encoded once and shared. Returns how many queues took it.
    pub fn deliver(&self, publication: &Publication) -> usize {
        let frame = message_frame(
            &publication.group,
            &publication.data,
            publication.position.as_ref(),
        );
        let state = self.read();
        let Some(members) = state.groups.get(&publication.group) else {
            return 0;
        };
        let out = Outbound {
            frame,
            published_us: publication.ts,
            conflation: self.conflation_key(publication),
        };
        let mut held = if self.held_count.load(Ordering::Acquire) > 0 {
            Some(self.lock_held())
        } else {
            None
        };
        let mut held_here = held.as_mut().and_then(|h| h.get_mut(&publication.group));
        // What a hold compares: the history offset, or for a snapshot
        // group the sequence of its kept latest (see `Publication::seq`).
        let position = publication.position.as_ref().or(publication.seq.as_ref());
        let mut queued = 0;
        for handle in members.values() {
            if let Some(conns) = held_here.as_mut()
                && let Some(hold) = conns.get_mut(&handle.id)
            {
                match hold {
                    Hold::Holding(buffer) if buffer.len() < self.max_held => {
                        buffer.push((position.cloned(), out.clone()));
                        queued += 1;
                        continue;
                    }
                    Hold::Holding(_) => {
                        self.metrics.dropped(DropReason::SlowConsumer, 1);
                        handle.request_close(CloseCode::SlowConsumer);
                        continue;
                    }
                    Hold::Skipping(upto) if covered(position, upto) => continue,
                    Hold::Skipping(_) if position.is_none() => {}
                    Hold::Skipping(_) => {
                        conns.remove(&handle.id);
                        self.held_count.fetch_sub(1, Ordering::AcqRel);
                    }
                }
            }
            match handle.queue.push(out.clone()) {
                Pushed::Queued => queued += 1,
                Pushed::Conflated => {
                    queued += 1;
                    self.metrics.messages_conflated.inc();
                }
                Pushed::Full => {
                    self.metrics.dropped(DropReason::SlowConsumer, 1);
                    handle.request_close(CloseCode::SlowConsumer);
                }
                Pushed::Closed => {
                    self.metrics.dropped(DropReason::Closed, 1);
                }
            }
        }
        if held_here.is_some_and(|conns| conns.is_empty())
            && let Some(held) = held.as_mut()
        {
            held.remove(&publication.group);
        }
        queued
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds back this connection's live messages of `group` (call before
    /// joining it) while the session replays the group's history: they are
    /// queued by [`Hub::release_after`] after the replay, minus those the
    /// replay already covered, so nothing arrives twice or out of order.
    pub fn hold(&self, id: ConnId, group: &str) {
        let mut held = self.lock_held();
        let conns = held.entry(group.to_string()).or_default();
        if conns.insert(id, Hold::Holding(Vec::new())).is_none() {
            self.held_count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Ends [`Hub::hold`] once the replay up to `upto` is written: queues
    /// the held messages it did not cover (all of them without `upto`), and
    /// from then on drops late copies of covered ones. Returns how many
    /// were queued.
    pub fn release_after(&self, id: ConnId, group: &str, upto: Option<Position>) -> usize {
        // The state lock before (not inside) the `held` lock: deliveries
        // take them in that order.
        let handle = self.read().conns.get(&id).map(|e| e.handle.clone());
        let mut held = self.lock_held();
        // `held_count` must not reach zero before the held messages are
        // queued, or a delivery could skip the lock and overtake them: the
        // entry stays (emptied) while they are pushed, under the lock.
        let Some(hold) = held.get_mut(group).and_then(|conns| conns.get_mut(&id)) else {
            return 0;
        };
        let buffer = match std::mem::replace(hold, Hold::Holding(Vec::new())) {
            Hold::Holding(buffer) => buffer,
            Hold::Skipping(_) => Vec::new(),
        };
        let Some(handle) = handle else {
            Self::take_held(&mut held, &self.held_count, id, group);
            return 0;
        };
        let mut queued = 0;
        for (position, out) in buffer {
            if let Some(upto) = &upto
                && covered(position.as_ref(), upto)
            {
                continue;
            }
            match handle.queue.push(out) {
                Pushed::Queued | Pushed::Conflated => queued += 1,
                Pushed::Full => {
                    self.metrics.dropped(DropReason::SlowConsumer, 1);
                    handle.request_close(CloseCode::SlowConsumer);
                }
                Pushed::Closed => self.metrics.dropped(DropReason::Closed, 1),
            }
        }
        match upto {
            Some(upto) => {
                if let Some(hold) = held.get_mut(group).and_then(|conns| conns.get_mut(&id)) {
                    *hold = Hold::Skipping(upto);
                }
            }
            None => {
                Self::take_held(&mut held, &self.held_count, id, group);
            }
        }
        // Released only now: a delivery waiting on the lock queues its
        // message after these.
        drop(held);
        queued
    }

    /// Drops a hold without queueing anything (the join failed or the
    /// connection left).
    pub fn release(&self, id: ConnId, group: &str) {
        let mut held = self.lock_held();
        Self::take_held(&mut held, &self.held_count, id, group);
    }

    fn take_held(held: &mut Held, count: &AtomicUsize, id: ConnId, group: &str) -> Option<Hold> {
        let conns = held.get_mut(group)?;
        let buffer = conns.remove(&id)?;
        if conns.is_empty() {
            held.remove(group);
        }
        count.fetch_sub(1, Ordering::AcqRel);
        Some(buffer)
    }

    /// Asks every matching connection to close; returns how many matched.
    fn close_where(&self, code: CloseCode, pred: impl Fn(&ConnHandle) -> bool) -> usize {
        let state = self.read();
        let mut n = 0;
        for entry in state.conns.values() {
            if pred(&entry.handle) {
                entry.handle.request_close(code);
                n += 1;
            }
        }
        n
    }

    pub fn close_user(&self, user_id: &str, code: CloseCode) -> usize {
        self.close_where(code, |h| h.user_id == user_id)
    }

    pub fn close_digest(&self, digest: &TokenDigest, code: CloseCode) -> usize {
        self.close_where(code, |h| h.credential.digest() == *digest)
    }

    /// Every registered connection, for draining.
    pub fn connections(&self) -> Vec<Arc<ConnHandle>> {
        self.read()
            .conns
            .values()
            .map(|e| e.handle.clone())
            .collect()
    }

    pub fn connection_count(&self) -> usize {
        self.read().conns.len()
    }

    /// Local members of a group.
    pub fn presence(&self, group: &str) -> Vec<Member> {
        let state = self.read();
        let mut members: Vec<Member> = state
            .groups
            .get(group)
            .map(|m| {
                m.values()
                    .map(|h| Member {
                        user_id: h.user_id.clone(),
                        session: h.session.clone(),
                        node: self.node.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        members.sort_by(|a, b| a.session.cmp(&b.session));
        members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn handle(id: ConnId, user: &str, cap: usize) -> Arc<ConnHandle> {
        Arc::new(ConnHandle {
            id,
            user_id: user.into(),
            session: format!("s{id}"),
            credential: Credential::new(crate::token::Token::new(format!("t{id}"))),
            queue: OutboundQueue::new(cap, cap),
            close: CloseSignal::default(),
        })
    }

    async fn first_frame(h: &ConnHandle) -> crate::protocol::Frame {
        let mut batch = Vec::new();
        h.queue.pop_batch(&mut batch, 1).await;
        batch.remove(0).frame
    }

    fn publication(group: &str) -> Publication {
        Publication {
            group: group.into(),
            data: RawValue::from_string("1".into()).unwrap(),
            position: None,
            ts: None,
            trace: None,
            seq: None,
        }
    }

    fn at(group: &str, offset: u64, epoch: &str) -> Publication {
        Publication {
            position: Some(Position {
                offset,
                epoch: epoch.into(),
            }),
            ..publication(group)
        }
    }

    fn queued_offsets(h: &ConnHandle) -> Vec<u64> {
        let mut offsets = Vec::new();
        while !h.queue.is_empty() {
            let mut batch = Vec::new();
            futures_util::FutureExt::now_or_never(h.queue.pop_batch(&mut batch, 64));
            for out in batch {
                let v: serde_json::Value = serde_json::from_str(out.frame.as_str()).unwrap();
                offsets.push(v["offset"].as_u64().unwrap());
            }
        }
        offsets
    }

    #[test]
    fn a_replay_holds_live_messages_and_drops_late_copies() {
        let hub = Hub::new("n1".into(), 4, Arc::new(Metrics::new()));
        let a = handle(1, "u1", 64);
        hub.register(a.clone());
        hub.hold(1, "g");
        hub.join(1, "g").unwrap();
        // Arrive while the replay (up to 5) is being read and written.
        for o in [4, 5, 6] {
            hub.deliver(&at("g", o, "e"));
        }
        assert!(queued_offsets(&a).is_empty(), "held, not queued");
        let upto = Position {
            offset: 5,
            epoch: "e".into(),
        };
        assert_eq!(hub.release_after(1, "g", Some(upto)), 1);
        // A late copy of a replayed message (still in flight from Redis)
        // is dropped; newer ones and other epochs pass.
        hub.deliver(&at("g", 5, "e"));
        hub.deliver(&at("g", 7, "e"));
        hub.deliver(&at("g", 3, "e"));
        assert_eq!(queued_offsets(&a), vec![6, 7, 3]);
        assert_eq!(hub.held_count.load(Ordering::Acquire), 0, "filter ended");
        // Leaving or unregistering drops any hold.
        hub.hold(1, "g");
        hub.leave(1, "g");
        hub.hold(1, "h");
        hub.unregister(1);
        assert_eq!(hub.held_count.load(Ordering::Acquire), 0);
    }

    #[test]
    fn join_leave_and_first_last_member() {
        let hub = Hub::new("n1".into(), 2, Arc::new(Metrics::new()));
        let a = handle(1, "u1", 8);
        let b = handle(2, "u2", 8);
        hub.register(a);
        hub.register(b);
        assert!(hub.join(1, "g").unwrap().first_local);
        assert!(!hub.join(2, "g").unwrap().first_local);
        assert!(!hub.join(2, "g").unwrap().new_member);
        assert_eq!(hub.presence("g").len(), 2);
        assert_eq!(hub.leave(1, "g"), (true, false));
        assert_eq!(hub.leave(1, "g"), (false, false));
        hub.join(2, "h").unwrap();
        assert_eq!(hub.join(2, "i"), Err(JoinError::TooManyGroups));
        let mut left = hub.unregister(2);
        left.sort();
        assert_eq!(left, vec!["g", "h"]);
        assert!(hub.groups().is_empty());
    }

    /// The serve loop registers on its queue only, not on the close signal.
    #[tokio::test]
    async fn a_close_request_wakes_a_task_waiting_on_its_queue() {
        let a = handle(1, "u1", 8);
        let waiter = tokio::spawn({
            let a = a.clone();
            async move {
                let mut batch = Vec::new();
                std::future::poll_fn(|cx| match a.queue.poll_pop(cx, &mut batch, 8) {
                    Poll::Ready(_) => Poll::Ready(None),
                    Poll::Pending => a
                        .close
                        .code()
                        .map_or(Poll::Pending, |c| Poll::Ready(Some(c))),
                })
                .await
            }
        });
        // Lets the waiter register (one runtime thread).
        tokio::task::yield_now().await;
        assert!(a.request_close(CloseCode::Draining));
        assert!(
            !a.request_close(CloseCode::AuthFailed),
            "the first code wins"
        );
        // A bound on a hang, not a timing: without the wake-up it never ends.
        let woken = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await;
        assert_eq!(woken.expect("woken").unwrap(), Some(CloseCode::Draining));
    }

    #[tokio::test]
    async fn slow_consumer_is_asked_to_close() {
        let hub = Hub::new("n1".into(), 10, Arc::new(Metrics::new()));
        let a = handle(1, "u1", 1);
        let b = handle(2, "u2", 8);
        hub.register(a.clone());
        hub.register(b.clone());
        hub.join(1, "g").unwrap();
        hub.join(2, "g").unwrap();
        assert_eq!(hub.deliver(&publication("g")), 2);
        assert_eq!(hub.deliver(&publication("g")), 1);
        assert_eq!(a.close.code(), Some(CloseCode::SlowConsumer));
        assert_eq!(b.close.code(), None);
        assert_eq!(a.queue.len(), 1);
        assert_eq!(
            first_frame(&b).await.as_str(),
            r#"{"type":"message","group":"g","data":1}"#
        );
    }

    #[test]
    fn close_by_user_and_digest() {
        let hub = Hub::new("n1".into(), 10, Arc::new(Metrics::new()));
        let a = handle(1, "u1", 1);
        let b = handle(2, "u2", 1);
        hub.register(a.clone());
        hub.register(b.clone());
        assert_eq!(hub.close_user("u1", CloseCode::AuthFailed), 1);
        assert_eq!(
            hub.close_digest(
                &crate::token::Token::new("t2".into()).digest(),
                CloseCode::AuthFailed
            ),
            1
        );
        assert_eq!(a.close.code(), Some(CloseCode::AuthFailed));
        assert_eq!(b.close.code(), Some(CloseCode::AuthFailed));
    }

    #[tokio::test]
    async fn conflated_groups_keep_the_latest_per_key() {
        let rules = vec![ConflateRule {
            groups: "market.*".into(),
            key: "q.symbol".into(),
        }];
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new("n1".into(), 10, metrics.clone()).with_conflation(rules);
        let slow = Arc::new(ConnHandle {
            queue: OutboundQueue::new(4, 2),
            ..Arc::into_inner(handle(1, "u1", 1)).unwrap()
        });
        hub.register(slow.clone());
        hub.join(1, "market.all").unwrap();
        let tick = |sym: &str, p: u32| Publication {
            data: RawValue::from_string(format!(r#"{{"q":{{"symbol":"{sym}","p":{p}}}}}"#))
                .unwrap(),
            ..publication("market.all")
        };
        for p in 0..50 {
            for sym in ["AAPL", "MSFT"] {
                hub.deliver(&tick(sym, p));
            }
        }
        assert_eq!(slow.close.code(), None, "conflated, not closed");
        assert_eq!(slow.queue.len(), 2);
        assert_eq!(metrics.messages_conflated.get(), 98);
        let mut batch = Vec::new();
        slow.queue.pop_batch(&mut batch, 10).await;
        let texts: Vec<&str> = batch.iter().map(|o| o.frame.as_str()).collect();
        assert!(texts[0].contains(r#""symbol":"AAPL","p":49"#), "{texts:?}");
        assert!(texts[1].contains(r#""symbol":"MSFT","p":49"#), "{texts:?}");
    }
}
