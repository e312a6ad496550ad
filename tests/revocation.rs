//! Live revocation from Postgres (`LISTEN/NOTIFY`): deleting or revoking a
//! token row closes its sockets on every node within a second, for the
//! native table and for Django's `authtoken_token` with the documented trigger.

mod common;

use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::*;
use serde_json::json;
use wsgate::config::{Config, StoreKind};

fn node_config(dir: &std::path::Path, node: &str, prefix: &str, pg: &PgDb) -> Config {
    let mut c = test_config(dir);
    c.server.node_id = Some(node.into());
    c.redis.url = Some(SHARED_REDIS.into());
    c.redis.prefix = prefix.into();
    c.database.url = Some(pg.url.clone());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_or_revoking_a_native_token_closes_its_sockets_everywhere() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let a = spawn(node_config(dir.path(), "node-a", &prefix, &pg)).await;
    let b = spawn(node_config(dir.path(), "node-b", &prefix, &pg)).await;
    let deleted = a.issue_token("1").await;
    let revoked = a.issue_token("2").await;
    let kept = a.issue_token("3").await;
    let mut sockets = Vec::new();
    for token in [&deleted, &revoked] {
        for n in [&a, &b] {
            sockets.push(Client::authed(&n.ws_url(), token).await.0);
        }
    }
    let (mut other, _) = Client::authed(&b.ws_url(), &kept).await;
    let pool = pg.pool().await;

    let start = Instant::now();
    sqlx::query("DELETE FROM wsgate_tokens WHERE digest = $1")
        .bind(digest(&deleted))
        .execute(&pool)
        .await
        .unwrap();
    for s in &mut sockets[..2] {
        assert_eq!(code(s.close_within(Duration::from_secs(1)).await), 4003);
    }
    println!(
        "DELETE closed the token's sockets on 2 nodes in {:?}",
        start.elapsed()
    );

    let start = Instant::now();
    sqlx::query("UPDATE wsgate_tokens SET revoked_at = 1 WHERE digest = $1")
        .bind(digest(&revoked))
        .execute(&pool)
        .await
        .unwrap();
    for s in &mut sockets[2..] {
        assert_eq!(code(s.close_within(Duration::from_secs(1)).await), 4003);
    }
    println!(
        "UPDATE revoked_at closed the token's sockets on 2 nodes in {:?}",
        start.elapsed()
    );

    // The caches forgot them: no node lets them back in.
    for token in [&deleted, &revoked] {
        for n in [&a, &b] {
            let mut c = Client::connect(&n.ws_url()).await;
            c.send_json(json!({"token": token})).await;
            assert_eq!(code(c.expect_close().await), 4003);
        }
    }
    assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
    pool.close().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn django_logout_and_deactivation_close_sockets() {
    let pg = PgDb::create().await;
    let pool = pg.pool().await;
    create_django_tables(&pool).await;
    for sql in [
        "INSERT INTO auth_user (username) VALUES ('alice'), ('bob')",
        "INSERT INTO authtoken_token (key, user_id) VALUES \
         ('aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', 1), ('bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb', 2)",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let trigger = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/sql/django-revoke-trigger.sql"
    ))
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(trigger))
        .execute(&pool)
        .await
        .unwrap();

    let (_dir, node) = node_with(|config| {
        config.database.url = Some(pg.url.clone());
        config.auth.store = StoreKind::Django;
    })
    .await;
    let alice = "a".repeat(40);
    let bob = "b".repeat(40);
    let (mut a, w) = Client::authed(&node.ws_url(), &alice).await;
    assert_eq!(w["user_id"], "1");
    let (mut b, _) = Client::authed(&node.ws_url(), &bob).await;

    // Logout: DRF deletes the token row.
    let start = Instant::now();
    sqlx::query("DELETE FROM authtoken_token WHERE key = $1")
        .bind(&alice)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(code(a.close_within(Duration::from_secs(1)).await), 4003);
    println!("Django logout closed the socket in {:?}", start.elapsed());
    // Deactivating a user closes the sockets of its tokens.
    let start = Instant::now();
    sqlx::query("UPDATE auth_user SET is_active = false WHERE id = 2")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(code(b.close_within(Duration::from_secs(1)).await), 4003);
    println!(
        "Django user deactivation closed the socket in {:?}",
        start.elapsed()
    );
    let mut again = Client::connect(&node.ws_url()).await;
    again.send_json(json!({"token": bob})).await;
    assert_eq!(code(again.expect_close().await), 4003);
    pool.close().await;
    node.shutdown().await;
}

/// The listener survives a Postgres restart: it reconnects by itself, a
/// token deleted afterwards loses its socket within a second as before, and
/// a token deleted while no notice could reach the node (simulated with the
/// trigger disabled) is caught by the catch-up sweep that follows the
/// reconnect, with periodic re-validation off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reconnects_after_a_postgres_restart() {
    use common::pg_server::PgServer;
    let mut pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
    let url = pg.url("postgres");
    let (_dir, node) = node_with(|config| {
        config.database.url = Some(url.clone());
        config.database.connect_timeout = Duration::from_secs(1);
        assert!(
            config.auth.revalidate_interval.is_zero(),
            "periodic sweeps off"
        );
    })
    .await;
    let missed = node.issue_token("1").await;
    let deleted = node.issue_token("2").await;
    let kept = node.issue_token("3").await;
    let (mut m, _) = Client::authed(&node.ws_url(), &missed).await;
    let (mut d, _) = Client::authed(&node.ws_url(), &deleted).await;
    let (mut k, _) = Client::authed(&node.ws_url(), &kept).await;

    // A deletion whose notice never reaches the node.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    for sql in [
        "ALTER TABLE wsgate_tokens DISABLE TRIGGER USER",
        &format!(
            "DELETE FROM wsgate_tokens WHERE digest = '{}'",
            digest(&missed)
        ),
        "ALTER TABLE wsgate_tokens ENABLE TRIGGER USER",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
    m.expect_silence(Duration::from_millis(300)).await;

    let stopped = Instant::now();
    let (pg, down) = tokio::task::spawn_blocking(move || {
        pg.stop_immediate();
        let down = stopped.elapsed();
        pg.start_again();
        (pg, down)
    })
    .await
    .unwrap();
    let up = stopped.elapsed();
    // Reconnect, LISTEN, then the catch-up sweep finds the missed deletion.
    assert_eq!(code(m.close_within(Duration::from_secs(10)).await), 4003);
    println!(
        "Postgres stopped at {down:?}, accepting again at {up:?}; listener back and \
         missed deletion caught at {:?} (from the stop)",
        stopped.elapsed()
    );

    // Listening again (the sweep runs only after LISTEN): a delete now
    // closes its socket within a second.
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let start = Instant::now();
    sqlx::query("DELETE FROM wsgate_tokens WHERE digest = $1")
        .bind(digest(&deleted))
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(code(d.close_within(Duration::from_secs(1)).await), 4003);
    println!(
        "DELETE after the restart closed the token's socket in {:?}",
        start.elapsed()
    );
    assert_eq!(k.request(json!({"type": "ping"})).await["type"], "pong");
    pool.close().await;
    node.shutdown().await;
    drop(pg);
}
