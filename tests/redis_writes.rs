//! How many reads Redis makes for what the broker sends together, and how
//! many commands a group's first join and last leave on a node cost.
//!
//! fred 10.1 writes a pipeline's commands one `writev` each (it flushes
//! whenever its own queue is empty, and a pipeline is one entry in it), so
//! Redis woke up for nearly every command of a heartbeat that refreshes one
//! presence hash per local group: 10,000 idle users were 10,000 writes and
//! ~20,000 Redis reads every 10 s. The broker now queues such commands as
//! separate requests, which fred writes back to back with one flush.
//!
//! Counts, not timings: the server's `total_reads_processed` (one per read
//! event) against the `PEXPIRE`s it ran, on a throwaway `redis-server` that
//! only this test talks to.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis_servers::{
    Monitor, RedisCluster, RedisProc, command_calls, info_stat, redis_cli,
};
use tokio::sync::broadcast::Receiver;
use wsgate::broker::occupancy::OccupancySettings;
use wsgate::broker::redis::RedisBroker;
use wsgate::broker::{Broker, Occupancy, OccupancyEvent, OccupancyKind, Presence};
use wsgate::config::RedisConfig;
use wsgate::hub::Member;
use wsgate::metrics::Metrics;

const GROUPS: usize = 1_000;
const BEATS: u64 = 3;
const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "wsgate_t_writes:";

/// Node `a` on the throwaway server.
async fn broker_on(redis: &RedisProc, heartbeat: Duration, node_ttl: Duration) -> Arc<RedisBroker> {
    let cfg = RedisConfig {
        url: Some(redis.url()),
        prefix: PREFIX.into(),
        heartbeat,
        node_ttl,
        command_timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    RedisBroker::connect(&cfg, "a".into(), Arc::new(Metrics::new()))
        .await
        .expect("connect to the throwaway Redis")
}

/// Node `a` with occupancy on and its events, without a heartbeat or a
/// sweep within a test (the first ones run at start) and with a linger no
/// test waits out.
async fn broker_with_occupancy(
    redis: &RedisProc,
    queue: usize,
) -> (Arc<RedisBroker>, Receiver<OccupancyEvent>) {
    let broker = broker_on(redis, Duration::from_secs(60), Duration::from_secs(180)).await;
    broker.start_occupancy(OccupancySettings {
        linger: Duration::from_secs(120),
        stream: Some("events".into()),
        stream_maxlen: 1000,
        queue,
    });
    let events = broker.occupancy_events().expect("occupancy is on");
    (broker, events)
}

/// User `i`'s session, and its own group.
fn user(i: usize) -> Member {
    Member {
        user_id: format!("user-{i}"),
        session: format!("s{i}"),
        node: "a".into(),
    }
}
fn user_group(i: usize) -> String {
    format!("user.{i}")
}

/// User `i` is in its group's presence and the group's `occupied` event is
/// the next one.
async fn assert_joined(broker: &RedisBroker, events: &mut Receiver<OccupancyEvent>, i: usize) {
    let group = user_group(i);
    assert_eq!(broker.presence(&group).await.unwrap(), [user(i)], "{group}");
    let event = events.try_recv().expect("an occupied event per group");
    assert_eq!(
        (event.event, event.group.as_str()),
        (OccupancyKind::Occupied, group.as_str())
    );
}

#[tokio::test]
async fn a_heartbeat_refreshes_many_groups_in_few_writes() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let broker = broker_on(&redis, Duration::from_millis(100), Duration::from_secs(5)).await;
    for i in 0..GROUPS {
        let member = Member {
            user_id: format!("u{i}"),
            session: format!("s{i}"),
            node: "a".into(),
        };
        broker.subscribe(&format!("g{i}"), &member).await.unwrap();
    }

    redis_cli(redis.port, &["config", "resetstat"]);
    let started = Instant::now();
    let pexpires = loop {
        let calls = command_calls(&redis_cli(redis.port, &["info", "commandstats"]), "pexpire");
        if calls >= BEATS * GROUPS as u64 {
            break calls;
        }
        assert!(
            started.elapsed() < WAIT,
            "only {calls} PEXPIREs within {WAIT:?}: the heartbeat did not refresh {GROUPS} groups {BEATS} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let reads = info_stat(redis.port, "total_reads_processed");
    eprintln!("{pexpires} PEXPIREs in {reads} reads by Redis");
    // About one read per four commands before (778 for 3,003 here, Redis
    // catching a few writes at once); a few per heartbeat now (fred may
    // split a chunk of 512 where its writer catches up with the queue, plus
    // the registration and a subscriber PING: 53 for 3,003 here). The bound
    // sits about 4x from both.
    assert!(
        reads * 15 < pexpires,
        "{reads} Redis reads for {pexpires} PEXPIREs: the heartbeat's commands went out one write each"
    );
    broker.shutdown().await;
}

/// A new user's own group is a first join and, when the user leaves, a
/// last leave. Each used to be its (un)subscription plus the presence hash
/// (DEL, HSET, PEXPIRE to join; DEL to leave) and the occupancy script
/// beside it: eight commands a user. Presence now rides in the occupancy
/// script (one slot outside Redis Cluster): four. Counted with MONITOR,
/// which also shows that the presence hash and the events are still right.
#[tokio::test]
async fn a_first_join_and_a_last_leave_cost_one_script_each() {
    const N: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let (broker, mut events) = broker_with_occupancy(&redis, 4 * N).await;
    // Let the sweep's first tick pass, so the count is the joins' alone.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut monitor = Monitor::start(redis.port, dir.path());
    for i in 0..N {
        broker.subscribe(&user_group(i), &user(i)).await.unwrap();
    }
    let joins = of_groups(monitor.client_commands());
    for i in 0..N {
        assert_joined(&broker, &mut events, i).await;
    }
    drop(monitor);

    let mut monitor = Monitor::start(redis.port, dir.path());
    for i in 0..N {
        broker
            .unsubscribe(&user_group(i), &format!("s{i}"))
            .await
            .unwrap();
    }
    let leaves = of_groups(monitor.client_commands());
    for i in 0..N {
        assert!(broker.presence(&user_group(i)).await.unwrap().is_empty());
    }
    let left = redis_cli(redis.port, &["keys", &format!("{PREFIX}presence:*")]);
    assert!(left.is_empty(), "presence hashes left behind: {left:?}");

    eprintln!(
        "{N} first joins: {} commands; {N} last leaves: {}",
        joins.len(),
        leaves.len()
    );
    // Before: SUBSCRIBE, DEL, HSET, PEXPIRE, EVALSHA to join; DEL, EVALSHA,
    // UNSUBSCRIBE to leave. Each script's first call may meet NOSCRIPT and
    // be sent again (one more line each way).
    assert!(
        joins.len() <= 2 * N + 1,
        "joins sent {} commands: {joins:#?}",
        joins.len()
    );
    assert!(
        leaves.len() <= 2 * N + 1,
        "leaves sent {} commands: {leaves:#?}",
        leaves.len()
    );
    broker.shutdown().await;
}

/// A group's first join on a node is its `SUBSCRIBE` and the occupancy
/// script (presence inside it); its last leave the script and the
/// `UNSUBSCRIBE`. Each pair is queued together on the subscriber connection,
/// so Redis reads it at once and answers it in one write. Before, the
/// script went on the command client after the subscription's answer: two
/// reads and two writes by Redis per join and per leave (200 and 200 here).
/// Counted with `total_reads_processed` and `total_writes_processed`, one
/// join or leave at a time.
#[tokio::test]
async fn a_first_join_and_its_subscription_reach_redis_in_one_write() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let (broker, mut events) = broker_with_occupancy(&redis, 4 * N).await;
    // The scripts loaded, and the sweep's first tick past.
    broker.subscribe("warm", &user(N)).await.unwrap();
    broker.unsubscribe("warm", &format!("s{N}")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while events.try_recv().is_ok() {}

    let counters = || reads_and_writes(&redis);
    let before = counters();
    for i in 0..N {
        broker.subscribe(&user_group(i), &user(i)).await.unwrap();
    }
    let after = counters();
    // `INFO` itself: one read and one write for each of the two calls.
    let joins = (after.0 - before.0 - 2, after.1 - before.1 - 2);
    for i in 0..N {
        assert_joined(&broker, &mut events, i).await;
    }
    assert_subscribed(&redis, &user_group(0));

    let before = counters();
    for i in 0..N {
        broker
            .unsubscribe(&user_group(i), &format!("s{i}"))
            .await
            .unwrap();
    }
    let after = counters();
    let leaves = (after.0 - before.0 - 2, after.1 - before.1 - 2);
    for i in 0..N {
        assert!(broker.presence(&user_group(i)).await.unwrap().is_empty());
    }
    let channels = redis_cli(
        redis.port,
        &["pubsub", "channels", &format!("{PREFIX}group:*")],
    );
    assert!(channels.is_empty(), "still subscribed: {channels:?}");

    eprintln!(
        "{N} first joins: {} reads, {} writes by Redis; {N} last leaves: {} reads, {} writes",
        joins.0, joins.1, leaves.0, leaves.1
    );
    let bound = (N + N / 4) as u64;
    for (what, (reads, writes)) in [("joins", joins), ("leaves", leaves)] {
        assert!(
            reads <= bound && writes <= bound,
            "{N} {what}: {reads} reads and {writes} writes by Redis: the script and the (un)subscription went apart"
        );
    }
    broker.shutdown().await;
}

/// Redis delivers `group`'s channel to the node.
fn assert_subscribed(redis: &RedisProc, group: &str) {
    let subscribed = redis_cli(
        redis.port,
        &["pubsub", "numsub", &format!("{PREFIX}group:{group}")],
    );
    assert_eq!(
        subscribed.get(1).map(String::as_str),
        Some("1"),
        "{subscribed:?}"
    );
}

/// Reads and writes Redis has made so far (`INFO` itself: one of each).
fn reads_and_writes(redis: &RedisProc) -> (u64, u64) {
    (
        info_stat(redis.port, "total_reads_processed"),
        info_stat(redis.port, "total_writes_processed"),
    )
}

/// With occupancy off, a group's first join queues its presence write
/// behind its `SUBSCRIBE` on the subscriber connection, whose answer says
/// Redis has run the subscription (`subscribed`): one read and one write
/// by Redis per join. A last leave queues the presence `DEL` beside its
/// `UNSUBSCRIBE` the same way. Confirming with a `PING` there instead, and the
/// presence on the command connection, cost two of each and 10 % more
/// node CPU per new user (docs/performance.md, round nineteen).
#[tokio::test]
async fn without_occupancy_a_join_or_leave_and_its_presence_reach_redis_in_one_write() {
    const N: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let broker = broker_on(&redis, Duration::from_secs(60), Duration::from_secs(180)).await;
    broker.subscribe("warm", &user(N)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = reads_and_writes(&redis);
    for i in 0..N {
        broker.subscribe(&user_group(i), &user(i)).await.unwrap();
    }
    let after = reads_and_writes(&redis);
    let (reads, writes) = (after.0 - before.0 - 2, after.1 - before.1 - 2);
    for i in 0..N {
        let group = user_group(i);
        assert_eq!(broker.presence(&group).await.unwrap(), [user(i)], "{group}");
    }
    assert_subscribed(&redis, &user_group(0));

    let before = reads_and_writes(&redis);
    for i in 0..N {
        broker
            .unsubscribe(&user_group(i), &format!("s{i}"))
            .await
            .unwrap();
    }
    let after = reads_and_writes(&redis);
    let leaves = (after.0 - before.0 - 2, after.1 - before.1 - 2);
    for i in 0..N {
        assert!(broker.presence(&user_group(i)).await.unwrap().is_empty());
    }
    eprintln!(
        "without occupancy, {N} first joins: {reads} reads, {writes} writes by Redis; {N} last leaves: {} reads, {} writes",
        leaves.0, leaves.1
    );
    let bound = (N + N / 4) as u64;
    for (what, (reads, writes)) in [("joins", (reads, writes)), ("leaves", leaves)] {
        assert!(
            reads <= bound && writes <= bound,
            "{N} {what}: {reads} reads and {writes} writes by Redis: the presence write and the (un)subscription went apart"
        );
    }
    broker.shutdown().await;
}

/// The monitor lines that name one of the test's groups (the heartbeat's
/// and the sweep's do not).
fn of_groups(lines: Vec<String>) -> Vec<String> {
    lines.into_iter().filter(|l| l.contains("user.")).collect()
}

/// A server that looks like one Redis but enforces hash slots (a sharding
/// proxy, a managed "sharded" endpoint; here a one-node Redis Cluster
/// reached as a plain server) refuses the combined script with
/// `CROSSSLOT`. The joins and leaves still write presence and occupancy,
/// apart, at once rather than at the next heartbeat.
#[tokio::test]
async fn a_server_that_enforces_slots_gets_presence_written_apart() {
    let cluster = RedisCluster::one_node();
    let redis = &cluster.nodes[0];
    // No heartbeat within the test: nothing repairs presence before a read.
    let (broker, mut events) = broker_with_occupancy(redis, 16).await;
    for i in 0..3 {
        broker.subscribe(&user_group(i), &user(i)).await.unwrap();
        assert_joined(&broker, &mut events, i).await;
        let group = user_group(i);
        broker.unsubscribe(&group, &format!("s{i}")).await.unwrap();
        assert!(broker.presence(&group).await.unwrap().is_empty(), "{group}");
    }
    let left = redis_cli(redis.port, &["keys", &format!("{PREFIX}presence:*")]);
    assert!(left.is_empty(), "presence hashes left behind: {left:?}");
    let vacating = redis_cli(
        redis.port,
        &["zrange", &format!("{PREFIX}{{occ}}:vacating"), "0", "-1"],
    );
    assert_eq!(
        vacating.len(),
        3,
        "each group's linger started: {vacating:?}"
    );
    broker.shutdown().await;
}
