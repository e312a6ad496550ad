//! The transactional outbox and idempotent publish (protocol section 9):
//! rows a backend commits to `wsgate_outbox` are published at least once
//! and in order per group, a rolled-back transaction publishes nothing, a
//! node SIGKILLed mid-batch is taken over by another, and a publish retried
//! with the same `idempotency_key` is delivered once, on the embedded broker
//! and across Redis nodes. Two bounded runs print what each costs.

mod common;

use std::time::{Duration, Instant};

use common::outbox::*;
use common::*;
use serde_json::json;
use wsgate::config::Config;

fn groups(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("orders.{i}")).collect()
}

/// `per_group` rows for each group, interleaved (`seq` from `first`).
fn rows(groups: &[String], first: i64, per_group: i64) -> Vec<(String, i64)> {
    (first..first + per_group)
        .flat_map(|s| groups.iter().map(move |g| (g.clone(), s)))
        .collect()
}

async fn subscriber(url: &str, token: &str, groups: &[String]) -> Client {
    let (mut client, _) = Client::authed(url, token).await;
    for g in groups {
        client.subscribe(g).await;
    }
    client
}

fn cluster_config(dir: &std::path::Path, node: &str, prefix: &str, pg: &PgDb) -> Config {
    let mut c = test_config(dir);
    c.server.node_id = Some(node.into());
    c.redis.url = Some(SHARED_REDIS.into());
    c.redis.prefix = prefix.into();
    c.redis.heartbeat = Duration::from_millis(200);
    c.redis.node_ttl = Duration::from_secs(1);
    c.database.url = Some(pg.url.clone());
    c.limits.outbound_queue = 100_000;
    c
}

#[test]
fn outbox_needs_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.outbox.enabled = true;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("outbox.enabled") && e.contains("PostgreSQL"),
        "{e}"
    );
    c.database.url = Some("sqlite://x.db".into());
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("outbox.enabled"), "{e}");
    c.database.url = Some("postgres://u@h/db".into());
    c.validate().expect("valid on PostgreSQL");
    c.outbox.batch = 0;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("outbox.batch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_publishes_committed_rows_in_order_woken_by_notify() {
    let pg = PgDb::create().await;
    let (_dir, node) = node_with(|c| {
        c.database.url = Some(pg.url.clone());
        c.outbox.enabled = true;
        // Only the insert trigger's NOTIFY can wake it within the test.
        c.outbox.poll_interval = Duration::from_secs(3600);
        c.outbox.batch = 50;
        c.limits.outbound_queue = 100_000;
    })
    .await;
    let pool = pg.pool().await;
    let token = node.issue_token("1").await;
    let gs = groups(3);
    let mut client = subscriber(&node.ws_url(), &token, &gs).await;

    insert_rows(&pool, &rows(&gs, 0, 5), false).await;
    insert_rows(&pool, &rows(&gs, 0, 10), true).await;
    insert_rows(&pool, &rows(&gs, 10, 10), true).await;
    let mut got = Received::default();
    got.collect(&mut client, Duration::from_secs(20), |r| r.has_all(&gs, 20))
        .await;
    got.assert_in_order(&gs, 20);
    assert_eq!(got.rolled_back, 0, "a rolled-back row was published");
    assert_eq!(got.total, 60, "one delivery per row: {got:?}");
    client.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(pending_rows(&pool).await, 0);
    assert_eq!(node.metric("wsgate_outbox_published_total").await, 60.0);

    // A bounded run: rows/s through the outbox, insert to delivery.
    let n = 2000;
    let start = Instant::now();
    insert_rows(&pool, &rows(&gs[..1], 100, n), true).await;
    let mut more = Received::default();
    more.collect(&mut client, Duration::from_secs(60), |r| {
        r.total >= n as usize
    })
    .await;
    let took = start.elapsed();
    assert_eq!(more.total, n as usize);
    println!(
        "outbox (embedded broker, batch 50, one group): {n} rows in {took:?}: {:.0} rows/s",
        n as f64 / took.as_secs_f64()
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_on_the_embedded_broker() {
    let (_dir, node) = node().await;
    let token = node.issue_token("1").await;
    let mut client = subscriber(&node.ws_url(), &token, &["g".to_string()]).await;
    let body = json!({"group": "g", "data": {"n": 1}, "idempotency_key": "order-42:v1"});
    let (status, first) = node.api_post("/api/v1/publish", body.clone()).await;
    assert_eq!((status, &first), (200, &json!({"ok": true})));
    let (status, again) = node.api_post("/api/v1/publish", body).await;
    assert_eq!(
        (status, &again),
        (200, &json!({"ok": true, "duplicate": true}))
    );
    let m = client.recv_json().await;
    assert_eq!(m["data"], json!({"n": 1}));
    client.expect_silence(Duration::from_millis(300)).await;
    // Another key is another publish; the key covers a whole batch.
    let (status, _) = node
        .api_post(
            "/api/v1/publish",
            json!({"messages": [{"group": "g", "data": 2}, {"group": "g", "data": 3}],
                   "idempotency_key": "batch-7"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(client.recv_json().await["data"], 2);
    assert_eq!(client.recv_json().await["data"], 3);
    for bad in ["", "a b", "x/y", &"k".repeat(129)] {
        let (status, body) = node
            .api_post(
                "/api/v1/publish",
                json!({"group": "g", "data": 1, "idempotency_key": bad}),
            )
            .await;
        assert_eq!(status, 400, "{bad:?}: {body}");
        assert_eq!(body["error"], "bad_request");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("idempotency_key")
        );
    }
    let (status, _) = node
        .api_post(
            "/api/v1/publish",
            json!({"group": "g", "data": 1, "idempotency_key": 5}),
        )
        .await;
    assert_eq!(status, 400);
    client.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(node.metric("wsgate_publish_duplicates_total").await, 1.0);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publish_across_redis_nodes_and_its_cost() {
    let pg = PgDb::create().await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let a = spawn(cluster_config(dir.path(), "node-a", &prefix, &pg)).await;
    let b = spawn(cluster_config(dir.path(), "node-b", &prefix, &pg)).await;
    let token = a.issue_token("1").await;
    let mut client = subscriber(&b.ws_url(), &token, &["g".to_string()]).await;
    let body = json!({"group": "g", "data": "once", "idempotency_key": "k-1"});
    let (status, first) = a.api_post("/api/v1/publish", body.clone()).await;
    assert_eq!((status, &first), (200, &json!({"ok": true})));
    // The retry lands on another node: the key is in Redis.
    let (status, again) = b.api_post("/api/v1/publish", body).await;
    assert_eq!(
        (status, &again),
        (200, &json!({"ok": true, "duplicate": true}))
    );
    assert_eq!(client.recv_json().await["data"], "once");
    client.expect_silence(Duration::from_millis(300)).await;

    // A bounded run: the extra cost of a key per publish (sequential
    // requests to one node; the difference is the SET NX and the SET PX).
    let http = reqwest::Client::new();
    let url = a.api_url("/api/v1/publish");
    let n = 300;
    let mut per_op = Vec::new();
    for with_key in [false, true] {
        let start = Instant::now();
        for i in 0..n {
            let mut body = json!({"group": "cost", "data": i});
            if with_key {
                body["idempotency_key"] = json!(format!("cost-{i}"));
            }
            let resp = http
                .post(&url)
                .bearer_auth(API_KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
        per_op.push(start.elapsed() / n);
    }
    println!(
        "publish over HTTP on Redis, {n} sequential: {:?}/op without a key, {:?}/op with one \
         (+{:?})",
        per_op[0],
        per_op[1],
        per_op[1].saturating_sub(per_op[0])
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// A real node publishing the outbox is SIGKILLed mid-way; another takes
/// over. The subscriber sits on a third node (in process, no outbox).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_batch_is_taken_over_at_least_once_in_order() {
    let pg = PgDb::create().await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let watcher = spawn(cluster_config(dir.path(), "watcher", &prefix, &pg)).await;
    let pool = pg.pool().await;
    let token = watcher.issue_token("1").await;
    let gs = groups(4);
    let mut client = subscriber(&watcher.ws_url(), &token, &gs).await;

    // Committed rows waiting for a publisher, one rolled-back transaction
    // among them.
    let per_group = 300;
    for first in (0..per_group).step_by(50) {
        insert_rows(&pool, &rows(&gs, first, 50), true).await;
        if first == 100 {
            insert_rows(&pool, &rows(&gs, 0, 5), false).await;
        }
    }
    let outbox_env = [
        ("WSGATE__OUTBOX__ENABLED", "true"),
        ("WSGATE__OUTBOX__BATCH", "10"),
        ("WSGATE__OUTBOX__POLL_INTERVAL", "200ms"),
    ];
    let env = |id: &'static str| {
        let mut env: Vec<(&str, &str)> = redis_node_env(id, &prefix, &pg.url).to_vec();
        env.extend(outbox_env);
        env
    };
    let killed = BinNode::start(dir.path(), &env("killed"));
    let mut got = Received::default();
    got.collect(&mut client, Duration::from_secs(30), |r| r.total >= 100)
        .await;
    assert!(got.total >= 100, "the first node published: {got:?}");
    killed.signal("KILL");
    let mut killed = killed;
    killed.wait_exit(Duration::from_secs(5));
    let left = pending_rows(&pool).await;
    println!("killed after {} deliveries, {left} rows left", got.total);
    assert!(
        left > 0,
        "the node finished before it was killed: no takeover to test"
    );

    let takeover = Instant::now();
    let survivor = BinNode::start(dir.path(), &env("survivor"));
    // Committed after the takeover: the survivor's LISTEN wakes it.
    insert_rows(&pool, &rows(&gs, per_group, 10), true).await;
    insert_rows(&pool, &rows(&gs, 0, 5), false).await;
    let n = per_group + 10;
    got.collect(&mut client, Duration::from_secs(90), |r| r.has_all(&gs, n))
        .await;
    got.assert_in_order(&gs, n);
    assert_eq!(got.rolled_back, 0, "a rolled-back row was published");
    let expected = gs.len() * n as usize;
    println!(
        "{} deliveries for {expected} rows ({} redelivered after the kill); the survivor \
         (Redis, batch 10) published {left} + 40 rows in {:?} from its start",
        got.total,
        got.total - expected,
        takeover.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while pending_rows(&pool).await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        pending_rows(&pool).await,
        0,
        "every row deleted once published"
    );
    drop(survivor);
    watcher.shutdown().await;
}

/// The Django example's `publish_outbox` (an unmanaged model on
/// `wsgate_outbox`) inside `transaction.atomic()`: what commits arrives,
/// what rolls back does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_example_publishes_through_the_outbox() {
    let pg = PgDb::create().await;
    let (_dir, node) = node_with(|c| {
        c.database.url = Some(pg.url.clone());
        c.outbox.enabled = true;
    })
    .await;
    let token = node.issue_token("1").await;
    let mut client = subscriber(&node.ws_url(), &token, &["dj.orders".to_string()]).await;
    let example = format!("{}/examples/django", env!("CARGO_MANIFEST_DIR"));
    let env = [("DATABASE_URL", pg.url.as_str())];
    run_python(
        &example,
        &["manage.py", "migrate", "--noinput", "-v", "0"],
        &env,
    )
    .await;
    let script = "from django.db import transaction\n\
                  from market.publish import publish_outbox\n\
                  with transaction.atomic():\n    publish_outbox('dj.orders', {'n': 1})\n\
                  try:\n    with transaction.atomic():\n        \
                  publish_outbox('dj.orders', {'n': 'rolled back'})\n        \
                  raise RuntimeError('roll back')\n\
                  except RuntimeError:\n    pass\n\
                  with transaction.atomic():\n    publish_outbox('dj.orders', {'n': 2})\n\
                  print('ok')";
    let out = run_python(&example, &["manage.py", "shell", "-c", script], &env).await;
    assert!(out.trim().ends_with("ok"), "{out}");
    assert_eq!(client.recv_json().await["data"], json!({"n": 1}));
    assert_eq!(client.recv_json().await["data"], json!({"n": 2}));
    client.expect_silence(Duration::from_millis(300)).await;
    node.shutdown().await;
}

/// The virtualenv's python (`scripts/install-python-tools.sh`) runs `args`
/// in `dir`; returns stdout, failing the test on a non-zero exit.
async fn run_python(dir: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let venv = std::env::var_os("WSGATE_PYENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(&std::env::var_os("HOME").expect("HOME"))
                .join(".cache/wsgate-pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no Python virtualenv at {}",
        venv.display()
    );
    let mut command = std::process::Command::new(python);
    command
        .args(args)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .envs(env.iter().copied())
        .current_dir(dir);
    let out = tokio::task::spawn_blocking(move || command.output().expect("python runs"))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "python {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A row whose publication is already remembered (a node published it, kept
/// its key, then died before its delete committed) is deleted without being
/// delivered again; the rows around it go out in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_already_published_within_the_window_is_not_delivered_again() {
    let pg = PgDb::create().await;
    let prefix = RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let watcher = spawn(cluster_config(dir.path(), "watcher", &prefix, &pg)).await;
    let pool = pg.pool().await;
    let token = watcher.issue_token("1").await;
    let gs = groups(1);
    let mut client = subscriber(&watcher.ws_url(), &token, &gs).await;
    insert_rows(&pool, &rows(&gs, 0, 3), true).await;
    let middle: i64 =
        sqlx::query_scalar("SELECT id FROM wsgate_outbox ORDER BY id OFFSET 1 LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    let status = std::process::Command::new("redis-cli")
        .args([
            "-p",
            "6379",
            "set",
            &format!("{prefix}idem:outbox:{middle}"),
            "1",
            "PX",
            "60000",
        ])
        .output()
        .expect("redis-cli");
    assert!(status.status.success());
    let mut config = cluster_config(dir.path(), "publisher", &prefix, &pg);
    config.outbox.enabled = true;
    let publisher = spawn(config).await;
    let mut got = Received::default();
    got.collect(&mut client, Duration::from_secs(10), |r| r.total >= 2)
        .await;
    assert_eq!(got.per_group[&gs[0]], [0, 2], "{got:?}");
    client.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(pending_rows(&pool).await, 0);
    assert_eq!(
        publisher.metric("wsgate_publish_duplicates_total").await,
        1.0
    );
    publisher.shutdown().await;
    watcher.shutdown().await;
}
