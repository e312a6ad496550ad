//! The in-process broker's delivery queue: what is published on this node
//! during one scheduler round reaches the handler as one burst.
//!
//! Why: handed over inline, each publish woke its group's sockets and each
//! wrote its one frame. Under load that was 0.52 `writev`s per delivery,
//! where the Redis broker's reader, which hands over what one socket read
//! brought, made 0.29: fred's reader is woken once per scheduler round, so
//! what was published meanwhile arrives together. A publisher that queues
//! its publications, yields once (tokio runs a yielded task after the next
//! I/O driver poll, so the other requests of that round publish meanwhile)
//! and then delivers everything queued gathers the same way (0.27 with a
//! delivery task doing this; a task without the yield made 0.47).
//!
//! `publish` still returns only once its publications are handed over, so
//! a publisher is held back by delivery as before: a delivery task that let
//! `publish` return at once let a bursty publisher overrun the outbound
//! queues of sockets that were reading (tests/faults/slow_consumer.rs,
//! under load). A publish dropped while it waits delivers on drop.
//!
//! Order: there is one queue, and a burst is taken and handed over under one
//! lock, so the handler sees items in push order, whatever their groups. The
//! broker pushes a history or snapshot publication under the lock that
//! numbers it, so offsets are pushed, and delivered, in order. A control is
//! pushed and delivered at once, with everything queued before it: it never
//! overtakes a publication, and is acted on before `control` returns.
//!
//! Bounded: past [`MAX_PENDING`] queued, the publisher delivers at once.

use std::sync::{Arc, Mutex, MutexGuard};

use super::BrokerHandler;
use crate::protocol::{Control, Publication};

/// Most items queued before a publisher delivers without waiting.
pub const MAX_PENDING: usize = 65_536;

/// What is handed to the handler, in push order.
pub(super) enum Item {
    Publication(Publication),
    Control(Control),
}

#[derive(Default)]
pub(super) struct Pending {
    queue: Mutex<Vec<Item>>,
    /// Held while a burst is taken and handed over: bursts never overlap,
    /// and whoever finds the queue emptied by another waits here until
    /// that burst is handed over. It holds the burst: the queue and this
    /// swap storage, so neither is allocated anew for each burst.
    delivering: Mutex<Vec<Item>>,
}

/// Most items' room a burst keeps for the next one.
const KEEP_ROOM: usize = 256;

impl Pending {
    /// Queues `item`; whether the queue is full (deliver now, no waiting).
    pub(super) fn push(&self, item: Item) -> bool {
        let mut queue = lock(&self.queue);
        queue.push(item);
        queue.len() >= MAX_PENDING
    }

    /// Waits one scheduler round, then hands everything queued to the
    /// handler; when this returns (or the future is dropped) what was
    /// pushed before the call is handed over.
    pub(super) async fn deliver_after_a_round(&self, handler: &Arc<dyn BrokerHandler>) {
        let deliver = DeliverOnDrop {
            pending: self,
            handler,
        };
        tokio::task::yield_now().await;
        drop(deliver);
    }

    /// Queues `control` behind what is queued and delivers it all now.
    pub(super) fn control(&self, handler: &Arc<dyn BrokerHandler>, control: Control) {
        lock(&self.queue).push(Item::Control(control));
        self.deliver(handler);
    }

    /// Hands everything queued to `handler` as one burst.
    pub(super) fn deliver(&self, handler: &Arc<dyn BrokerHandler>) {
        let mut burst = lock(&self.delivering);
        std::mem::swap(&mut *lock(&self.queue), &mut *burst);
        if burst.is_empty() {
            return;
        }
        handler.in_burst(&mut || {
            for item in burst.drain(..) {
                match item {
                    Item::Publication(p) => handler.on_publication(p),
                    Item::Control(c) => handler.on_control(c),
                }
            }
        });
        if burst.capacity() > KEEP_ROOM {
            *burst = Vec::new();
        }
    }
}

/// Delivers when dropped: after the round, or when the waiting publish is
/// cancelled, so nothing stays queued without a publisher to deliver it.
struct DeliverOnDrop<'a> {
    pending: &'a Pending,
    handler: &'a Arc<dyn BrokerHandler>,
}

impl Drop for DeliverOnDrop<'_> {
    fn drop(&mut self) {
        self.pending.deliver(self.handler);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::broker::NodeInfo;
    use crate::hub::Member;
    use serde_json::value::RawValue;

    /// Records what it is handed (group and payload, or the control's
    /// user), the history offsets, and how many bursts.
    #[derive(Default)]
    pub struct Recorder {
        pub got: Mutex<Vec<(String, u64)>>,
        pub offsets: Mutex<Vec<u64>>,
        pub bursts: AtomicUsize,
    }

    impl Recorder {
        pub fn got(&self) -> Vec<(String, u64)> {
            lock(&self.got).clone()
        }

        pub fn offsets(&self) -> Vec<u64> {
            lock(&self.offsets).clone()
        }

        pub fn bursts(&self) -> usize {
            self.bursts.load(Ordering::SeqCst)
        }
    }

    impl BrokerHandler for Recorder {
        fn on_publication(&self, p: Publication) {
            let n = p.data.get().parse().unwrap();
            if let Some(position) = &p.position {
                lock(&self.offsets).push(position.offset);
            }
            lock(&self.got).push((p.group, n));
        }
        fn in_burst(&self, deliver: &mut dyn FnMut()) {
            self.bursts.fetch_add(1, Ordering::SeqCst);
            deliver()
        }
        fn on_control(&self, c: Control) {
            if let Control::DisconnectUser { user_id } = c {
                lock(&self.got).push(("control".into(), user_id.parse().unwrap()));
            }
        }
        fn local_presence(&self, _: &str) -> Vec<Member> {
            Vec::new()
        }
        fn local_node(&self) -> NodeInfo {
            NodeInfo {
                node: "n".into(),
                connections: 0,
                last_seen_ms: 0,
            }
        }
    }

    pub fn publication(group: &str, n: u64) -> Publication {
        Publication {
            group: group.into(),
            data: RawValue::from_string(n.to_string()).unwrap(),
            position: None,
            ts: None,
            trace: None,
            seq: None,
        }
    }

    fn recorder() -> (Arc<Recorder>, Arc<dyn BrokerHandler>) {
        let recorder = Arc::new(Recorder::default());
        let handler: Arc<dyn BrokerHandler> = recorder.clone();
        (recorder, handler)
    }

    /// A control is acted on before `control` returns, after everything
    /// pushed before it.
    #[test]
    fn a_control_follows_what_was_queued_and_is_handled_at_once() {
        let (recorder, handler) = recorder();
        let pending = Pending::default();
        pending.push(Item::Publication(publication("a", 1)));
        pending.push(Item::Publication(publication("b", 2)));
        let user_id = "3".to_string();
        pending.control(&handler, Control::DisconnectUser { user_id });
        assert_eq!(
            recorder.got(),
            [("a".into(), 1), ("b".into(), 2), ("control".into(), 3)]
        );
        assert_eq!(recorder.bursts(), 1);
    }

    /// A publish cancelled while it waits still delivers what it queued.
    #[tokio::test(flavor = "current_thread")]
    async fn a_cancelled_wait_delivers_on_drop() {
        let (recorder, handler) = recorder();
        let pending = Pending::default();
        pending.push(Item::Publication(publication("a", 1)));
        let mut wait = Box::pin(pending.deliver_after_a_round(&handler));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        assert!(recorder.got().is_empty(), "not before the round");
        drop(wait);
        assert_eq!(recorder.got(), [("a".into(), 1)]);
    }

    /// `push` says when the queue is full.
    #[test]
    fn the_queue_is_full_at_max_pending() {
        let pending = Pending::default();
        for n in 1..MAX_PENDING as u64 {
            assert!(!pending.push(Item::Publication(publication("a", n))));
        }
        assert!(pending.push(Item::Publication(publication("a", 0))));
    }
}
