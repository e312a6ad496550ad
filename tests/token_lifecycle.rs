//! A token's life on a live connection: in-band `refresh` (swapping the
//! connection's token without reconnecting), periodic re-validation
//! (`auth.revalidate_interval`: expired, revoked and deactivated tokens are
//! closed with 4003, in batched lookups), and the batched store lookup
//! itself (`TokenStore::verify_many`) against real SQLite and Postgres.

mod common;

use std::time::{Duration, Instant};

use common::pg_server::PgServer;
use common::*;
use serde_json::{Value, json};
use wsgate::auth::sql::{Db, NativeStore, QueryStore};
use wsgate::auth::{Identity, Token, TokenStore};
use wsgate::config::{Config, StoreKind};

const REVALIDATE: Duration = Duration::from_millis(300);

fn sqlite_node_config(dir: &std::path::Path, revalidate: Duration) -> Config {
    let mut c = test_config(dir);
    c.auth.revalidate_interval = revalidate;
    c
}

/// The node's own database, for changes behind its back (no notice sent).
async fn db_of(config: &Config) -> Db {
    Db::connect(config).await.expect("db")
}

async fn exec(db: &Db, sql: &str, binds: &[&str]) {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for b in binds {
        q = q.bind(b.to_string());
    }
    q.execute(&db.pool).await.expect(sql);
}

async fn refresh(c: &mut Client, token: &str, id: Value) -> Value {
    c.request(json!({"type": "refresh", "token": token, "id": id}))
        .await
}

async fn send_refresh(c: &mut Client, token: &str) {
    c.send_json(json!({"type": "refresh", "token": token}))
        .await;
}

async fn assert_alive(c: &mut Client) {
    let pong = c.request(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(pong, json!({"type": "pong", "id": "alive"}));
}

// ---------------------------------------------------------------------------
// Refresh.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_swaps_the_token_and_revocation_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(sqlite_node_config(dir.path(), Duration::ZERO)).await;
    let old = node.issue_token("7").await;
    let new = node.issue_token("7").await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), &old).await;
    c.subscribe("news").await;
    let success_before = node.metric("wsgate_auth_success_total").await;

    let reply = refresh(&mut c, &new, json!("r1")).await;
    assert_eq!(reply, json!({"type": "refreshed", "id": "r1"}));
    assert_eq!(
        node.metric("wsgate_auth_success_total").await,
        success_before + 1.0,
        "a refresh counts as an authentication"
    );
    // Same connection, same groups: no reconnect happened.
    node.publish("news", json!({"n": 1})).await;
    let msg = c.recv_json().await;
    assert_eq!(msg["data"], json!({"n": 1}), "got {msg}");
    node.publish(
        &format!("user.{}", welcome["user_id"].as_str().unwrap()),
        json!(2),
    )
    .await;
    assert_eq!(c.recv_json().await["data"], json!(2));

    // Revoking the old token no longer concerns this connection.
    let (status, _) = node.api_post("/api/v1/revoke", json!({"token": old})).await;
    assert_eq!(status, 200);
    c.expect_silence(Duration::from_millis(300)).await;
    assert_alive(&mut c).await;

    // Revoking the new one closes it.
    let start = Instant::now();
    let (status, _) = node.api_post("/api/v1/revoke", json!({"token": new})).await;
    assert_eq!(status, 200);
    assert_eq!(code(c.close_within(Duration::from_secs(1)).await), 4003);
    println!(
        "revoking the refreshed token closed the socket in {:?}",
        start.elapsed()
    );

    // Refreshing to the very same token is allowed and changes nothing.
    let same = node.issue_token("8").await;
    let (mut d, _) = Client::authed(&node.ws_url(), &same).await;
    assert_eq!(
        refresh(&mut d, &same, json!(9)).await,
        json!({"type": "refreshed", "id": 9})
    );
    assert_alive(&mut d).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_refreshes_close_4003() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(sqlite_node_config(dir.path(), Duration::ZERO)).await;
    let mine = node.issue_token("1").await;
    let theirs = node.issue_token("2").await;
    let revoked = node.issue_token("1").await;
    node.api_post("/api/v1/revoke", json!({"token": revoked}))
        .await;
    let expired = issue_token(&node.config, "1", Some(Duration::from_millis(1))).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let failures = r#"wsgate_auth_failures_total{reason="invalid_token"}"#;
    let before = node.metric(failures).await;

    let cases = [
        ("a token of another user", theirs.clone()),
        ("a revoked token", revoked.clone()),
        ("an expired token", expired.clone()),
        ("an unknown token", Token::generate().expose().to_string()),
    ];
    for (what, token) in &cases {
        let (mut c, _) = Client::authed(&node.ws_url(), &mine).await;
        send_refresh(&mut c, token).await;
        assert_eq!(
            c.expect_close().await,
            Closed::Code(4003, "authentication failed".into()),
            "refresh with {what}"
        );
    }
    assert_eq!(
        node.metric(failures).await,
        before + cases.len() as f64,
        "every refused refresh counts as an invalid_token failure"
    );
    // The other user's token was not harmed by the attempt.
    let (mut other, _) = Client::authed(&node.ws_url(), &theirs).await;
    assert_alive(&mut other).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_refreshes_are_bad_requests_and_keep_the_old_token() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(sqlite_node_config(dir.path(), Duration::ZERO)).await;
    let token = node.issue_token("5").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let success_before = node.metric("wsgate_auth_success_total").await;
    let big = "x".repeat(4096);
    for (i, frame) in [
        json!({"type": "refresh"}),
        json!({"type": "refresh", "token": null}),
        json!({"type": "refresh", "token": ""}),
        json!({"type": "refresh", "token": 42}),
        json!({"type": "refresh", "token": {"key": "k"}}),
        json!({"type": "refresh", "token": big}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut frame = frame;
        frame["id"] = json!(i);
        let reply = c.request(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} got {reply}");
        assert_eq!(reply["code"], "bad_request", "{frame} got {reply}");
        assert_eq!(reply["id"], json!(i), "{frame} got {reply}");
    }
    assert_alive(&mut c).await;
    assert_eq!(
        node.metric("wsgate_auth_success_total").await,
        success_before
    );
    // Still on the first token: revoking it closes the connection.
    node.api_post("/api/v1/revoke", json!({"token": token}))
        .await;
    assert_eq!(code(c.expect_close().await), 4003);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_failures_count_toward_the_address_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = sqlite_node_config(dir.path(), Duration::ZERO);
    config.limits.auth_failures_per_minute = 1;
    let node = spawn(config).await;
    let good = node.issue_token("3").await;
    let spare = node.issue_token("3").await;
    let (mut waiting, _) = Client::authed(&node.ws_url(), &good).await;
    // Two refused refreshes from 127.0.0.1: the second puts it over 1/min.
    for _ in 0..2 {
        let (mut c, _) = Client::authed(&node.ws_url(), &good).await;
        send_refresh(&mut c, "not-a-token").await;
        assert_eq!(code(c.expect_close().await), 4003);
    }
    // New sockets from the address are refused before any lookup...
    let mut c = Client::connect(&node.ws_url()).await;
    c.send_json(json!({"token": good})).await;
    assert_eq!(code(c.expect_close().await), 4029);
    // ...and so is a refresh on a socket opened before, even with a valid token.
    send_refresh(&mut waiting, &spare).await;
    assert_eq!(code(waiting.expect_close().await), 4029);
    node.shutdown().await;
}

// ---------------------------------------------------------------------------
// Re-validation.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_closes_expired_and_revoked_native_tokens_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(sqlite_node_config(dir.path(), REVALIDATE)).await;
    let db = db_of(&node.config).await;
    let valid = node.issue_token("1").await;
    let revoked = node.issue_token("2").await;
    // Taken before the expiry is computed, so the close cannot precede it.
    let issued = Instant::now();
    let expiring = issue_token(&node.config, "3", Some(Duration::from_millis(1500))).await;
    let short = issue_token(&node.config, "4", Some(Duration::from_millis(1500))).await;
    let long = node.issue_token("4").await;
    let (mut v, _) = Client::authed(&node.ws_url(), &valid).await;
    // Two sockets on one token: one lookup, both closed.
    let (mut r1, _) = Client::authed(&node.ws_url(), &revoked).await;
    let (mut r2, _) = Client::authed(&node.ws_url(), &revoked).await;
    let (mut e, _) = Client::authed(&node.ws_url(), &expiring).await;
    let (mut s, _) = Client::authed(&node.ws_url(), &short).await;
    assert_eq!(refresh(&mut s, &long, json!(1)).await["type"], "refreshed");

    // Revoked behind wsgate's back: SQLite sends no notice, only a sweep sees it.
    let start = Instant::now();
    exec(
        &db,
        "UPDATE wsgate_tokens SET revoked_at = 1 WHERE digest = $1",
        &[&digest(&revoked)],
    )
    .await;
    for c in [&mut r1, &mut r2] {
        assert_eq!(code(c.close_within(Duration::from_secs(2)).await), 4003);
    }
    println!(
        "revoked token: sockets closed by re-validation in {:?}",
        start.elapsed()
    );

    assert_eq!(code(e.close_within(Duration::from_secs(3)).await), 4003);
    let took = issued.elapsed();
    println!("expiring token (ttl 1.5 s): socket closed {took:?} after issue");
    assert!(
        took >= Duration::from_millis(1500),
        "closed before expiry: {took:?}"
    );

    // The refreshed connection outlived its first token's expiry, and
    // revoking that first token does not reach it: sweeps check the new one.
    exec(
        &db,
        "UPDATE wsgate_tokens SET revoked_at = 1 WHERE digest = $1",
        &[&digest(&short)],
    )
    .await;
    tokio::time::sleep(REVALIDATE * 3).await;
    assert_alive(&mut s).await;
    assert_alive(&mut v).await;
    // A revoked token cannot open a new socket either (the cache was told).
    let mut again = Client::connect(&node.ws_url()).await;
    again.send_json(json!({"token": revoked})).await;
    assert_eq!(code(again.expect_close().await), 4003);
    db.pool.close().await;
    node.shutdown().await;
}

/// Django's tables with `users` users and a token each; no revoke trigger,
/// so only re-validation sees deactivations and deleted rows.
async fn django_tables(pool: &sqlx::PgPool, users: usize) -> Vec<String> {
    create_django_tables(pool).await;
    let mut keys = Vec::new();
    for i in 1..=users {
        let key = hex::encode(rand::random::<[u8; 20]>());
        sqlx::query("INSERT INTO auth_user (id, username) VALUES ($1, $2)")
            .bind(i as i32)
            .bind(format!("user{i}"))
            .execute(pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO authtoken_token (key, user_id) VALUES ($1, $2)")
            .bind(&key)
            .bind(i as i32)
            .execute(pool)
            .await
            .unwrap();
        keys.push(key);
    }
    keys
}

/// Statements Postgres executed, from its log: lines mentioning `table`.
fn statements(log: &str, table: &str) -> usize {
    log.lines()
        .filter(|l| (l.contains("execute") || l.contains("statement:")) && l.contains(table))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_closes_deactivated_django_users_in_batched_lookups() {
    // A private cluster, so its log shows exactly the statements wsgate runs.
    let pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "ALTER SYSTEM SET log_statement = 'all'",
        // Never write the bound values (tokens) to the log.
        "ALTER SYSTEM SET log_parameter_max_length = 0",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    const USERS: usize = 40;
    let keys = django_tables(&pool, USERS).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(url.clone());
    config.auth.store = StoreKind::Django;
    config.auth.revalidate_interval = REVALIDATE;
    let node = spawn(config).await;
    let mut clients = Vec::new();
    for key in &keys {
        clients.push(Client::authed(&node.ws_url(), key).await.0);
    }
    let log_path = pg.path().join("server.log");
    let log_len = || std::fs::metadata(&log_path).unwrap().len() as usize;

    // Measure a quiet stretch: how many lookups do sweeps of 40 sockets make?
    let from = log_len();
    let window = Duration::from_millis(1500);
    tokio::time::sleep(window).await;
    let log = std::fs::read_to_string(&log_path).unwrap();
    let log = &log[from..];
    let joins = statements(log, "authtoken_token");
    let revocations = statements(log, "wsgate_revocations");
    let sweeps_max = (window.as_millis() / REVALIDATE.as_millis()) as usize + 1;
    println!(
        "{USERS} sockets, {} ms: {joins} authtoken_token queries and {revocations} \
         wsgate_revocations queries (at most {sweeps_max} sweeps; one query per token \
         would be {} of each)",
        window.as_millis(),
        USERS * sweeps_max.saturating_sub(1)
    );
    assert!(joins >= 2, "sweeps ran: {joins}\n{log}");
    assert!(
        joins <= sweeps_max,
        "one batched query per sweep: {joins}\n{log}"
    );
    assert!(revocations <= sweeps_max, "{revocations}\n{log}");

    // Deactivate user 1 and log user 2 out (row deleted): no trigger is
    // installed, so only re-validation can close them.
    let start = Instant::now();
    sqlx::query("UPDATE auth_user SET is_active = false WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM authtoken_token WHERE user_id = 2")
        .execute(&pool)
        .await
        .unwrap();
    let (first, rest) = clients.split_at_mut(2);
    for c in first.iter_mut() {
        assert_eq!(code(c.close_within(Duration::from_secs(2)).await), 4003);
    }
    println!(
        "deactivated user and deleted token: sockets closed by re-validation in {:?}",
        start.elapsed()
    );
    for c in rest.iter_mut() {
        assert_alive(c).await;
    }
    pool.close().await;
    node.shutdown().await;
    drop(pg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_outage_closes_nothing_and_refresh_answers_1013() {
    let mut pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.database.url = Some(url.clone());
    config.database.connect_timeout = Duration::from_millis(500);
    config.auth.timeout = Duration::from_secs(1);
    config.auth.revalidate_interval = REVALIDATE;
    let node = spawn(config).await;
    let a = node.issue_token("1").await;
    let fresh = node.issue_token("1").await;
    let b = node.issue_token("2").await;
    let (mut ca, _) = Client::authed(&node.ws_url(), &a).await;
    let (mut cb, _) = Client::authed(&node.ws_url(), &b).await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop_immediate();
        pg
    })
    .await
    .unwrap();
    // Several sweeps fail meanwhile; none closes anything.
    ca.expect_silence(REVALIDATE * 4).await;
    assert_alive(&mut ca).await;
    assert_alive(&mut cb).await;
    // A refresh needs the store (the new token is in no cache): 1013.
    let unavailable = r#"wsgate_auth_failures_total{reason="backend_unavailable"}"#;
    let before = node.metric(unavailable).await;
    send_refresh(&mut ca, &fresh).await;
    assert_eq!(
        ca.expect_close().await,
        Closed::Code(1013, "try again later".into())
    );
    assert_eq!(node.metric(unavailable).await, before + 1.0);

    // Postgres is back: sweeps (or the reconnected listener) work again.
    let pg = tokio::task::spawn_blocking(move || {
        pg.start_again();
        pg
    })
    .await
    .unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM wsgate_tokens WHERE digest = $1")
        .bind(digest(&b))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(code(cb.close_within(Duration::from_secs(5)).await), 4003);
    pool.close().await;
    node.shutdown().await;
    drop(pg);
}

// ---------------------------------------------------------------------------
// The batched lookup.

fn ids(answers: &[Option<Identity>]) -> Vec<Option<&str>> {
    answers
        .iter()
        .map(|a| a.as_ref().map(|i| i.user_id.as_str()))
        .collect()
}

/// `verify_many` answers exactly what `verify` answers, token by token, in
/// order, across a batch boundary, for the native, django and query stores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_many_agrees_with_verify() {
    let dir = tempfile::tempdir().unwrap();
    let config = sqlite_node_config(dir.path(), Duration::ZERO);
    let db = db_of(&config).await;
    db.migrate().await.unwrap();
    native_batches_agree(&db, "SQLite").await;
    let pg = PgDb::create().await;
    let mut pg_config = config.clone();
    pg_config.database.url = Some(pg.url.clone());
    let pg_db = db_of(&pg_config).await;
    pg_db.migrate().await.unwrap();
    native_batches_agree(&pg_db, "Postgres").await;
    pg_db.pool.close().await;
    django_and_query_batches_agree(&db).await;
    db.pool.close().await;
}

async fn native_batches_agree(db: &Db, name: &str) {
    let native = NativeStore::new(db.clone());
    let mut tokens = Vec::new();
    for i in 0..600 {
        let ttl = (i % 7 == 3).then_some(Duration::from_millis(1));
        tokens.push(native.issue(&format!("u{}", i % 50), ttl).await.unwrap());
    }
    for t in tokens.iter().skip(5).step_by(11) {
        native.revoke(&t.digest()).await.unwrap();
    }
    // Recorded in wsgate_revocations only (as for a foreign token).
    exec(
        db,
        "INSERT INTO wsgate_revocations (digest, revoked_at) VALUES ($1, 1)",
        &[&tokens[8].digest().to_hex()],
    )
    .await;
    tokens.insert(100, Token::generate());
    tokens.insert(0, tokens[1].clone());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let start = Instant::now();
    let mut one_by_one = Vec::new();
    for t in &tokens {
        one_by_one.push(native.verify(t).await.unwrap());
    }
    let took_one_by_one = start.elapsed();
    let start = Instant::now();
    let batched = native.verify_many(&tokens).await.unwrap();
    println!(
        "native store on {name}, {} tokens: one by one {took_one_by_one:?}, \
         batched (2 queries) {:?}",
        tokens.len(),
        start.elapsed()
    );
    assert_eq!(ids(&batched), ids(&one_by_one));
    let valid = batched.iter().filter(|a| a.is_some()).count();
    assert!(valid > 300 && valid < tokens.len() - 100, "{valid} valid");
    assert!(native.verify_many(&[]).await.unwrap().is_empty());
}

async fn django_and_query_batches_agree(db: &Db) {
    // Django's tables on SQLite: the preset's batch, and the same SQL as a
    // plain `auth.query` (one query per token).
    for sql in [
        "CREATE TABLE auth_user (id INTEGER PRIMARY KEY, is_active BOOLEAN NOT NULL)",
        "CREATE TABLE authtoken_token (key TEXT PRIMARY KEY, user_id INTEGER NOT NULL)",
    ] {
        exec(db, sql, &[]).await;
    }
    let mut keys = Vec::new();
    for i in 1..=30 {
        let key = hex::encode(rand::random::<[u8; 20]>());
        let active = if i % 4 == 0 { "0" } else { "1" };
        exec(
            db,
            &format!("INSERT INTO auth_user (id, is_active) VALUES ({i}, {active})"),
            &[],
        )
        .await;
        exec(
            db,
            &format!("INSERT INTO authtoken_token (key, user_id) VALUES ($1, {i})"),
            &[&key],
        )
        .await;
        keys.push(Token::new(key));
    }
    keys.push(Token::new("unknown".into()));
    let django = QueryStore::django(db.clone());
    django.revoke(&keys[2].digest()).await.unwrap();
    let query = QueryStore::new(
        db.clone(),
        "SELECT u.id FROM authtoken_token t JOIN auth_user u ON u.id = t.user_id \
         WHERE t.key = $1 AND u.is_active"
            .into(),
    );
    for store in [&django as &dyn TokenStore, &query] {
        let mut one_by_one = Vec::new();
        for t in &keys {
            one_by_one.push(store.verify(t).await.unwrap());
        }
        let batched = store.verify_many(&keys).await.unwrap();
        assert_eq!(ids(&batched), ids(&one_by_one), "{}", store.name());
        assert_eq!(batched.iter().filter(|a| a.is_some()).count(), 22);
    }
}
