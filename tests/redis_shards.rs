//! `redis.shards`: independent Redis servers, each group on one of them.
//! Real nodes over three throwaway `redis-server`s and one Postgres: every
//! group's channel, history and presence sit on the shard `shard_of`
//! names, delivery and the cluster-wide parts (listing, control, groups
//! API) work across them, and losing one shard stops only its groups.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::redis_servers::*;
use common::*;
use serde_json::{Value, json};
use wsgate::broker::redis::shard_of;
use wsgate::config::Config;

const SHARDS: usize = 3;

struct Shards {
    servers: Vec<RedisProc>,
    _dir: tempfile::TempDir,
}

impl Shards {
    fn start() -> Shards {
        let dir = tempfile::tempdir().unwrap();
        let servers = (0..SHARDS).map(|_| RedisProc::start(dir.path())).collect();
        Shards { servers, _dir: dir }
    }

    fn urls(&self) -> Vec<String> {
        self.servers.iter().map(RedisProc::url).collect()
    }

    /// The shard that holds `group`'s channel, by asking every server.
    fn subscribed_on(&self, prefix: &str, group: &str) -> Vec<usize> {
        let channel = format!("{prefix}group:{group}");
        (0..SHARDS)
            .filter(|&i| {
                redis_cli(self.servers[i].port, &["pubsub", "numsub", &channel])
                    .get(1)
                    .is_some_and(|n| n != "0")
            })
            .collect()
    }

    fn keys_on(&self, shard: usize, pattern: &str) -> Vec<String> {
        redis_cli(self.servers[shard].port, &["--scan", "--pattern", pattern])
            .into_iter()
            .filter(|k| !k.is_empty())
            .collect()
    }
}

fn node_config(
    dir: &std::path::Path,
    node: &str,
    shards: &Shards,
    prefix: &str,
    pg: &PgDb,
) -> Config {
    let mut c = redis_node_config(dir, node, &shards.urls()[0], prefix, &pg.url);
    c.redis.shards = shards.urls();
    c.history.groups = vec!["h.*".into()];
    c
}

/// Two nodes over three fresh shards, on their own key prefix and database.
struct TwoNodes {
    shards: Shards,
    prefix: RedisPrefix,
    a: TestNode,
    b: TestNode,
    _pg: PgDb,
    _dir: tempfile::TempDir,
}

impl TwoNodes {
    async fn start() -> TwoNodes {
        let shards = Shards::start();
        let pg = PgDb::create().await;
        let dir = tempfile::tempdir().unwrap();
        let prefix = RedisPrefix::random();
        let a = spawn(node_config(dir.path(), "node-a", &shards, &prefix, &pg)).await;
        let b = spawn(node_config(dir.path(), "node-b", &shards, &prefix, &pg)).await;
        TwoNodes {
            shards,
            prefix,
            a,
            b,
            _pg: pg,
            _dir: dir,
        }
    }

    async fn shutdown(self) {
        self.a.shutdown().await;
        self.b.shutdown().await;
    }
}

/// Groups of every shard: the first `per_shard` names `base.N` that land
/// on each shard.
fn groups_per_shard(base: &str, per_shard: usize) -> Vec<Vec<String>> {
    let mut by_shard = vec![Vec::new(); SHARDS];
    for i in 0.. {
        let g = format!("{base}.{i}");
        let s = shard_of(&g, SHARDS);
        if by_shard[s].len() < per_shard {
            by_shard[s].push(g);
        }
        if by_shard.iter().all(|v| v.len() == per_shard) {
            break;
        }
    }
    by_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_live_on_their_shard_and_deliver_across_nodes() {
    let n = TwoNodes::start().await;
    let (a, b, shards, prefix) = (&n.a, &n.b, &n.shards, &n.prefix);
    let token = a.issue_token("7").await;
    let by_shard = groups_per_shard("room", 4);
    let groups: Vec<String> = by_shard.iter().flatten().cloned().collect();
    let (mut on_a, _) = Client::authed(&a.ws_url(), &token).await;
    let (mut on_b, _) = Client::authed(&b.ws_url(), &token).await;
    for g in &groups {
        on_a.subscribe(g).await;
        on_b.subscribe(g).await;
    }
    // Each group's channel is held on its shard only, by both nodes.
    for (shard, gs) in by_shard.iter().enumerate() {
        for g in gs {
            assert_eq!(shards.subscribed_on(prefix, g), vec![shard], "{g}");
            let channel = format!("{prefix}group:{g}");
            let n = redis_cli(shards.servers[shard].port, &["pubsub", "numsub", &channel]);
            assert_eq!(n.get(1).map(String::as_str), Some("2"), "{g}: {n:?}");
        }
    }
    // One batch through node b's API, across all shards: every message
    // arrives on both nodes, each group's in order.
    let messages: Vec<Value> = (0..5)
        .flat_map(|i| groups.iter().map(move |g| json!({"group": g, "data": i})))
        .collect();
    let (status, body) = b
        .api_post("/api/v1/publish", json!({"messages": messages}))
        .await;
    assert_eq!(status, 200, "{body}");
    for client in [&mut on_a, &mut on_b] {
        let mut next: HashMap<String, i64> = HashMap::new();
        for _ in 0..messages.len() {
            let m = client.recv_json().await;
            let g = m["group"].as_str().unwrap().to_string();
            let expected = next.entry(g.clone()).or_insert(0);
            assert_eq!(m["data"], *expected, "{g} in order");
            *expected += 1;
        }
        assert!(next.values().all(|&n| n == 5), "{next:?}");
    }
    // Presence of a group is read from its shard; the listing and the
    // occupied groups from all of them.
    let g = &by_shard[2][0];
    let (status, p) = a.api_get(&format!("/api/v1/groups/{g}/presence")).await;
    assert_eq!((status, p["count"].as_u64()), (200, Some(2)), "{p}");
    assert!(
        !shards
            .keys_on(2, &format!("{prefix}presence:{g}:*"))
            .is_empty()
    );
    assert!(
        shards
            .keys_on(0, &format!("{prefix}presence:{g}:*"))
            .is_empty()
    );
    let (_, listing) = b.api_get("/api/v1/cluster").await;
    assert_eq!(
        listing["nodes"].as_array().map(Vec::len),
        Some(2),
        "{listing}"
    );
    let (status, occupied) = a.api_get("/api/v1/groups?pattern=room.*&limit=100").await;
    assert_eq!(status, 200, "{occupied}");
    let listed: HashSet<String> = occupied["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, groups.iter().cloned().collect::<HashSet<_>>());
    // A control command (disconnect the user) reaches both nodes.
    let (status, _) = a
        .api_post("/api/v1/disconnect", json!({"user_id": "7"}))
        .await;
    assert_eq!(status, 200);
    for client in [&mut on_a, &mut on_b] {
        assert!(matches!(client.expect_close().await, Closed::Code(..)));
    }
    // Once nobody is left, the shards hold no subscription.
    eventually(Duration::from_secs(5), "subscriptions dropped", || async {
        groups
            .iter()
            .all(|g| shards.subscribed_on(prefix, g).is_empty())
    })
    .await;
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_stays_on_its_shard_and_recovers() {
    let n = TwoNodes::start().await;
    let (a, b, shards, prefix) = (&n.a, &n.b, &n.shards, &n.prefix);
    let token = a.issue_token("8").await;
    let groups: Vec<String> = groups_per_shard("h", 1).into_iter().flatten().collect();
    let (mut client, _) = Client::authed(&b.ws_url(), &token).await;
    let mut positions = Vec::new();
    for g in &groups {
        let reply = client
            .request(json!({"type": "subscribe", "group": g}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        a.publish(g, json!("first")).await;
        let m = client.recv_json().await;
        positions.push(json!({"offset": m["offset"], "epoch": m["epoch"]}));
    }
    drop(client);
    for g in &groups {
        for i in 0..3 {
            a.publish(g, json!(i)).await;
        }
    }
    // A client back on the other node recovers each group from its shard.
    let (mut back, _) = Client::authed(&a.ws_url(), &token).await;
    for (g, since) in groups.iter().zip(&positions) {
        back.send_json(json!({"type": "subscribe", "group": g, "since": since}))
            .await;
        for i in 0..3 {
            let m = back.recv_json().await;
            assert_eq!(
                (m["type"].as_str(), &m["data"]),
                (Some("message"), &json!(i)),
                "{m}"
            );
        }
        let reply = back.recv_json().await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["recovered"], true, "{reply}");
        let shard = shard_of(g, SHARDS);
        for s in 0..SHARDS {
            let kept = shards.keys_on(s, &format!("{{{prefix}group:{g}}}:*"));
            assert_eq!(!kept.is_empty(), s == shard, "{g} on shard {s}: {kept:?}");
        }
    }
    n.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_shard_stops_only_its_groups() {
    let mut n = TwoNodes::start().await;
    let (a, b, shards) = (&n.a, &n.b, &mut n.shards);
    let token = a.issue_token("9").await;
    let by_shard = groups_per_shard("room", 1);
    let (mut client, _) = Client::authed(&b.ws_url(), &token).await;
    for g in by_shard.iter().flatten() {
        client.subscribe(g).await;
    }
    let readyz = a.metrics_url("/readyz");
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    shards.servers[1].kill();
    // Not ready while a shard is away: the node cannot serve all groups.
    eventually(Duration::from_secs(5), "readyz 503", || async {
        reqwest::get(&readyz).await.unwrap().status() == 503
    })
    .await;
    assert_eq!(a.metric("wsgate_redis_up").await, 0.0);
    // The other shards' groups still deliver across nodes meanwhile.
    for shard in [0, 2] {
        let g = &by_shard[shard][0];
        a.publish(g, json!(shard)).await;
        let m = client.recv_json().await;
        assert_eq!(
            (m["group"].as_str(), &m["data"]),
            (Some(g.as_str()), &json!(shard))
        );
    }
    let (status, _) = a
        .api_post(
            "/api/v1/publish",
            json!({"group": by_shard[1][0], "data": 1}),
        )
        .await;
    assert_eq!(status, 503, "a publish to the lost shard's group fails");
    shards.servers[1].restart();
    let readyz_b = b.metrics_url("/readyz");
    eventually(Duration::from_secs(10), "both ready again", || async {
        reqwest::get(&readyz).await.unwrap().status() == 200
            && reqwest::get(&readyz_b).await.unwrap().status() == 200
    })
    .await;
    assert_eq!(a.metric("wsgate_redis_up").await, 1.0);
    // The restarted shard's group delivers again, resubscribed by the node.
    let g = &by_shard[1][0];
    a.publish(g, json!("back")).await;
    let m = client.recv_json().await;
    assert_eq!(
        (m["group"].as_str(), &m["data"]),
        (Some(g.as_str()), &json!("back"))
    );
    n.shutdown().await;
}
