//! Groups, per-connection queues and the counters `/metrics` shows.
//!
//! This is the floor's whole delivery path: a publish takes a snapshot of
//! the group's member list (an `Arc` clone under one lock, copy-on-write on
//! subscribe), then pushes the same pre-encoded frame (a [`Bytes`], so one
//! reference count each) onto every member's queue and wakes its writer
//! only when that queue was empty. The writer (`ws.rs`) takes everything
//! queued at each wake-up and writes it with one vectored write.
//!
//! Queues are bounded (`--outbound-queue`, 1024 frames like wsgate's
//! `limits.outbound_queue`): a frame that finds the queue full closes the
//! connection with 4009 `slow consumer`, as wsgate does; the queued frames
//! are discarded and counted as dropped. Nothing is dropped silently.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::frame;

/// Counters and gauges, read by `/metrics` under wsgate's names.
#[derive(Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub published: AtomicU64,
    pub dropped: AtomicU64,
    pub authenticated: AtomicI64,
    pub connections: AtomicI64,
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// A close frame is queued (or the socket is gone): nothing more is
    /// accepted, and the writer ends once the queue is empty.
    closing: bool,
}

/// One WebSocket connection's outbound side.
pub struct Conn {
    pub id: u64,
    queue: Mutex<Queue>,
    wake: Notify,
    cap: usize,
}

/// What became of a pushed frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The connection is closing; the frame was not queued.
    Closed,
    /// The queue was full: the connection is now closing with 4009; this
    /// many frames were discarded (the queued ones and this one).
    Overflow(u64),
}

impl Conn {
    pub fn new(id: u64, cap: usize) -> Conn {
        Conn {
            id,
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            cap: cap.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a frame (data or reply).
    pub fn push(&self, f: Bytes) -> Pushed {
        let mut q = self.lock();
        if q.closing {
            return Pushed::Closed;
        }
        if q.frames.len() >= self.cap {
            let lost = q.frames.len() as u64 + 1;
            q.frames.clear();
            q.frames.push_back(frame::close(4009, "slow consumer"));
            q.closing = true;
            drop(q);
            self.wake.notify_one();
            return Pushed::Overflow(lost);
        }
        let was_empty = q.frames.is_empty();
        q.frames.push_back(f);
        drop(q);
        if was_empty {
            self.wake.notify_one();
        }
        Pushed::Queued
    }

    /// Queues a close frame (if none is queued yet); nothing is accepted after it.
    pub fn close(&self, code: u16, reason: &str) {
        let mut q = self.lock();
        if q.closing {
            return;
        }
        q.frames.push_back(frame::close(code, reason));
        q.closing = true;
        drop(q);
        self.wake.notify_one();
    }

    /// The socket is gone: the writer stops after what is queued.
    pub fn shut(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }

    #[cfg(test)]
    pub fn is_closing(&self) -> bool {
        self.lock().closing
    }

    /// Waits until frames are queued, then swaps them into `out` (which
    /// must be empty). `false`: closing and nothing left, the writer ends.
    pub async fn take(&self, out: &mut VecDeque<Bytes>) -> bool {
        loop {
            {
                let mut q = self.lock();
                if !q.frames.is_empty() {
                    std::mem::swap(&mut q.frames, out);
                    return true;
                }
                if q.closing {
                    return false;
                }
            }
            self.wake.notified().await;
        }
    }
}

type Members = Arc<Vec<Arc<Conn>>>;

pub struct Hub {
    groups: Mutex<HashMap<String, Members>>,
    pub stats: Stats,
    pub queue_cap: usize,
    next_id: AtomicU64,
}

impl Hub {
    pub fn new(queue_cap: usize) -> Hub {
        Hub {
            groups: Mutex::new(HashMap::new()),
            stats: Stats::default(),
            queue_cap,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn new_conn(&self) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Arc::new(Conn::new(id, self.queue_cap))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Members>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `conn` to `group` (no-op if it is in it already).
    pub fn subscribe(&self, group: &str, conn: &Arc<Conn>) {
        let mut g = self.lock();
        let members = g.entry(group.to_string()).or_default();
        if members.iter().any(|c| c.id == conn.id) {
            return;
        }
        Arc::make_mut(members).push(conn.clone());
    }

    pub fn unsubscribe(&self, group: &str, id: u64) {
        let mut g = self.lock();
        let Some(members) = g.get_mut(group) else {
            return;
        };
        if let Some(i) = members.iter().position(|c| c.id == id) {
            Arc::make_mut(members).swap_remove(i);
        }
        if members.is_empty() {
            g.remove(group);
        }
    }

    /// Pushes one pre-encoded message frame to every member of `group`;
    /// returns how many were queued.
    pub fn publish(&self, group: &str, f: &Bytes) -> u64 {
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        let Some(members) = self.lock().get(group).cloned() else {
            return 0;
        };
        let (mut queued, mut lost) = (0u64, 0u64);
        for c in members.iter() {
            match c.push(f.clone()) {
                Pushed::Queued => queued += 1,
                Pushed::Closed => {}
                Pushed::Overflow(n) => lost += n,
            }
        }
        self.stats.delivered.fetch_add(queued, Ordering::Relaxed);
        if lost > 0 {
            self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        queued
    }

    pub fn group_count(&self) -> usize {
        self.lock().len()
    }

    /// Prometheus text exposition of the series wsgate-bench reads.
    pub fn metrics_text(&self) -> String {
        let s = &self.stats;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "# TYPE wsgate_messages_delivered_total counter\nwsgate_messages_delivered_total {}\n\
             # TYPE wsgate_messages_published_total counter\nwsgate_messages_published_total {}\n\
             # TYPE wsgate_messages_dropped_total counter\nwsgate_messages_dropped_total {}\n\
             # TYPE wsgate_connections gauge\nwsgate_connections{{state=\"authenticated\"}} {}\n\
             wsgate_connections{{state=\"open\"}} {}\n\
             # TYPE wsgate_groups gauge\nwsgate_groups {}\n",
            ld(&s.delivered),
            ld(&s.published),
            ld(&s.dropped),
            s.authenticated.load(Ordering::Relaxed),
            s.connections.load(Ordering::Relaxed),
            self.group_count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_frame_many_queues_and_overflow() {
        let hub = Hub::new(2);
        let (a, b) = (hub.new_conn(), hub.new_conn());
        hub.subscribe("g", &a);
        hub.subscribe("g", &a);
        hub.subscribe("g", &b);
        let f = frame::text(b"m");
        assert_eq!(hub.publish("g", &f), 2);
        let mut out = VecDeque::new();
        assert!(a.take(&mut out).await);
        assert_eq!(out.len(), 1);
        // The same bytes, not a copy.
        assert_eq!(out[0].as_ptr(), f.as_ptr());
        out.clear();
        // b has 1 queued; 1 more fits, the next overflows.
        assert_eq!(hub.publish("g", &f), 2);
        assert_eq!(hub.publish("g", &f), 1);
        assert!(b.is_closing());
        assert_eq!(hub.stats.dropped.load(Ordering::Relaxed), 3);
        assert!(b.take(&mut out).await);
        assert_eq!(frame::close_code(&out[0][2..]), 4009);
        out.clear();
        assert!(!b.take(&mut out).await);
        hub.unsubscribe("g", a.id);
        hub.unsubscribe("g", b.id);
        assert_eq!(hub.group_count(), 0);
        assert!(
            hub.metrics_text()
                .contains("wsgate_messages_delivered_total 5\n")
        );
    }
}
