//! The least-privilege recipe (`deploy/sql/postgres-roles.sql`, then
//! `deploy/sql/postgres-grants.sql`): an owner role migrates once, nodes
//! run with `database.migrate = false` as a node role that authenticates,
//! revokes (both stores) and hears revocations, and is refused every write
//! it must not do. Roles are cluster-wide, so each test run uses role names
//! of its own (substituted into the files) and drops them at the end.

mod common;

use std::time::Duration;

use common::{Client, PG_ADMIN_URL, PgDb, code, create_django_tables, spawn, test_config};
use serde_json::json;
use wsgate::auth::sql::{Db, NativeStore};
use wsgate::config::{Config, StoreKind};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The two roles of one run, dropped when this is (after the database).
struct Roles {
    owner: String,
    node: String,
}

impl Roles {
    fn new() -> Roles {
        let tag = hex::encode(rand::random::<[u8; 5]>());
        Roles {
            owner: format!("wsgate_owner_{tag}"),
            node: format!("wsgate_node_{tag}"),
        }
    }

    /// A recipe file with this run's role names.
    fn recipe(&self, file: &str) -> String {
        std::fs::read_to_string(format!("{REPO}/deploy/sql/{file}"))
            .unwrap()
            .replace("wsgate_owner", &self.owner)
            .replace("wsgate_node", &self.node)
    }
}

impl Drop for Roles {
    fn drop(&mut self) {
        let names = [self.owner.clone(), self.node.clone()];
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
                    for name in names {
                        let _ =
                            sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {name}")))
                                .execute(&admin)
                                .await;
                    }
                    admin.close().await;
                })
        })
        .join();
    }
}

fn url_as(pg: &PgDb, role: &str) -> String {
    format!("postgres://{role}@127.0.0.1:5432/{}", pg.name)
}

async fn run_sql(url: &str, sql: String) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .expect("the recipe applies");
    pool.close().await;
}

fn as_role(dir: &std::path::Path, url: String, migrate: bool) -> Config {
    let mut c = test_config(dir);
    c.database.url = Some(url);
    c.database.migrate = migrate;
    c
}

/// SQLSTATE 42501: insufficient_privilege.
async fn refused(pool: &sqlx::PgPool, sql: &str) {
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
        .execute(pool)
        .await
        .err()
        .unwrap_or_else(|| panic!("the node role may run {sql}"));
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("42501"), "{sql}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_role_serves_and_revokes_but_cannot_write_more() {
    let roles = Roles::new();
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    // Step 1, as the admin (postgres) in the target database.
    run_sql(&pg.url, roles.recipe("postgres-roles.sql")).await;
    // Step 2, as the owner: migrate, then the grants.
    let owner_url = url_as(&pg, &roles.owner);
    let owner = Db::connect(&as_role(dir.path(), owner_url.clone(), true))
        .await
        .unwrap();
    owner.migrate().await.unwrap();
    run_sql(&owner_url, roles.recipe("postgres-grants.sql")).await;
    // Tokens are issued by the owner side (`wsgate token issue`, the API
    // needs no INSERT: only the CLI issues).
    let issuer = NativeStore::new(owner.clone());
    let token = issuer.issue("42", None).await.unwrap();

    // Step 3: a node as the node role, without migrating.
    let node_url = url_as(&pg, &roles.node);
    let node = spawn(as_role(dir.path(), node_url.clone(), false)).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), token.expose()).await;
    assert_eq!(welcome["user_id"], "42");
    // Revocation through the API: UPDATE of revoked_at, then the trigger's
    // NOTIFY reaches the node's LISTEN.
    let (status, body) = node
        .api_post("/api/v1/revoke", json!({"token": token.expose()}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code(c.close_within(Duration::from_secs(3)).await), 4003);
    // A token wsgate does not know: INSERT into wsgate_revocations.
    let (status, body) = node
        .api_post("/api/v1/revoke", json!({"token": "never-issued-token"}))
        .await;
    assert_eq!(status, 200, "{body}");
    // A second token of the owner still authenticates on the node.
    let other = issuer.issue("43", None).await.unwrap();
    let (_c2, welcome) = Client::authed(&node.ws_url(), other.expose()).await;
    assert_eq!(welcome["user_id"], "43");

    // What the node role must not do.
    let pool = sqlx::PgPool::connect(&node_url).await.unwrap();
    for sql in [
        "INSERT INTO wsgate_tokens (digest, user_id, created_at) VALUES ('x', '1', 0)",
        "UPDATE wsgate_tokens SET user_id = '1'",
        "UPDATE wsgate_tokens SET expires_at = NULL",
        "DELETE FROM wsgate_tokens",
        "DELETE FROM wsgate_revocations",
        "UPDATE wsgate_revocations SET revoked_at = 0",
        "TRUNCATE wsgate_tokens",
        "DROP TABLE wsgate_revocations",
        "ALTER TABLE wsgate_tokens ADD COLUMN x int",
        "CREATE TABLE wsgate_evil (a int)",
        "DROP TRIGGER wsgate_tokens_revoked ON wsgate_tokens",
        "SELECT * FROM wsgate_migrations",
    ] {
        refused(&pool, sql).await;
    }
    pool.close().await;
    // Nor can a node run the migrations itself.
    let err = wsgate::server::Server::build(as_role(dir.path(), node_url, true))
        .await
        .err()
        .expect("a node role cannot migrate");
    println!("migrate as the node role: {err}");
    node.shutdown().await;
    owner.pool.close().await;
    drop(pg);
}

/// The `django` store under the node role with the column grants of
/// `postgres-grants.sql`: DRF tokens authenticate, a revocation is
/// recorded, and the user table's other columns stay unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_role_with_the_django_store_reads_only_what_it_needs() {
    let roles = Roles::new();
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    run_sql(&pg.url, roles.recipe("postgres-roles.sql")).await;
    let owner_url = url_as(&pg, &roles.owner);
    let owner = Db::connect(&as_role(dir.path(), owner_url.clone(), true))
        .await
        .unwrap();
    owner.migrate().await.unwrap();
    run_sql(&owner_url, roles.recipe("postgres-grants.sql")).await;
    // Django's tables, owned by Django's role (postgres here), and the
    // commented django grants of the recipe, uncommented.
    let admin = pg.pool().await;
    create_django_tables(&admin).await;
    let grants: String = roles
        .recipe("postgres-grants.sql")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--   GRANT"))
        .map(|g| format!("GRANT{g}\n"))
        .collect();
    assert_eq!(grants.lines().count(), 2, "{grants}");
    run_sql(&pg.url, grants).await;
    let key = "0123456789abcdef0123456789abcdef01234567";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO auth_user (id, username, password) VALUES (5, 'eve', 'pbkdf2$secret');
         INSERT INTO authtoken_token (key, user_id) VALUES ('{key}', 5)"
    )))
    .execute(&admin)
    .await
    .unwrap();

    let node_url = url_as(&pg, &roles.node);
    let mut config = as_role(dir.path(), node_url.clone(), false);
    config.auth.store = StoreKind::Django;
    let node = spawn(config).await;
    let (_c, welcome) = Client::authed(&node.ws_url(), key).await;
    assert_eq!(welcome["user_id"], "5");
    let (status, body) = node.api_post("/api/v1/revoke", json!({"token": key})).await;
    assert_eq!(status, 200, "{body}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM wsgate_revocations")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(recorded, 1);

    let pool = sqlx::PgPool::connect(&node_url).await.unwrap();
    for sql in [
        "SELECT password FROM auth_user",
        "SELECT email FROM auth_user",
        "SELECT * FROM authtoken_token",
        "UPDATE auth_user SET is_active = true",
        "DELETE FROM authtoken_token",
    ] {
        refused(&pool, sql).await;
    }
    pool.close().await;
    node.shutdown().await;
    owner.pool.close().await;
    admin.close().await;
    drop(pg);
}
