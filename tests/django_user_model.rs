//! The `django` store with a custom user model (`auth.django_user_*`):
//! a schema-qualified, mixed-case table with its own pk and active columns
//! on PostgreSQL (verify, verify_many, the generated trigger closing a
//! deactivated user's socket), the same on SQLite, names that are not
//! identifiers refused before any SQL runs, and `wsgate django trigger-sql`.

mod common;

use std::time::Duration;

use common::{Client, PgDb, code, run_bin, spawn, test_config};
use wsgate::auth::sql::{Db, store_for};
use wsgate::auth::{Identity, Token};
use wsgate::config::{Config, StoreKind};

/// `Accts."Member"` with `uid` / `enabled`: names the defaults would
/// never find, and a mixed-case one only quoting reaches.
fn custom(mut c: Config) -> Config {
    c.auth.store = StoreKind::Django;
    c.auth.django_user_table = "accts.Member".into();
    c.auth.django_user_pk = "uid".into();
    c.auth.django_user_active = "enabled".into();
    c
}

fn key(n: u8) -> String {
    format!("{n:040}")
}

async fn fixture(db: &Db, schema: bool) {
    let table = if schema {
        r#""accts"."Member""#
    } else {
        r#""Member""#
    };
    let mut ddl = Vec::new();
    if schema {
        ddl.push("CREATE SCHEMA accts".to_string());
    }
    ddl.push(format!(
        "CREATE TABLE {table} (uid bigint PRIMARY KEY, enabled boolean NOT NULL, \
         is_active boolean NOT NULL DEFAULT true, id bigint)"
    ));
    ddl.push(format!(
        "CREATE TABLE authtoken_token (key varchar(40) PRIMARY KEY, \
         user_id bigint NOT NULL UNIQUE REFERENCES {table} (uid))"
    ));
    // uid 11 enabled, 12 disabled; the columns the defaults would read say
    // the opposite, so a query on the wrong names fails the test.
    ddl.push(format!(
        "INSERT INTO {table} (uid, enabled, is_active, id) VALUES (11, true, false, 1), \
         (12, false, true, 2)"
    ));
    ddl.push(format!(
        "INSERT INTO authtoken_token (key, user_id) VALUES ('{}', 11), ('{}', 12)",
        key(1),
        key(2)
    ));
    for sql in ddl {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn verify_both_ways(config: &Config, db: Db) {
    let store = store_for(config, db).expect("valid names");
    assert_eq!(store.name(), "django");
    let (on, off, unknown) = (Token::new(key(1)), Token::new(key(2)), Token::new(key(3)));
    assert_eq!(store.verify(&on).await.unwrap(), Some(Identity::user("11")));
    assert_eq!(store.verify(&off).await.unwrap(), None, "disabled member");
    assert_eq!(store.verify(&unknown).await.unwrap(), None);
    assert_eq!(
        store
            .verify_many(&[off.clone(), on.clone(), unknown.clone(), on.clone()])
            .await
            .unwrap(),
        vec![
            None,
            Some(Identity::user("11")),
            None,
            Some(Identity::user("11"))
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_custom_table_verifies_and_its_trigger_revokes() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = custom(test_config(dir.path()));
    config.database.url = Some(pg.url.clone());
    config.validate().unwrap();
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    fixture(&db, true).await;
    verify_both_ways(&config, db.clone()).await;

    // The generated triggers, applied as an operator would (psql -f).
    let sql = wsgate::auth::django::trigger_sql(&config.auth.django_user().unwrap());
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&db.pool)
        .await
        .expect("the generated SQL applies");

    let node = spawn(config.clone()).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), &key(1)).await;
    assert_eq!(welcome["user_id"], "11");
    // Writing the column the defaults name does nothing...
    sqlx::query(r#"UPDATE accts."Member" SET is_active = false WHERE uid = 11"#)
        .execute(&db.pool)
        .await
        .unwrap();
    c.expect_silence(Duration::from_millis(500)).await;
    // ...deactivating through the configured one closes the socket.
    sqlx::query(r#"UPDATE accts."Member" SET enabled = false WHERE uid = 11"#)
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(code(c.close_within(Duration::from_secs(3)).await), 4003);
    node.shutdown().await;
    db.pool.close().await;
}

#[tokio::test]
async fn sqlite_custom_table_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = custom(test_config(dir.path()));
    config.auth.django_user_table = "Member".into();
    let db = Db::connect(&config).await.unwrap();
    db.migrate().await.unwrap();
    fixture(&db, false).await;
    verify_both_ways(&config, db.clone()).await;
    db.pool.close().await;
}

#[tokio::test]
async fn names_that_are_not_identifiers_are_refused_before_any_sql() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value) in [
        (
            "auth.django_user_table",
            "auth_user u JOIN pg_shadow s ON true --",
        ),
        ("auth.django_user_pk", "id::text OR 1=1"),
        ("auth.django_user_active", "is_active OR true"),
    ] {
        let mut config = custom(test_config(dir.path()));
        match key {
            "auth.django_user_table" => config.auth.django_user_table = value.into(),
            "auth.django_user_pk" => config.auth.django_user_pk = value.into(),
            _ => config.auth.django_user_active = value.into(),
        }
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{err}");
        let db = Db::connect(&config).await.unwrap();
        let err = store_for(&config, db.clone())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(key), "{err}");
        db.pool.close().await;
        // A node refuses to start on it (even built from an unvalidated config).
        let err = wsgate::server::Server::build(config)
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(key), "{err}");
    }
}

#[test]
fn cli_prints_the_trigger_sql_for_the_configured_table() {
    let dir = tempfile::tempdir().unwrap();
    let default = run_bin(dir.path(), &["django", "trigger-sql"], &[]);
    assert_eq!(
        default,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/sql/django-revoke-trigger.sql"
        ))
        .unwrap(),
        "deploy/sql/django-revoke-trigger.sql is the output for the defaults"
    );
    let env = [
        ("WSGATE__AUTH__DJANGO_USER_TABLE", "accts.Member"),
        ("WSGATE__AUTH__DJANGO_USER_PK", "uid"),
        ("WSGATE__AUTH__DJANGO_USER_ACTIVE", "enabled"),
    ];
    let out = run_bin(dir.path(), &["django", "trigger-sql"], &env);
    let config = custom(Config::default());
    assert_eq!(
        out,
        wsgate::auth::django::trigger_sql(&config.auth.django_user().unwrap())
    );
    assert!(out.contains(r#"AFTER UPDATE OF "enabled" ON "accts"."Member""#));

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(["django", "trigger-sql"])
        .env("WSGATE__AUTH__DJANGO_USER_TABLE", "auth_user; DROP TABLE x")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(bad.stdout.is_empty(), "no SQL printed");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("auth.django_user_table"), "{stderr}");
}
