//! `"latest":true` on `subscribe` (protocol section 3, "Latest value on
//! subscribe"): a `groups.snapshot` group's latest message arrives marked
//! `"snapshot":true` before the `subscribed` reply, then live messages, with
//! no gap and no duplicate even while publications race the subscribe; a
//! history group's latest is its last kept entry; a group with nothing kept
//! answers `subscribed` alone; other groups ignore `latest`.
//!
//! The same checks run on the embedded broker and on two nodes over Redis.
//! One test prints what the feature costs per operation (no timed
//! assertion: the figures are for reading).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::*;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use wsgate::config::Config;
use wsgate::protocol::Publication;

fn snapshot_config(dir: &std::path::Path) -> Config {
    let mut c = test_config(dir);
    c.groups.snapshot = vec!["market.*".into()];
    c.groups.snapshot_ttl = Duration::from_secs(60);
    c.history.groups = vec!["h.*".into()];
    c.history.size = 1000;
    // Readers of the race must not be closed as slow consumers while the
    // publisher outruns them.
    c.limits.outbound_queue = 4096;
    c.limits.messages_per_second = 10_000;
    c
}

fn with_redis(mut c: Config, prefix: &str, node: &str) -> Config {
    c.server.node_id = Some(node.into());
    c.redis.url = Some(SHARED_REDIS.into());
    c.redis.prefix = prefix.into();
    c
}

/// Two nodes, `a` and `b`, on the shared Redis under `prefix`.
async fn two_redis_nodes(dir: &std::path::Path, prefix: &str) -> (TestNode, TestNode) {
    let a = spawn(with_redis(snapshot_config(dir), prefix, "a")).await;
    let b = spawn(with_redis(snapshot_config(dir), prefix, "b")).await;
    (a, b)
}

/// Sends `subscribe` with `latest` and collects what comes before the
/// `subscribed` reply.
async fn subscribe_latest(c: &mut Client, group: &str) -> (Vec<Value>, Value) {
    c.send_json(json!({"type": "subscribe", "group": group, "latest": true, "id": 1}))
        .await;
    let mut before = Vec::new();
    loop {
        let f = c.recv_json().await;
        match f["type"].as_str() {
            Some("message") => before.push(f),
            Some("subscribed") => return (before, f),
            _ => panic!("unexpected frame {f}"),
        }
    }
}

/// The behaviour every broker must show, with the publisher on `publisher`
/// and the reader on `reader`.
async fn latest_scenario(publisher: &TestNode, reader: &TestNode) {
    let token = reader.issue_token("1").await;
    let (mut c, _) = Client::authed(&reader.ws_url(), &token).await;

    // Nothing published yet: `subscribed` and nothing else.
    let (before, sub) = subscribe_latest(&mut c, "market.NEW").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(sub["group"], "market.NEW");
    assert!(sub.get("offset").is_none(), "{sub}");
    c.expect_silence(Duration::from_millis(200)).await;

    // The latest of two publications, marked, before the reply.
    publisher.publish("market.AAPL", json!({"p": 1})).await;
    publisher.publish("market.AAPL", json!({"p": 2})).await;
    let (before, sub) = subscribe_latest(&mut c, "market.AAPL").await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        before[0],
        json!({"type": "message", "group": "market.AAPL", "data": {"p": 2}, "snapshot": true})
    );
    assert_eq!(sub["type"], "subscribed");
    // Then live messages, unmarked, and not the snapshot again.
    publisher.publish("market.AAPL", json!({"p": 3})).await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "market.AAPL", "data": {"p": 3}})
    );
    c.expect_silence(Duration::from_millis(200)).await;

    // Subscribing again to a group it is in: `subscribed` only (its
    // messages have been arriving all along).
    let (before, _) = subscribe_latest(&mut c, "market.AAPL").await;
    assert!(before.is_empty(), "{before:?}");

    // Without `latest`, a snapshot group behaves as any other.
    let (mut other, _) = Client::authed(&reader.ws_url(), &token).await;
    let sub = other
        .request(json!({"type": "subscribe", "group": "market.AAPL", "latest": false}))
        .await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    other.expect_silence(Duration::from_millis(200)).await;

    // A group neither in `groups.snapshot` nor with history ignores
    // `latest`: `subscribed`, nothing else.
    publisher.publish("plain", json!({"p": 1})).await;
    let (before, sub) = subscribe_latest(&mut c, "plain").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(sub["group"], "plain");
    c.expect_silence(Duration::from_millis(200)).await;

    // A history group: its last kept entry, with its offset, marked; the
    // reply carries the same offset.
    publisher.publish("h.news", json!({"n": 1})).await;
    publisher.publish("h.news", json!({"n": 2})).await;
    let (before, sub) = subscribe_latest(&mut c, "h.news").await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0]["data"], json!({"n": 2}));
    assert_eq!(before[0]["snapshot"], true);
    assert_eq!(before[0]["offset"], 2);
    assert_eq!(sub["offset"], 2, "{sub}");
    assert_eq!(sub["epoch"], before[0]["epoch"]);
    publisher.publish("h.news", json!({"n": 3})).await;
    let live = c.recv_json().await;
    assert_eq!(live["offset"], 3, "{live}");
    assert!(live.get("snapshot").is_none(), "{live}");

    // A history group never published: `subscribed` at offset 0 alone.
    let (before, sub) = subscribe_latest(&mut c, "h.empty").await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(sub["offset"], 0);

    // `latest` must be a boolean.
    let e = c
        .request(json!({"type": "subscribe", "group": "market.X", "latest": 1}))
        .await;
    assert_eq!(e["code"], "bad_request", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(snapshot_config(dir.path())).await;
    latest_scenario(&node, &node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_published_on_one_node_is_read_on_another_over_redis() {
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_redis_nodes(dir.path(), &prefix).await;
    latest_scenario(&a, &b).await;
}

/// Publishes `n` = 1, 2, ... to `group` through `publisher`'s broker as
/// fast as it answers, while readers on `readers_on` subscribe with
/// `latest` at staggered times; each reader must see consecutive values
/// from its first (the snapshot, or 1 when nothing was kept yet) to the
/// last: a publication racing the subscribe is neither lost nor repeated,
/// and never older than the snapshot.
async fn race(publisher: &TestNode, readers_on: &[&TestNode], group: &'static str) {
    const READERS: usize = 24;
    const LAST: u64 = 1500;
    let token = publisher.issue_token("race").await;
    let published = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let url = readers_on[r % readers_on.len()].ws_url();
        let (token, published) = (token.clone(), published.clone());
        readers.push(tokio::spawn(async move {
            // Start somewhere in the run (or before it, for the first).
            let start = (r as u64 * LAST) / (READERS as u64 + 2);
            while published.load(Ordering::Acquire) < start {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let (mut c, _) = Client::authed(&url, &token).await;
            let (before, _) = subscribe_latest(&mut c, group).await;
            let mut seen: Vec<(u64, bool)> = before
                .iter()
                .map(|m| (m["data"]["n"].as_u64().unwrap(), m["snapshot"] == true))
                .collect();
            while seen.last().map(|s| s.0) != Some(LAST) {
                let m = c.recv_json().await;
                assert_eq!(m["type"], "message", "{m}");
                seen.push((m["data"]["n"].as_u64().unwrap(), m["snapshot"] == true));
            }
            seen
        }));
    }
    for n in 1..=LAST {
        let p = Publication {
            group: group.into(),
            data: RawValue::from_string(json!({"n": n}).to_string()).unwrap(),
            position: None,
            ts: None,
            trace: None,
            seq: None,
        };
        publisher.state.broker.publish(vec![p]).await.unwrap();
        published.store(n, Ordering::Release);
        if n % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let (mut with_snapshot, mut joined_midway) = (0, 0);
    for reader in readers {
        let seen = reader.await.unwrap();
        let (first, marked) = seen[0];
        if marked {
            with_snapshot += 1;
        } else {
            assert_eq!(
                first, 1,
                "no snapshot: the group had nothing yet ({seen:?})"
            );
        }
        if first > 1 {
            joined_midway += 1;
        }
        assert!(
            seen[1..].iter().all(|s| !s.1),
            "only the first is a snapshot"
        );
        let values: Vec<u64> = seen.iter().map(|s| s.0).collect();
        let want: Vec<u64> = (first..=LAST).collect();
        assert_eq!(values, want, "consecutive, no gap, no duplicate");
    }
    println!(
        "race on {group} over {} node(s): {READERS} readers, {with_snapshot} got a snapshot, \
         {joined_midway} joined mid-run",
        readers_on.len()
    );
    assert!(
        joined_midway > READERS / 2,
        "the readers joined while publishing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publications_are_neither_lost_nor_repeated_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(snapshot_config(dir.path())).await;
    race(&node, &[&node], "market.RACE").await;
    race(&node, &[&node], "h.race").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publications_are_neither_lost_nor_repeated_over_redis() {
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = two_redis_nodes(dir.path(), &prefix).await;
    race(&a, &[&a, &b], "market.RACE").await;
    race(&a, &[&b], "h.race").await;
}

/// What a snapshot group costs on Redis, per operation, measured here on
/// one shared Redis: printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_per_operation_is_printed() {
    const PUBLISHES: u32 = 2000;
    const SUBSCRIBES: u32 = 300;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(with_redis(snapshot_config(dir.path()), &prefix, "a")).await;
    let publish = |group: &str, n: u32| Publication {
        group: group.into(),
        data: RawValue::from_string(format!(r#"{{"symbol":"X","price":{n}}}"#)).unwrap(),
        position: None,
        ts: None,
        trace: None,
        seq: None,
    };
    let mut per_publish = Vec::new();
    for group in ["plain.cost", "market.cost", "h.cost"] {
        let started = Instant::now();
        for n in 0..PUBLISHES {
            node.state
                .broker
                .publish(vec![publish(group, n)])
                .await
                .unwrap();
        }
        per_publish.push((group, started.elapsed() / PUBLISHES));
    }
    let token = node.issue_token("cost").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let mut per_subscribe = Vec::new();
    for (group, latest) in [
        ("market.cost", false),
        ("market.cost", true),
        ("h.cost", true),
    ] {
        let started = Instant::now();
        for _ in 0..SUBSCRIBES {
            c.send_json(json!({"type": "subscribe", "group": group, "latest": latest}))
                .await;
            loop {
                if c.recv_json().await["type"] == "subscribed" {
                    break;
                }
            }
            let r = c
                .request(json!({"type": "unsubscribe", "group": group}))
                .await;
            assert_eq!(r["type"], "unsubscribed");
        }
        per_subscribe.push((group, latest, started.elapsed() / SUBSCRIBES));
    }
    for (group, took) in per_publish {
        println!("publish to {group}: {took:?} per publish ({PUBLISHES}, one at a time)");
    }
    for (group, latest, took) in per_subscribe {
        println!("subscribe+unsubscribe {group} latest={latest}: {took:?} per pair ({SUBSCRIBES})");
    }
}
