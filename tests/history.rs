//! History and recovery (protocol sections 3-5): offsets and epochs on
//! messages and `subscribed` replies, the publish API's `offsets`, replay
//! with `since`, `recovered: false` when history cannot cover the gap, and
//! a soak where clients reconnect all the time while messages are published
//! without pause, checking every offset arrives exactly once.
//!
//! The same checks run on the embedded broker and on Redis (one node, two
//! nodes, and a Redis Cluster with sharded pub/sub).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::*;
use serde_json::{Value, json};
use wsgate::config::Config;

fn history_config(dir: &std::path::Path, size: usize) -> Config {
    let mut c = test_config(dir);
    c.history.groups = vec!["h.*".into()];
    c.history.size = size;
    c.limits.messages_per_second = 10_000;
    c
}

fn with_redis(mut c: Config, url: &str, prefix: &str, node: &str) -> Config {
    c.server.node_id = Some(node.into());
    c.redis.url = Some(url.into());
    c.redis.prefix = prefix.into();
    c
}

/// Two nodes, `a` and `b`, on the shared Redis under `prefix`.
async fn two_redis_nodes(dir: &std::path::Path, size: usize, prefix: &str) -> (TestNode, TestNode) {
    let node = |id| {
        spawn(with_redis(
            history_config(dir, size),
            SHARED_REDIS,
            prefix,
            id,
        ))
    };
    (node("a").await, node("b").await)
}

/// Sends `subscribe` (with `since` if given) and collects the replayed
/// messages up to the `subscribed` reply.
async fn subscribe_since(
    c: &mut Client,
    group: &str,
    since: Option<&Value>,
) -> (Vec<Value>, Value) {
    let mut req = json!({"type": "subscribe", "group": group, "id": 7});
    if let Some(since) = since {
        req["since"] = since.clone();
    }
    c.send_json(req).await;
    let mut replay = Vec::new();
    loop {
        let f = c.recv_json().await;
        match f["type"].as_str() {
            Some("message") => replay.push(f),
            Some("subscribed") => return (replay, f),
            _ => panic!("unexpected frame {f}"),
        }
    }
}

fn since_of(frame: &Value) -> Value {
    json!({"offset": frame["offset"], "epoch": frame["epoch"]})
}

/// Publishes through `publisher`'s API; returns the offsets it answered.
async fn publish_many(publisher: &TestNode, messages: Vec<Value>) -> Vec<Value> {
    let (status, body) = publisher
        .api_post("/api/v1/publish", json!({"messages": messages}))
        .await;
    assert_eq!(status, 200, "{body}");
    body["offsets"].as_array().expect("offsets").clone()
}

/// The recovery rules, with the publisher on `publisher` and the client on
/// `reader` (the same node, or two nodes over Redis).
async fn recovery_scenario(publisher: &TestNode, reader: &TestNode) {
    let token = reader.issue_token("1").await;

    // A fresh subscription carries the group's position: offset 0 of the
    // epoch of a group never published (nothing is stored for it until
    // the first publication starts the group's epoch).
    let (mut c, _) = Client::authed(&reader.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(&mut c, "h.ticks", None).await;
    assert!(replay.is_empty());
    assert_eq!(sub["offset"], 0, "{sub}");
    let unpublished = sub["epoch"].as_str().expect("epoch").to_string();
    assert!(unpublished.starts_with('~'), "{sub}");
    assert!(sub.get("recovered").is_none(), "{sub}");

    // The API answers one offset per message; null for a group without history.
    let offsets = publish_many(
        publisher,
        vec![
            json!({"group": "h.ticks", "data": {"n": 1}}),
            json!({"group": "plain", "data": {"n": 0}}),
            json!({"group": "h.ticks", "data": {"n": 2}}),
        ],
    )
    .await;
    assert_eq!(offsets, vec![json!(1), Value::Null, json!(2)]);
    let mut last = Value::Null;
    let mut epoch = String::new();
    for n in 1..=2 {
        let m = c.recv_json().await;
        assert_eq!(m["data"]["n"], n, "{m}");
        assert_eq!(m["offset"], n);
        if n == 1 {
            epoch = m["epoch"].as_str().expect("epoch").to_string();
            assert!(!epoch.starts_with('~') && !epoch.is_empty(), "{m}");
        }
        assert_eq!(m["epoch"], epoch.as_str());
        last = since_of(&m);
    }
    c.expect_silence(Duration::from_millis(100)).await;
    drop(c);

    // Missed while away: replayed in order, then `recovered: true`.
    for n in 3..=7 {
        publish_many(
            publisher,
            vec![json!({"group": "h.ticks", "data": {"n": n}})],
        )
        .await;
    }
    let (mut c, _) = Client::authed(&reader.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(&mut c, "h.ticks", Some(&last)).await;
    let got: Vec<i64> = replay
        .iter()
        .map(|m| m["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(got, vec![3, 4, 5, 6, 7]);
    assert_eq!(sub["recovered"], true, "{sub}");
    assert_eq!(sub["offset"], 7);
    assert_eq!(sub["epoch"], epoch.as_str());
    assert_eq!(sub["id"], 7);
    // Live again, after the replay.
    publish_many(
        publisher,
        vec![json!({"group": "h.ticks", "data": {"n": 8}})],
    )
    .await;
    let m = c.recv_json().await;
    assert_eq!(
        (m["data"]["n"].clone(), m["offset"].clone()),
        (json!(8), json!(8))
    );

    // Nothing missed: recovered with an empty replay.
    let (mut c2, _) = Client::authed(&reader.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(
        &mut c2,
        "h.ticks",
        Some(&json!({"offset": 8, "epoch": epoch})),
    )
    .await;
    assert!(replay.is_empty());
    assert_eq!(sub["recovered"], true);

    // Another epoch, or an offset from the future: not recoverable.
    for since in [
        json!({"offset": 3, "epoch": "not-the-epoch"}),
        json!({"offset": 99, "epoch": epoch}),
    ] {
        let (mut c3, _) = Client::authed(&reader.ws_url(), &token).await;
        let (replay, sub) = subscribe_since(&mut c3, "h.ticks", Some(&since)).await;
        assert!(replay.is_empty(), "{since}");
        assert_eq!(sub["recovered"], false, "{since}: {sub}");
        assert_eq!(sub["offset"], 8);
    }

    // Older than history holds (size 10): not recoverable, nothing replayed.
    for n in 9..=25 {
        publish_many(
            publisher,
            vec![json!({"group": "h.ticks", "data": {"n": n}})],
        )
        .await;
    }
    let (mut c4, _) = Client::authed(&reader.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(
        &mut c4,
        "h.ticks",
        Some(&json!({"offset": 8, "epoch": epoch})),
    )
    .await;
    assert!(replay.is_empty());
    assert_eq!(sub["recovered"], false);
    assert_eq!(sub["offset"], 25);
    // Within it: exactly the last ten are there.
    let (mut c5, _) = Client::authed(&reader.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(
        &mut c5,
        "h.ticks",
        Some(&json!({"offset": 15, "epoch": epoch})),
    )
    .await;
    assert_eq!(replay.len(), 10);
    assert_eq!(replay[0]["offset"], 16);
    assert_eq!(sub["recovered"], true);

    // A malformed `since` is a bad request.
    let reply = c5
        .request(json!({"type": "subscribe", "group": "h.x", "since": {"offset": "x"}}))
        .await;
    assert_eq!(reply["code"], "bad_request", "{reply}");

    // A group without history: no offsets, and `since` cannot recover.
    let (replay, sub) =
        subscribe_since(&mut c5, "plain", Some(&json!({"offset": 1, "epoch": "e"}))).await;
    assert!(replay.is_empty());
    assert_eq!(sub["recovered"], false);
    assert!(sub.get("offset").is_none(), "{sub}");
    publisher.publish("plain", json!({"p": 1})).await;
    let m = c5.recv_json().await;
    assert_eq!(m["group"], "plain");
    assert!(m.get("offset").is_none(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_offsets_replay_and_recovered_flag() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(history_config(dir.path(), 10)).await;
    recovery_scenario(&node, &node).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_offsets_replay_across_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let (a, b) = two_redis_nodes(dir.path(), 10, &prefix).await;
    recovery_scenario(&a, &b).await;
    a.shutdown().await;
    b.shutdown().await;
}

/// Losing a group's history in Redis (a flush, an expiry) starts a new
/// epoch: a client with an old position is told `recovered: false`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_history_loss_changes_the_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let node = spawn(with_redis(
        history_config(dir.path(), 10),
        SHARED_REDIS,
        &prefix,
        "a",
    ))
    .await;
    let token = node.issue_token("1").await;
    let offsets = publish_many(
        &node,
        (1..=3)
            .map(|n| json!({"group": "h.e", "data": {"n": n}}))
            .collect(),
    )
    .await;
    assert_eq!(offsets, vec![json!(1), json!(2), json!(3)]);
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let (_, sub) = subscribe_since(&mut c, "h.e", None).await;
    let old_epoch = sub["epoch"].clone();
    assert_eq!(sub["offset"], 3);
    // The keys live in the slot of the group's channel.
    let channel = format!("{prefix}group:h.e");
    let removed = redis_cli(
        6379,
        &[
            "del",
            &format!("{{{channel}}}:meta"),
            &format!("{{{channel}}}:history"),
        ],
    );
    assert_eq!(removed, vec!["2"], "both history keys existed");
    let offsets = publish_many(&node, vec![json!({"group": "h.e", "data": {"n": 4}})]).await;
    assert_eq!(
        offsets,
        vec![json!(1)],
        "offsets start again under a new epoch"
    );
    let m = c.recv_json().await;
    assert_ne!(m["epoch"], old_epoch);
    let (mut c2, _) = Client::authed(&node.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(
        &mut c2,
        "h.e",
        Some(&json!({"offset": 2, "epoch": old_epoch})),
    )
    .await;
    assert!(replay.is_empty());
    assert_eq!(sub["recovered"], false);
    assert_eq!(sub["offset"], 1);
    node.shutdown().await;
}

/// Redis Cluster: the script's keys and its SPUBLISH share one shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_history() {
    let rc = RedisCluster::start(3);
    let dir = tempfile::tempdir().unwrap();
    let prefix = random_prefix();
    let mut cfg = with_redis(history_config(dir.path(), 10), &rc.url(), &prefix, "a");
    cfg.redis.cluster = true;
    let node = spawn(cfg).await;
    let token = node.issue_token("1").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let groups = ["h.AAPL", "h.MSFT", "h.GOOG", "h.TSLA"];
    for g in groups {
        let (_, sub) = subscribe_since(&mut c, g, None).await;
        assert_eq!(sub["offset"], 0);
    }
    let offsets = publish_many(
        &node,
        groups
            .iter()
            .flat_map(|g| (0..2).map(move |n| json!({"group": g, "data": {"n": n}})))
            .collect(),
    )
    .await;
    assert_eq!(offsets, [1, 2, 1, 2, 1, 2, 1, 2].map(|n| json!(n)).to_vec());
    let mut seen = BTreeMap::new();
    for _ in 0..8 {
        let m = c.recv_json().await;
        seen.entry(m["group"].as_str().unwrap().to_string())
            .or_insert_with(Vec::new)
            .push(m["offset"].as_u64().unwrap());
    }
    for g in groups {
        assert_eq!(seen[g], vec![1, 2], "{g}");
    }
    drop(c);
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let (replay, sub) = subscribe_since(
        &mut c,
        "h.MSFT",
        Some(&json!({"offset": 0, "epoch": seen_epoch(&node, "h.MSFT").await})),
    )
    .await;
    assert_eq!(replay.len(), 2);
    assert_eq!(sub["recovered"], true);
    node.shutdown().await;
}

/// The current epoch of a group, as a fresh subscription reports it.
async fn seen_epoch(node: &TestNode, group: &str) -> Value {
    let token = node.issue_token("probe").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let (_, sub) = subscribe_since(&mut c, group, None).await;
    sub["epoch"].clone()
}

/// What one reconnecting reader saw.
#[derive(Default)]
struct Tally {
    received: BTreeMap<u64, u32>,
    reconnects: u32,
    not_recovered: u32,
}

/// Messages are published without pause while readers keep dropping their
/// connection and coming back with `since` (to either node): afterwards
/// every reader holds every offset from its first one to the last, each
/// exactly once.
async fn soak(publisher: &TestNode, readers_on: &[&TestNode], run: Duration) {
    const READERS: usize = 4;
    const GROUP: &str = "h.soak";
    let token = publisher.issue_token("soak").await;
    let urls: Vec<String> = readers_on.iter().map(|n| n.ws_url()).collect();
    let api = publisher.api_url("/api/v1/publish");

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (urls, token, stop) = (urls.clone(), token.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            let mut since: Option<Value> = None;
            let mut round = 0usize;
            loop {
                let url = &urls[(r + round) % urls.len()];
                round += 1;
                let (mut c, _) = Client::authed(url, &token).await;
                let (replay, sub) = subscribe_since(&mut c, GROUP, since.as_ref()).await;
                if since.is_some() {
                    tally.reconnects += 1;
                    if sub["recovered"] != true {
                        tally.not_recovered += 1;
                    }
                }
                for m in &replay {
                    *tally
                        .received
                        .entry(m["offset"].as_u64().unwrap())
                        .or_default() += 1;
                }
                let mut last = replay
                    .last()
                    .map(since_of)
                    .unwrap_or_else(|| since_of(&sub));
                // Read live for a while (a different while each round),
                // then drop the connection without a word.
                let done = stop.load(std::sync::atomic::Ordering::Acquire);
                let stay = Duration::from_millis(if done {
                    400
                } else {
                    40 + (round as u64 * 37 + r as u64 * 53) % 160
                });
                let until = tokio::time::Instant::now() + stay;
                loop {
                    use futures_util::StreamExt;
                    let next = tokio::time::timeout_at(until, c.ws.next()).await;
                    let Ok(Some(Ok(msg))) = next else { break };
                    if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
                        let m: Value = serde_json::from_str(&t).unwrap();
                        assert_eq!(m["type"], "message", "{m}");
                        *tally
                            .received
                            .entry(m["offset"].as_u64().unwrap())
                            .or_default() += 1;
                        last = since_of(&m);
                    }
                }
                since = Some(last);
                if done {
                    return tally;
                }
            }
        }));
    }

    // The publisher: batches of 5, as fast as the API answers, for `run`.
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut published = 0u64;
    let mut last_offset = 0u64;
    while started.elapsed() < run {
        let messages: Vec<Value> = (0..5)
            .map(|i| json!({"group": GROUP, "data": {"i": published + i}}))
            .collect();
        let body: Value = http
            .post(&api)
            .bearer_auth(API_KEY)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for o in body["offsets"].as_array().unwrap() {
            let o = o.as_u64().unwrap();
            assert_eq!(o, last_offset + 1, "API offsets are consecutive");
            last_offset = o;
        }
        published += 5;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);

    let (mut reconnects, mut duplicates, mut gaps, mut not_recovered) = (0, 0, 0, 0);
    for reader in readers {
        let tally = reader.await.unwrap();
        reconnects += tally.reconnects;
        not_recovered += tally.not_recovered;
        let first = *tally.received.keys().next().expect("received something");
        duplicates += tally.received.values().filter(|&&n| n > 1).count();
        gaps += (first..=last_offset)
            .filter(|o| !tally.received.contains_key(o))
            .count();
        assert_eq!(
            tally.received.keys().last().copied(),
            Some(last_offset),
            "every reader got to the last offset"
        );
    }
    println!(
        "soak over {} node(s): {published} messages published, {READERS} readers, \
         {reconnects} reconnects, {not_recovered} not recovered, {duplicates} duplicates, {gaps} gaps",
        readers_on.len()
    );
    assert_eq!(not_recovered, 0, "history (size 100000) covers every gap");
    assert_eq!(duplicates, 0, "no offset arrives twice");
    assert_eq!(gaps, 0, "no offset is missing");
    assert!(
        reconnects >= 40,
        "the readers reconnected often ({reconnects})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_embedded_no_gap_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(history_config(dir.path(), 100_000)).await;
    soak(&node, &[&node], Duration::from_secs(3)).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_two_nodes_over_redis_no_gap_no_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let (a, b) = two_redis_nodes(dir.path(), 100_000, &prefix).await;
    soak(&a, &[&a, &b], Duration::from_secs(4)).await;
    a.shutdown().await;
    b.shutdown().await;
}
