//! Feed demand (protocol section "Occupancy"): `occupied` / `vacated`
//! events across two nodes on Redis, exactly one per transition; the
//! linger; a killed node's groups vacating; the signed, retried webhook; the
//! Redis stream; the groups API; and the same events in embedded mode.

mod common;

use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::webhook::WebhookReceiver;
use common::*;
use serde_json::Value;
use wsgate::config::Config;

const SECRET: &str = "occupancy-test-secret-0123";
const LINGER: Duration = Duration::from_millis(600);

fn with_occupancy(c: &mut Config, hook: &WebhookReceiver) {
    c.occupancy.linger = LINGER;
    c.occupancy.webhook_url = Some(hook.url());
    c.occupancy.webhook_secret = Some(SECRET.into());
    c.occupancy.webhook_timeout = Duration::from_secs(2);
}

fn redis_node(
    dir: &std::path::Path,
    node: &str,
    prefix: &str,
    pg: &PgDb,
    hook: &WebhookReceiver,
) -> Config {
    let mut c = redis_node_config(dir, node, SHARED_REDIS, prefix, &pg.url);
    with_occupancy(&mut c, hook);
    c
}

/// The delivered webhook events of `group`, as (event) in order.
fn events_of(hook: &WebhookReceiver, group: &str) -> Vec<String> {
    hook.delivered()
        .iter()
        .filter(|e| e["group"] == group)
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

/// The stream's entries of `group`: (event, id).
fn stream_of(prefix: &str, group: &str) -> Vec<(String, String)> {
    let key = format!("{prefix}{{occ}}:events");
    // redis-cli prints each entry as: id, then field/value lines.
    let lines = redis_cli(6379, &["xrange", &key, "-", "+"]);
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i] == "event" && i + 7 < lines.len() && lines[i + 3] == group {
            out.push((lines[i + 1].clone(), lines[i + 7].clone()));
        }
        i += 1;
    }
    out
}

async fn groups(node: &TestNode, pattern: &str) -> (u16, Value) {
    node.api_get(&format!("/api/v1/groups?pattern={pattern}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_one_event_per_transition_webhook_stream_and_listing() {
    let pg = PgDb::create().await;
    // The first delivery attempt gets a 500: the event is retried.
    let hook = WebhookReceiver::start(1).await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(redis_node(dir.path(), "node-a", &prefix, &pg, &hook)).await;
    let b = spawn(redis_node(dir.path(), "node-b", &prefix, &pg, &hook)).await;
    let token = a.issue_token("1").await;
    let g = "market.OCC";

    // First subscriber anywhere (node A): one `occupied`.
    let (mut on_a, _) = Client::authed(&a.ws_url(), &token).await;
    on_a.subscribe(g).await;
    eventually(Duration::from_secs(5), "occupied delivered", || async {
        events_of(&hook, g) == ["occupied"]
    })
    .await;
    assert_eq!(hook.hits()[0].status, 500, "the first attempt failed ...");
    assert_eq!(
        hook.hits()[0].body,
        hook.hits()[1].body,
        "... and was retried"
    );

    // A second subscriber on node B: no new event.
    let (mut on_b, _) = Client::authed(&b.ws_url(), &token).await;
    on_b.subscribe(g).await;
    let (mut unwatched, _) = Client::authed(&b.ws_url(), &token).await;
    unwatched.subscribe("other.X").await;

    // The listing: both members, filtered by pattern.
    let (status, v) = groups(&a, "market.*").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["groups"],
        serde_json::json!([{"group": g, "members": 2}]),
        "{v}"
    );
    assert_eq!(v["truncated"], false);
    let (_, v) = groups(&b, "*").await;
    let names: Vec<&str> = v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    // `user.1` is the auto-joined group (groups.auto_join).
    assert_eq!(names, [g, "other.X", "user.1"]);
    let (_, v) = groups(&b, "nothing.*").await;
    assert_eq!(v["groups"], serde_json::json!([]));
    let (status, _) = groups(&a, "bad%20pattern").await;
    assert_eq!(status, 400);
    let (status, _) = a.api_get("/api/v1/groups?limit=0").await;
    assert_eq!(status, 400);

    // Both leave, one comes back within the linger: no `vacated`.
    drop(on_a);
    drop(on_b);
    eventually(Duration::from_secs(3), "both members gone", || async {
        groups(&a, "market.*").await.1["groups"][0]["members"] == 0
    })
    .await;
    let (mut again, _) = Client::authed(&a.ws_url(), &token).await;
    again.subscribe(g).await;
    tokio::time::sleep(LINGER * 2).await;
    assert_eq!(
        events_of(&hook, g),
        ["occupied"],
        "no vacated, no second occupied"
    );

    // The last one leaves: one `vacated`, after the linger.
    let left = Instant::now();
    drop(again);
    let took = eventually(Duration::from_secs(5), "vacated delivered", || async {
        events_of(&hook, g) == ["occupied", "vacated"]
    })
    .await;
    assert!(left.elapsed() >= LINGER, "not before the linger");
    println!("vacated {took:?} after the last leave (linger {LINGER:?})");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events_of(&hook, g), ["occupied", "vacated"], "exactly once");
    let (_, v) = groups(&a, "market.*").await;
    assert_eq!(v["groups"], serde_json::json!([]));

    // Every request was signed with the secret, and the ids match the stream's.
    for hit in hook.hits() {
        assert!(hit.verifies(SECRET), "bad signature on {hit:?}");
        assert!(!hit.verifies("another-secret-0123456"));
    }
    let delivered: Vec<(String, String)> = hook
        .delivered()
        .iter()
        .filter(|e| e["group"] == g)
        .map(|e| {
            (
                e["event"].as_str().unwrap().into(),
                e["id"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        stream_of(&prefix, g),
        delivered,
        "the stream holds the same events"
    );
    for e in hook.delivered() {
        assert!(e["ts"].as_u64().unwrap() > 0);
    }

    // Metrics: each event emitted once across both nodes; the retry counted.
    let mut emitted = 0.0;
    for n in [&a, &b] {
        emitted += n
            .metric(r#"wsgate_occupancy_events_total{event="occupied"}"#)
            .await;
    }
    assert_eq!(emitted, 3.0, "market.OCC, other.X and user.1, once each");
    let retried = a
        .metric(r#"wsgate_occupancy_webhooks_total{result="retried"}"#)
        .await
        + b.metric(r#"wsgate_occupancy_webhooks_total{result="retried"}"#)
            .await;
    assert_eq!(retried, 1.0);
    drop(unwatched);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_groups_vacate() {
    let pg = PgDb::create().await;
    let hook = WebhookReceiver::start(0).await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(redis_node(dir.path(), "node-a", &prefix, &pg, &hook)).await;
    let token = a.issue_token("2").await;
    let bin_dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(&str, &str)> = redis_node_env("node-doomed", &prefix, &pg.url).to_vec();
    env.push(("WSGATE__OCCUPANCY__LINGER", "300ms"));
    let mut doomed = BinNode::start(bin_dir.path(), &env);
    let g = "market.DOOM";
    let (mut client, _) = Client::authed(&doomed.ws_url(), &token).await;
    client.subscribe(g).await;
    eventually(Duration::from_secs(5), "occupied in the stream", || async {
        stream_of(&prefix, g).len() == 1
    })
    .await;
    assert_eq!(groups(&a, "market.*").await.1["groups"][0]["members"], 1);

    // SIGKILL: no clean leave. Node A's sweep notices it gone from the registry.
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(5));
    let took = eventually(Duration::from_secs(8), "vacated after the kill", || async {
        stream_of(&prefix, g)
            .iter()
            .map(|(e, _)| e.as_str())
            .collect::<Vec<_>>()
            == ["occupied", "vacated"]
    })
    .await;
    println!("a killed node's group vacated {took:?} after the kill (node_ttl 1 s, linger 600 ms)");
    // Node A decided it, so node A's webhook sent it.
    eventually(Duration::from_secs(3), "vacated by webhook", || async {
        events_of(&hook, g) == ["vacated"]
    })
    .await;
    assert_eq!(
        groups(&a, "market.*").await.1["groups"],
        serde_json::json!([])
    );
    drop(client);
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_emits_the_same_events() {
    let hook = WebhookReceiver::start(0).await;
    let (_dir, node) = node_with(|c| with_occupancy(c, &hook)).await;
    let token = node.issue_token("3").await;
    let (mut one, _) = Client::authed(&node.ws_url(), &token).await;
    let (mut two, _) = Client::authed(&node.ws_url(), &token).await;
    one.subscribe("market.E").await;
    two.subscribe("market.E").await;
    eventually(Duration::from_secs(5), "occupied", || async {
        events_of(&hook, "market.E") == ["occupied"]
    })
    .await;
    let (_, v) = groups(&node, "market.?").await;
    assert_eq!(
        v["groups"],
        serde_json::json!([{"group": "market.E", "members": 2}])
    );
    drop(one);
    drop(two);
    eventually(Duration::from_secs(5), "vacated", || async {
        events_of(&hook, "market.E") == ["occupied", "vacated"]
    })
    .await;
    assert!(hook.hits().iter().all(|h| h.verifies(SECRET)));
    node.shutdown().await;
}

/// What occupancy costs: Redis commands per first join / last leave, and
/// none per message (bounded loop, figures printed, nothing timed asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_per_operation() {
    let pg = PgDb::create().await;
    let hook = WebhookReceiver::start(0).await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let measure = |on: bool| {
        let (dir, pg, hook, prefix) = (dir.path().to_path_buf(), &pg, &hook, &prefix);
        async move {
            let mut c = redis_node(
                &dir,
                if on { "cost-on" } else { "cost-off" },
                prefix,
                pg,
                hook,
            );
            c.occupancy.enabled = on;
            // No background noise during the count.
            c.redis.heartbeat = Duration::from_secs(30);
            c.redis.node_ttl = Duration::from_secs(90);
            let node = spawn(c).await;
            let token = node.issue_token("4").await;
            let (mut client, _) = Client::authed(&node.ws_url(), &token).await;
            const N: usize = 50;
            let before = commands_processed();
            let scripts_before = evalsha_calls();
            let start = Instant::now();
            for i in 0..N {
                let g = format!("cost.{i}");
                client.subscribe(&g).await;
                let reply = client
                    .request(serde_json::json!({"type": "unsubscribe", "group": g}))
                    .await;
                assert_eq!(reply["type"], "unsubscribed", "{reply}");
            }
            let joins = (commands_processed() - before) as f64 / N as f64;
            let scripts = (evalsha_calls() - scripts_before) as f64 / N as f64;
            let took = start.elapsed() / N as u32;
            client.subscribe("cost.msg").await;
            let before = commands_processed();
            for i in 0..N {
                node.publish("cost.msg", serde_json::json!(i)).await;
                client.recv_json().await;
            }
            let per_msg = (commands_processed() - before) as f64 / N as f64;
            drop(client);
            node.shutdown().await;
            (joins, scripts, took, per_msg)
        }
    };
    let (off_join, off_scripts, off_took, off_msg) = measure(false).await;
    let (on_join, on_scripts, on_took, on_msg) = measure(true).await;
    println!(
        "occupancy off: {off_join:.1} Redis commands ({off_scripts:.1} EVALSHA) per first join + last leave ({off_took:?}), {off_msg:.1} per message"
    );
    println!(
        "occupancy on:  {on_join:.1} Redis commands ({on_scripts:.1} EVALSHA) per first join + last leave ({on_took:?}), {on_msg:.1} per message"
    );
    println!("(shared Redis: other tests' commands may add to these counts)");
}

/// EVALSHA calls so far (INFO commandstats).
fn evalsha_calls() -> u64 {
    command_calls(&redis_cli(6379, &["info", "commandstats"]), "evalsha")
}

/// Redis' total commands processed (INFO stats).
fn commands_processed() -> u64 {
    redis_cli(6379, &["info", "stats"])
        .iter()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn config_refuses_unsigned_or_malformed_webhooks_and_masks_the_secret() {
    let check = |f: &dyn Fn(&mut Config)| {
        let mut c = Config::default();
        f(&mut c);
        c.validate().err().map(|e| e.to_string())
    };
    let url = |c: &mut Config| c.occupancy.webhook_url = Some("https://feed.example/hook".into());
    let err = check(&|c| url(c)).unwrap();
    assert!(err.contains("occupancy.webhook_secret"), "{err}");
    let err = check(&|c| {
        url(c);
        c.occupancy.webhook_secret = Some("short".into());
    })
    .unwrap();
    assert!(err.contains("at least 16 bytes"), "{err}");
    for bad in ["ftp://x/hook", "not a url", "file:///etc/passwd"] {
        let err = check(&|c| {
            c.occupancy.webhook_url = Some(bad.into());
            c.occupancy.webhook_secret = Some(SECRET.into());
        })
        .unwrap();
        assert!(err.contains("occupancy.webhook_url"), "{bad}: {err}");
    }
    for (key, f) in [
        (
            "occupancy.stream",
            &(|c: &mut Config| c.occupancy.stream = "a{b}".into()) as &dyn Fn(&mut Config),
        ),
        ("occupancy.stream_maxlen", &|c: &mut Config| {
            c.occupancy.stream_maxlen = 0
        }),
        ("occupancy.webhook_attempts", &|c: &mut Config| {
            c.occupancy.webhook_attempts = 0
        }),
        ("occupancy.queue", &|c: &mut Config| c.occupancy.queue = 0),
        ("occupancy.linger", &|c: &mut Config| {
            c.occupancy.linger = Duration::from_secs(400 * 24 * 3600)
        }),
    ] {
        let err = check(f).unwrap_or_else(|| panic!("{key} accepted"));
        assert!(err.contains(key), "{err}");
    }
    let mut ok = Config::default();
    url(&mut ok);
    ok.occupancy.webhook_secret = Some(SECRET.into());
    ok.validate().unwrap();
    let shown = ok.to_masked_toml();
    assert!(!shown.contains(SECRET), "{shown}");
}
