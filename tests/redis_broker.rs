//! The Redis broker against real Redis.
//!
//! Most tests share the Redis at 127.0.0.1:6379 and stay inside a random key
//! prefix (`wsgate_t_<hex>:`) whose guard deletes their keys, also when the
//! test fails; the server is never flushed. Tests that stop Redis or need Redis Cluster start their own
//! `redis-server` processes on free ports, killed by a guard even when the
//! test fails.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_servers::{
    RedisCluster, RedisProc, command_calls, info_stat, random_prefix, redis_cli,
};
use common::{RedisPrefix, SHARED_REDIS, free_port};
use fred::prelude::{Client, ClientLike, PubsubInterface};
use serde_json::value::RawValue;
use wsgate::broker::occupancy::OccupancySettings;
use wsgate::broker::redis::RedisBroker;
use wsgate::broker::{
    Broker, BrokerError, BrokerHandler, ControlSender, HistoryPolicy, NodeInfo, NodeRegistry,
    Occupancy, Presence, SnapshotPolicy,
};
use wsgate::config::{HistoryConfig, RedisConfig};
use wsgate::hub::Member;
use wsgate::metrics::Metrics;
use wsgate::protocol::{Control, Publication};

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Helpers.

/// Collects what a node's broker hands over.
#[derive(Default)]
struct Collector {
    node: String,
    publications: Mutex<Vec<(String, String)>>,
    controls: Mutex<Vec<Control>>,
}

impl Collector {
    fn new(node: &str) -> Arc<Collector> {
        Arc::new(Collector {
            node: node.into(),
            ..Collector::default()
        })
    }
    fn received(&self) -> Vec<(String, String)> {
        self.publications.lock().unwrap().clone()
    }
    fn received_in(&self, group: &str) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|(g, _)| g == group)
            .map(|(_, d)| d)
            .collect()
    }
    fn controls(&self) -> Vec<Control> {
        self.controls.lock().unwrap().clone()
    }
}

impl BrokerHandler for Collector {
    fn on_publication(&self, p: Publication) {
        self.publications
            .lock()
            .unwrap()
            .push((p.group, p.data.get().to_string()));
    }
    fn on_control(&self, control: Control) {
        self.controls.lock().unwrap().push(control);
    }
    fn local_presence(&self, _group: &str) -> Vec<Member> {
        Vec::new()
    }
    fn local_node(&self) -> NodeInfo {
        NodeInfo {
            node: self.node.clone(),
            connections: 7,
            last_seen_ms: 0,
        }
    }
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: Some(url.into()),
        prefix: prefix.into(),
        heartbeat: Duration::from_millis(200),
        node_ttl: Duration::from_millis(1500),
        command_timeout: Duration::from_secs(1),
        ..RedisConfig::default()
    }
}

struct Node {
    broker: Arc<RedisBroker>,
    seen: Arc<Collector>,
    metrics: Arc<Metrics>,
}

async fn node(cfg: &RedisConfig, id: &str) -> Node {
    let metrics = Arc::new(Metrics::new());
    let broker = RedisBroker::connect(cfg, id.into(), metrics.clone())
        .await
        .expect("connect to Redis");
    let seen = Collector::new(id);
    broker.attach(seen.clone());
    Node {
        broker,
        seen,
        metrics,
    }
}

fn member(node: &str, session: &str) -> Member {
    Member {
        user_id: format!("u-{session}"),
        session: session.into(),
        node: node.into(),
    }
}

fn publication(group: &str, data: &str) -> Publication {
    Publication {
        group: group.into(),
        data: RawValue::from_string(data.into()).unwrap(),
        position: None,
        ts: None,
        trace: None,
        seq: None,
    }
}

async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn plain_client(url: &str) -> Client {
    let client = Client::new(
        fred::prelude::Config::from_url(url).unwrap(),
        None,
        None,
        None,
    );
    client.init().await.expect("plain client");
    client
}

/// Channels on a (non-cluster) Redis that match `pattern`.
async fn channels(client: &Client, pattern: &str) -> HashSet<String> {
    let list: Vec<String> = client.pubsub_channels(pattern).await.unwrap();
    list.into_iter().collect()
}

/// `PUBSUB SHARDCHANNELS <pattern>` on each cluster node.
fn shard_channels(ports: &[u16], pattern: &str) -> Vec<Vec<String>> {
    ports
        .iter()
        .map(|&port| redis_cli(port, &["pubsub", "shardchannels", pattern]))
        .collect()
}

// ---------------------------------------------------------------------------
// Tests on the shared Redis.

#[tokio::test]
async fn cross_node_delivery() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    assert!(a.broker.is_up() && b.broker.is_up());
    assert_eq!(a.metrics.redis_up.get(), 1);

    b.broker.subscribe("g", &member("b", "s1")).await.unwrap();
    a.broker
        .publish(vec![
            publication("g", r#"{"n":1}"#),
            publication("other", "2"),
        ])
        .await
        .unwrap();
    wait_until("b receives", || b.seen.received_in("g") == [r#"{"n":1}"#]).await;
    // A holds no member of g, so nothing reaches it; no one holds "other".
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.seen.received().is_empty());
    assert_eq!(b.seen.received().len(), 1);

    // Both nodes with members: both receive, including the publisher.
    a.broker.subscribe("g", &member("a", "s2")).await.unwrap();
    b.broker.publish(vec![publication("g", "3")]).await.unwrap();
    wait_until("both receive", || {
        a.seen.received_in("g") == ["3"] && b.seen.received_in("g").len() == 2
    })
    .await;

    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

#[tokio::test]
async fn order_of_1000_sequential_messages() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    b.broker.subscribe("seq", &member("b", "s1")).await.unwrap();

    let start = Instant::now();
    for i in 0..1000 {
        a.broker
            .publish(vec![publication("seq", &i.to_string())])
            .await
            .unwrap();
    }
    // And one call carrying many, in order.
    let batch: Vec<Publication> = (1000..1500)
        .map(|i| publication("seq", &i.to_string()))
        .collect();
    a.broker.publish(batch).await.unwrap();
    wait_until("1500 messages", || b.seen.received_in("seq").len() == 1500).await;
    let got: Vec<u32> = b
        .seen
        .received_in("seq")
        .iter()
        .map(|d| d.parse().unwrap())
        .collect();
    assert_eq!(got, (0..1500).collect::<Vec<u32>>());
    assert_eq!(b.broker.lost_messages(), 0);
    eprintln!("1500 messages in order in {:?}", start.elapsed());

    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

#[tokio::test]
async fn raw_publish_from_another_client_and_bad_envelopes() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let b = node(&cfg, "b").await;
    b.broker.subscribe("g", &member("b", "s1")).await.unwrap();
    let raw = plain_client(SHARED_REDIS).await;
    let channel = format!("{prefix}group:g");

    // A backend publishing straight to Redis (protocol section 5).
    let receivers: i64 = raw
        .publish(&channel, r#"{"v":1,"group":"g","data":{"x":[1,2]}}"#)
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    wait_until("raw message", || {
        b.seen.received_in("g") == [r#"{"x":[1,2]}"#]
    })
    .await;

    // Bad envelopes are counted and dropped, never delivered.
    for bad in [
        "not json",
        r#"{"v":2,"group":"g","data":1}"#,
        r#"{"v":1,"group":"other","data":1}"#,
        r#"{"v":1,"group":"g"}"#,
    ] {
        let _: i64 = raw.publish(&channel, bad).await.unwrap();
    }
    let _: i64 = raw
        .publish(format!("{prefix}control"), r#"{"op":"nope"}"#)
        .await
        .unwrap();
    wait_until("bad envelopes counted", || b.broker.bad_envelopes() == 5).await;
    let _: i64 = raw
        .publish(&channel, r#"{"v":1,"group":"g","data":"after"}"#)
        .await
        .unwrap();
    wait_until("still delivering", || b.seen.received_in("g").len() == 2).await;
    assert!(b.seen.controls().is_empty());

    let _ = raw.quit().await;
    b.broker.shutdown().await;
}

#[tokio::test]
async fn subscription_only_while_a_member_is_local() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let raw = plain_client(SHARED_REDIS).await;
    let pattern = format!("{prefix}group:*");
    let g = format!("{prefix}group:g");

    assert!(channels(&raw, &pattern).await.is_empty());
    a.broker.subscribe("g", &member("a", "s1")).await.unwrap();
    a.broker.subscribe("g", &member("a", "s2")).await.unwrap();
    assert_eq!(channels(&raw, &pattern).await, HashSet::from([g.clone()]));
    a.broker.unsubscribe("g", "s1").await.unwrap();
    assert_eq!(channels(&raw, &pattern).await, HashSet::from([g.clone()]));
    a.broker.unsubscribe("g", "s2").await.unwrap();
    assert!(channels(&raw, &pattern).await.is_empty());
    assert!(a.broker.local_groups().is_empty());
    // An unknown leave changes nothing.
    a.broker.unsubscribe("g", "nobody").await.unwrap();
    assert!(channels(&raw, &pattern).await.is_empty());
    // The control channel is always held.
    assert!(channels(&raw, &format!("{prefix}control")).await.len() == 1);

    let _ = raw.quit().await;
    a.broker.shutdown().await;
}

#[tokio::test]
async fn concurrent_joins_and_leaves_stay_consistent() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    let raw = plain_client(SHARED_REDIS).await;
    let pattern = format!("{prefix}group:*");
    let g = format!("{prefix}group:race");

    for round in 0..3 {
        // 40 sessions each join and leave a few times concurrently; the
        // first `keep` sessions end joined.
        let keep = [0usize, 1, 7][round];
        let mut tasks = Vec::new();
        for s in 0..40usize {
            let broker = a.broker.clone();
            tasks.push(tokio::spawn(async move {
                let session = format!("r{round}-s{s}");
                for _ in 0..5 {
                    broker
                        .subscribe("race", &member("a", &session))
                        .await
                        .unwrap();
                    tokio::task::yield_now().await;
                    broker.unsubscribe("race", &session).await.unwrap();
                }
                if s < keep {
                    broker
                        .subscribe("race", &member("a", &session))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let held = channels(&raw, &pattern).await;
        if keep == 0 {
            assert!(held.is_empty(), "round {round}: {held:?}");
            assert!(a.broker.local_groups().is_empty());
        } else {
            assert_eq!(held, HashSet::from([g.clone()]), "round {round}");
            let before = a.seen.received_in("race").len();
            b.broker
                .publish(vec![publication("race", "1")])
                .await
                .unwrap();
            wait_until("delivery after the race", || {
                a.seen.received_in("race").len() == before + 1
            })
            .await;
            let present = b.broker.presence("race").await.unwrap();
            assert_eq!(present.len(), keep, "round {round}: {present:?}");
            for s in 0..keep {
                a.broker
                    .unsubscribe("race", &format!("r{round}-s{s}"))
                    .await
                    .unwrap();
            }
            assert!(channels(&raw, &pattern).await.is_empty());
            assert!(b.broker.presence("race").await.unwrap().is_empty());
        }
    }

    let _ = raw.quit().await;
    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

#[tokio::test]
async fn control_reaches_every_node_including_the_sender() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let nodes = [
        node(&cfg, "a").await,
        node(&cfg, "b").await,
        node(&cfg, "c").await,
    ];
    let command = Control::DisconnectUser {
        user_id: "42".into(),
    };
    nodes[1].broker.control(command.clone()).await.unwrap();
    for n in &nodes {
        wait_until("control", || n.seen.controls() == [command.clone()]).await;
    }
    for n in &nodes {
        n.broker.shutdown().await;
    }
}

#[tokio::test]
async fn presence_and_node_listing() {
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    let c = node(&cfg, "c").await;

    a.broker
        .subscribe("room", &member("a", "s1"))
        .await
        .unwrap();
    a.broker
        .subscribe("room", &member("a", "s2"))
        .await
        .unwrap();
    b.broker
        .subscribe("room", &member("b", "s3"))
        .await
        .unwrap();
    b.broker
        .subscribe("lobby", &member("b", "s3"))
        .await
        .unwrap();

    let present = c.broker.presence("room").await.unwrap();
    assert_eq!(
        present,
        vec![member("a", "s1"), member("a", "s2"), member("b", "s3")]
    );
    assert_eq!(
        c.broker.presence("lobby").await.unwrap(),
        vec![member("b", "s3")]
    );
    assert!(c.broker.presence("empty").await.unwrap().is_empty());

    let listed = c.broker.nodes().await.unwrap();
    let ids: Vec<&str> = listed.iter().map(|n| n.node.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert!(
        listed
            .iter()
            .all(|n| n.connections == 7 && n.last_seen_ms > 0)
    );

    // Presence outlives the heartbeat interval (it is refreshed).
    tokio::time::sleep(cfg.node_ttl + Duration::from_millis(500)).await;
    assert_eq!(c.broker.presence("room").await.unwrap().len(), 3);

    a.broker.unsubscribe("room", "s1").await.unwrap();
    assert_eq!(
        c.broker.presence("room").await.unwrap(),
        vec![member("a", "s2"), member("b", "s3")]
    );

    // A clean shutdown leaves at once.
    a.broker.shutdown().await;
    let ids: Vec<String> = c
        .broker
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node)
        .collect();
    assert_eq!(ids, ["b", "c"]);
    assert_eq!(
        c.broker.presence("room").await.unwrap(),
        vec![member("b", "s3")]
    );

    // A node that stops without cleaning up (as under SIGKILL: no shutdown,
    // no more heartbeats) drops out within node_ttl.
    let Node { broker, .. } = b;
    drop(broker);
    let killed = Instant::now();
    loop {
        let ids: Vec<String> = c
            .broker
            .nodes()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.node)
            .collect();
        let present = c.broker.presence("room").await.unwrap();
        if ids == ["c"] && present.is_empty() {
            break;
        }
        assert!(
            killed.elapsed() < cfg.node_ttl + Duration::from_millis(500),
            "killed node still listed: {ids:?} {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("killed node gone after {:?}", killed.elapsed());

    c.broker.shutdown().await;
}

// ---------------------------------------------------------------------------
// Tests with their own Redis.

#[tokio::test]
async fn resubscribes_after_redis_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let url = redis.url();

    let prefix = random_prefix();
    let cfg = config(&url, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    // Many groups, joined concurrently.
    let groups: Vec<String> = (0..150).map(|i| format!("g{i}")).collect();
    let s1 = member("b", "s1");
    let joins = groups.iter().map(|g| b.broker.subscribe(g, &s1));
    for result in futures_util::future::join_all(joins).await {
        result.unwrap();
    }
    let raw = plain_client(&url).await;
    assert_eq!(channels(&raw, &format!("{prefix}group:*")).await.len(), 150);
    a.broker
        .publish(vec![publication("g1", "1")])
        .await
        .unwrap();
    wait_until("delivery before the restart", || {
        b.seen.received_in("g1") == ["1"]
    })
    .await;
    let _ = raw.quit().await;

    redis.kill();
    let down = Instant::now();
    wait_until("link down", || !a.broker.is_up() && !b.broker.is_up()).await;
    eprintln!("link down noticed after {:?}", down.elapsed());
    assert_eq!(b.metrics.redis_up.get(), 0);
    // Joining a new group while Redis is away is accepted at once and the
    // group is subscribed when Redis is back; joining a group already held
    // is accepted too, and a leave is settled once Redis is back.
    let t = Instant::now();
    b.broker.subscribe("new", &member("b", "s2")).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    b.broker.subscribe("g1", &member("b", "s3")).await.unwrap();
    b.broker.unsubscribe("g2", "s1").await.unwrap();
    // Publishing fails fast too, rather than queueing.
    let t = Instant::now();
    let err = a
        .broker
        .publish(vec![publication("g1", "0")])
        .await
        .unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)));
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    // Stay down across several reconnection attempts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!a.broker.is_up() && !b.broker.is_up());

    let restarted = Instant::now();
    redis.restart();
    wait_until("link up again", || a.broker.is_up() && b.broker.is_up()).await;
    eprintln!("up again {:?} after the restart", restarted.elapsed());
    assert_eq!(b.metrics.redis_up.get(), 1);

    let raw = plain_client(&url).await;
    let mut expected: HashSet<String> = groups
        .iter()
        .filter(|g| *g != "g2")
        .map(|g| format!("{prefix}group:{g}"))
        .collect();
    expected.insert(format!("{prefix}control"));
    expected.insert(format!("{prefix}group:new"));
    assert_eq!(channels(&raw, &format!("{prefix}*")).await, expected);
    let all: Vec<Publication> = groups.iter().map(|g| publication(g, "2")).collect();
    a.broker.publish(all).await.unwrap();
    wait_until("delivery after the restart", || {
        groups
            .iter()
            .filter(|g| *g != "g2")
            .all(|g| b.seen.received_in(g).last().map(String::as_str) == Some("2"))
    })
    .await;
    assert!(b.seen.received_in("g2").is_empty());
    // The group joined during the outage receives too.
    a.broker
        .publish(vec![publication("new", "3")])
        .await
        .unwrap();
    wait_until("delivery to the group joined during the outage", || {
        b.seen.received_in("new") == ["3"]
    })
    .await;
    // Control works again, and registry and presence are rewritten.
    a.broker
        .control(Control::RevokeDigest {
            digest: "ab".into(),
        })
        .await
        .unwrap();
    wait_until("control after restart", || b.seen.controls().len() == 1).await;
    let start = Instant::now();
    loop {
        let nodes = a.broker.nodes().await.unwrap();
        let present = a.broker.presence("g1").await.unwrap();
        if nodes.len() == 2 && present == [member("b", "s1"), member("b", "s3")] {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "registry not restored: {nodes:?} {present:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(a.broker.presence("g2").await.unwrap().is_empty());

    let _ = raw.quit().await;
    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

/// A publish answered "unavailable" is never sent later. fred keeps
/// reporting "connected" through its first reconnection delay after a lost
/// connection, and a pipeline sent then waited in fred past its caller's
/// timeout and was written once Redis was back: the API had said 503 (so a
/// caller retries, and subscribers get the message twice), and the stale
/// message arrived after newer ones to whoever was subscribed by then.
#[tokio::test]
async fn a_failed_publish_is_not_sent_once_redis_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let cfg = config(&redis.url(), &random_prefix());
    // `a` keeps history for `h.*`: its script is lost with the restart.
    let history = HistoryPolicy::new(&HistoryConfig {
        groups: vec!["h.*".into()],
        ..HistoryConfig::default()
    });
    let metrics = Arc::new(Metrics::new());
    let a = RedisBroker::connect_with(&cfg, "a".into(), metrics, history, SnapshotPolicy::off())
        .await
        .unwrap();
    let b = node(&cfg, "b").await;
    b.broker.subscribe("g", &member("b", "s1")).await.unwrap();
    a.publish(vec![publication("g", "1"), publication("h.x", "1")])
        .await
        .unwrap();
    wait_until("delivery before the kill", || {
        b.seen.received_in("g") == ["1"]
    })
    .await;

    redis.kill();
    // At once, before the nodes notice: the messages cannot reach Redis.
    let stale = vec![publication("g", "0"), publication("g", "0")];
    let err = a.publish(stale).await.unwrap_err();
    assert!(matches!(err, BrokerError::Unavailable(_)), "{err:?}");
    // The stale publish fails as soon as its connection is gone, so the
    // nodes may not have seen the outage yet: "up" below must be after it,
    // or `b` could be resubscribing while `a` publishes.
    wait_until("the outage seen", || !a.is_up() && !b.broker.is_up()).await;

    redis.restart();
    wait_until("link up again", || a.is_up() && b.broker.is_up()).await;
    // 250 to `g`: more than one `PUBLISH_MANY` (at most 100 each). History
    // publications around the third leave it alone (a plain PUBLISH), which
    // must not overtake the two before it while the scripts Redis lost
    // with the restart are loaded again.
    let fresh: Vec<String> = (2..252).map(|i| i.to_string()).collect();
    let mut batch: Vec<Publication> = fresh.iter().map(|d| publication("g", d)).collect();
    batch.insert(2, publication("h.x", "2"));
    batch.insert(4, publication("h.x", "3"));
    let positions = a.publish(batch).await.unwrap();
    // The history script is loaded again: the offsets start again at 1 (a
    // new epoch).
    let offsets: Vec<(usize, u64)> = positions
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.as_ref()?.offset)))
        .collect();
    assert_eq!(positions.len(), fresh.len() + 2);
    assert_eq!(offsets, [(2, 1), (4, 2)]);
    wait_until("delivery after the restart", || {
        b.seen.received_in("g").len() > fresh.len()
    })
    .await;
    // In order, and the restarted server saw only the fresh publishes
    // (whether a stale one would reach b depends on when b resubscribed).
    let mut expected = vec!["1".to_string()];
    expected.extend(fresh.iter().cloned());
    assert_eq!(b.seen.received_in("g"), expected);
    let stats = redis_cli(redis.port, &["INFO", "commandstats"]);
    // The history script's own PUBLISHes count too.
    let publishes = command_calls(&stats, "publish");
    assert_eq!(publishes, fresh.len() as u64 + 2, "{stats:#?}");
    // `g`'s runs: 2 and 247 publications, the latter cut at 100 (100, 100
    // and 47): four scripts, and the lone publication a plain PUBLISH.
    assert_eq!(command_calls(&stats, "eval"), 4, "{stats:#?}");
    a.shutdown().await;
    b.broker.shutdown().await;
}

/// A node started while nothing listens fails with the refusal (fred's
/// `fail_fast`), not by running out the connect timeout.
#[tokio::test]
async fn connect_fails_without_redis() {
    let port = free_port();
    let cfg = config(&format!("redis://127.0.0.1:{port}"), &random_prefix());
    let result = RedisBroker::connect(&cfg, "x".into(), Arc::new(Metrics::new())).await;
    match result {
        Err(BrokerError::Unavailable(e)) => {
            assert!(e.starts_with("cannot connect to Redis"), "{e}");
        }
        Ok(_) => panic!("connected with nothing listening"),
    }
}

/// A node publishes on its subscriber connection (RESP3), so Redis answers
/// a publish and sends the node its own copy of the message in one write;
/// with the publish on a second connection each was a write of its own (400
/// for these 200 publishes). Counted with the server's
/// `total_writes_processed` on a throwaway `redis-server`, one publish at a
/// time, every message received in order.
#[tokio::test]
async fn a_publish_and_the_nodes_own_copy_come_back_in_one_write() {
    const N: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let cfg = RedisConfig {
        // No heartbeat while counting (the first runs at connect).
        heartbeat: Duration::from_secs(60),
        node_ttl: Duration::from_secs(180),
        ..config(&redis.url(), &random_prefix())
    };
    let a = node(&cfg, "a").await;
    a.broker.subscribe("g", &member("a", "s1")).await.unwrap();
    let before = info_stat(redis.port, "total_writes_processed");
    for i in 0..N {
        a.broker
            .publish(vec![publication("g", &i.to_string())])
            .await
            .unwrap();
    }
    wait_until("every message", || {
        a.seen.received_in("g").len() == N as usize
    })
    .await;
    let writes = info_stat(redis.port, "total_writes_processed") - before;
    let expected: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    assert_eq!(a.seen.received_in("g"), expected);
    eprintln!("{N} publishes, {writes} writes by Redis");
    assert!(
        writes <= N + N / 4,
        "{writes} Redis writes for {N} publishes: the reply and the message went apart"
    );
    a.broker.shutdown().await;
}

/// Concurrent publishers that each wait for their answer before publishing
/// again keep their order through the batches, and nothing is lost or
/// doubled.
#[tokio::test]
async fn concurrent_single_publishers_keep_their_own_order() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 200;
    let prefix = RedisPrefix::random();
    let cfg = config(SHARED_REDIS, &prefix);
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    for p in 0..PUBLISHERS {
        let group = format!("p{p}");
        b.broker
            .subscribe(&group, &member("b", &group))
            .await
            .unwrap();
    }
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = a.broker.clone();
            tokio::spawn(async move {
                for i in 0..EACH {
                    broker
                        .publish(vec![publication(&format!("p{p}"), &i.to_string())])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for publisher in publishers {
        publisher.await.unwrap();
    }
    wait_until("every message", || {
        b.seen.received().len() == PUBLISHERS * EACH
    })
    .await;
    let expected: Vec<String> = (0..EACH).map(|i| i.to_string()).collect();
    for p in 0..PUBLISHERS {
        assert_eq!(b.seen.received_in(&format!("p{p}")), expected, "p{p}");
    }
    a.broker.shutdown().await;
    b.broker.shutdown().await;
}

/// The broker needs RESP3 (Redis 6 or later); a server without `HELLO`
/// (here a Redis with the command renamed away) is refused at start-up
/// with an error that says so, rather than failing each publish later.
#[tokio::test]
async fn a_server_without_resp3_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start_with(dir.path(), free_port(), &["--rename-command", "HELLO", ""]);
    let cfg = config(&redis.url(), &random_prefix());
    let result = RedisBroker::connect(&cfg, "x".into(), Arc::new(Metrics::new())).await;
    match result {
        Err(BrokerError::Unavailable(e)) => {
            eprintln!("{e}");
            assert!(e.contains("RESP3") && e.contains("Redis 6"), "{e}");
        }
        Ok(_) => panic!("connected to a server without HELLO"),
    }
}

/// Redis 7 creates ACL users without channel permissions, and fred answers
/// a `SUBSCRIBE` as soon as it writes it, so a node on such a user would
/// start, take joins and deliver nothing. It is refused at start-up with an
/// error that says what to grant; with `&<prefix>*` granted it starts.
#[tokio::test]
async fn a_redis_user_without_channel_permissions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let prefix = random_prefix();
    let cfg = config(&redis.url(), &prefix);
    redis_cli(redis.port, &["acl", "setuser", "default", "resetchannels"]);
    assert_refused_naming_the_grant(&cfg, &prefix, "NOPERM").await;

    let grant = format!("&{prefix}*");
    redis_cli(redis.port, &["acl", "setuser", "default", &grant]);
    let a = node(&cfg, "a").await;
    a.broker.subscribe("g", &member("a", "s1")).await.unwrap();
    a.broker.publish(vec![publication("g", "1")]).await.unwrap();
    wait_until("the message", || a.seen.received_in("g") == ["1"]).await;
    a.broker.shutdown().await;
}

/// A Redis user allowed the group channels but not the control channel
/// (`&<prefix>group:*`, a grant that looks complete) is refused too. The
/// control channel carries live revocations and disconnects: with its
/// `SUBSCRIBE` refused unseen, the node started, delivered groups and
/// never closed a revoked token's sockets.
#[tokio::test]
async fn a_redis_user_without_the_control_channel_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let prefix = random_prefix();
    let cfg = config(&redis.url(), &prefix);
    let groups_only = format!("&{prefix}group:*");
    redis_cli(
        redis.port,
        &["acl", "setuser", "default", "resetchannels", &groups_only],
    );
    // Redis's NOPERM is in the error when fred passed it on (not always:
    // `redis_client::subscribe_confirmed`).
    assert_refused_naming_the_grant(&cfg, &prefix, "may not publish or subscribe").await;
}

/// A node on `cfg` does not start; its error says `why` and the grant.
async fn assert_refused_naming_the_grant(cfg: &RedisConfig, prefix: &str, why: &str) {
    match RedisBroker::connect(cfg, "x".into(), Arc::new(Metrics::new())).await {
        Err(BrokerError::Unavailable(e)) => {
            eprintln!("{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains(&format!("ACL SETUSER <user> &{prefix}*")), "{e}");
        }
        Ok(_) => panic!("started on a Redis user without the node's channels"),
    }
}

#[tokio::test]
async fn redis_cluster_with_sharded_pubsub() {
    let rc = RedisCluster::start(3);
    let ports = rc.ports();
    let prefix = random_prefix();
    // A heartbeat too slow to repair presence within the test: what the
    // joins wrote is what it reads.
    let cfg = RedisConfig {
        heartbeat: Duration::from_secs(10),
        node_ttl: Duration::from_secs(30),
        ..config(&rc.url(), &prefix)
    };
    let a = node(&cfg, "a").await;
    let b = node(&cfg, "b").await;
    for n in [&a, &b] {
        n.broker.start_occupancy(OccupancySettings {
            linger: Duration::from_secs(60),
            stream: None,
            stream_maxlen: 100,
            queue: 64,
        });
    }
    // Enough groups to land on every shard.
    let groups: Vec<String> = (0..12).map(|i| format!("g{i}")).collect();
    for g in &groups {
        b.broker.subscribe(g, &member("b", "s1")).await.unwrap();
    }
    a.broker.subscribe("g0", &member("a", "s2")).await.unwrap();
    // Presence and occupancy are written apart on a cluster (their keys
    // are in different slots; outside a cluster one script does both).
    for g in &groups {
        let mut expected = vec![member("b", "s1")];
        if g == "g0" {
            expected.insert(0, member("a", "s2"));
        }
        assert_eq!(a.broker.presence(g).await.unwrap(), expected, "{g}");
    }
    let occupied = a.broker.occupied("*", 100).await.unwrap();
    let mut names: Vec<&str> = occupied.groups.iter().map(|o| o.group.as_str()).collect();
    names.sort_unstable();
    let mut want: Vec<&str> = groups.iter().map(String::as_str).collect();
    want.sort_unstable();
    assert_eq!(names, want);
    let batch: Vec<Publication> = groups
        .iter()
        .flat_map(|g| (0..5).map(move |i| publication(g, &i.to_string())))
        .collect();
    a.broker.publish(batch).await.unwrap();
    for g in &groups {
        wait_until("sharded delivery", || {
            b.seen.received_in(g) == ["0", "1", "2", "3", "4"]
        })
        .await;
    }
    wait_until("publisher's own member", || {
        a.seen.received_in("g0").len() == 5
    })
    .await;
    assert_eq!(a.seen.received().len(), 5);

    // Control uses classic pub/sub, which reaches every node of the cluster.
    a.broker
        .control(Control::DisconnectUser {
            user_id: "1".into(),
        })
        .await
        .unwrap();
    wait_until("control on the cluster", || {
        a.seen.controls().len() == 1 && b.seen.controls().len() == 1
    })
    .await;

    // Group channels are sharded channels, spread over the shards.
    let sharded = shard_channels(&ports, &format!("{prefix}group:*"));
    assert_eq!(
        sharded.iter().map(Vec::len).sum::<usize>(),
        12,
        "{sharded:?}"
    );
    assert!(
        sharded.iter().all(|on_node| !on_node.is_empty()),
        "{sharded:?}"
    );

    // Registry and presence span slots.
    assert_eq!(a.broker.nodes().await.unwrap().len(), 2);
    assert_eq!(
        a.broker.presence("g0").await.unwrap(),
        vec![member("a", "s2"), member("b", "s1")]
    );
    for g in &groups {
        b.broker.unsubscribe(g, "s1").await.unwrap();
    }
    assert!(b.broker.local_groups().is_empty());
    let sharded = shard_channels(&ports, &format!("{prefix}group:*"));
    assert_eq!(sharded.concat(), [format!("{prefix}group:g0")]);
    a.broker
        .publish(vec![publication("g5", "99")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.seen.received_in("g5").len(), 5);

    a.broker.shutdown().await;
    b.broker.shutdown().await;
}
