//! Occupancy on Redis: which nodes hold a member of each group, so the
//! cluster emits one `occupied` when the first node gains one and one
//! `vacated` once none has had one for `occupancy.linger`.
//!
//! Why Lua: "was the group unoccupied, and am I the one who occupies it"
//! must be one atomic step, or two nodes joining at once would both emit.
//! Each script answers whether its caller emits; the stream entry is written
//! in the same step, so the stream holds exactly one entry per transition.
//!
//! Cost: one `EVALSHA` when a group gets its first member on this node, one
//! when it loses its last; nothing per message and nothing per further
//! member. Outside Redis Cluster the same script also writes (or deletes)
//! the node's presence hash of the group, so a new user's own group costs
//! one command on join and one on leave (see `transitions`). Each node
//! also runs one sweep script per tick (the smaller of `redis.heartbeat`
//! and a quarter of the linger), which ends lingers that are due and clears
//! the entries of dead nodes.
//!
//! Keys (all under `redis.prefix`, with the hash tag `{occ}` so the scripts
//! also run on Redis Cluster, where every key of a script must be in one
//! slot — occupancy is then one shard's work, which is fine at join/leave
//! rates):
//! - `{occ}:g:<group>`: hash node → 1, the nodes holding a member;
//! - `{occ}:n:<node>`: set of the groups a node holds (to clean up after it);
//! - `{occ}:holders`: set of the nodes with such a set;
//! - `{occ}:occupied`: sorted set (all scores 0, so ordered by name) of the
//!   occupied groups, lingering ones included;
//! - `{occ}:vacating`: sorted set of lingering groups, score = due time (ms);
//! - `{occ}:<occupancy.stream>`: the event stream (`XADD MAXLEN ~`).
//!
//! Dead nodes: a node that stops beating drops out of the node registry
//! (`nodes`, see `presence`); the sweep compares the holders with the live
//! nodes and removes a dead node's entries, which starts the linger of every
//! group it alone held. A node that was only cut off comes back and finds
//! its set gone: it writes its groups again (a new `occupied` if they were
//! vacated meanwhile). A script that fails (Redis away) marks the node
//! dirty; the next tick rewrites what differs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{
    ClientLike, HashesInterface, KeysInterface, SetsInterface, SortedSetsInterface,
};
use fred::types::scripts::Script;
use fred::types::sorted_sets::ZRange;
use tokio::time::MissedTickBehavior;
use wildmatch::WildMatch;

use super::requests::{self, Request};
use super::transitions::Via;
use super::{Inner, RedisBroker, json, not_connected, unavailable};
use crate::broker::occupancy::{
    Emitter, GroupOccupancy, OccupancySettings, OccupiedGroups, literal_prefix, new_event_id,
};
use crate::broker::{BrokerError, Occupancy, OccupancyEvent, OccupancyKind};
use crate::hub::Member;

/// Groups of a dead node handled per sweep (the rest wait for the next one),
/// and lingers ended per sweep: a sweep never blocks Redis for long.
const SWEEP_BATCH: usize = 1000;
/// Most entries of the occupied set one listing reads.
const MAX_SCAN: usize = 100_000;
/// Entries read per round trip of a listing.
const SCAN_BATCH: i64 = 1000;

/// KEYS: g, occupied, vacating, n:<node>, holders, stream, and optionally
/// this node's presence hash of the group.
/// ARGV: node, group, id, ts, maxlen, stream on ("1"/"0"), then with the
/// presence hash: its expiry (ms), session, member.
/// Answers 1 when this call occupied the group.
const JOIN_LUA: &str = r#"
if KEYS[7] then
  redis.call('DEL', KEYS[7])
  redis.call('HSET', KEYS[7], ARGV[8], ARGV[9])
  redis.call('PEXPIRE', KEYS[7], ARGV[7])
end
redis.call('HSET', KEYS[1], ARGV[1], '1')
redis.call('SADD', KEYS[4], ARGV[2])
redis.call('SADD', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[2])
if redis.call('ZSCORE', KEYS[2], ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], 0, ARGV[2])
if ARGV[6] == '1' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*',
    'event', 'occupied', 'group', ARGV[2], 'ts', ARGV[4], 'id', ARGV[3])
end
return 1
"#;

/// KEYS: g, vacating, n:<node>, holders, and optionally this node's
/// presence hash of the group (deleted). ARGV: node, group, due (ms).
/// Answers 1 when this was the group's last node (its linger started).
const LEAVE_LUA: &str = r#"
if KEYS[5] then redis.call('DEL', KEYS[5]) end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
if redis.call('SCARD', KEYS[3]) == 0 then redis.call('SREM', KEYS[4], ARGV[1]) end
if redis.call('HLEN', KEYS[1]) == 0 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: vacating, occupied, holders, stream.
/// ARGV: now, linger (ms), batch, maxlen, stream on, key prefix (…{occ}:),
/// id prefix, live-node check on ("1"/"0"), then the live nodes.
/// Clears dead nodes, ends due lingers; answers [group, id, ...] vacated.
const SWEEP_LUA: &str = r#"
local now = tonumber(ARGV[1])
local batch = tonumber(ARGV[3])
local p = ARGV[6]
if ARGV[8] == '1' then
  local live = {}
  for i = 9, #ARGV do live[ARGV[i]] = true end
  for _, node in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    if not live[node] then
      local nk = p .. 'n:' .. node
      for _, group in ipairs(redis.call('SPOP', nk, batch)) do
        local gk = p .. 'g:' .. group
        redis.call('HDEL', gk, node)
        if redis.call('HLEN', gk) == 0 then
          redis.call('ZADD', KEYS[1], 'NX', now + tonumber(ARGV[2]), group)
        end
      end
      if redis.call('SCARD', nk) == 0 then redis.call('SREM', KEYS[3], node) end
    end
  end
end
local out = {}
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, batch)
for i, group in ipairs(due) do
  redis.call('ZREM', KEYS[1], group)
  if redis.call('HLEN', p .. 'g:' .. group) == 0 and redis.call('ZREM', KEYS[2], group) == 1 then
    local id = ARGV[7] .. string.format('%04x', i)
    if ARGV[5] == '1' then
      redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*',
        'event', 'vacated', 'group', group, 'ts', ARGV[1], 'id', id)
    end
    table.insert(out, group)
    table.insert(out, id)
  end
end
return out
"#;

static JOIN: LazyLock<Script> = LazyLock::new(|| Script::from_lua(JOIN_LUA));
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(LEAVE_LUA));
static SWEEP: LazyLock<Script> = LazyLock::new(|| Script::from_lua(SWEEP_LUA));

/// The Redis broker's occupancy state, set once by
/// [`RedisBroker::start_occupancy`]; until then occupancy is off.
pub(super) struct RedisOccupancy {
    settings: OccupancySettings,
    emitter: Emitter,
    /// A script failed: Redis may not match this node's groups.
    pub(super) dirty: AtomicBool,
    /// Presence rides in the join and leave scripts (see
    /// `transitions::first_joined`): false on Redis Cluster, and cleared for
    /// good by a `CROSSSLOT` answer.
    pub(super) together: AtomicBool,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Inner {
    fn occ_key(&self, rest: &str) -> String {
        format!("{}{{occ}}:{rest}", self.prefix)
    }

    fn occ_stream(&self, occ: &RedisOccupancy) -> (String, &'static str) {
        match &occ.settings.stream {
            Some(name) => (self.occ_key(name), "1"),
            None => (self.occ_key("events"), "0"),
        }
    }

    /// `presence`: also write this member as the group's only entry in
    /// this node's presence hash.
    pub(super) async fn occ_join(
        &self,
        occ: &RedisOccupancy,
        group: &str,
        presence: Option<&Member>,
        via: Via,
    ) -> Result<(), fred::error::Error> {
        self.check_connected()?;
        let event = OccupancyEvent::new(OccupancyKind::Occupied, group);
        let (stream, on) = self.occ_stream(occ);
        let mut keys = vec![
            self.occ_key(&format!("g:{group}")),
            self.occ_key("occupied"),
            self.occ_key("vacating"),
            self.occ_key(&format!("n:{}", self.node_id)),
            self.occ_key("holders"),
            stream,
        ];
        let mut args = vec![
            self.node_id.clone(),
            group.to_string(),
            event.id.clone(),
            event.ts.to_string(),
            occ.settings.stream_maxlen.to_string(),
            on.to_string(),
        ];
        if let Some(member) = presence {
            keys.push(self.presence_key(group, &self.node_id));
            args.extend([
                self.ttl_ms().to_string(),
                member.session.clone(),
                json(member),
            ]);
        }
        let emitted: i64 = self.occ_script(&JOIN, via, keys, args).await?;
        if emitted == 1 {
            occ.emitter.emit(event);
        }
        Ok(())
    }

    /// `presence`: also delete this node's presence hash of the group.
    pub(super) async fn occ_leave(
        &self,
        occ: &RedisOccupancy,
        group: &str,
        presence: bool,
        via: Via,
    ) -> Result<(), fred::error::Error> {
        self.check_connected()?;
        let due = crate::clock::unix_ms() + ms(occ.settings.linger);
        let mut keys = vec![
            self.occ_key(&format!("g:{group}")),
            self.occ_key("vacating"),
            self.occ_key(&format!("n:{}", self.node_id)),
            self.occ_key("holders"),
        ];
        if presence {
            keys.push(self.presence_key(group, &self.node_id));
        }
        let args = vec![self.node_id.clone(), group.to_string(), due.to_string()];
        let _: i64 = self.occ_script(&LEAVE, via, keys, args).await?;
        Ok(())
    }

    /// Runs a join or leave script on the connection `via` names.
    async fn occ_script(
        &self,
        script: &Script,
        via: Via,
        keys: Vec<String>,
        args: Vec<String>,
    ) -> Result<i64, fred::error::Error> {
        // Boxed: see `sub_channel`.
        match via {
            Via::Commands => Box::pin(script.evalsha_with_reload(&self.client, keys, args)).await,
            Via::Subscriber if !self.subscriber.is_connected() => Err(not_connected()),
            Via::Subscriber => {
                let (client, loader) = (&self.subscriber, &self.client);
                Box::pin(requests::evalsha_reloading(
                    script, client, loader, keys, args,
                ))
                .await
            }
        }
    }

    fn check_connected(&self) -> Result<(), fred::error::Error> {
        if self.client.is_connected() {
            Ok(())
        } else {
            Err(not_connected())
        }
    }

    /// The nodes that beat within `node_ttl`.
    async fn occ_live_nodes(&self) -> Result<Vec<String>, fred::error::Error> {
        let oldest = crate::clock::unix_ms().saturating_sub(ms(self.node_ttl));
        self.client
            .zrangebyscore(self.nodes_key(), oldest as f64, f64::INFINITY, false, None)
            .await
    }

    /// One sweep: dead nodes' entries, due lingers, and this node's own
    /// entries when they may be off.
    async fn occ_sweep(&self, occ: &RedisOccupancy) -> Result<(), fred::error::Error> {
        self.check_connected()?;
        self.occ_repair(occ).await?;
        let live = self.occ_live_nodes().await?;
        // No live node at all (not even this one) means the registry cannot
        // be read right: judge nobody dead this time.
        let check_live = live.contains(&self.node_id);
        let (stream, on) = self.occ_stream(occ);
        let now = crate::clock::unix_ms();
        let keys = vec![
            self.occ_key("vacating"),
            self.occ_key("occupied"),
            self.occ_key("holders"),
            stream,
        ];
        let mut args = vec![
            now.to_string(),
            ms(occ.settings.linger).to_string(),
            SWEEP_BATCH.to_string(),
            occ.settings.stream_maxlen.to_string(),
            on.to_string(),
            self.occ_key(""),
            new_event_id()[..24].to_string(),
            if check_live { "1" } else { "0" }.to_string(),
        ];
        if check_live {
            args.extend(live);
        }
        let vacated: Vec<String> = SWEEP.evalsha_with_reload(&self.client, keys, args).await?;
        for pair in vacated.chunks_exact(2) {
            occ.emitter.emit(OccupancyEvent {
                event: OccupancyKind::Vacated,
                group: pair[0].clone(),
                ts: now,
                id: pair[1].clone(),
            });
        }
        Ok(())
    }

    /// Rewrites this node's entries when a script failed, or when its set
    /// is gone while it holds groups (it was judged dead, or Redis lost it).
    async fn occ_repair(&self, occ: &RedisOccupancy) -> Result<(), fred::error::Error> {
        let local: HashSet<String> = self
            .slots()
            .into_iter()
            .filter(|(_, s)| s.count() > 0)
            .map(|(g, _)| g)
            .collect();
        let own = self.occ_key(&format!("n:{}", self.node_id));
        let dirty = occ.dirty.swap(false, Ordering::AcqRel);
        if !dirty {
            if local.is_empty() {
                return Ok(());
            }
            let exists: i64 = self.client.exists(&own).await?;
            if exists == 1 {
                return Ok(());
            }
        }
        let remote: HashSet<String> = match self.client.smembers(&own).await {
            Ok(remote) => remote,
            Err(e) => {
                occ.dirty.store(true, Ordering::Release);
                return Err(e);
            }
        };
        let result = async {
            for group in local.difference(&remote) {
                self.occ_locked(occ, group, true).await?;
            }
            for group in remote.difference(&local) {
                self.occ_locked(occ, group, false).await?;
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            occ.dirty.store(true, Ordering::Release);
        }
        result
    }

    /// Joins or leaves `group` for this node if its local count still says
    /// so, under the group's `op` lock when it has a slot.
    async fn occ_locked(
        &self,
        occ: &RedisOccupancy,
        group: &str,
        join: bool,
    ) -> Result<(), fred::error::Error> {
        let slot = self.existing_slot(group);
        let _state = match &slot {
            Some(slot) => Some(slot.op.lock().await),
            None => None,
        };
        let held = slot.as_ref().is_some_and(|s| s.count() > 0);
        match (join, held) {
            (true, true) => self.occ_join(occ, group, None, Via::Commands).await,
            (false, false) => self.occ_leave(occ, group, false, Via::Commands).await,
            _ => Ok(()),
        }
    }

    /// Leaves every group at shutdown, so they vacate after the linger
    /// rather than after `node_ttl` plus the linger.
    pub(super) async fn occupancy_shutdown(&self) {
        let Some(occ) = self.occupancy.get() else {
            return;
        };
        let own = self.occ_key(&format!("n:{}", self.node_id));
        let groups: Vec<String> = self.client.smembers(&own).await.unwrap_or_default();
        for group in groups {
            if self
                .occ_leave(occ, &group, false, Via::Commands)
                .await
                .is_err()
            {
                break;
            }
        }
    }
}

async fn sweep(inner: Arc<Inner>) {
    let Some(occ) = inner.occupancy.get() else {
        return;
    };
    let every = inner
        .heartbeat
        .min(occ.settings.linger / 4)
        .max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = inner.occ_sweep(occ).await {
            tracing::debug!(error = %e, "occupancy sweep failed; next tick retries");
        }
    }
}

impl RedisBroker {
    /// Turns occupancy on: from now on, first joins and last leaves are
    /// counted, and a task sweeps lingers and dead nodes. Call once, right
    /// after connecting (before the node serves).
    pub fn start_occupancy(&self, settings: OccupancySettings) {
        let occ = RedisOccupancy {
            emitter: Emitter::new(settings.queue),
            settings,
            dirty: AtomicBool::new(false),
            together: AtomicBool::new(!self.inner.sharded),
        };
        if self.inner.occupancy.set(occ).is_err() {
            return;
        }
        let task = tokio::spawn(sweep(self.inner.clone()));
        self.lock_tasks().push(task);
    }
}

#[async_trait]
impl Occupancy for RedisBroker {
    /// Reads the occupied set in name order from the pattern's literal
    /// prefix, then each group's live holders' presence hash sizes.
    async fn occupied(&self, pattern: &str, limit: usize) -> Result<OccupiedGroups, BrokerError> {
        let inner = &self.inner;
        if inner.occupancy.get().is_none() {
            return Ok(OccupiedGroups::default());
        }
        inner.check_link()?;
        let matcher = WildMatch::new(pattern);
        let prefix = literal_prefix(pattern);
        let key = inner.occ_key("occupied");
        let mut names = Vec::new();
        let mut truncated = false;
        let mut offset = 0i64;
        'scan: loop {
            let min = ZRange::from(format!("[{prefix}"));
            let max = ZRange::from(format!("[{prefix}\u{7f}"));
            let page: Vec<String> = inner
                .client
                .zrangebylex(&key, min, max, Some((offset, SCAN_BATCH)))
                .await
                .map_err(unavailable)?;
            let read = page.len();
            for name in page {
                if matcher.matches(&name) {
                    if names.len() == limit {
                        truncated = true;
                        break 'scan;
                    }
                    names.push(name);
                }
            }
            offset += read as i64;
            if (read as i64) < SCAN_BATCH {
                break;
            }
            if offset as usize >= MAX_SCAN {
                truncated = true;
                break;
            }
        }
        let live: HashSet<String> = inner
            .occ_live_nodes()
            .await
            .map_err(unavailable)?
            .into_iter()
            .collect();
        let client = &inner.client;
        let commands: Vec<Request<'_, Vec<String>>> = names
            .iter()
            .map(|name| {
                Box::pin(client.hkeys(inner.occ_key(&format!("g:{name}")))) as Request<'_, _>
            })
            .collect();
        let holders: Vec<Vec<String>> = requests::in_order(commands)
            .await
            .into_iter()
            .map(|r| r.unwrap_or_default())
            .collect();
        let mut commands: Vec<Request<'_, u64>> = Vec::new();
        let mut asked = Vec::new();
        for (i, name) in names.iter().enumerate() {
            for node in holders.get(i).into_iter().flatten() {
                if live.contains(node) {
                    commands.push(Box::pin(client.hlen(inner.presence_key(name, node))));
                    asked.push(i);
                }
            }
        }
        let mut members = vec![0u64; names.len()];
        for (i, n) in asked.into_iter().zip(requests::in_order(commands).await) {
            members[i] += n.unwrap_or(0);
        }
        let groups = names
            .into_iter()
            .zip(members)
            .map(|(group, members)| GroupOccupancy { group, members })
            .collect();
        Ok(OccupiedGroups { groups, truncated })
    }

    fn occupancy_events(&self) -> Option<tokio::sync::broadcast::Receiver<OccupancyEvent>> {
        self.inner.occupancy.get().map(|o| o.emitter.subscribe())
    }
}
