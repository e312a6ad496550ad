//! The in-process broker: single-node mode, no Redis. A publish is numbered
//! (history, snapshot) and queued, and after one scheduler round everything
//! queued reaches this node's handler as one burst ([`super::memory_queue`]
//! says why); `publish` returns once its publications are handed over. The
//! order is the publish order, across groups too. A control command is
//! acted on before `control` returns, after every publication queued before
//! it.
//!
//! History for single-node mode is kept here too: per group, the last
//! `history.size` publications with their offsets, dropped `history.ttl`
//! after the group's last publication; the epoch is new per process (and
//! when a group's history expired), so a restart tells recovering clients
//! `recovered: false` instead of serving offsets that started again.
//!
//! So is the latest publication of `groups.snapshot` groups: a moka cache
//! bounded in bytes ([`MAX_MEMORY_SNAPSHOT_BYTES`]) and in time
//! (`groups.snapshot_ttl`).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use async_trait::async_trait;

use super::memory_queue::{Item, Pending};
use super::occupancy::{LocalOccupancy, OccupancySettings};
use super::{
    Broker, BrokerError, BrokerHandler, ControlSender, History, HistoryPolicy,
    MAX_MEMORY_SNAPSHOT_BYTES, NodeInfo, NodeRegistry, Occupancy, OccupancyEvent, OccupiedGroups,
    Presence, Recovery, SnapshotPolicy, Snapshots, UNPUBLISHED_EPOCH, new_epoch,
};
use crate::hub::Member;
use crate::protocol::{Control, Position, Publication};

pub struct MemoryBroker {
    handler: OnceLock<Arc<dyn BrokerHandler>>,
    policy: HistoryPolicy,
    /// History per group. Held while a history publication is handed to the
    /// handler, so offsets are delivered in order whoever publishes.
    history: Mutex<Histories>,
    /// The epoch of groups never published, new per process: a position
    /// taken before a restart does not recover what the new process keeps.
    unpublished: String,
    /// Member counts per group, for occupancy events (`None`: off).
    occupancy: Option<LocalOccupancy>,
    snapshots: SnapshotPolicy,
    /// The latest publication per `groups.snapshot` group, with its `seq`.
    latest: moka::sync::Cache<String, Publication>,
    /// Held while a snapshot publication is numbered, kept and handed to
    /// the handler, so sequences are delivered in order whoever publishes.
    latest_order: Mutex<()>,
    /// What is published, until it is handed to the handler.
    pending: Pending,
}

fn latest_cache(policy: &SnapshotPolicy) -> moka::sync::Cache<String, Publication> {
    moka::sync::Cache::builder()
        .max_capacity(MAX_MEMORY_SNAPSHOT_BYTES)
        .weigher(|group: &String, p: &Publication| {
            u32::try_from(group.len() + p.data.get().len() + 64).unwrap_or(u32::MAX)
        })
        .time_to_live(policy.ttl)
        .build()
}

#[derive(Default)]
struct Histories {
    groups: HashMap<String, GroupHistory>,
    /// Publications since the last sweep of expired groups.
    since_sweep: usize,
}

struct GroupHistory {
    epoch: String,
    offset: u64,
    entries: VecDeque<Publication>,
    last_publish: Instant,
}

impl GroupHistory {
    fn new() -> GroupHistory {
        GroupHistory {
            epoch: new_epoch(),
            offset: 0,
            entries: VecDeque::new(),
            last_publish: Instant::now(),
        }
    }

    fn position(&self) -> Position {
        Position {
            offset: self.offset,
            epoch: self.epoch.clone(),
        }
    }
}

/// How many publications between sweeps of expired groups.
const SWEEP_EVERY: usize = 4096;

impl Default for MemoryBroker {
    fn default() -> Self {
        MemoryBroker::new()
    }
}

impl MemoryBroker {
    pub fn new() -> MemoryBroker {
        MemoryBroker::with_history(HistoryPolicy::off())
    }

    pub fn with_history(policy: HistoryPolicy) -> MemoryBroker {
        MemoryBroker {
            handler: OnceLock::new(),
            policy,
            history: Mutex::new(Histories::default()),
            unpublished: format!("{UNPUBLISHED_EPOCH}{}", new_epoch()),
            occupancy: None,
            latest: latest_cache(&SnapshotPolicy::off()),
            snapshots: SnapshotPolicy::off(),
            latest_order: Mutex::new(()),
            pending: Pending::default(),
        }
    }

    /// Keeps the latest publication of the groups of `policy`.
    pub fn with_snapshots(mut self, policy: SnapshotPolicy) -> MemoryBroker {
        self.latest = latest_cache(&policy);
        self.snapshots = policy;
        self
    }

    /// Numbers `p` after its group's kept latest, keeps it and hands it to
    /// `deliver`, all under one lock (see `latest_order`).
    fn publish_snapshot(&self, deliver: &mut dyn FnMut(Publication), mut p: Publication) {
        let _order = self.latest_order.lock().unwrap_or_else(|e| e.into_inner());
        let seq = match self.latest.get(&p.group).and_then(|prev| prev.seq) {
            Some(prev) => Position {
                offset: prev.offset + 1,
                epoch: prev.epoch,
            },
            None => Position {
                offset: 1,
                epoch: new_epoch(),
            },
        };
        p.seq = Some(seq);
        self.latest.insert(p.group.clone(), p.clone());
        deliver(p);
    }

    /// Tracks occupancy (events and the groups listing).
    pub fn with_occupancy(mut self, settings: &OccupancySettings) -> MemoryBroker {
        self.occupancy = Some(LocalOccupancy::new(settings));
        self
    }

    fn handler(&self) -> Result<&Arc<dyn BrokerHandler>, BrokerError> {
        self.handler
            .get()
            .ok_or_else(|| BrokerError::Unavailable("broker not attached".into()))
    }

    /// Groups whose history this broker holds (published within
    /// `history.meta_ttl`; never one that was only read).
    pub fn history_groups(&self) -> usize {
        self.histories().groups.len()
    }

    fn histories(&self) -> MutexGuard<'_, Histories> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The group's live history: expired entries and epochs are dropped
    /// first, as Redis would have expired them.
    fn group<'a>(&self, histories: &'a mut Histories, group: &str) -> &'a mut GroupHistory {
        let now = Instant::now();
        let policy = &self.policy;
        let h = histories
            .groups
            .entry(group.to_string())
            .or_insert_with(GroupHistory::new);
        let idle = now.duration_since(h.last_publish);
        if idle > policy.meta_ttl {
            *h = GroupHistory::new();
        } else if idle > policy.ttl {
            h.entries.clear();
        }
        h
    }

    fn sweep(&self, histories: &mut Histories) {
        histories.since_sweep += 1;
        if histories.since_sweep < SWEEP_EVERY {
            return;
        }
        histories.since_sweep = 0;
        let meta_ttl = self.policy.meta_ttl;
        histories
            .groups
            .retain(|_, h| h.last_publish.elapsed() <= meta_ttl);
    }

    /// Numbers what keeps history or a snapshot and hands every publication
    /// to `deliver` in order; a numbered one under the lock that numbered
    /// it, so the next number is handed over after it. Returns the history
    /// positions.
    fn number(
        &self,
        publications: Vec<Publication>,
        deliver: &mut dyn FnMut(Publication),
    ) -> Vec<Option<Position>> {
        let mut positions = Vec::with_capacity(publications.len());
        for mut p in publications {
            if !self.policy.applies(&p.group) {
                if self.snapshots.applies(&p.group) {
                    self.publish_snapshot(deliver, p);
                } else {
                    deliver(p);
                }
                positions.push(None);
                continue;
            }
            let mut histories = self.histories();
            self.sweep(&mut histories);
            let size = self.policy.size;
            let h = self.group(&mut histories, &p.group);
            h.offset += 1;
            h.last_publish = Instant::now();
            let position = h.position();
            p.position = Some(position.clone());
            h.entries.push_back(p.clone());
            while h.entries.len() > size {
                h.entries.pop_front();
            }
            deliver(p);
            drop(histories);
            positions.push(Some(position));
        }
        positions
    }
}

#[async_trait]
impl ControlSender for MemoryBroker {
    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        self.pending.control(self.handler()?, control);
        Ok(())
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Option<Position>>, BrokerError> {
        let handler = self.handler()?;
        let mut full = false;
        let positions = self.number(publications, &mut |p| {
            full |= self.pending.push(Item::Publication(p));
        });
        if full {
            self.pending.deliver(handler);
        } else {
            self.pending.deliver_after_a_round(handler).await;
        }
        Ok(positions)
    }

    async fn subscribe(&self, group: &str, _member: &Member) -> Result<(), BrokerError> {
        // Every publication reaches the handler; the hub filters by group,
        // and presence is read from the hub. Only occupancy counts here.
        if let Some(occupancy) = &self.occupancy {
            occupancy.join(group);
        }
        Ok(())
    }

    async fn unsubscribe(&self, group: &str, _session: &str) -> Result<(), BrokerError> {
        if let Some(occupancy) = &self.occupancy {
            occupancy.leave(group);
        }
        Ok(())
    }

    fn is_up(&self) -> bool {
        true
    }

    fn attach(&self, handler: Arc<dyn BrokerHandler>) {
        let _ = self.handler.set(handler);
    }

    async fn shutdown(&self) {
        // Nothing to leave or close: this process is the whole cluster, and
        // every publish delivered what it queued before it returned.
    }
}

#[async_trait]
impl History for MemoryBroker {
    async fn history(
        &self,
        group: &str,
        since: Option<&Position>,
    ) -> Result<Recovery, BrokerError> {
        let mut histories = self.histories();
        // Only publishing creates a group's history: reading one that has
        // none (or whose state expired) stores nothing.
        let published = histories
            .groups
            .get(group)
            .is_some_and(|h| h.last_publish.elapsed() <= self.policy.meta_ttl);
        if !published {
            let position = Position {
                offset: 0,
                epoch: self.unpublished.clone(),
            };
            return Ok(Recovery::decide(
                since,
                position,
                Vec::new(),
                &self.unpublished,
            ));
        }
        let h = self.group(&mut histories, group);
        let after = match since {
            Some(since) if since.epoch == h.epoch || since.epoch == self.unpublished => h
                .entries
                .iter()
                .filter(|p| p.position.as_ref().is_some_and(|q| q.offset > since.offset))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        Ok(Recovery::decide(
            since,
            h.position(),
            after,
            &self.unpublished,
        ))
    }
}

#[async_trait]
impl Snapshots for MemoryBroker {
    fn keeps_latest(&self, group: &str) -> bool {
        self.snapshots.applies(group)
    }

    async fn latest(&self, group: &str) -> Result<Option<Publication>, BrokerError> {
        if !self.snapshots.applies(group) {
            return Ok(None);
        }
        Ok(self.latest.get(group))
    }
}

/// Presence and the node list are this node's own: there is no other.
#[async_trait]
impl Presence for MemoryBroker {
    async fn presence(&self, group: &str) -> Result<Vec<Member>, BrokerError> {
        Ok(self.handler()?.local_presence(group))
    }
}

#[async_trait]
impl NodeRegistry for MemoryBroker {
    async fn nodes(&self) -> Result<Vec<NodeInfo>, BrokerError> {
        Ok(vec![self.handler()?.local_node()])
    }
}

#[async_trait]
impl Occupancy for MemoryBroker {
    async fn occupied(&self, pattern: &str, limit: usize) -> Result<OccupiedGroups, BrokerError> {
        Ok(self
            .occupancy
            .as_ref()
            .map(|o| o.list(pattern, limit))
            .unwrap_or_default())
    }

    fn occupancy_events(&self) -> Option<tokio::sync::broadcast::Receiver<OccupancyEvent>> {
        self.occupancy.as_ref().map(|o| o.emitter().subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::super::memory_queue::tests::{Recorder, publication};
    use super::*;
    use crate::config::{GroupsConfig, HistoryConfig};

    /// A broker where `hist.*` keeps history and `snap.*` a snapshot,
    /// attached to a recorder inside the runtime (so with the queue).
    fn broker() -> (MemoryBroker, Arc<Recorder>) {
        let broker = MemoryBroker::with_history(HistoryPolicy::new(&HistoryConfig {
            groups: vec!["hist.*".into()],
            ..HistoryConfig::default()
        }))
        .with_snapshots(SnapshotPolicy::new(&GroupsConfig {
            snapshot: vec!["snap.*".into()],
            ..GroupsConfig::default()
        }));
        let recorder = Arc::new(Recorder::default());
        broker.attach(recorder.clone());
        (broker, recorder)
    }

    /// A batch mixing plain, history and snapshot groups reaches the
    /// handler in publish order (queuing only plain groups broke this), and
    /// before `publish` returns.
    #[tokio::test(flavor = "current_thread")]
    async fn a_mixed_batch_is_handed_over_in_publish_order() {
        let (broker, recorder) = broker();
        let batch = [("a", 1), ("hist.x", 2), ("a", 3), ("snap.y", 4), ("a", 5)];
        let positions = broker
            .publish(batch.iter().map(|(g, n)| publication(g, *n)).collect())
            .await
            .unwrap();
        let offsets: Vec<_> = positions
            .iter()
            .map(|p| p.as_ref().map(|p| p.offset))
            .collect();
        assert_eq!(offsets, [None, Some(1), None, None, None]);
        let want: Vec<_> = batch.iter().map(|(g, n)| (g.to_string(), *n)).collect();
        assert_eq!(recorder.got(), want);
    }

    /// What many publishers publish during one scheduler round reaches the
    /// handler as one burst, each publish returning once it is handed over.
    #[tokio::test(flavor = "current_thread")]
    async fn one_round_of_publishers_is_one_burst() {
        let (broker, recorder) = broker();
        let broker = Arc::new(broker);
        let publishers: Vec<_> = (0..100)
            .map(|n| {
                let (broker, recorder) = (broker.clone(), recorder.clone());
                tokio::spawn(async move {
                    broker.publish(vec![publication("a", n)]).await.unwrap();
                    assert!(recorder.got().contains(&("a".into(), n)), "handed over");
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        assert_eq!(recorder.got().len(), 100);
        assert_eq!(recorder.bursts(), 1, "one burst for the round");
    }

    /// Publishers racing on a history group: offsets reach the handler in
    /// order, each once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_publishers_hand_over_offsets_in_order() {
        let (broker, recorder) = broker();
        let broker = Arc::new(broker);
        let publishers: Vec<_> = (0..4)
            .map(|_| {
                let broker = broker.clone();
                tokio::spawn(async move {
                    for n in 0..500 {
                        broker
                            .publish(vec![publication("hist.x", n)])
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for p in publishers {
            p.await.unwrap();
        }
        assert_eq!(recorder.offsets(), (1..=2_000).collect::<Vec<u64>>());
    }
}
