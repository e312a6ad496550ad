//! The in-process broker's delivery queue: what is published on this node
//! waits one scheduler round, then reaches the handler as one burst.
//!
//! Why: handed over inline, each publish woke its group's sockets and each
//! wrote its one frame. Under load that was 0.52 `writev`s per delivery,
//! where the Redis broker's reader, which hands over what one socket read
//! brought, made 0.29: fred's reader is woken once per scheduler round, so
//! what was published meanwhile arrives together. One task that yields
//! once before taking the queue gathers the same way (0.27); without the
//! yield it does not (0.47). An idle node loses microseconds.
//!
//! Order: there is one queue and one task, and a burst is taken and handed
//! over under one lock, so the handler sees items in the order they were
//! pushed, whatever their groups. The broker pushes a history or snapshot
//! publication under the lock that numbers it, so offsets are pushed, and
//! delivered, in order. A control is pushed and then delivered at once by
//! its sender, with everything queued before it: it never overtakes a
//! publication, and when `control` returns it has been acted on here.
//!
//! Bounded: past [`MAX_PENDING`] queued, the publisher delivers the queue
//! itself instead of waiting for the task.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::BrokerHandler;
use crate::protocol::{Control, Publication};

/// Most items queued for the delivery task.
pub const MAX_PENDING: usize = 65_536;

/// What is handed to the handler, in push order.
pub(super) enum Item {
    Publication(Publication),
    Control(Control),
}

#[derive(Default)]
pub(super) struct Pending {
    queue: Mutex<Vec<Item>>,
    ready: tokio::sync::Notify,
    /// Held while a burst is taken and handed over: bursts never overlap,
    /// so a publisher or control sender delivering the queue itself keeps
    /// the order.
    delivering: Mutex<()>,
    /// The broker is gone: the task ends after one last delivery.
    closed: AtomicBool,
}

impl Pending {
    /// Starts the delivery task on `runtime`.
    pub(super) fn start(
        runtime: &tokio::runtime::Handle,
        handler: Arc<dyn BrokerHandler>,
    ) -> Arc<Pending> {
        let pending = Arc::new(Pending::default());
        runtime.spawn(run(pending.clone(), handler));
        pending
    }

    /// Queues `item` for the task; with the queue full, delivers it all now.
    pub(super) fn push(&self, handler: &Arc<dyn BrokerHandler>, item: Item) {
        let mut queue = lock(&self.queue);
        queue.push(item);
        match queue.len() {
            1 => self.ready.notify_one(),
            n if n > MAX_PENDING => {
                drop(queue);
                self.deliver(handler, &mut Vec::new());
            }
            _ => {}
        }
    }

    /// Queues `control` behind what is queued and delivers it all now.
    pub(super) fn control(&self, handler: &Arc<dyn BrokerHandler>, control: Control) {
        lock(&self.queue).push(Item::Control(control));
        self.deliver(handler, &mut Vec::new());
    }

    /// Hands everything queued to `handler` as one burst (`burst` is the
    /// reused storage).
    pub(super) fn deliver(&self, handler: &Arc<dyn BrokerHandler>, burst: &mut Vec<Item>) {
        let _one_at_a_time = lock(&self.delivering);
        std::mem::swap(burst, &mut *lock(&self.queue));
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
    }

    /// Ends the task (after it delivers what is queued).
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.ready.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The delivery task (see the module doc).
async fn run(pending: Arc<Pending>, handler: Arc<dyn BrokerHandler>) {
    let mut burst = Vec::new();
    while !pending.closed.load(Ordering::Acquire) {
        pending.ready.notified().await;
        // One scheduler round: what other tasks publish meanwhile joins.
        tokio::task::yield_now().await;
        pending.deliver(&handler, &mut burst);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::broker::NodeInfo;
    use crate::hub::Member;
    use serde_json::value::RawValue;

    /// Records what it is handed (group and payload, or the control's
    /// user), and how many bursts.
    #[derive(Default)]
    pub struct Recorder {
        pub got: Mutex<Vec<(String, u64)>>,
        /// History offsets, as handed over.
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

    /// Pushes `count` publications round-robin over three groups without
    /// yielding; returns what the handler got once the task ran.
    async fn push_all(count: u64) -> Arc<Recorder> {
        let recorder = Arc::new(Recorder::default());
        let handler: Arc<dyn BrokerHandler> = recorder.clone();
        let pending = Pending::start(&tokio::runtime::Handle::current(), handler.clone());
        for n in 0..count {
            let group = ["a", "b", "c"][(n % 3) as usize];
            pending.push(&handler, Item::Publication(publication(group, n)));
        }
        while recorder.got().len() < count as usize {
            tokio::task::yield_now().await;
        }
        recorder
    }

    fn in_push_order(got: &[(String, u64)]) {
        assert!(
            got.windows(2).all(|w| w[0].1 < w[1].1),
            "handed over in push order"
        );
    }

    /// What is pushed while the task waits reaches the handler as one
    /// burst, in push order.
    #[tokio::test(flavor = "current_thread")]
    async fn pushes_gather_into_one_burst_in_order() {
        let recorder = push_all(1_000).await;
        in_push_order(&recorder.got());
        assert_eq!(recorder.bursts(), 1, "one burst for all");
    }

    /// Past `MAX_PENDING` queued the publisher delivers the queue itself;
    /// nothing is reordered or lost on the way.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_is_delivered_by_the_publisher_in_order() {
        let count = MAX_PENDING as u64 + 10;
        let recorder = push_all(count).await;
        assert_eq!(recorder.got().len(), count as usize);
        in_push_order(&recorder.got());
        assert_eq!(recorder.bursts(), 2, "the publisher's and the task's");
    }

    /// A control is acted on before `control` returns, after everything
    /// pushed before it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_control_follows_what_was_queued_and_is_handled_at_once() {
        let recorder = Arc::new(Recorder::default());
        let handler: Arc<dyn BrokerHandler> = recorder.clone();
        let pending = Pending::start(&tokio::runtime::Handle::current(), handler.clone());
        pending.push(&handler, Item::Publication(publication("a", 1)));
        pending.push(&handler, Item::Publication(publication("b", 2)));
        pending.control(
            &handler,
            Control::DisconnectUser {
                user_id: "3".into(),
            },
        );
        assert_eq!(
            recorder.got(),
            [("a".into(), 1), ("b".into(), 2), ("control".into(), 3)]
        );
    }
}
