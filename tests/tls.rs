//! TLS to the backing services, against throwaway servers with a CA made by
//! the test (`common::tls_servers`): PostgreSQL that accepts only TLS (or
//! only plaintext), and `redis-server` listening only on a TLS port.
//!
//! PostgreSQL: `sslmode=verify-full` + `sslrootcert` issues a token and a
//! real node authenticates it over WebSocket, its
//! revocation listener (`LISTEN` over TLS) closing the socket when the row
//! is revoked; `prefer` and the default use TLS when the server offers it;
//! the `PG*` variables are honoured; client certificates (`sslcert`,
//! `sslkey`); a wrong CA, a wrong host name and `require` against a
//! plaintext-only server are refused with one clear line that does not
//! print the password.
//!
//! Redis: `rediss://` with `redis.tls_ca_file` publishes and delivers across
//! nodes (broker, cache and compat bridge clients all on TLS); a wrong CA is
//! a clear start error; a server that requires client certificates accepts
//! `redis.tls_cert_file`/`redis.tls_key_file` and refuses a node without.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::tls_servers::{PG_PASSWORD, PgTls, Pki, REDIS_PASSWORD, TlsPg, TlsRedis};
use common::*;
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use wsgate::auth::sql::Db;
use wsgate::config::Config;
use wsgate::server::Server;

/// Names the server certificate is valid for in the "right host" tests.
const LOCAL_NAMES: &[&str] = &["localhost", "127.0.0.1"];

/// `sslmode=<mode>&sslrootcert=<ca>`.
fn verify(mode: &str, ca: &Path) -> String {
    format!("sslmode={mode}&sslrootcert={}", ca.display())
}

/// Runs the real `wsgate` binary with `args` and `env` in `dir`, bounded to
/// 60 s; returns whether it succeeded, its stdout and its stderr.
fn wsgate(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .env("WSGATE__LOG__FORMAT", "json")
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run wsgate");
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsgate {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `wsgate token issue --user <user>` against `url` (plus `env`), off the
/// runtime; returns the token.
async fn issue_with_binary(url: &str, env: &[(&str, &str)], user: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![("WSGATE__DATABASE__URL".into(), url.into())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let user = user.to_string();
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        wsgate(dir.path(), &["token", "issue", "--user", &user], &env)
    })
    .await
    .unwrap();
    assert!(ok, "wsgate token issue failed: {stderr}");
    stdout.trim().to_string()
}

/// The single line `wsgate token issue` prints when it cannot reach `url`
/// with `env` set (the real binary, so the `PG*` variables reach sqlx);
/// fails if it succeeds or prints more than one line.
async fn refusal_line_of_binary(url: &str, env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut vars: Vec<(String, String)> = vec![("WSGATE__DATABASE__URL".into(), url.into())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (ok, _, stderr) = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (&**k, &**v)).collect();
        wsgate(dir.path(), &["token", "issue", "--user", "x"], &env)
    })
    .await
    .unwrap();
    assert!(!ok, "wsgate token issue succeeded; stderr: {stderr}");
    one_line(&stderr)
}

/// The line the command line prints (`wsgate: <error>`) when `Db::connect`
/// (what `wsgate serve`, `migrate` and `token` start with) cannot reach `url`.
async fn refusal_line(url: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    match Db::connect(&db_config(dir.path(), url)).await {
        Ok(_) => panic!("connected to {url}"),
        Err(e) => one_line(&format!("wsgate: {e}\n")),
    }
}

/// `text`'s only line; fails if there are more, or if it shows the password.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got:\n{text}");
    assert!(
        !text.contains(PG_PASSWORD),
        "the password is printed: {text}"
    );
    lines[0].to_string()
}

/// A config whose database is `url` (and nothing else set).
fn db_config(dir: &Path, url: &str) -> Config {
    let mut c = test_config(dir);
    c.database.url = Some(url.into());
    c
}

/// Connects through wsgate's own `Db::connect` (the `Any` driver) and asks
/// the server whether this connection uses TLS.
async fn connection_uses_tls(url: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&db_config(dir.path(), url))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db.pool)
        .await
        .expect("pg_stat_ssl");
    db.pool.close().await;
    ssl
}

// ---------------------------------------------------------------------------
// PostgreSQL.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_verify_full_issues_and_authenticates_a_token_and_listens_over_tls() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::Only);
    let url = pg.url("127.0.0.1", &verify("verify-full", &pki.ca));

    let dir = tempfile::tempdir().unwrap();
    let config = db_config(dir.path(), &url);
    let token = issue_token(&config, "alice", None).await;
    let node = spawn(config).await;
    let (mut client, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["user_id"], "alice");

    // The revocation listener's own connection (PgListener) is on TLS too:
    // revoking the row notifies it, and it closes the socket.
    let pool = sqlx::PgPool::connect(&url).await.expect("admin over TLS");
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(ssl);
    sqlx::query("UPDATE wsgate_tokens SET revoked_at = 1 WHERE user_id = 'alice'")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(code(client.expect_close().await), 4003);
    pool.close().await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_prefer_and_the_default_use_tls_when_the_server_offers_it() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::Only);
    // The server refuses plaintext, so connecting at all means TLS; the
    // server confirms it.
    assert!(connection_uses_tls(&pg.url("127.0.0.1", "sslmode=prefer")).await);
    assert!(connection_uses_tls(&pg.url("127.0.0.1", "")).await);
    assert!(connection_uses_tls(&pg.url("localhost", &verify("verify-full", &pki.ca))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_environment_variables_choose_the_mode_and_ca() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let other = Pki::new(LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::Only);
    let url = pg.url("127.0.0.1", "");
    let ca = pki.ca.to_str().unwrap();
    let token = issue_with_binary(
        &url,
        &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca)],
        "env",
    )
    .await;
    assert!(token.starts_with("wsg_"));
    // PGSSLMODE=verify-full really verifies: another CA is refused.
    let line = refusal_line_of_binary(
        &url,
        &[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", other.ca.to_str().unwrap()),
        ],
    )
    .await;
    assert!(line.contains("certificate verification failed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_wrong_ca_is_refused_with_one_clear_line() {
    let pki = Pki::named("wsgate test CA", LOCAL_NAMES, "postgres");
    let other = Pki::new(LOCAL_NAMES, "postgres");
    // Same name as the server's CA, another key.
    let impostor = Pki::named("wsgate test CA", LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::Only);
    for (mode, ca) in [
        ("verify-full", &other.ca),
        ("verify-ca", &other.ca),
        ("verify-full", &impostor.ca),
    ] {
        let line = refusal_line(&pg.url("127.0.0.1", &verify(mode, ca))).await;
        assert!(line.starts_with("wsgate: "), "{line}");
        assert!(line.contains("TLS to PostgreSQL"), "{line}");
        assert!(line.contains("certificate verification failed"), "{line}");
        assert!(line.contains("sslrootcert"), "names the fix: {line}");
    }
    // `wsgate serve` stops with the same line.
    let dir = tempfile::tempdir().unwrap();
    let url = pg.url("127.0.0.1", &verify("verify-full", &other.ca));
    match Server::build(db_config(dir.path(), &url)).await {
        Ok(_) => panic!("the node started"),
        Err(e) => {
            let line = one_line(&e.to_string());
            assert!(line.starts_with("database: token store unavailable: TLS to PostgreSQL: certificate verification failed"), "{line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_wrong_host_name_is_refused_by_verify_full_only() {
    // A certificate for another name, from the CA the client trusts.
    let pki = Pki::new(&["db.internal.example"], "postgres");
    let pg = TlsPg::start(&pki, PgTls::Only);
    let line = refusal_line(&pg.url("127.0.0.1", &verify("verify-full", &pki.ca))).await;
    assert!(line.contains("TLS to PostgreSQL"), "{line}");
    assert!(line.contains("host name mismatch"), "{line}");
    assert!(line.contains("127.0.0.1"), "names the host: {line}");
    // verify-ca checks the chain but not the name.
    assert!(connection_uses_tls(&pg.url("127.0.0.1", &verify("verify-ca", &pki.ca))).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_require_against_a_plaintext_only_server_is_refused() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::Off);
    for query in [
        "sslmode=require".to_string(),
        verify("verify-full", &pki.ca),
    ] {
        let line = refusal_line(&pg.url("127.0.0.1", &query)).await;
        assert!(line.contains("TLS to PostgreSQL"), "{line}");
        assert!(line.contains("does not accept TLS"), "{line}");
    }
    // `prefer` (the default) falls back to plaintext only because the
    // server declined TLS.
    assert!(!connection_uses_tls(&pg.url("127.0.0.1", "sslmode=prefer")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_client_certificate_from_sslcert_and_sslkey() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let pg = TlsPg::start(&pki, PgTls::ClientCert);
    let base = verify("verify-full", &pki.ca);
    let with_cert = format!(
        "{base}&sslcert={}&sslkey={}",
        pki.client_cert.display(),
        pki.client_key.display()
    );
    assert!(connection_uses_tls(&pg.url("127.0.0.1", &with_cert)).await);
    let line = refusal_line(&pg.url("127.0.0.1", &base)).await;
    assert!(line.contains("certificate"), "{line}");
}

// ---------------------------------------------------------------------------
// Redis.

/// A node on the TLS Redis at `url` with the `redis.tls_*` files given and
/// the SQLite file in `dir` (shared by the nodes of a test).
fn redis_config(
    dir: &Path,
    node: &str,
    url: &str,
    prefix: &str,
    tls: [Option<&Path>; 3],
) -> Config {
    let mut c = test_config(dir);
    c.server.node_id = Some(node.into());
    c.redis.url = Some(url.into());
    c.redis.prefix = prefix.into();
    let [ca, cert, key] = tls.map(|p| p.map(Path::to_path_buf));
    c.redis.tls_ca_file = ca;
    c.redis.tls_cert_file = cert;
    c.redis.tls_key_file = key;
    c
}

/// The error `Server::build` stops with, as one line without the password.
async fn start_error(config: Config) -> String {
    match Server::build(config).await {
        Ok(_) => panic!("the node started"),
        Err(e) => {
            let line = one_line(&e.to_string());
            assert!(!line.contains(REDIS_PASSWORD), "{line}");
            line
        }
    }
}

/// A client of `to` subscribed to `group` receives what `from` publishes.
/// The publish is repeated (at most 10 times, a second apart) until one
/// arrives: what is tested is that the TLS Redis carries it. On a loaded
/// 2-core machine a single publish right after start-up was lost about once
/// in ten runs (cause not established; see the commit message).
async fn delivers(from: &TestNode, to: &TestNode, token: &str, group: &str) {
    let (mut client, _) = Client::authed(&to.ws_url(), token).await;
    client.subscribe(group).await;
    for _ in 0..10 {
        from.publish(group, json!({"over": "tls"})).await;
        if let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_secs(1), client.ws.next()).await
        {
            let frame: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(frame["group"], group, "{frame}");
            assert_eq!(frame["data"], json!({"over": "tls"}), "{frame}");
            return;
        }
    }
    panic!("nothing published on {group} reached the client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca_publishes_and_delivers_across_nodes() {
    let pki = Pki::new(LOCAL_NAMES, "wsgate");
    let redis = TlsRedis::start(&pki, false);
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis_servers::random_prefix();
    let url = redis.url("127.0.0.1");
    let tls = [Some(pki.ca.as_path()), None, None];
    let a = spawn(redis_config(dir.path(), "node-a", &url, &prefix, tls)).await;
    // The second node also runs the channels_redis bridge: its subscriber
    // is a third kind of Redis client built by the same code.
    let mut config_b = redis_config(dir.path(), "node-b", &url, &prefix, tls);
    config_b.compat.channels_redis = true;
    let b = spawn(config_b).await;
    let token = a.issue_token("7").await;
    delivers(&a, &b, &token, "news").await;
    delivers(&b, &a, &token, "sport").await;
    // The certificate is checked against the host name too.
    let by_name = redis.url("localhost");
    let c = spawn(redis_config(dir.path(), "node-c", &by_name, &prefix, tls)).await;
    delivers(&c, &a, &token, "weather").await;
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_wrong_ca_or_host_is_a_clear_start_error() {
    let pki = Pki::new(LOCAL_NAMES, "wsgate");
    let other = Pki::new(LOCAL_NAMES, "wsgate");
    let redis = TlsRedis::start(&pki, false);
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis_servers::random_prefix();
    let url = redis.url("127.0.0.1");
    let wrong_ca = [Some(other.ca.as_path()), None, None];
    let line = start_error(redis_config(dir.path(), "n", &url, &prefix, wrong_ca)).await;
    assert!(line.starts_with("redis: "), "{line}");
    assert!(
        line.contains("TLS to Redis: certificate verification failed"),
        "{line}"
    );
    // Without redis.tls_ca_file the system's store is used: the test CA is
    // not in it.
    let line = start_error(redis_config(dir.path(), "n", &url, &prefix, [None; 3])).await;
    assert!(
        line.contains("TLS to Redis: certificate verification failed"),
        "{line}"
    );

    let elsewhere = Pki::new(&["cache.internal.example"], "wsgate");
    let redis = TlsRedis::start(&elsewhere, false);
    let url = redis.url("127.0.0.1");
    let right_ca = [Some(elsewhere.ca.as_path()), None, None];
    let line = start_error(redis_config(dir.path(), "n", &url, &prefix, right_ca)).await;
    assert!(line.contains("TLS to Redis: host name mismatch"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_client_certificate_when_the_server_requires_one() {
    let pki = Pki::new(LOCAL_NAMES, "wsgate");
    let redis = TlsRedis::start(&pki, true);
    let dir = tempfile::tempdir().unwrap();
    let prefix = redis_servers::random_prefix();
    let url = redis.url("127.0.0.1");
    let with_cert = [
        Some(pki.ca.as_path()),
        Some(pki.client_cert.as_path()),
        Some(pki.client_key.as_path()),
    ];
    let a = spawn(redis_config(dir.path(), "a", &url, &prefix, with_cert)).await;
    let b = spawn(redis_config(dir.path(), "b", &url, &prefix, with_cert)).await;
    let token = a.issue_token("9").await;
    delivers(&a, &b, &token, "news").await;
    a.shutdown().await;
    b.shutdown().await;

    let without = [Some(pki.ca.as_path()), None, None];
    let line = start_error(redis_config(dir.path(), "c", &url, &prefix, without)).await;
    assert!(line.starts_with("redis: "), "{line}");
    assert!(
        line.contains("TLS to Redis: the server requires a client certificate"),
        "{line}"
    );
    // A client certificate from another CA is refused as well.
    let other = Pki::new(LOCAL_NAMES, "wsgate");
    let foreign = [
        Some(pki.ca.as_path()),
        Some(other.client_cert.as_path()),
        Some(other.client_key.as_path()),
    ];
    let line = start_error(redis_config(dir.path(), "d", &url, &prefix, foreign)).await;
    assert!(
        line.contains("TLS to Redis: the server refused the client certificate"),
        "{line}"
    );
}

#[test]
fn redis_tls_keys_are_checked_at_start_up_by_name() {
    let pki = Pki::new(LOCAL_NAMES, "wsgate");
    let dir = tempfile::tempdir().unwrap();
    let check = |url: &str, tls: [Option<&Path>; 3]| {
        redis_config(dir.path(), "n", url, "p:", tls)
            .validate()
            .map_err(|e| e.to_string())
    };
    let tls_url = "rediss://127.0.0.1:6390";
    let ca = Some(pki.ca.as_path());
    assert!(check(tls_url, [ca, None, None]).is_ok());
    let all = [
        ca,
        Some(pki.client_cert.as_path()),
        Some(pki.client_key.as_path()),
    ];
    assert!(check(tls_url, all).is_ok());
    // Files: missing, not PEM, key without certificate, a key that does
    // not go with the certificate.
    let missing = dir.path().join("nope.pem");
    let err = check(tls_url, [Some(&missing), None, None]).unwrap_err();
    assert!(
        err.starts_with("invalid configuration: redis.tls_ca_file: cannot read"),
        "{err}"
    );
    assert!(err.contains("nope.pem"), "{err}");
    let err = check(tls_url, [Some(pki.client_key.as_path()), None, None]).unwrap_err();
    assert!(err.contains("redis.tls_ca_file"), "{err}");
    let err = check(tls_url, [ca, Some(pki.client_cert.as_path()), None]).unwrap_err();
    assert!(
        err.contains("redis.tls_key_file: required with redis.tls_cert_file"),
        "{err}"
    );
    let err = check(
        tls_url,
        [ca, Some(pki.client_cert.as_path()), Some(pki.ca.as_path())],
    )
    .unwrap_err();
    assert!(err.contains("redis.tls_key_file"), "{err}");
    let other = Pki::new(LOCAL_NAMES, "wsgate");
    let err = check(
        tls_url,
        [
            ca,
            Some(pki.client_cert.as_path()),
            Some(other.client_key.as_path()),
        ],
    )
    .unwrap_err();
    assert!(
        err.contains("redis.tls_key_file: does not go with redis.tls_cert_file"),
        "{err}"
    );
    // A CA with a plaintext URL is a mistake, not silently ignored.
    let err = check("redis://127.0.0.1:6379", [ca, None, None]).unwrap_err();
    assert!(
        err.contains("redis.tls_ca_file: needs a rediss:// redis.url"),
        "{err}"
    );
}

#[test]
fn database_url_tls_files_are_checked_at_start_up() {
    let pki = Pki::new(LOCAL_NAMES, "postgres");
    let dir = tempfile::tempdir().unwrap();
    let check = |query: &str| {
        let url = format!("postgres://postgres:{PG_PASSWORD}@db.example:5432/app?{query}");
        db_config(dir.path(), &url)
            .validate()
            .map_err(|e| e.to_string())
    };
    assert!(check(&verify("verify-full", &pki.ca)).is_ok());
    let err = check(&verify("verify-full", &dir.path().join("nope.pem"))).unwrap_err();
    assert!(
        err.starts_with("invalid configuration: database.url: sslrootcert: cannot read"),
        "{err}"
    );
    assert!(!err.contains(PG_PASSWORD), "{err}");
    let err = check(&format!(
        "sslmode=verify-full&sslcert={}&sslkey=/nope.key",
        pki.client_cert.display()
    ))
    .unwrap_err();
    assert!(
        err.contains("database.url: sslkey: cannot read /nope.key"),
        "{err}"
    );
    let err = check("sslmode=verify_full").unwrap_err();
    assert!(err.contains("database.url: sslmode"), "{err}");
}
