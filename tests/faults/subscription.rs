//! A join's `subscribed` when the subscriber connection is backed up.
//!
//! `subscribed` tells a client that Redis holds the group's subscription
//! (docs/protocol.md), so a join returns only once Redis has run its
//! `SUBSCRIBE`. fred answers a `SUBSCRIBE` as soon as it writes it, so a
//! join used to be confirmed by whatever it awaited next on another
//! connection (the presence write on the command client). On one
//! unhindered loopback connection that reaches Redis after the
//! `SUBSCRIBE`; when the subscriber connection is slower than the command
//! connection (a large publish ahead of the `SUBSCRIBE`, a congested or
//! retransmitting link, a proxy) it does not, and a client could be told
//! `subscribed` while Redis did not yet deliver the group to the node.
//!
//! Here the proxy limits every connection to 1,000 KB/s towards Redis and
//! a 2 MB publication is queued on the subscriber connection (the node
//! publishes there) just before a first join: the join's `SUBSCRIBE` waits
//! about 2 s behind it, the command client's small commands do not.

use super::proxy::FaultProxy;
use super::*;
use serde_json::value::RawValue;
use wsgate::broker::Broker;
use wsgate::broker::occupancy::OccupancySettings;
use wsgate::broker::redis::RedisBroker;
use wsgate::config::RedisConfig;
use wsgate::hub::Member;
use wsgate::metrics::Metrics;
use wsgate::protocol::Publication;

/// Bytes of the publication ahead of the join (about 2 s at the proxy's
/// rate; noxious passes at most 32 KB a chunk, well under its 100 KB limit
/// for this rate).
const BACKLOG: usize = 2_000_000;
const PREFIX: &str = "wsgate_t_order:";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_returns_only_once_redis_has_run_its_subscribe_behind_a_backlog() {
    bounded(Duration::from_secs(60), async {
        // Occupancy off: the join's SUBSCRIBE has a PING behind it.
        join_behind_a_backlog(false).await;
        // Occupancy on: the first join's script rides behind its SUBSCRIBE.
        join_behind_a_backlog(true).await;
    })
    .await;
}

async fn join_behind_a_backlog(occupancy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let mut proxy = FaultProxy::start(redis.port).await;
    // From the first byte of every connection: noxious does not slow a
    // live connection down with a bandwidth toxic.
    proxy
        .restart_with(vec![Toxic {
            kind: ToxicKind::Bandwidth { rate: 1_000 },
            name: "slow-up".into(),
            toxicity: 1.0,
            direction: StreamDirection::Upstream,
        }])
        .await;
    let cfg = RedisConfig {
        url: Some(proxy.url()),
        prefix: PREFIX.into(),
        // The backlog takes about 2 s; nothing here is a timeout.
        command_timeout: Duration::from_secs(20),
        ..RedisConfig::default()
    };
    let broker = RedisBroker::connect(&cfg, "a".into(), Arc::new(Metrics::new()))
        .await
        .expect("connect through the proxy");
    if occupancy {
        broker.start_occupancy(OccupancySettings {
            linger: Duration::from_secs(120),
            stream: None,
            stream_maxlen: 1000,
            queue: 16,
        });
        // The sweep's first tick, at start, out of the way.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let big = Publication {
        group: "big".into(),
        data: RawValue::from_string(format!("\"{}\"", "x".repeat(BACKLOG))).unwrap(),
        position: None,
        ts: None,
        trace: None,
        seq: None,
    };
    let publish = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(vec![big]).await }
    });
    // Queued on the subscriber connection before the join's SUBSCRIBE.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let member = Member {
        user_id: "u1".into(),
        session: "s1".into(),
        node: "a".into(),
    };
    let started = Instant::now();
    broker.subscribe("ticks", &member).await.expect("join");
    let joined_after = started.elapsed();
    let held = redis_cli(
        redis.port,
        &["pubsub", "numsub", &format!("{PREFIX}group:ticks")],
    );
    let backlog_passed = publish.is_finished();
    eprintln!(
        "occupancy {occupancy}: join returned after {joined_after:?}; the publication ahead had {}reached Redis",
        if backlog_passed { "" } else { "not " }
    );
    assert_eq!(
        held.get(1).map(String::as_str),
        Some("1"),
        "occupancy {occupancy}: the join returned ({joined_after:?}) before Redis ran its SUBSCRIBE: {held:?}"
    );
    publish.await.unwrap().expect("the large publication");
    broker.shutdown().await;
}

/// A first join Redis does not confirm within `redis.command_timeout` is
/// refused, and what it wrote (presence, and occupancy where it is on) is
/// taken back. Its commands may still be on their way: here they wait
/// behind a backlog that reaches Redis after the join was refused (the
/// command timeout is 2 s; the join's script times out at 2 s and the
/// `PING` behind it at 4 s, 2 MB at 400 KB/s pass at about 5 s, and fred
/// would drop the connection as unresponsive at 6 s). The backlog fits in
/// the sockets' buffers, so fred writes the join's commands at once (a
/// larger one kept them in fred's queue, where they timed out unsent). The take-back must
/// run after them: on the command connection it ran first, and the join's
/// late script then left a presence entry until `node_ttl` and the group
/// counted as occupied by this node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_join_leaves_nothing_behind_when_its_commands_arrive_late() {
    bounded(Duration::from_secs(90), async {
        refused_join_behind_a_backlog(true).await;
        refused_join_behind_a_backlog(false).await;
    })
    .await;
}

async fn refused_join_behind_a_backlog(occupancy: bool) {
    const LATE_BACKLOG: usize = 2_000_000;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let mut proxy = FaultProxy::start(redis.port).await;
    proxy
        .restart_with(vec![Toxic {
            kind: ToxicKind::Bandwidth { rate: 400 },
            name: "slower-up".into(),
            toxicity: 1.0,
            direction: StreamDirection::Upstream,
        }])
        .await;
    let cfg = RedisConfig {
        url: Some(proxy.url()),
        prefix: PREFIX.into(),
        command_timeout: Duration::from_secs(2),
        heartbeat: Duration::from_secs(60),
        node_ttl: Duration::from_secs(180),
        ..RedisConfig::default()
    };
    let broker = RedisBroker::connect(&cfg, "a".into(), Arc::new(Metrics::new()))
        .await
        .expect("connect through the proxy");
    if occupancy {
        broker.start_occupancy(OccupancySettings {
            linger: Duration::from_secs(120),
            stream: None,
            stream_maxlen: 1000,
            queue: 16,
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let big = Publication {
        group: "big".into(),
        data: RawValue::from_string(format!("\"{}\"", "x".repeat(LATE_BACKLOG))).unwrap(),
        position: None,
        ts: None,
        trace: None,
        seq: None,
    };
    let publish = tokio::spawn({
        let broker = broker.clone();
        async move { broker.publish(vec![big]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let member = Member {
        user_id: "u1".into(),
        session: "s1".into(),
        node: "a".into(),
    };
    let started = Instant::now();
    let refused = broker.subscribe("ticks", &member).await;
    eprintln!(
        "occupancy {occupancy}: join answered after {:?}: {refused:?}",
        started.elapsed()
    );
    assert!(
        refused.is_err(),
        "occupancy {occupancy}: the join was confirmed"
    );
    let _ = publish.await;

    // The backlog passes, the join's SUBSCRIBE runs, then what followed it;
    // the node unsubscribes the group it did not keep, after all of them.
    eventually(
        Duration::from_secs(30),
        "the node's UNSUBSCRIBE",
        || async {
            let stats = redis_cli(redis.port, &["info", "commandstats"]);
            command_calls(&stats, "unsubscribe") >= 1
        },
    )
    .await;
    let presence = redis_cli(
        redis.port,
        &["exists", &format!("{PREFIX}presence:ticks:a")],
    );
    let counted = redis_cli(
        redis.port,
        &["hexists", &format!("{PREFIX}{{occ}}:g:ticks"), "a"],
    );
    assert_eq!(
        (presence[0].as_str(), counted[0].as_str()),
        ("0", "0"),
        "occupancy {occupancy}: a refused join left its presence hash and occupancy behind"
    );
    broker.shutdown().await;
}
