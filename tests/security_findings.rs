//! The security review's findings, one test (or more) per row, each against
//! a real node over real sockets. Every test here failed before its fix.

mod common;

use std::time::Duration;

use serde_json::json;

use common::{Client, code, issue_token, spawn, test_config};

/// H1: a user id is literal in `{user_id}`; an id that cannot be a group
/// segment is refused at `welcome` (4003), never let through with its
/// groups silently missing or its pattern characters live.
#[tokio::test]
async fn h1_user_ids_that_are_not_group_segments_are_refused_at_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.groups.allow = vec!["team.{user_id}.*".into()];
    config.groups.client_publish = vec!["chat.{user_id}.*".into()];
    let node = spawn(config.clone()).await;
    for id in ["*", "42.x", "a b", "4?"] {
        let token = issue_token(&config, id, None).await;
        let mut c = Client::connect(&node.ws_url()).await;
        c.send_json(json!({"type": "auth", "token": token})).await;
        assert_eq!(code(c.expect_close().await), 4003, "user id {id:?}");
    }
    let metrics = reqwest::get(node.metrics_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_value(
            &metrics,
            "wsgate_auth_failures_total{reason=\"invalid_user_id\"}"
        ),
        4.0
    );
    // A plain id still gets its own groups, and only those.
    let token = issue_token(&config, "c", None).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["groups"], json!(["user.c"]));
    c.subscribe("team.c.x").await;
    let reply = c
        .request(json!({"type": "subscribe", "group": "team.d.x"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "got {reply}");
}

/// M1, embedded: the in-process layer keeps a positive at most until the
/// token expires (it kept it 5 s whatever the token's lifetime).
#[tokio::test]
async fn m1_embedded_cache_does_not_outlive_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let node = spawn(config.clone()).await;
    let token = issue_token(&config, "7", Some(Duration::from_millis(1500))).await;
    // Authenticates, and so fills the in-process cache.
    let (mut first, _) = Client::authed(&node.ws_url(), &token).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let mut late = Client::connect(&node.ws_url()).await;
    late.send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(code(late.expect_close().await), 4003);
    // An in-band refresh with the expired token takes the same path.
    first
        .send_json(json!({"type": "refresh", "token": token}))
        .await;
    assert_eq!(code(first.expect_close().await), 4003);
}

/// M1, cluster: Redis keeps a positive at most until the token expires (it
/// kept it `auth.cache_ttl`, 60 s), for every node.
#[tokio::test]
async fn m1_redis_cache_does_not_outlive_the_token() {
    let prefix = common::redis_servers::RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.redis.url = Some("redis://127.0.0.1:6379".into());
    config.redis.prefix = prefix.to_string();
    let a = spawn(config.clone()).await;
    let token = issue_token(&config, "7", Some(Duration::from_millis(1500))).await;
    let _held = Client::authed(&a.ws_url(), &token).await;
    let key = format!(
        "{prefix}auth:{}",
        wsgate::auth::Token::new(token.clone()).digest().to_hex()
    );
    let ttl_ms: i64 = common::redis_servers::redis_cli(6379, &["PTTL", &key])[0]
        .parse()
        .unwrap();
    assert!(
        ttl_ms > 0 && ttl_ms <= 1500,
        "Redis keeps the answer {ttl_ms} ms"
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // A second node has nothing in its in-process layer: only Redis or the
    // store can answer, and neither may say yes now.
    let b = spawn(config.clone()).await;
    let mut late = Client::connect(&b.ws_url()).await;
    late.send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(code(late.expect_close().await), 4003);
}

/// L5: the embedded key file is held to `api.keys`' rules (a file holding
/// `x` made `Bearer x` a valid key).
#[tokio::test]
async fn l5_embedded_key_file_is_length_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.api.keys.clear();
    let file = dir.path().join("short.api-key");
    std::fs::write(&file, "x\n").unwrap();
    config.api.key_file = Some(file);
    let error = match wsgate::server::Server::build(config.clone()).await {
        Ok(_) => panic!("a one-character key file was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        error.contains("api.key_file") && error.contains("16 characters"),
        "{error}"
    );
    // A generated key file still works.
    config.api.key_file = Some(dir.path().join("generated.api-key"));
    let node = spawn(config.clone()).await;
    let key = std::fs::read_to_string(dir.path().join("generated.api-key")).unwrap();
    let answer = reqwest::Client::new()
        .post(node.api_url("/api/v1/publish"))
        .bearer_auth(key.trim())
        .body(r#"{"group":"g","data":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// L3: no `log.level` directive lifts the cap on the payload-logging crates:
/// `tungstenite::protocol=trace` logged the auth frame, token included.
#[tokio::test]
async fn l3_more_specific_directives_cannot_lift_the_log_cap() {
    let dir = tempfile::tempdir().unwrap();
    let token = common::run_bin(dir.path(), &["token", "issue", "--user", "1"], &[])
        .trim()
        .to_string();
    let mut node = common::BinNode::start(
        dir.path(),
        &[(
            "WSGATE__LOG__LEVEL",
            "debug,tungstenite::protocol=trace,tungstenite=trace,hyper::proto=trace,\
             tokio_tungstenite=trace",
        )],
    );
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("g").await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let hex: String = token.bytes().map(|b| format!("{b:02x}")).collect();
    let log = node.drain_log().join("\n");
    // The node logged at debug (the filter took the directives)...
    assert!(log.contains("\"level\":\"DEBUG\""), "{log}");
    // ...but neither the token nor any trace line of the capped crates.
    assert!(
        !log.contains(&token) && !log.contains(&hex),
        "token in the log"
    );
    for line in node.drain_log() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
        let target = v["target"].as_str().unwrap_or("");
        let level = v["level"].as_str().unwrap_or("");
        let capped = ["tungstenite", "tokio_tungstenite", "hyper"]
            .iter()
            .any(|c| target == *c || target.starts_with(&format!("{c}::")));
        assert!(
            !(capped && (level == "DEBUG" || level == "TRACE")),
            "{line}"
        );
    }
}

/// L7: a request body has a deadline (`api.body_timeout`): a POST that sent
/// 9 of 100 declared bytes stayed open 40 s and more.
#[tokio::test]
async fn l7_a_slow_request_body_gets_408_and_the_connection_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.api.body_timeout = Duration::from_millis(300);
    let node = spawn(config).await;
    let mut stream = tokio::net::TcpStream::connect(node.addrs.api)
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"group\":",
        common::API_KEY
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    // The whole answer, then end of stream: the node closes the connection.
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the node answers and closes within the wait")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

/// L8: outside embedded mode an empty `server.allowed_origins` (any Origin
/// may connect) is said loudly at start-up.
#[tokio::test]
async fn l8_an_empty_origin_list_is_warned_about_outside_embedded_mode() {
    let warning = "server.allowed_origins is empty";
    let prefix = common::redis_servers::RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let cluster = [
        ("WSGATE__REDIS__URL", common::SHARED_REDIS),
        ("WSGATE__REDIS__PREFIX", prefix.as_str()),
    ];
    let open = common::BinNode::start(dir.path(), &cluster);
    assert!(
        open.log
            .iter()
            .any(|l| l.contains(warning) && l.contains("WARN")),
        "{:?}",
        open.log
    );
    drop(open);
    let mut listed = cluster.to_vec();
    listed.push(("WSGATE__SERVER__ALLOWED_ORIGINS", "https://app.example.com"));
    let closed = common::BinNode::start(dir.path(), &listed);
    assert!(!closed.log.iter().any(|l| l.contains(warning)));
    drop(closed);
    let embedded = common::BinNode::start(dir.path(), &[]);
    assert!(!embedded.log.iter().any(|l| l.contains(warning)));
}

/// L2: `wsgate token revoke` on SQLite + Redis took the token out of the
/// store only: Redis kept the positive answer (60 s) and live sockets
/// stayed open. It now takes the same path as the API.
#[tokio::test]
async fn l2_cli_revoke_writes_the_tombstone_and_closes_live_sockets() {
    let prefix = common::redis_servers::RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.redis.url = Some(common::SHARED_REDIS.into());
    config.redis.prefix = prefix.to_string();
    let node = spawn(config.clone()).await;
    let env = [
        ("WSGATE__REDIS__URL", common::SHARED_REDIS),
        ("WSGATE__REDIS__PREFIX", prefix.as_str()),
        ("WSGATE__API__KEYS", common::API_KEY),
    ];
    let token = common::run_bin(dir.path(), &["token", "issue", "--user", "5"], &env)
        .trim()
        .to_string();
    // Authenticated: Redis now holds the positive answer.
    let (mut live, _) = Client::authed(&node.ws_url(), &token).await;
    let key = format!(
        "{prefix}auth:{}",
        wsgate::auth::Token::new(token.clone()).digest().to_hex()
    );
    assert!(common::redis_servers::redis_cli(6379, &["GET", &key])[0].starts_with("u:"));
    let dir_path = dir.path().to_path_buf();
    let revoke_env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let revoked = token.clone();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = revoke_env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        common::run_bin(&dir_path, &["token", "revoke", &revoked], &env)
    })
    .await
    .unwrap();
    // The live socket closes, the shared cache holds a tombstone...
    assert_eq!(code(live.expect_close().await), 4003);
    assert_eq!(
        common::redis_servers::redis_cli(6379, &["GET", &key]),
        vec!["-".to_string()]
    );
    // ...and the node refuses the token at once.
    let mut again = Client::connect(&node.ws_url()).await;
    again
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(code(again.expect_close().await), 4003);
}

/// R1: a revocation that lands while a token check is in flight reaches the
/// connection: here the check is held in the database (a `query` store that
/// sleeps) while the API revokes the token, so the revocation's close runs
/// before the connection exists. The session looks again once it is in the
/// hub (and the cache, which saw the revocation, asks the store again).
#[tokio::test]
async fn r1_a_revocation_during_the_token_check_is_not_missed() {
    let db = common::PgDb::create().await;
    let pool = db.pool().await;
    sqlx::query("CREATE TABLE app_tokens (key text PRIMARY KEY, user_id text NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO app_tokens VALUES ('slow-token-0123456789', '8')")
        .execute(&pool)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(db.url.clone());
    config.auth.store = wsgate::config::StoreKind::Query;
    config.auth.query =
        Some("SELECT user_id FROM app_tokens WHERE key = $1 AND pg_sleep(0.8) IS NOT NULL".into());
    let node = spawn(config).await;
    let mut c = Client::connect(&node.ws_url()).await;
    c.send_json(json!({"type": "auth", "token": "slow-token-0123456789"}))
        .await;
    // The check is asleep in the database; revoke meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = node
        .api_post("/api/v1/revoke", json!({"token": "slow-token-0123456789"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(c.expect_close().await), 4003);
}

/// R2: control commands have their own connection and buffer, so a flood of
/// group traffic (which may overflow the group link's buffer; what is lost
/// there is counted as `broker_lag`) cannot crowd out a revocation.
#[tokio::test]
async fn r2_a_revocation_gets_through_a_flood_of_group_traffic() {
    let prefix = common::redis_servers::RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.redis.url = Some(common::SHARED_REDIS.into());
    config.redis.prefix = prefix.to_string();
    config.limits.outbound_queue = 1_000_000;
    let node = spawn(config.clone()).await;
    let flooded = issue_token(&config, "1", None).await;
    let (mut reader, _) = Client::authed(&node.ws_url(), &flooded).await;
    reader.subscribe("flood").await;
    let revoked = issue_token(&config, "2", None).await;
    let (mut victim, _) = Client::authed(&node.ws_url(), &revoked).await;
    // Two Redis connections carry this node's subscriptions: the group
    // link and the control link, which holds the control channel alone.
    let numsub =
        common::redis_servers::redis_cli(6379, &["PUBSUB", "NUMSUB", &format!("{prefix}control")]);
    assert_eq!(numsub[1], "1", "{numsub:?}");
    // 60,000 messages pipelined into the group, the revocation in the middle.
    let channel = format!("{prefix}group:flood");
    let mut commands = String::new();
    for i in 0..60_000 {
        let envelope = format!("{{\"v\":1,\"group\":\"flood\",\"data\":{i}}}");
        commands.push_str(&format!("PUBLISH {channel} '{envelope}'\n"));
    }
    let flood = tokio::task::spawn_blocking(move || {
        let mut child = std::process::Command::new("timeout")
            .args(["20", "redis-cli", "-p", "6379"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(commands.as_bytes())
            .unwrap();
        child.wait().unwrap()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, _) = node
        .api_post("/api/v1/revoke", json!({"token": revoked}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(victim.expect_close().await), 4003);
    assert!(flood.await.unwrap().success());
    drop(reader);
}

/// M2: subscribing to a history group that was never published leaves no
/// state behind, in Redis or in memory (496 subscribes made 496 `:meta`
/// keys kept 7 days; 22k subscribe/unsubscribe pairs grew an embedded node
/// by 9 MB); and a subscriber from before the first publication still
/// recovers what it missed.
#[tokio::test]
async fn m2_subscribing_to_unpublished_history_groups_creates_no_state() {
    let prefix = common::redis_servers::RedisPrefix::random();
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.redis.url = Some(common::SHARED_REDIS.into());
    config.redis.prefix = prefix.to_string();
    config.history.groups = vec!["h.*".into()];
    config.limits.messages_per_second = 0;
    let node = spawn(config.clone()).await;
    let token = issue_token(&config, "1", None).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    for i in 0..300 {
        let group = format!("h.{i}");
        let reply = c
            .request(json!({"type": "subscribe", "group": group}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert_eq!(reply["offset"], 0);
        assert_eq!(reply["epoch"], "~");
        c.request(json!({"type": "unsubscribe", "group": group}))
            .await;
    }
    let keys = common::redis_servers::redis_cli(
        6379,
        &["--scan", "--pattern", &format!("*{prefix}*meta*")],
    );
    assert!(keys.is_empty(), "{} meta keys: {keys:?}", keys.len());
    // Subscribed before the first publication, away, then back: recovered.
    let reply = c
        .request(json!({"type": "subscribe", "group": "h.x"}))
        .await;
    let since = json!({"offset": reply["offset"], "epoch": reply["epoch"]});
    drop(c);
    for n in 1..=3 {
        let (status, _) = node
            .api_post("/api/v1/publish", json!({"group": "h.x", "data": n}))
            .await;
        assert_eq!(status, 200);
    }
    let (mut back, _) = Client::authed(&node.ws_url(), &token).await;
    back.send_json(json!({"type": "subscribe", "group": "h.x", "since": since}))
        .await;
    let mut got = Vec::new();
    loop {
        let frame = back.recv_json().await;
        if frame["type"] == "subscribed" {
            assert_eq!(frame["recovered"], true, "{frame}");
            break;
        }
        got.push(frame["data"].clone());
    }
    assert_eq!(got, vec![json!(1), json!(2), json!(3)]);
}

/// M2, embedded: the in-process broker keeps history only for groups that
/// were published.
#[tokio::test]
async fn m2_embedded_history_holds_only_published_groups() {
    use wsgate::broker::History;
    use wsgate::broker::memory::MemoryBroker;
    let broker = MemoryBroker::with_history(wsgate::broker::HistoryPolicy::new(
        &wsgate::config::HistoryConfig {
            groups: vec!["h.*".into()],
            ..Default::default()
        },
    ));
    for i in 0..20_000 {
        let recovery = broker.history(&format!("h.{i}"), None).await.unwrap();
        assert_eq!(recovery.position.offset, 0);
        assert!(recovery.position.epoch.starts_with('~'));
    }
    assert_eq!(broker.history_groups(), 0);
}
