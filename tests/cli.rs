//! The real `wsgate` binary: token management, migrations, `config check` and
//! configuration errors, configured through `WSGATE__...` variables.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::PgDb;
use wsgate::auth::Token;
use wsgate::config::Config;

/// The binary, run in `dir` with only the `WSGATE__...` variables given
/// (anything inherited from the environment is removed).
fn wsgate_cmd(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("WSGATE") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn wsgate(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    wsgate_cmd(dir, env, args)
        .stdin(Stdio::null())
        .output()
        .expect("run wsgate")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

#[track_caller]
fn assert_ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// A failed run whose stderr is one line containing `key`.
#[track_caller]
fn assert_config_error(o: &Output, key: &str) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected a failure naming {key}; stdout: {}",
        stdout(o)
    );
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line on stderr: {err:?}"
    );
    assert!(err.contains(key), "stderr names {key}: {err:?}");
    assert!(stdout(o).is_empty(), "nothing on stdout: {:?}", stdout(o));
}

/// The `token list` line for a token, found by its 12-character digest prefix.
fn list_line(list: &str, token: &str) -> String {
    let prefix = &Token::new(token.to_string()).digest().to_hex()[..12];
    let lines: Vec<&str> = list
        .lines()
        .filter(|l| l.split_whitespace().next() == Some(prefix))
        .collect();
    assert_eq!(lines.len(), 1, "one line starting {prefix} in:\n{list}");
    lines[0].to_string()
}

/// issue, list, revoke, `--ttl 1ms`, against whatever `env` configures.
fn token_lifecycle(dir: &Path, env: &[(&str, &str)]) {
    let issued = wsgate(dir, env, &["token", "issue", "--user", "42"]);
    assert_ok(&issued, "token issue");
    let out = stdout(&issued);
    assert_eq!(out.lines().count(), 1, "one token line: {out:?}");
    let token = out.trim().to_string();
    assert!(token.starts_with("wsg_") && token.len() == 47, "{token:?}");
    assert!(!stderr(&issued).contains(&token));

    let listed = wsgate(dir, env, &["token", "list"]);
    assert_ok(&listed, "token list");
    let list = stdout(&listed);
    assert!(!list.contains(&token), "the token is listed:\n{list}");
    assert!(!list.contains(&token[4..]), "the token is listed:\n{list}");
    let line = list_line(&list, &token);
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols[0].len(), 12, "{line}");
    assert!(!cols[0].contains(&Token::new(token.clone()).digest().to_hex()));
    assert_eq!(cols[1], "42", "{line}");
    assert_eq!(cols.last(), Some(&"live"), "{line}");
    assert!(line.contains("never"), "no expiry: {line}");

    let revoked = wsgate(dir, env, &["token", "revoke", &token]);
    assert_ok(&revoked, "token revoke");
    assert!(!stdout(&revoked).contains(&token));
    let list = stdout(&wsgate(dir, env, &["token", "list"]));
    assert!(!list.contains(&token));
    let line = list_line(&list, &token);
    assert!(line.ends_with("revoked"), "{line}");

    let short = wsgate(
        dir,
        env,
        &["token", "issue", "--user", "42", "--ttl", "1ms"],
    );
    assert_ok(&short, "token issue --ttl 1ms");
    let short = stdout(&short).trim().to_string();
    std::thread::sleep(Duration::from_millis(10));
    let day = wsgate(dir, env, &["token", "issue", "--user", "7", "--ttl", "24h"]);
    assert_ok(&day, "token issue --ttl 24h");
    let day = stdout(&day).trim().to_string();

    let listed = wsgate(dir, env, &["token", "list"]);
    assert_ok(&listed, "token list");
    let list = stdout(&listed);
    for t in [&token, &short, &day] {
        assert!(!list.contains(t.as_str()), "a token is listed:\n{list}");
    }
    assert!(list_line(&list, &short).ends_with("expired"), "{list}");
    let day_line = list_line(&list, &day);
    assert!(
        day_line.ends_with("live") && !day_line.contains("never"),
        "{day_line}"
    );
    assert!(list_line(&list, &token).ends_with("revoked"), "{list}");

    // --user filters
    let listed = wsgate(dir, env, &["token", "list", "--user", "7"]);
    assert_ok(&listed, "token list --user 7");
    let list = stdout(&listed);
    list_line(&list, &day);
    assert!(!list.contains(&Token::new(token.clone()).digest().to_hex()[..12]));
}

#[test]
fn token_commands_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    token_lifecycle(dir.path(), &[]);
    // the default embedded database, in the working directory
    assert!(dir.path().join("wsgate.db").exists());
}

#[tokio::test]
async fn token_commands_postgres() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    token_lifecycle(dir.path(), &[("WSGATE__DATABASE__URL", &pg.url)]);
    assert!(
        !dir.path().join("wsgate.db").exists(),
        "no SQLite file with a database URL"
    );
}

fn migrate_twice(dir: &Path, env: &[(&str, &str)]) {
    for round in 1..=2 {
        let o = wsgate(dir, env, &["migrate"]);
        assert_ok(&o, &format!("migrate #{round}"));
        assert!(stdout(&o).contains("migrations applied"), "{}", stdout(&o));
    }
    // tokens still work after migrating again
    assert_ok(
        &wsgate(dir, env, &["token", "issue", "--user", "1"]),
        "issue",
    );
    assert_ok(&wsgate(dir, env, &["migrate"]), "migrate #3");
}

#[test]
fn migrate_twice_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrate_twice(dir.path(), &[]);
    assert!(dir.path().join("wsgate.db").exists());
}

#[tokio::test]
async fn migrate_twice_postgres() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    migrate_twice(dir.path(), &[("WSGATE__DATABASE__URL", &pg.url)]);
}

#[test]
fn config_check_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let api_key = "some-secret-key-123456";
    let db_password = "db-pass-w0rd-9876";
    let url = format!("postgres://wsgate:{db_password}@db.internal:5432/app");
    let o = wsgate(
        dir.path(),
        &[
            ("WSGATE__API__KEYS", api_key),
            ("WSGATE__DATABASE__URL", &url),
            ("WSGATE__AUTH__TIMEOUT", "250ms"),
        ],
        &["config", "check"],
    );
    assert_ok(&o, "config check");
    let out = stdout(&o);
    assert!(!out.contains(api_key), "api key printed:\n{out}");
    assert!(
        !out.contains(db_password),
        "database password printed:\n{out}"
    );

    // what is printed is TOML that reads back as a configuration
    let printed: Config = config::Config::builder()
        .add_source(config::File::from_str(&out, config::FileFormat::Toml))
        .build()
        .and_then(|c| c.try_deserialize())
        .unwrap_or_else(|e| panic!("config check prints TOML ({e}):\n{out}"));
    assert_eq!(printed.api.keys, vec!["********".to_string()]);
    assert_eq!(
        printed.database.url.as_deref(),
        Some("postgres://wsgate:********@db.internal:5432/app")
    );
    assert_eq!(printed.auth.timeout, Duration::from_millis(250));
    assert!(
        printed.server.node_id.is_some(),
        "the effective node id is shown"
    );
    // config check does not touch any database
    assert!(!dir.path().join("wsgate.db").exists());
}

#[test]
fn config_check_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(dir.path(), &[], &["config", "check"]);
    assert_ok(&o, "config check");
    assert!(stdout(&o).contains("[server]"), "{}", stdout(&o));
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn config_error_bad_duration() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(
        dir.path(),
        &[("WSGATE__AUTH__TIMEOUT", "five")],
        &["config", "check"],
    );
    assert_config_error(&o, "auth.timeout");
}

#[test]
fn config_error_zero_limit() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(
        dir.path(),
        &[("WSGATE__LIMITS__MAX_CONNECTIONS", "0")],
        &["config", "check"],
    );
    assert_config_error(&o, "limits.max_connections");
}

#[test]
fn config_error_unknown_key_in_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, "[server]\nlisten_port = 1\n").unwrap();
    let o = wsgate(
        dir.path(),
        &[],
        &["--config", file.to_str().unwrap(), "config", "check"],
    );
    assert_config_error(&o, "listen_port");
    let err = stderr(&o);
    assert!(err.contains("server"), "names the section: {err:?}");
}

#[test]
fn config_error_unknown_key_in_env() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(
        dir.path(),
        &[("WSGATE__SERVER__LISTEN_PORT", "1")],
        &["config", "check"],
    );
    assert_config_error(&o, "listen_port");
    let o = wsgate(
        dir.path(),
        &[("WSGATE__SERVR__LISTEN", "127.0.0.1:1")],
        &["config", "check"],
    );
    assert_config_error(&o, "servr");
}

#[test]
fn config_error_also_stops_other_commands() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(
        dir.path(),
        &[("WSGATE__AUTH__TIMEOUT", "five")],
        &["token", "issue", "--user", "1"],
    );
    assert_config_error(&o, "auth.timeout");
    assert!(!dir.path().join("wsgate.db").exists());
}

/// Runs `wsgate` (serve) and waits up to `limit` for it to exit; kills it
/// and fails if it is still running.
fn serve_expecting_exit(dir: &Path, env: &[(&str, &str)], limit: Duration) -> Output {
    let mut child = wsgate_cmd(dir, env, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wsgate");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "wsgate kept running without api.keys\nstdout: {}\nstderr: {}",
                stdout(&out),
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn serve_with_database_requires_api_keys() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let o = serve_expecting_exit(
        dir.path(),
        &[
            ("WSGATE__DATABASE__URL", &pg.url),
            ("WSGATE__SERVER__LISTEN", "127.0.0.1:0"),
            ("WSGATE__API__LISTEN", "127.0.0.1:0"),
            ("WSGATE__METRICS__LISTEN", "127.0.0.1:0"),
        ],
        Duration::from_secs(20),
    );
    assert!(!o.status.success(), "exit status {:?}", o.status);
    let err = stderr(&o);
    assert!(err.contains("api.keys"), "stderr names api.keys: {err:?}");
    // no key was generated on disk for a non-embedded node
    assert!(!dir.path().join("wsgate.api-key").exists());
}

#[test]
fn sqlite_path_relative_with_spaces() {
    // `database.sqlite_path` relative to the working directory, with
    // characters that mean something in a URL.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("my data")).unwrap();
    let env = [("WSGATE__DATABASE__SQLITE_PATH", "my data/tokens #1?.db")];
    let issued = wsgate(dir.path(), &env, &["token", "issue", "--user", "5"]);
    assert_ok(&issued, "token issue");
    let token = stdout(&issued).trim().to_string();
    assert!(dir.path().join("my data/tokens #1?.db").exists());
    let list = stdout(&wsgate(dir.path(), &env, &["token", "list"]));
    assert!(list_line(&list, &token).ends_with("live"), "{list}");
}
