//! One connection's outbound queue: bounded, single consumer, and able to
//! conflate.
//!
//! The hub pushes (never blocking, never awaiting); the session pops in
//! batches and writes them with one flush. There is one consumer, so the
//! queue keeps its waker under the same lock as the frames: a push that
//! finds the session waiting wakes it, with no separate notifier (whose
//! registration and removal on every wake-up showed in profiles). A full queue means a slow
//! consumer, normally closed with 4009. For groups matching
//! `groups.conflate`, once the queue holds `groups.conflate_after` frames a
//! new message replaces the queued one with the same group and key (say, the
//! same `symbol`) instead of growing the queue: a slow reader of market data
//! gets the latest price of every symbol rather than a disconnect. Only when
//! nothing can be replaced does the queue fill up.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::protocol::Frame;

thread_local! {
    /// The consumers to wake when the current [`deferring_wakes`] ends.
    static DEFERRED: RefCell<Deferred> = const {
        RefCell::new(Deferred { active: false, wakers: Vec::new() })
    };
}

/// A thread's [`deferring_wakes`] state. The list keeps its storage from
/// one burst to the next (up to [`KEEP_WAKERS`]): a new one grew through
/// three allocations for a publish to ten sockets.
struct Deferred {
    active: bool,
    wakers: Vec<Waker>,
}

/// Most wakers' room kept between bursts (16 bytes each).
const KEEP_WAKERS: usize = 1024;

/// Runs `f` (synchronous: the scope is this thread's) with the wake-ups of
/// the queues it pushes into held back until it returns. A burst (a batch
/// publish, or what arrived from Redis together) then reaches each
/// connection as one batch, written with one `sendto`, instead of waking
/// it for the first frame while the rest are still being pushed. Each
/// consumer is woken once, whatever it got; nested calls join the outer one.
pub fn deferring_wakes<R>(f: impl FnOnce() -> R) -> R {
    let nested = DEFERRED.with(|d| std::mem::replace(&mut d.borrow_mut().active, true));
    if nested {
        return f();
    }
    // Wakes them even if `f` panics: no consumer is left waiting.
    struct WakeAll;
    impl Drop for WakeAll {
        fn drop(&mut self) {
            let mut wakers = DEFERRED.with(|d| {
                let mut d = d.borrow_mut();
                d.active = false;
                std::mem::take(&mut d.wakers)
            });
            for waker in wakers.drain(..) {
                waker.wake();
            }
            if wakers.capacity() <= KEEP_WAKERS {
                DEFERRED.with(|d| d.borrow_mut().wakers = wakers);
            }
        }
    }
    let _wake_all = WakeAll;
    f()
}

/// Wakes a consumer now, or at the end of the current [`deferring_wakes`].
fn wake(waker: Waker) {
    let now = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.active {
            d.wakers.push(waker);
            None
        } else {
            Some(waker)
        }
    });
    if let Some(waker) = now {
        waker.wake();
    }
}

/// What makes two messages interchangeable: same group, same key value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConflationKey {
    pub group: String,
    pub key: String,
}

/// A frame queued for one connection, with its publish time (unix
/// microseconds) when it is a group message, for the latency histogram.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub frame: Frame,
    pub published_us: Option<u64>,
    /// Set for messages of conflated groups (shared by all recipients).
    pub conflation: Option<Arc<ConflationKey>>,
}

impl Outbound {
    pub fn frame(frame: Frame) -> Outbound {
        Outbound {
            frame,
            published_us: None,
            conflation: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Replaced an older queued message with the same conflation key.
    Conflated,
    /// The queue is full: the connection is a slow consumer.
    Full,
    /// The connection is gone.
    Closed,
}

#[derive(Default)]
struct State {
    items: VecDeque<Outbound>,
    closed: bool,
    /// The consumer, when it found the queue empty.
    waiting: Option<Waker>,
}

pub struct OutboundQueue {
    state: Mutex<State>,
    capacity: usize,
    conflate_after: usize,
}

impl OutboundQueue {
    pub fn new(capacity: usize, conflate_after: usize) -> OutboundQueue {
        OutboundQueue {
            state: Mutex::default(),
            capacity,
            conflate_after: conflate_after.min(capacity),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, out: Outbound) -> Pushed {
        let mut state = self.lock();
        if state.closed {
            return Pushed::Closed;
        }
        if state.items.len() >= self.conflate_after
            && let Some(key) = &out.conflation
            && let Some(slot) = state
                .items
                .iter_mut()
                .rev()
                .find(|queued| queued.conflation.as_deref() == Some(key))
        {
            // Keep the older message's place in line, with the newer content.
            *slot = out;
            return Pushed::Conflated;
        }
        if state.items.len() >= self.capacity {
            return Pushed::Full;
        }
        state.items.push_back(out);
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            wake(waker);
        }
        Pushed::Queued
    }

    /// Moves up to `max` queued frames into `batch`, or registers the
    /// consumer to be woken by the next push. Ready(false) once the queue is
    /// closed and empty.
    pub fn poll_pop(
        &self,
        cx: &mut Context<'_>,
        batch: &mut Vec<Outbound>,
        max: usize,
    ) -> Poll<bool> {
        let mut state = self.lock();
        if !state.items.is_empty() {
            let n = state.items.len().min(max);
            batch.extend(state.items.drain(..n));
            return Poll::Ready(true);
        }
        if state.closed {
            return Poll::Ready(false);
        }
        match &mut state.waiting {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waiting => *waiting = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Waits for at least one frame and moves up to `max` into `batch`.
    /// Returns false once the queue is closed and empty.
    pub async fn pop_batch(&self, batch: &mut Vec<Outbound>, max: usize) -> bool {
        std::future::poll_fn(|cx| self.poll_pop(cx, batch, max)).await
    }

    /// Moves up to `max` queued frames into `batch` without waiting.
    pub fn take_ready(&self, batch: &mut Vec<Outbound>, max: usize) {
        let mut state = self.lock();
        let n = state.items.len().min(max);
        batch.extend(state.items.drain(..n));
    }

    /// Wakes the consumer if it waits for a frame, with nothing queued:
    /// it has something else to look at (a close request).
    pub fn wake_consumer(&self) {
        let waiting = self.lock().waiting.take();
        if let Some(waker) = waiting {
            wake(waker);
        }
    }

    /// Refuses further pushes (the connection is ending).
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        let waiting = state.waiting.take();
        drop(state);
        if let Some(waker) = waiting {
            waker.wake();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(text: &str, key: Option<&Arc<ConflationKey>>) -> Outbound {
        Outbound {
            frame: Frame::from_string(text.into()),
            published_us: None,
            conflation: key.cloned(),
        }
    }

    fn key(k: &str) -> Arc<ConflationKey> {
        Arc::new(ConflationKey {
            group: "market".into(),
            key: k.into(),
        })
    }

    #[tokio::test]
    async fn conflates_past_the_threshold_and_fills_otherwise() {
        let q = OutboundQueue::new(4, 2);
        let (a, b) = (key("AAPL"), key("MSFT"));
        assert_eq!(q.push(out("a1", Some(&a))), Pushed::Queued);
        assert_eq!(q.push(out("b1", Some(&b))), Pushed::Queued);
        // Past the threshold: same key replaces in place.
        assert_eq!(q.push(out("a2", Some(&a))), Pushed::Conflated);
        assert_eq!(q.push(out("plain", None)), Pushed::Queued);
        assert_eq!(q.push(out("b2", Some(&b))), Pushed::Conflated);
        assert_eq!(q.push(out("c1", Some(&key("GOOG")))), Pushed::Queued);
        assert_eq!(q.push(out("plain2", None)), Pushed::Full);
        let mut batch = Vec::new();
        assert!(q.pop_batch(&mut batch, 10).await);
        let texts: Vec<&str> = batch.iter().map(|o| o.frame.as_str()).collect();
        assert_eq!(texts, ["a2", "b2", "plain", "c1"]);
        q.close();
        assert_eq!(q.push(out("late", None)), Pushed::Closed);
        batch.clear();
        assert!(!q.pop_batch(&mut batch, 10).await);
    }

    #[tokio::test]
    async fn below_the_threshold_nothing_is_conflated() {
        let q = OutboundQueue::new(8, 4);
        let a = key("AAPL");
        for _ in 0..4 {
            assert_eq!(q.push(out("a", Some(&a))), Pushed::Queued);
        }
        assert_eq!(q.push(out("a", Some(&a))), Pushed::Conflated);
        assert_eq!(q.len(), 4);
    }

    /// A waker that counts its wake-ups.
    struct Count(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A waker that counts, and how many times it was woken.
    fn counting_waker() -> (Waker, impl Fn() -> usize) {
        let count = Arc::new(Count(Default::default()));
        let woken = {
            let count = count.clone();
            move || count.0.load(std::sync::atomic::Ordering::SeqCst)
        };
        (Waker::from(count), woken)
    }

    #[test]
    fn deferred_wakes_come_once_at_the_end() {
        let q = OutboundQueue::new(8, 8);
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(q.poll_pop(&mut cx, &mut batch, 8).is_pending());
        deferring_wakes(|| {
            q.push(out("a", None));
            deferring_wakes(|| q.push(out("b", None)));
            q.push(out("c", None));
            assert_eq!(woken(), 0, "nobody is woken inside the scope");
        });
        assert_eq!(woken(), 1, "one wake-up for the burst");
        assert_eq!(q.poll_pop(&mut cx, &mut batch, 8), Poll::Ready(true));
        assert_eq!(batch.len(), 3, "the whole burst in one batch");
        // Outside a scope, a push wakes at once.
        assert!(q.poll_pop(&mut cx, &mut batch, 8).is_pending());
        q.push(out("d", None));
        assert_eq!(woken(), 2);
        // A later scope defers again (the list kept from the first).
        batch.clear();
        assert_eq!(q.poll_pop(&mut cx, &mut batch, 8), Poll::Ready(true));
        assert!(q.poll_pop(&mut cx, &mut batch, 8).is_pending());
        deferring_wakes(|| {
            q.push(out("e", None));
            assert_eq!(woken(), 2);
        });
        assert_eq!(woken(), 3);
    }

    #[test]
    fn a_scope_that_panics_still_wakes_and_ends() {
        let q = OutboundQueue::new(8, 8);
        let (waker, woken) = counting_waker();
        let mut cx = Context::from_waker(&waker);
        let mut batch = Vec::new();
        assert!(q.poll_pop(&mut cx, &mut batch, 8).is_pending());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            deferring_wakes(|| {
                q.push(out("a", None));
                panic!("a handler fails mid-burst");
            })
        }));
        assert!(panicked.is_err());
        assert_eq!(woken(), 1, "the deferred wake-up still came");
        // The scope is over: a push wakes at once, not at some later end.
        assert_eq!(q.poll_pop(&mut cx, &mut batch, 8), Poll::Ready(true));
        assert!(q.poll_pop(&mut cx, &mut batch, 8).is_pending());
        q.push(out("b", None));
        assert_eq!(woken(), 2);
    }

    #[tokio::test]
    async fn pop_waits_for_a_push() {
        let q = Arc::new(OutboundQueue::new(4, 4));
        let q2 = q.clone();
        let popper = tokio::spawn(async move {
            let mut batch = Vec::new();
            q2.pop_batch(&mut batch, 4).await;
            batch.len()
        });
        tokio::task::yield_now().await;
        q.push(out("x", None));
        assert_eq!(popper.await.unwrap(), 1);
    }
}
