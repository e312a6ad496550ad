//! Cluster mode (protocol section 7): several real nodes on one Redis and one
//! Postgres, real clients, cross-node delivery, presence, the node listing,
//! cluster-wide disconnect/revoke, Redis outages, the auth cache, and Redis
//! Cluster with sharded pub/sub.

mod common;

use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::*;
use serde_json::{Value, json};
use wsgate::config::Config;

fn node_config(
    dir: &std::path::Path,
    node: &str,
    redis_url: &str,
    prefix: &str,
    pg: &PgDb,
) -> Config {
    redis_node_config(dir, node, redis_url, prefix, &pg.url)
}

/// Nodes on one Redis key prefix (deleted from the shared Redis on drop).
struct Cluster {
    nodes: Vec<TestNode>,
    prefix: RedisPrefix,
    _dir: tempfile::TempDir,
}

async fn cluster(n: usize, redis_url: &str, pg: &PgDb) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let mut nodes = Vec::new();
    for i in 0..n {
        let name = format!("node-{}", (b'a' + i as u8) as char);
        nodes.push(spawn(node_config(dir.path(), &name, redis_url, &prefix, pg)).await);
    }
    Cluster {
        nodes,
        prefix,
        _dir: dir,
    }
}

impl Cluster {
    async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

fn envelope(group: &str, data: Value) -> String {
    json!({"v": 1, "group": group, "data": data}).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fan_out_api_raw_publish_and_order() {
    let pg = PgDb::create().await;
    let c = cluster(3, SHARED_REDIS, &pg).await;
    let token = c.nodes[0].issue_token("1").await;
    let mut clients = Vec::new();
    for n in &c.nodes {
        let (mut client, w) = Client::authed(&n.ws_url(), &token).await;
        assert_eq!(w["node"], n.config.server.node_id.clone().unwrap());
        client.subscribe("market.AAPL").await;
        clients.push(client);
    }
    // A publish through any node's API reaches all three.
    for (i, n) in c.nodes.iter().enumerate() {
        n.publish("market.AAPL", json!({"via": i})).await;
        for client in &mut clients {
            assert_eq!(client.recv_json().await["data"], json!({"via": i}));
        }
    }
    // A plain Redis PUBLISH with the envelope reaches all three.
    let channel = format!("{}group:market.AAPL", c.prefix);
    let n = redis_cli(
        6379,
        &["publish", &channel, &envelope("market.AAPL", json!("raw"))],
    );
    assert_eq!(n, vec!["3"], "three nodes hold the subscription");
    for client in &mut clients {
        assert_eq!(client.recv_json().await["data"], "raw");
    }
    // 1,000 sequential publishes arrive in order everywhere.
    let total = 1000;
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for i in 0..total {
                    let m = client.recv_json().await;
                    assert_eq!(m["data"], i, "in order");
                }
            })
        })
        .collect();
    let http = reqwest::Client::new();
    let url = c.nodes[1].api_url("/api/v1/publish");
    for i in 0..total {
        let r = http
            .post(&url)
            .bearer_auth(API_KEY)
            .json(&json!({"group": "market.AAPL", "data": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for r in readers {
        r.await.unwrap();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_local_members() {
    let pg = PgDb::create().await;
    let c = cluster(2, SHARED_REDIS, &pg).await;
    let token = c.nodes[0].issue_token("1").await;
    let channels = || {
        let mut v = redis_cli(
            6379,
            &["pubsub", "channels", &format!("{}group:*", c.prefix)],
        );
        v.sort();
        v
    };
    let numsub = |group: &str| -> i64 {
        let out = redis_cli(
            6379,
            &["pubsub", "numsub", &format!("{}group:{group}", c.prefix)],
        );
        out[1].parse().unwrap()
    };
    let (mut a, _) = Client::authed(&c.nodes[0].ws_url(), &token).await;
    a.subscribe("only-a").await;
    let (mut a2, _) = Client::authed(&c.nodes[0].ws_url(), &token).await;
    a2.subscribe("only-a").await;
    assert_eq!(
        numsub("only-a"),
        1,
        "one subscription per node, not per client"
    );
    assert_eq!(numsub("user.1"), 1, "node-b has no member of user.1 yet");
    let (mut b, _) = Client::authed(&c.nodes[1].ws_url(), &token).await;
    b.subscribe("only-b").await;
    assert_eq!(numsub("user.1"), 2);
    let p = &c.prefix;
    assert_eq!(
        channels(),
        vec![
            format!("{p}group:only-a"),
            format!("{p}group:only-b"),
            format!("{p}group:user.1")
        ]
    );
    // The last local member leaving drops the node's subscription.
    a.request(json!({"type": "unsubscribe", "group": "only-a"}))
        .await;
    assert_eq!(numsub("only-a"), 1, "a2 is still a member");
    drop(a2);
    eventually(Duration::from_secs(3), "only-a unsubscribed", || async {
        numsub("only-a") == 0
    })
    .await;
    drop(b);
    eventually(Duration::from_secs(3), "only-b unsubscribed", || async {
        numsub("only-b") == 0
    })
    .await;
    assert_eq!(numsub("user.1"), 1, "a is still connected on node-a");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_and_listing_across_nodes_and_a_killed_node_expires() {
    let pg = PgDb::create().await;
    let c = cluster(2, SHARED_REDIS, &pg).await;
    let token = c.nodes[0].issue_token("7").await;
    // A third node as a real process, to SIGKILL it.
    let dir = tempfile::tempdir().unwrap();
    let mut killed = BinNode::start(
        dir.path(),
        &redis_node_env("node-killed", &c.prefix, &pg.url),
    );
    let mut clients = Vec::new();
    for url in [
        c.nodes[0].ws_url(),
        c.nodes[1].ws_url(),
        killed.ws_url(),
        killed.ws_url(),
    ] {
        let (mut client, _) = Client::authed(&url, &token).await;
        client.subscribe("room").await;
        clients.push(client);
    }
    let (status, p) = c.nodes[0].api_get("/api/v1/groups/room/presence").await;
    assert_eq!(status, 200);
    assert_eq!(p["count"], 4, "{p}");
    let mut per_node: Vec<String> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node"].as_str().unwrap().to_string())
        .collect();
    per_node.sort();
    assert_eq!(per_node, ["node-a", "node-b", "node-killed", "node-killed"]);
    let listing = |v: &Value| -> Vec<(String, u64)> {
        let mut nodes: Vec<(String, u64)> = v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["node"].as_str().unwrap().to_string(),
                    n["connections"].as_u64().unwrap(),
                )
            })
            .collect();
        nodes.sort();
        nodes
    };
    eventually(
        Duration::from_secs(3),
        "listing shows all nodes with their counts",
        || async {
            let (_, v) = c.nodes[1].api_get("/api/v1/cluster").await;
            listing(&v)
                == vec![
                    ("node-a".into(), 1),
                    ("node-b".into(), 1),
                    ("node-killed".into(), 2),
                ]
        },
    )
    .await;

    killed.signal("KILL");
    killed.wait_exit(Duration::from_secs(5));
    let gone = eventually(Duration::from_secs(4), "killed node expires", || async {
        let (_, p) = c.nodes[0].api_get("/api/v1/groups/room/presence").await;
        let (_, v) = c.nodes[0].api_get("/api/v1/cluster").await;
        p["count"] == 2 && listing(&v).len() == 2
    })
    .await;
    println!("killed node left presence and the listing after {gone:?} (node_ttl 1 s)");
    // The surviving nodes are unaffected.
    c.nodes[1].publish("room", json!("still here")).await;
    for client in clients.iter_mut().take(2) {
        assert_eq!(client.recv_json().await["data"], "still here");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_and_revoke_act_on_every_node() {
    let pg = PgDb::create().await;
    let c = cluster(3, SHARED_REDIS, &pg).await;
    let t42 = c.nodes[0].issue_token("42").await;
    let t42b = c.nodes[0].issue_token("42").await;
    let t43 = c.nodes[0].issue_token("43").await;
    let mut on_each = Vec::new();
    for n in &c.nodes {
        on_each.push(Client::authed(&n.ws_url(), &t42).await.0);
    }
    let (mut other_token, _) = Client::authed(&c.nodes[2].ws_url(), &t42b).await;
    let (mut other_user, _) = Client::authed(&c.nodes[1].ws_url(), &t43).await;

    // Revoke through node-b: every socket of that token, on every node, gets 4003.
    let start = Instant::now();
    let (status, _) = c.nodes[1]
        .api_post("/api/v1/revoke", json!({"token": t42}))
        .await;
    assert_eq!(status, 200);
    for client in &mut on_each {
        assert_eq!(
            code(client.close_within(Duration::from_secs(2)).await),
            4003
        );
    }
    println!(
        "revoke closed 3 sockets on 3 nodes in {:?}",
        start.elapsed()
    );
    assert_eq!(
        other_token.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
    // The revoked token is refused on every node, including ones that had it cached.
    for n in &c.nodes {
        let mut again = Client::connect(&n.ws_url()).await;
        again.send_json(json!({"token": t42})).await;
        assert_eq!(code(again.expect_close().await), 4003);
    }
    // Disconnect through node-c: the user's other socket (node-c) closes; user 43 stays.
    let start = Instant::now();
    let (status, _) = c.nodes[0]
        .api_post("/api/v1/disconnect", json!({"user_id": "42"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        code(other_token.close_within(Duration::from_secs(2)).await),
        4003
    );
    println!(
        "disconnect closed a socket on another node in {:?}",
        start.elapsed()
    );
    assert_eq!(
        other_user.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_keeps_clients_and_resumes_delivery() {
    let pg = PgDb::create().await;
    let rdir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(rdir.path());
    let c = cluster(2, &redis.url(), &pg).await;
    let token = c.nodes[0].issue_token("1").await;
    let mut clients = Vec::new();
    for n in &c.nodes {
        let (mut client, _) = Client::authed(&n.ws_url(), &token).await;
        client.subscribe("ticks").await;
        clients.push(client);
    }
    // Publishing in the background through node-a while Redis dies.
    let url = c.nodes[0].api_url("/api/v1/publish");
    let publisher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let (mut ok, mut refused) = (0, 0);
        for i in 0..60 {
            let r = http
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&json!({"group": "ticks", "data": i}))
                .send()
                .await
                .unwrap();
            if r.status() == 200 {
                ok += 1
            } else {
                refused += 1
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (ok, refused)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let killed_at = Instant::now();
    redis.kill();
    let (ok, refused) = publisher.await.unwrap();
    println!("publishes during the kill: {ok} accepted, {refused} refused (503)");
    for n in &c.nodes {
        let readyz = n.metrics_url("/readyz");
        eventually(
            Duration::from_secs(5),
            "readyz 503 while Redis is down",
            || async { reqwest::get(&readyz).await.unwrap().status() == 503 },
        )
        .await;
        assert_eq!(n.metric("wsgate_redis_up").await, 0.0);
    }
    // Clients stay connected and served during the outage.
    for client in &mut clients {
        let mut got_pong = false;
        for _ in 0..200 {
            let m = client.request(json!({"type": "ping"})).await;
            if m["type"] == "pong" {
                got_pong = true;
                break;
            }
            // Messages published before the kill may still be arriving.
            assert_eq!(m["type"], "message");
        }
        assert!(got_pong);
    }
    redis.restart();
    for n in &c.nodes {
        let readyz = n.metrics_url("/readyz");
        let t = eventually(
            Duration::from_secs(10),
            "readyz 200 after Redis is back",
            || async { reqwest::get(&readyz).await.unwrap().status() == 200 },
        )
        .await;
        assert_eq!(n.metric("wsgate_redis_up").await, 1.0);
        println!(
            "{} ready again {t:?} after the restart ({:?} after the kill)",
            n.config.server.node_id.clone().unwrap(),
            killed_at.elapsed()
        );
    }
    // Delivery resumes on both nodes through the resubscribed channels.
    c.nodes[1].publish("ticks", json!("after")).await;
    for client in &mut clients {
        loop {
            let m = client.recv_json().await;
            if m["data"] == "after" {
                break;
            }
        }
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_cache_survives_postgres_loss_and_postgres_serves_without_redis() {
    // Postgres gone, Redis warm: a cached token still authenticates on any
    // node; an uncached one gets 1013.
    let pg = PgDb::create().await;
    let c = cluster(2, SHARED_REDIS, &pg).await;
    let cached = c.nodes[0].issue_token("1").await;
    let uncached = c.nodes[0].issue_token("2").await;
    Client::authed(&c.nodes[0].ws_url(), &cached).await;
    pg.drop_db().await;
    let (_, w) = Client::authed(&c.nodes[1].ws_url(), &cached).await;
    assert_eq!(w["user_id"], "1");
    assert_eq!(
        c.nodes[1]
            .metric("wsgate_auth_duration_seconds_count{source=\"redis\"}")
            .await,
        1.0,
        "node-b answered from Redis"
    );
    let mut refused = Client::connect(&c.nodes[1].ws_url()).await;
    refused.send_json(json!({"token": uncached})).await;
    assert_eq!(code(refused.expect_close().await), 1013);
    c.shutdown().await;

    // Redis gone, Postgres up: authentication goes straight to the database.
    let pg = PgDb::create().await;
    let rdir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(rdir.path());
    let c = cluster(1, &redis.url(), &pg).await;
    let token = c.nodes[0].issue_token("3").await;
    redis.kill();
    let (_, w) = Client::authed(&c.nodes[0].ws_url(), &token).await;
    assert_eq!(w["user_id"], "3");
    assert!(c.nodes[0].metric("wsgate_auth_cache_errors_total").await >= 1.0);
    c.shutdown().await;
}

/// 200 concurrent connections with one uncached token cause one database
/// query. The query store calls a SQL function that counts its calls, so
/// the count is Postgres's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_200_connections_one_query() {
    let pg = PgDb::create().await;
    let pool = pg.pool().await;
    for sql in [
        "CREATE TABLE lookups (n integer NOT NULL)",
        "INSERT INTO lookups VALUES (0)",
        "CREATE FUNCTION lookup_token(t text) RETURNS TABLE(user_id text) LANGUAGE sql VOLATILE AS \
         $$ UPDATE lookups SET n = n + 1; SELECT '99'::text WHERE t = 'the-one-token' $$",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let mut config = node_config(dir.path(), "node-a", SHARED_REDIS, &prefix, &pg);
    config.auth.store = wsgate::config::StoreKind::Query;
    config.auth.query = Some("SELECT user_id FROM lookup_token($1)".into());
    // 200 sockets from one address wait for their first frame at once.
    config.limits.max_pending_per_ip = 1000;
    let node = spawn(config).await;
    let url = node.ws_url();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            Client::authed(&url, "the-one-token").await
        }));
    }
    for t in tasks {
        let (_, w) = t.await.unwrap();
        assert_eq!(w["user_id"], "99");
    }
    let n: i32 = sqlx::query_scalar("SELECT n FROM lookups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "one database lookup for 200 connections");
    println!("200 concurrent authentications, {n} database query");
    pool.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_sharded_fan_out() {
    let rc = RedisCluster::start(3);
    let pg = PgDb::create().await;
    let c = cluster(3, &rc.url(), &pg).await;
    let token = c.nodes[0].issue_token("1").await;
    let groups = ["market.AAPL", "market.MSFT", "market.GOOG", "market.TSLA"];
    let mut clients = Vec::new();
    for n in &c.nodes {
        let (mut client, _) = Client::authed(&n.ws_url(), &token).await;
        for g in groups {
            client.subscribe(g).await;
        }
        clients.push(client);
    }
    // Group channels are sharded channels, spread over the masters.
    let mut shard_channels = Vec::new();
    for port in rc.ports() {
        shard_channels.extend(redis_cli(
            port,
            &["pubsub", "shardchannels", &format!("{}group:*", c.prefix)],
        ));
    }
    assert_eq!(shard_channels.len(), groups.len() + 1, "{shard_channels:?}");
    for (i, n) in c.nodes.iter().enumerate() {
        for g in groups {
            n.publish(g, json!({"via": i, "g": g})).await;
            for client in &mut clients {
                let m = client.recv_json().await;
                assert_eq!(m["group"], g);
                assert_eq!(m["data"]["via"], i);
            }
        }
    }
    for n in c.nodes {
        n.shutdown().await;
    }
}
