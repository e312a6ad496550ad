//! The token stores against real databases: Postgres at 127.0.0.1:5432 (one
//! throwaway database per test) and SQLite files in temporary directories.

mod common;

use std::time::Duration;

use common::PgDb;
use sqlx::Row;
use wsgate::auth::sql::{Backend, Db, NativeStore, QueryStore, store_for};
use wsgate::auth::{Identity, StoreError, Token, TokenStore};
use wsgate::config::{Config, StoreKind};

// ---------------------------------------------------------------------------
// Helpers.

fn pg_config(url: &str) -> Config {
    let mut c = Config::default();
    c.database.url = Some(url.to_string());
    c.database.connect_timeout = Duration::from_secs(5);
    c
}

fn sqlite_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.database.sqlite_path = dir.join("wsgate.db");
    c
}

async fn open(config: &Config) -> Db {
    let db = Db::connect(config).await.expect("connect");
    db.migrate().await.expect("migrate");
    db
}

fn user(id: &str) -> Option<Identity> {
    Some(Identity::user(id))
}

/// A valid answer for user `id` whose token expires within the hour.
fn assert_expiring_within_the_hour(answer: Option<Identity>, id: &str) {
    let answer = answer.expect("a valid token");
    assert_eq!(answer.user_id, id);
    let now = wsgate::clock::unix_ms();
    let at = answer.expires_at.expect("the token's expiry");
    assert!(
        at > now && at <= now + 3_600_000,
        "expires_at {at}, now {now}"
    );
}

/// A token as Django REST framework makes them: 40 hex characters.
fn drf_key() -> String {
    hex::encode(rand::random::<[u8; 20]>())
}

// ---------------------------------------------------------------------------
// native store

async fn native_verify(config: Config) {
    let db = open(&config).await;
    let store = NativeStore::new(db.clone());
    assert_eq!(store.name(), "native");

    // issue -> verify gives the user id
    let token = store.issue("42", None).await.expect("issue");
    assert!(token.expose().starts_with("wsg_"));
    assert_eq!(store.verify(&token).await.unwrap(), user("42"));
    let other = store
        .issue("43", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_expiring_within_the_hour(store.verify(&other).await.unwrap(), "43");

    // unknown token
    let unknown = Token::new("wsg_not-a-token".into());
    assert_eq!(store.verify(&unknown).await.unwrap(), None);
    assert_eq!(
        store.verify(&Token::new(String::new())).await.unwrap(),
        None
    );

    // expired token
    let short = store
        .issue("42", Some(Duration::from_millis(5)))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(store.verify(&short).await.unwrap(), None);

    // revoked token; the others stay valid
    store.revoke(&token.digest()).await.expect("revoke");
    assert_eq!(store.verify(&token).await.unwrap(), None);
    assert_expiring_within_the_hour(store.verify(&other).await.unwrap(), "43");
    // revoking twice, or an unknown digest, is not an error
    store.revoke(&token.digest()).await.expect("revoke again");
    store
        .revoke(&unknown.digest())
        .await
        .expect("revoke unknown");
    assert_eq!(store.verify(&unknown).await.unwrap(), None);

    // a digest revoked before its row exists stays refused once inserted
    let later = Token::generate();
    store.revoke(&later.digest()).await.expect("revoke ahead");
    sqlx::query(
        "INSERT INTO wsgate_tokens (digest, user_id, created_at, expires_at, revoked_at) \
         VALUES ($1, '44', $2, NULL, NULL)",
    )
    .bind(later.digest().to_hex())
    .bind(wsgate::clock::unix_ms() as i64)
    .execute(&db.pool)
    .await
    .unwrap();
    assert_eq!(store.verify(&later).await.unwrap(), None);

    // the trait object store_for builds is the same store
    let dyn_store = store_for(&config, db.clone()).unwrap();
    assert_eq!(dyn_store.name(), "native");
    assert_expiring_within_the_hour(dyn_store.verify(&other).await.unwrap(), "43");
    assert_eq!(dyn_store.verify(&token).await.unwrap(), None);
    db.pool.close().await;
}

async fn native_list(config: Config) {
    let db = open(&config).await;
    let store = NativeStore::new(db.clone());
    let live = store.issue("42", None).await.unwrap();
    let revoked = store
        .issue("42", Some(Duration::from_secs(3600)))
        .await
        .unwrap();
    let expired = store
        .issue("7", Some(Duration::from_millis(1)))
        .await
        .unwrap();
    store.revoke(&revoked.digest()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let all = store.list(None).await.expect("list");
    assert_eq!(all.len(), 3, "{all:?}");
    let now = wsgate::clock::unix_ms() as i64;
    for (token, user_id, status) in [
        (&live, "42", "live"),
        (&revoked, "42", "revoked"),
        (&expired, "7", "expired"),
    ] {
        let info = all
            .iter()
            .find(|i| i.digest == token.digest().to_hex())
            .unwrap_or_else(|| panic!("{status} token listed by digest: {all:?}"));
        assert_eq!(info.user_id, user_id);
        assert!(info.created_at > now - 60_000 && info.created_at <= now);
        let got = if info.revoked_at.is_some() {
            "revoked"
        } else if info.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "live"
        };
        assert_eq!(got, status, "{info:?}");
    }
    let live_info = all
        .iter()
        .find(|i| i.digest == live.digest().to_hex())
        .unwrap();
    assert_eq!(live_info.expires_at, None);
    let revoked_info = all
        .iter()
        .find(|i| i.digest == revoked.digest().to_hex())
        .unwrap();
    assert!(revoked_info.expires_at.is_some_and(|e| e > now));

    // never the token itself
    let printed = format!("{all:?}");
    for t in [&live, &revoked, &expired] {
        assert!(!printed.contains(t.expose()), "token leaked in {printed}");
        assert!(
            !printed.contains(&t.expose()[4..]),
            "token leaked in {printed}"
        );
    }

    // filtered by user
    let only_42 = store.list(Some("42")).await.unwrap();
    assert_eq!(only_42.len(), 2);
    assert!(only_42.iter().all(|i| i.user_id == "42"));
    assert!(store.list(Some("nobody")).await.unwrap().is_empty());
    db.pool.close().await;
}

async fn native_stores_only_digests(config: Config) {
    let db = open(&config).await;
    let store = NativeStore::new(db.clone());
    let token = store
        .issue("42", Some(Duration::from_secs(60)))
        .await
        .unwrap();
    let secret = token.expose().to_string();
    let body = &secret[4..]; // without the `wsg_` prefix

    let rows = sqlx::query(
        "SELECT CAST(digest AS TEXT), CAST(user_id AS TEXT), CAST(created_at AS TEXT), \
         CAST(expires_at AS TEXT), CAST(revoked_at AS TEXT) FROM wsgate_tokens",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 1);
    let cells: Vec<Option<String>> = (0..5).map(|i| rows[0].try_get(i).unwrap()).collect();
    for cell in cells.iter().flatten() {
        assert!(!cell.contains(body), "the token is stored: {cell}");
    }
    // the digest is the SHA-256 hex of the whole token
    let digest = cells[0].clone().unwrap();
    assert_eq!(digest, token.digest().to_hex());
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(cells[1].as_deref(), Some("42"));
    assert_eq!(cells[4], None);

    // and nothing else holds it either (no extra column)
    let columns = match db.backend {
        Backend::Postgres => sqlx::query(
            "SELECT CAST(column_name AS TEXT) FROM information_schema.columns \
             WHERE table_name = 'wsgate_tokens' ORDER BY ordinal_position",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap(),
        Backend::Sqlite => sqlx::query("SELECT name FROM pragma_table_info('wsgate_tokens')")
            .fetch_all(&db.pool)
            .await
            .unwrap(),
    };
    let columns: Vec<String> = columns.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        columns,
        [
            "digest",
            "user_id",
            "created_at",
            "expires_at",
            "revoked_at"
        ]
    );
    db.pool.close().await;
}

async fn table_exists(db: &Db, table: &str) -> bool {
    let sql = match db.backend {
        Backend::Postgres => {
            "SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1"
        }
        Backend::Sqlite => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = $1",
    };
    sqlx::query(sql)
        .bind(table)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .is_some()
}

async fn migrations_idempotent(config: Config) {
    let db = Db::connect(&config).await.expect("connect");
    db.migrate().await.expect("first migrate");
    let token = NativeStore::new(db.clone()).issue("1", None).await.unwrap();
    db.migrate().await.expect("second migrate");
    db.pool.close().await;
    // a new pool (another process, another start) migrates again too
    let db = open(&config).await;
    db.migrate().await.expect("third migrate");
    assert_eq!(
        NativeStore::new(db.clone()).verify(&token).await.unwrap(),
        user("1"),
        "migrating again keeps the tokens"
    );

    assert!(table_exists(&db, "wsgate_migrations").await);
    assert!(!table_exists(&db, "_sqlx_migrations").await);
    assert!(table_exists(&db, "wsgate_tokens").await);
    assert!(table_exists(&db, "wsgate_revocations").await);
    let applied: i64 = sqlx::query("SELECT COUNT(*) FROM wsgate_migrations WHERE success")
        .fetch_one(&db.pool)
        .await
        .unwrap()
        .get(0);
    let files = std::fs::read_dir(match db.backend {
        Backend::Postgres => "migrations/postgres",
        Backend::Sqlite => "migrations/sqlite",
    })
    .unwrap()
    .filter(|e| {
        e.as_ref()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".sql")
    })
    .count();
    assert_eq!(applied, files as i64, "one history row per migration file");
    db.pool.close().await;
}

#[tokio::test]
async fn native_verify_postgres() {
    let pg = PgDb::create().await;
    native_verify(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn native_verify_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    native_verify(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn native_list_postgres() {
    let pg = PgDb::create().await;
    native_list(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn native_list_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    native_list(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn native_stores_only_digests_postgres() {
    let pg = PgDb::create().await;
    native_stores_only_digests(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn native_stores_only_digests_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    native_stores_only_digests(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn migrations_idempotent_postgres() {
    let pg = PgDb::create().await;
    migrations_idempotent(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn migrations_idempotent_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    migrations_idempotent(sqlite_config(dir.path())).await;
}

// ---------------------------------------------------------------------------
// django preset

/// `auth_user` and `authtoken_token` as `manage.py sqlmigrate auth 0012` and
/// `sqlmigrate authtoken 0003` (Django 5, DRF 3.15) create them on Postgres.
const DJANGO_POSTGRES: &[&str] = &[
    r#"CREATE TABLE "auth_user" ("id" integer NOT NULL PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY, "password" varchar(128) NOT NULL, "last_login" timestamp with time zone NULL, "is_superuser" boolean NOT NULL, "username" varchar(150) NOT NULL UNIQUE, "first_name" varchar(150) NOT NULL, "last_name" varchar(150) NOT NULL, "email" varchar(254) NOT NULL, "is_staff" boolean NOT NULL, "is_active" boolean NOT NULL, "date_joined" timestamp with time zone NOT NULL)"#,
    r#"CREATE INDEX "auth_user_username_6821ab7c_like" ON "auth_user" ("username" varchar_pattern_ops)"#,
    r#"CREATE TABLE "authtoken_token" ("key" varchar(40) NOT NULL PRIMARY KEY, "created" timestamp with time zone NOT NULL, "user_id" integer NOT NULL UNIQUE)"#,
    r#"ALTER TABLE "authtoken_token" ADD CONSTRAINT "authtoken_token_user_id_35299eff_fk_auth_user_id" FOREIGN KEY ("user_id") REFERENCES "auth_user" ("id") DEFERRABLE INITIALLY DEFERRED"#,
    r#"CREATE INDEX "authtoken_token_key_10f0b77e_like" ON "authtoken_token" ("key" varchar_pattern_ops)"#,
];

/// The same tables as Django creates them on SQLite.
const DJANGO_SQLITE: &[&str] = &[
    r#"CREATE TABLE "auth_user" ("id" integer NOT NULL PRIMARY KEY AUTOINCREMENT, "password" varchar(128) NOT NULL, "last_login" datetime NULL, "is_superuser" bool NOT NULL, "username" varchar(150) NOT NULL UNIQUE, "last_name" varchar(150) NOT NULL, "email" varchar(254) NOT NULL, "is_staff" bool NOT NULL, "is_active" bool NOT NULL, "date_joined" datetime NOT NULL, "first_name" varchar(150) NOT NULL)"#,
    r#"CREATE TABLE "authtoken_token" ("key" varchar(40) NOT NULL PRIMARY KEY, "created" datetime NOT NULL, "user_id" integer NOT NULL UNIQUE REFERENCES "auth_user" ("id") DEFERRABLE INITIALLY DEFERRED)"#,
];

/// Inserts users 7 (active) and 8 (inactive) the way Django's ORM writes
/// them, each with a DRF token; returns (active key, inactive key).
async fn django_fixture(db: &Db) -> (String, String) {
    let (ddl, insert_user, insert_token) = match db.backend {
        Backend::Postgres => (
            DJANGO_POSTGRES,
            "INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, \
             last_name, email, is_staff, is_active, date_joined) \
             VALUES ($1, 'pbkdf2_sha256$870000$salt$hash', NULL, false, $2, '', '', '', false, $3, now())",
            "INSERT INTO authtoken_token (key, created, user_id) VALUES ($1, now(), $2)",
        ),
        Backend::Sqlite => (
            DJANGO_SQLITE,
            "INSERT INTO auth_user (id, password, last_login, is_superuser, username, first_name, \
             last_name, email, is_staff, is_active, date_joined) \
             VALUES ($1, 'pbkdf2_sha256$870000$salt$hash', NULL, 0, $2, '', '', '', 0, $3, \
             '2025-01-01 10:00:00.123456')",
            "INSERT INTO authtoken_token (key, created, user_id) \
             VALUES ($1, '2025-01-01 10:00:00.123456', $2)",
        ),
    };
    for stmt in ddl {
        sqlx::query(sqlx::AssertSqlSafe(*stmt))
            .execute(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let active_key = drf_key();
    let inactive_key = drf_key();
    for (id, name, active, key) in [
        (7, "alice", true, &active_key),
        (8, "bob", false, &inactive_key),
    ] {
        let q = sqlx::query(insert_user).bind(id).bind(name);
        // Postgres has a boolean column; SQLite stores Django's bools as 0/1.
        let q = match db.backend {
            Backend::Postgres => q.bind(active),
            Backend::Sqlite => q.bind(active as i32),
        };
        q.execute(&db.pool).await.expect("insert user");
        sqlx::query(insert_token)
            .bind(key.as_str())
            .bind(id)
            .execute(&db.pool)
            .await
            .expect("insert token");
    }
    (active_key, inactive_key)
}

async fn django(mut config: Config) {
    config.auth.store = StoreKind::Django;
    let db = open(&config).await;
    let (active, inactive) = django_fixture(&db).await;
    let store = QueryStore::django(db.clone());
    assert_eq!(store.name(), "django");

    let active = Token::new(active);
    assert_eq!(active.expose().len(), 40);
    assert_eq!(store.verify(&active).await.unwrap(), user("7"));
    assert_eq!(store.verify(&Token::new(inactive)).await.unwrap(), None);
    assert_eq!(store.verify(&Token::new(drf_key())).await.unwrap(), None);
    assert_eq!(
        store
            .verify(&Token::new(active.expose().to_uppercase()))
            .await
            .unwrap(),
        None,
        "keys compare exactly"
    );

    // store_for builds the same preset from the configuration
    let dyn_store = store_for(&config, db.clone()).unwrap();
    assert_eq!(dyn_store.name(), "django");
    assert_eq!(dyn_store.verify(&active).await.unwrap(), user("7"));

    // revocation is recorded in wsgate_revocations; Django's row is untouched
    store.revoke(&active.digest()).await.expect("revoke");
    assert_eq!(store.verify(&active).await.unwrap(), None);
    assert_eq!(dyn_store.verify(&active).await.unwrap(), None);
    store.revoke(&active.digest()).await.expect("revoke twice");
    let recorded: Vec<String> = sqlx::query("SELECT digest FROM wsgate_revocations")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, vec![active.digest().to_hex()]);
    let still_there =
        sqlx::query("SELECT CAST(user_id AS TEXT) FROM authtoken_token WHERE key = $1")
            .bind(active.expose())
            .fetch_optional(&db.pool)
            .await
            .unwrap()
            .map(|r| r.get::<String, _>(0));
    assert_eq!(still_there.as_deref(), Some("7"));
    db.pool.close().await;
}

#[tokio::test]
async fn django_postgres() {
    let pg = PgDb::create().await;
    django(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn django_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    django(sqlite_config(dir.path())).await;
}

// ---------------------------------------------------------------------------
// query store

/// A `sessions` table per user-id type; the query store returns the id as a
/// string whatever the type.
async fn query_store_types(config: Config) {
    let db = open(&config).await;
    let (types, now_sql, later, earlier): (&[(&str, &str)], &str, &str, &str) = match db.backend {
        Backend::Postgres => (
            &[
                ("int2", "smallint"),
                ("int4", "integer"),
                ("int8", "bigint"),
                ("text", "text"),
                ("varchar", "varchar(64)"),
            ],
            "now()",
            "now() + interval '1 hour'",
            "now() - interval '1 hour'",
        ),
        Backend::Sqlite => (
            &[("int4", "integer"), ("int8", "bigint"), ("text", "text")],
            "CURRENT_TIMESTAMP",
            "datetime('now', '+1 hour')",
            "datetime('now', '-1 hour')",
        ),
    };
    let expires_type = match db.backend {
        Backend::Postgres => "timestamptz",
        Backend::Sqlite => "datetime",
    };
    for (label, sql_type) in types {
        let table = format!("sessions_{label}");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (token text PRIMARY KEY, account_id {sql_type} NOT NULL, \
             expires {expires_type} NOT NULL)"
        )))
        .execute(&db.pool)
        .await
        .unwrap();
        let id = if *label == "int2" {
            "12345"
        } else if label.starts_with("int") && *label != "int4" {
            "9007199254740993" // above 2^53 and i32: no float or i32 on the way
        } else {
            "1234567"
        };
        let value = if label.starts_with("int") {
            id.to_string()
        } else {
            format!("'{id}'")
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (token, account_id, expires) VALUES \
             ('good-{label}', {value}, {later}), ('old-{label}', {value}, {earlier})"
        )))
        .execute(&db.pool)
        .await
        .unwrap();

        let mut c = config.clone();
        c.auth.store = StoreKind::Query;
        c.auth.query = Some(format!(
            "SELECT account_id FROM {table} WHERE token = $1 AND expires > {now_sql}"
        ));
        let store = store_for(&c, db.clone()).unwrap();
        assert_eq!(store.name(), "query");
        assert_eq!(
            store
                .verify(&Token::new(format!("good-{label}")))
                .await
                .unwrap(),
            user(id),
            "user id of type {sql_type}"
        );
        assert_eq!(
            store
                .verify(&Token::new(format!("old-{label}")))
                .await
                .unwrap(),
            None,
            "expired session ({sql_type})"
        );
        assert_eq!(
            store.verify(&Token::new("nope".into())).await.unwrap(),
            None
        );

        // revocation on top of someone else's table
        let good = Token::new(format!("good-{label}"));
        store.revoke(&good.digest()).await.unwrap();
        assert_eq!(
            store.verify(&good).await.unwrap(),
            None,
            "revoked ({sql_type})"
        );
    }
    db.pool.close().await;
}

#[tokio::test]
async fn query_store_user_id_types_postgres() {
    let pg = PgDb::create().await;
    query_store_types(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn query_store_user_id_types_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    query_store_types(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn query_store_named_column_postgres() {
    // The protocol's documented shape: a row whose column is `user_id` (text).
    let pg = PgDb::create().await;
    let db = open(&pg_config(&pg.url)).await;
    sqlx::query("CREATE TABLE api_keys (secret text, owner uuid, enabled boolean)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO api_keys VALUES ('k1', '7b0d4f0e-8a43-4b8e-9f31-6f3f1f9b6a11', true), \
         ('k2', '7b0d4f0e-8a43-4b8e-9f31-6f3f1f9b6a12', false)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let store = QueryStore::new(
        db.clone(),
        "SELECT owner::text AS user_id FROM api_keys WHERE secret = $1 AND enabled".into(),
    );
    assert_eq!(
        store.verify(&Token::new("k1".into())).await.unwrap(),
        user("7b0d4f0e-8a43-4b8e-9f31-6f3f1f9b6a11")
    );
    assert_eq!(store.verify(&Token::new("k2".into())).await.unwrap(), None);
    // Without the cast the Any driver cannot read a uuid: the query is
    // wrong (the protocol asks for a text user_id), the store is not down.
    let uncast = QueryStore::new(
        db.clone(),
        "SELECT owner FROM api_keys WHERE secret = $1".into(),
    );
    let r = uncast.verify(&Token::new("k1".into())).await;
    assert!(matches!(r, Err(StoreError::Query(_))), "{r:?}");
    db.pool.close().await;
}

// ---------------------------------------------------------------------------
// Backend unavailable, broken queries.

#[tokio::test]
async fn unreachable_database_is_unavailable() {
    let mut config = pg_config(&format!(
        "postgres://postgres@127.0.0.1:{}/test",
        common::free_port()
    ));
    config.database.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = Db::connect(&config).await.err().expect("connect fails");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connect_timeout bounds the wait: {:?}",
        started.elapsed()
    );

    // a host that never answers: only the timeout ends the wait
    let mut config = pg_config("postgres://postgres@10.255.255.1:5432/test");
    config.database.connect_timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    let err = Db::connect(&config).await.err().expect("connect fails");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "connect_timeout bounds the wait: {:?}",
        started.elapsed()
    );
}

async fn closed_pool(mut config: Config) {
    let db = open(&config).await;
    let native = NativeStore::new(db.clone());
    let token = native.issue("42", None).await.unwrap();
    config.auth.store = StoreKind::Query;
    config.auth.query = Some("SELECT user_id FROM wsgate_tokens WHERE digest = $1".into());
    let query = store_for(&config, db.clone()).unwrap();
    db.pool.close().await;

    let r = native.verify(&token).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = native.revoke(&token.digest()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = native.issue("1", None).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = query.verify(&token).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    let r = QueryStore::django(db.clone()).verify(&token).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
}

#[tokio::test]
async fn closed_pool_is_unavailable_postgres() {
    let pg = PgDb::create().await;
    closed_pool(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn closed_pool_is_unavailable_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    closed_pool(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn database_gone_is_unavailable_postgres() {
    // The database disappears under a running pool (server restart, failover).
    let pg = PgDb::create().await;
    let mut config = pg_config(&pg.url);
    config.database.connect_timeout = Duration::from_millis(500);
    let db = open(&config).await;
    let store = NativeStore::new(db.clone());
    let token = store.issue("42", None).await.unwrap();
    let name = pg.name.clone();
    pg.drop_db().await; // WITH (FORCE): terminates the pool's connections
    let r = store.verify(&token).await;
    assert!(
        matches!(r, Err(StoreError::Unavailable(_))),
        "{r:?} ({name})"
    );
    db.pool.close().await;
}

#[tokio::test]
async fn terminated_connections_are_replaced_postgres() {
    // A Postgres restart or failover ends the pool's connections; the next
    // verification reconnects instead of failing.
    let pg = PgDb::create().await;
    let db = open(&pg_config(&pg.url)).await;
    let store = NativeStore::new(db.clone());
    let token = store.issue("42", None).await.unwrap();
    assert_eq!(store.verify(&token).await.unwrap(), user("42"));
    let admin = sqlx::PgPool::connect(common::PG_ADMIN_URL).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&pg.name)
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    assert_eq!(store.verify(&token).await.unwrap(), user("42"));
    db.pool.close().await;
}

#[tokio::test]
async fn statement_timeout_is_unavailable_postgres() {
    // The database answers "canceling statement due to statement timeout"
    // (SQLSTATE 57014): it cannot serve now, the SQL is not wrong.
    let pg = PgDb::create().await;
    let admin = pg.pool().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE {} SET statement_timeout = '100ms'",
        pg.name
    )))
    .execute(&admin)
    .await
    .unwrap();
    admin.close().await;
    let db = open(&pg_config(&pg.url)).await;
    let store = QueryStore::new(
        db.clone(),
        "SELECT $1::text AS user_id FROM pg_sleep(1)".into(),
    );
    let r = store.verify(&Token::new("x".into())).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    db.pool.close().await;
}

async fn broken_query(config: Config) {
    let db = open(&config).await;
    let token = Token::new("anything".into());
    let store = QueryStore::new(
        db.clone(),
        "SELECT user_id FROM no_such_table WHERE token = $1".into(),
    );
    let r = store.verify(&token).await;
    assert!(matches!(r, Err(StoreError::Query(_))), "{r:?}");
    // a known table, a wrong column
    let store = QueryStore::new(
        db.clone(),
        "SELECT no_such_column FROM wsgate_tokens WHERE digest = $1".into(),
    );
    let r = store.verify(&token).await;
    assert!(matches!(r, Err(StoreError::Query(_))), "{r:?}");
    // the django preset on a database without Django's tables
    let r = QueryStore::django(db.clone()).verify(&token).await;
    assert!(matches!(r, Err(StoreError::Query(_))), "{r:?}");
    // a user id column of a type that is neither text nor an integer
    // (Postgres numeric, SQLite real): a configuration error
    let store = QueryStore::new(db.clone(), "SELECT 1.5 WHERE $1 IS NOT NULL".into());
    let r = store.verify(&token).await;
    assert!(matches!(r, Err(StoreError::Query(_))), "{r:?}");
    db.pool.close().await;
}

#[tokio::test]
async fn broken_query_is_query_error_postgres() {
    let pg = PgDb::create().await;
    broken_query(pg_config(&pg.url)).await;
}

#[tokio::test]
async fn broken_query_is_query_error_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    broken_query(sqlite_config(dir.path())).await;
}

#[tokio::test]
async fn sqlite_path_with_unusual_characters() {
    // Paths are not URLs: spaces, '#', '?' and '%' must reach SQLite as they are.
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("my data #1 ?x=%20");
    std::fs::create_dir(&sub).unwrap();
    let mut config = sqlite_config(&sub);
    config.database.sqlite_path = sub.join("tokens db.sqlite");
    let db = open(&config).await;
    let store = NativeStore::new(db.clone());
    let token = store.issue("42", None).await.unwrap();
    assert_eq!(store.verify(&token).await.unwrap(), user("42"));
    db.pool.close().await;
    assert!(
        config.database.sqlite_path.exists(),
        "the file is where the configuration says"
    );
}

#[tokio::test]
async fn sqlite_relative_paths() {
    // The default `wsgate.db` and other relative paths resolve against the
    // working directory; `Db::url` is what `Db::connect` opens.
    let mut config = Config::default();
    assert_eq!(Db::url(&config), "sqlite:wsgate.db?mode=rwc");
    config.database.sqlite_path = "data dir/wsgate.db".into();
    assert_eq!(Db::url(&config), "sqlite:data%20dir/wsgate.db?mode=rwc");
    config.database.sqlite_path = "/var/lib/wsgate/wsgate.db".into();
    assert_eq!(
        Db::url(&config),
        "sqlite:///var/lib/wsgate/wsgate.db?mode=rwc"
    );
    config.database.url = Some("sqlite:///elsewhere.db".into());
    assert_eq!(Db::url(&config), "sqlite:///elsewhere.db");
}
