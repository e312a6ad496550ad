//! SQL token stores on Postgres or SQLite (section 6).
//!
//! One code path serves both databases through sqlx's `Any` driver: the
//! queries below are written in the SQL both understand (`$1` parameters,
//! `ON CONFLICT`, BIGINT unix-millisecond times), so the stores need no
//! per-database copies. Each database keeps its own migration folder because
//! later migrations (triggers) are Postgres-only.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{Identity, StoreError, Token, TokenDigest, TokenStore};
use crate::clock;
use crate::config::{Config, ConfigError, DjangoUser, StoreKind};

/// Which database a pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A connection pool and the database it reaches.
#[derive(Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub backend: Backend,
    /// How many dead pooled connections one read may meet before it gives
    /// up: the pool's size (see [`Db::read`]).
    stale_retries: u32,
}

/// wsgate's own migration-history table, so it never collides with the
/// `_sqlx_migrations` table of an application sharing the database.
const MIGRATIONS_TABLE: &str = "wsgate_migrations";

impl Db {
    /// The database URL the configuration points at: `database.url`, or the
    /// embedded SQLite file.
    pub fn url(config: &Config) -> String {
        match &config.database.url {
            Some(url) => url.clone(),
            None => sqlite_url(&config.database.sqlite_path),
        }
    }

    pub async fn connect(config: &Config) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let url = Self::url(config);
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            Backend::Postgres
        };
        let max = match backend {
            // SQLite has one writer; a small pool avoids lock contention.
            Backend::Sqlite => config.database.max_connections.min(4),
            Backend::Postgres => config.database.max_connections,
        };
        if let Some(warning) = crate::tls::postgres_warning(&url) {
            tracing::warn!("{warning}");
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(config.database.connect_timeout)
            // No ping before each query (a round trip per lookup): a
            // connection the server dropped is found on first use instead,
            // and [`Db::read`] retries on another one.
            .test_before_acquire(false)
            .connect(&url)
            .await
            .map_err(classify)?;
        Ok(Db {
            pool,
            backend,
            stale_retries: max,
        })
    }

    /// Runs a read query, again on another connection while the one it got
    /// turns out dead (the server restarted, or a proxy cut an idle
    /// connection). Such a failure happens before the query reaches a live
    /// server, and the reads here have no side effect, so repeating them is
    /// safe. Bounded by the pool's size: after a restart every idle
    /// connection can be dead, and each dead one fails at once; a server
    /// that is down fails every attempt the same way and the error stands.
    async fn read<T, F, Fut>(&self, run: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
    {
        let mut dead = 0;
        loop {
            match run().await {
                Err(e) if connection_lost(&e) && dead < self.stale_retries => {
                    dead += 1;
                    tracing::debug!(error = %e, dead, "pooled database connection lost; retrying the read");
                }
                done => return done.map_err(classify),
            }
        }
    }

    /// Applies wsgate's migrations (idempotent).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut migrator = match self.backend {
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
        };
        migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Query(format!("migration failed: {e}")))
    }

    /// Records a revocation of a token wsgate does not own.
    pub(crate) async fn record_revocation(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO wsgate_revocations (digest, revoked_at) VALUES ($1, $2) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(digest.to_hex())
        .bind(clock::unix_ms() as i64)
        .execute(&self.pool)
        .await
        .map_err(classify)?;
        Ok(())
    }

    /// Which of `digests` are in `wsgate_revocations`, in one query.
    async fn revoked_among(
        &self,
        digests: &[String],
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let bound = padded(digests);
        let sql = format!(
            "SELECT digest FROM wsgate_revocations WHERE digest IN ({})",
            placeholders(1, bound.len())
        );
        let rows = self
            .read(|| {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                for digest in &bound {
                    query = query.bind(digest.clone());
                }
                query.fetch_all(&self.pool)
            })
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(classify))
            .collect()
    }

    async fn is_revoked(&self, digest: &TokenDigest) -> Result<bool, StoreError> {
        let row = self
            .read(|| {
                sqlx::query("SELECT 1 FROM wsgate_revocations WHERE digest = $1")
                    .bind(digest.to_hex())
                    .fetch_optional(&self.pool)
            })
            .await?;
        Ok(row.is_some())
    }
}

/// The URL of the SQLite file at `path`. The path is percent-encoded (sqlx
/// decodes it back), so a space, `?`, `#` or `%` in a directory or file name
/// reaches SQLite unchanged instead of being read as URL syntax.
fn sqlite_url(path: &Path) -> String {
    let mut encoded = String::new();
    for &b in path.as_os_str().as_encoded_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    // `sqlite:///abs/path` for absolute paths; `sqlite:rel/path` for relative
    // ones (with `//` the first segment would be read as a host).
    if path.is_absolute() {
        format!("sqlite://{encoded}?mode=rwc")
    } else {
        format!("sqlite:{encoded}?mode=rwc")
    }
}

/// Builds the store the configuration names; refuses `auth.django_user_*`
/// values that are not SQL identifiers (fails closed even for a
/// configuration that skipped [`Config::validate`]) and `jwt` keys it
/// cannot read.
pub fn store_for(config: &Config, db: Db) -> Result<Box<dyn TokenStore>, ConfigError> {
    Ok(match config.auth.store {
        StoreKind::Native => Box::new(NativeStore { db }),
        StoreKind::Query => Box::new(QueryStore::new(
            db,
            config.auth.query.clone().unwrap_or_default(),
        )),
        StoreKind::Django => Box::new(QueryStore::django_for(db, &config.auth.django_user()?)),
        StoreKind::Jwt => Box::new(super::jwt::JwtStore::new(&config.auth, db)?),
    })
}

/// Errors where the database did not answer, or answered that it cannot
/// serve right now, become `Unavailable` (close 1013); errors about the SQL
/// or the schema become `Query`.
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    if let Some(message) = crate::tls::postgres_error(&e) {
        return StoreError::Unavailable(message);
    }
    match e {
        sqlx::Error::Database(db) if cannot_serve_now(db.as_ref()) => {
            StoreError::Unavailable(db.message().to_string())
        }
        sqlx::Error::Database(db) => StoreError::Query(db.message().to_string()),
        sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::Encode(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::AnyDriverError(_)
        | sqlx::Error::Configuration(_)
        | sqlx::Error::InvalidArgument(_)
        | sqlx::Error::RowNotFound => StoreError::Query(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The connection, not the query, failed: the socket is gone, or the
/// server said it is shutting down (57P01 admin, 57P02 crash) on a
/// connection that sat idle in the pool.
fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .is_some_and(|pg| matches!(pg.code(), "57P01" | "57P02")),
        _ => false,
    }
}

/// Database errors that say "not now" rather than "wrong SQL": the server is
/// shutting down or restarting, out of connections, the database was dropped
/// or is not there (yet), or the SQLite file is locked or unreadable.
fn cannot_serve_now(db: &dyn sqlx::error::DatabaseError) -> bool {
    if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
        let code = pg.code();
        // 08 connection exception, 53 insufficient resources, 57 operator
        // intervention (admin shutdown, cannot connect now, database
        // dropped, statement timeout), 58 system error, 3D000 no such database.
        return ["08", "53", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
            || code == "3D000";
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // The primary result code is the low byte of the extended one:
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_CANTOPEN.
        let code = db.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(0) & 0xff;
        return matches!(code, 5 | 6 | 10 | 14);
    }
    false
}

/// The identity a verification query answered, if it returned a row.
fn identity_of(row: Option<AnyRow>) -> Result<Option<Identity>, StoreError> {
    row.map(|r| user_id_of(&r).map(Identity::user)).transpose()
}

/// A native row's `expires_at` (unix ms, NULL for none) at `column`.
fn expires_of(row: &AnyRow, column: usize) -> Result<Option<u64>, StoreError> {
    let at: Option<i64> = row.try_get(column).map_err(classify)?;
    Ok(at.map(|ms| ms.max(0) as u64))
}

/// Most tokens one batched lookup ([`TokenStore::verify_many`]) binds: far
/// below the bound-parameter limits of Postgres (65535) and SQLite (32766).
pub const MAX_BATCH: usize = 512;

/// `$first, $first+1, ...`: `n` placeholders for an `IN (...)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A batch's values padded (repeating the last) to the next power of two, so
/// the `IN (...)` lists come in at most ten shapes and the prepared-statement
/// cache of each connection is not churned by every batch size.
fn padded<T: Clone>(values: &[T]) -> Vec<T> {
    let mut out = values.to_vec();
    if let Some(last) = values.last() {
        out.resize(values.len().next_power_of_two(), last.clone());
    }
    out
}

/// Reads the user id from the first column, whatever its SQL type.
fn user_id_of(row: &AnyRow) -> Result<String, StoreError> {
    if let Ok(s) = row.try_get::<String, _>(0) {
        return Ok(s);
    }
    if let Ok(n) = row.try_get::<i64, _>(0) {
        return Ok(n.to_string());
    }
    row.try_get::<i32, _>(0)
        .map(|n| n.to_string())
        .map_err(|e| StoreError::Query(format!("user id column: {e}")))
}

// ---------------------------------------------------------------------------

/// The `native` store: wsgate's own `wsgate_tokens` table.
pub struct NativeStore {
    db: Db,
}

/// A token's row, as `wsgate token list` shows it (never the token itself).
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub digest: String,
    pub user_id: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

impl NativeStore {
    pub fn new(db: Db) -> NativeStore {
        NativeStore { db }
    }

    /// Creates a token for `user_id`; the token is returned once and only its
    /// digest is stored.
    pub async fn issue(&self, user_id: &str, ttl: Option<Duration>) -> Result<Token, StoreError> {
        let token = Token::generate();
        let now = clock::unix_ms() as i64;
        let expires = ttl.map(|ttl| now.saturating_add(ttl.as_millis() as i64));
        sqlx::query(
            "INSERT INTO wsgate_tokens (digest, user_id, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(token.digest().to_hex())
        .bind(user_id)
        .bind(now)
        .bind(expires)
        .execute(&self.db.pool)
        .await
        .map_err(classify)?;
        Ok(token)
    }

    pub async fn list(&self, user_id: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(
            "SELECT digest, user_id, created_at, expires_at, revoked_at FROM wsgate_tokens \
             WHERE ($1 IS NULL OR user_id = $1) ORDER BY created_at, digest",
        )
        .bind(user_id)
        .fetch_all(&self.db.pool)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|r| {
                Ok(TokenInfo {
                    digest: r.try_get(0).map_err(classify)?,
                    user_id: r.try_get(1).map_err(classify)?,
                    created_at: r.try_get(2).map_err(classify)?,
                    expires_at: r.try_get(3).map_err(classify)?,
                    revoked_at: r.try_get(4).map_err(classify)?,
                })
            })
            .collect()
    }
}

#[async_trait]
impl TokenStore for NativeStore {
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError> {
        let row = self
            .db
            .read(|| {
                sqlx::query(
                    "SELECT t.user_id, t.expires_at FROM wsgate_tokens t \
                     WHERE t.digest = $1 AND t.revoked_at IS NULL \
                       AND (t.expires_at IS NULL OR t.expires_at > $2) \
                       AND NOT EXISTS (SELECT 1 FROM wsgate_revocations r WHERE r.digest = t.digest)",
                )
                .bind(token.digest().to_hex())
                .bind(clock::unix_ms() as i64)
                .fetch_optional(&self.db.pool)
            })
            .await?;
        row.map(|r| {
            Ok(Identity {
                user_id: user_id_of(&r)?,
                expires_at: expires_of(&r, 1)?,
            })
        })
        .transpose()
    }

    /// One query per [`MAX_BATCH`] tokens: the same conditions as `verify`
    /// over `digest IN (...)`.
    async fn verify_many(&self, tokens: &[Token]) -> Result<Vec<Option<Identity>>, StoreError> {
        let mut answers = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_BATCH) {
            let digests: Vec<String> = chunk.iter().map(|t| t.digest().to_hex()).collect();
            let bound = padded(&digests);
            let sql = format!(
                "SELECT t.user_id, t.digest, t.expires_at FROM wsgate_tokens t \
                 WHERE t.digest IN ({}) AND t.revoked_at IS NULL \
                   AND (t.expires_at IS NULL OR t.expires_at > $1) \
                   AND NOT EXISTS (SELECT 1 FROM wsgate_revocations r WHERE r.digest = t.digest)",
                placeholders(2, bound.len())
            );
            let rows = self
                .db
                .read(|| {
                    let mut query =
                        sqlx::query(sqlx::AssertSqlSafe(sql.clone())).bind(clock::unix_ms() as i64);
                    for digest in &bound {
                        query = query.bind(digest.clone());
                    }
                    query.fetch_all(&self.db.pool)
                })
                .await?;
            let mut valid = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                let digest: String = row.try_get(1).map_err(classify)?;
                let identity = Identity {
                    user_id: user_id_of(row)?,
                    expires_at: expires_of(row, 2)?,
                };
                valid.insert(digest, identity);
            }
            answers.extend(digests.iter().map(|d| valid.get(d).cloned()));
        }
        Ok(answers)
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE wsgate_tokens SET revoked_at = $2 WHERE digest = $1 AND revoked_at IS NULL",
        )
        .bind(digest.to_hex())
        .bind(clock::unix_ms() as i64)
        .execute(&self.db.pool)
        .await
        .map_err(classify)?;
        if done.rows_affected() == 0 {
            // Unknown here: remember it anyway, so it stays refused should it
            // ever be inserted by hand.
            self.db.record_revocation(digest).await?;
        }
        Ok(())
    }

    fn batches(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "native"
    }
}

// ---------------------------------------------------------------------------

/// The `query` store (any SQL) and its `django` preset.
pub struct QueryStore {
    db: Db,
    /// Operator-supplied SQL: configuration, never client input.
    sql: std::sync::Arc<str>,
    name: &'static str,
    /// The `django` preset's batched lookup: this text followed by
    /// `IN (<placeholders>)`, returning the user id and the key.
    batch_prefix: Option<std::sync::Arc<str>>,
}

impl QueryStore {
    pub fn new(db: Db, sql: String) -> QueryStore {
        QueryStore {
            db,
            sql: sql.into(),
            name: "query",
            batch_prefix: None,
        }
    }

    /// Django REST framework's `authtoken_token` joined to an active `auth_user`.
    pub fn django(db: Db) -> QueryStore {
        let user = crate::config::AuthConfig::default()
            .django_user()
            .expect("the default user table is valid");
        QueryStore::django_for(db, &user)
    }

    /// `authtoken_token` joined to an active row of `user`'s table (a custom
    /// `AUTH_USER_MODEL`). Its names come quoted from
    /// [`crate::config::AuthConfig::django_user`], which admits nothing but
    /// identifiers.
    pub fn django_for(db: Db, user: &DjangoUser) -> QueryStore {
        let DjangoUser { table, pk, active } = user;
        let id = match db.backend {
            Backend::Postgres => format!("u.{pk}::text"),
            Backend::Sqlite => format!("CAST(u.{pk} AS TEXT)"),
        };
        let from = format!("FROM authtoken_token t JOIN {table} u ON u.{pk} = t.user_id");
        let sql = format!("SELECT {id} AS user_id {from} WHERE t.key = $1 AND u.{active}");
        let batch_prefix =
            format!("SELECT {id} AS user_id, t.key {from} WHERE u.{active} AND t.key");
        QueryStore {
            db,
            sql: sql.into(),
            name: "django",
            batch_prefix: Some(batch_prefix.into()),
        }
    }
}

#[async_trait]
impl TokenStore for QueryStore {
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError> {
        if self.db.is_revoked(&token.digest()).await? {
            return Ok(None);
        }
        let row = self
            .db
            .read(|| {
                sqlx::query(sqlx::AssertSqlSafe(self.sql.clone()))
                    .bind(token.expose())
                    .fetch_optional(&self.db.pool)
            })
            .await?;
        identity_of(row)
    }

    /// Per [`MAX_BATCH`] tokens: one query for `wsgate_revocations`, then for
    /// the `django` preset one query for the batch; an arbitrary `auth.query`
    /// cannot be batched, so it runs once per token not revoked.
    async fn verify_many(&self, tokens: &[Token]) -> Result<Vec<Option<Identity>>, StoreError> {
        let mut answers = Vec::with_capacity(tokens.len());
        for chunk in tokens.chunks(MAX_BATCH) {
            let digests: Vec<String> = chunk.iter().map(|t| t.digest().to_hex()).collect();
            let revoked = self.db.revoked_among(&digests).await?;
            let live: Vec<&Token> = chunk
                .iter()
                .zip(&digests)
                .filter(|(_, d)| !revoked.contains(*d))
                .map(|(t, _)| t)
                .collect();
            let mut valid = std::collections::HashMap::new();
            match &self.batch_prefix {
                Some(prefix) if !live.is_empty() => {
                    let bound = padded(&live);
                    let sql = format!("{prefix} IN ({})", placeholders(1, bound.len()));
                    let rows = self
                        .db
                        .read(|| {
                            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
                            for token in &bound {
                                query = query.bind(token.expose());
                            }
                            query.fetch_all(&self.db.pool)
                        })
                        .await?;
                    for row in &rows {
                        let key: String = row.try_get(1).map_err(classify)?;
                        valid.insert(key, user_id_of(row)?);
                    }
                }
                Some(_) => {}
                None => {
                    for token in live {
                        let row = self
                            .db
                            .read(|| {
                                sqlx::query(sqlx::AssertSqlSafe(self.sql.clone()))
                                    .bind(token.expose())
                                    .fetch_optional(&self.db.pool)
                            })
                            .await?;
                        if let Some(identity) = identity_of(row)? {
                            valid.insert(token.expose().to_string(), identity.user_id);
                        }
                    }
                }
            }
            answers.extend(chunk.iter().zip(&digests).map(|(token, digest)| {
                if revoked.contains(digest) {
                    return None;
                }
                valid.get(token.expose()).cloned().map(Identity::user)
            }));
        }
        Ok(answers)
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.db.record_revocation(digest).await
    }

    /// The `django` preset is one query a batch; an arbitrary `auth.query`
    /// is one query a token.
    fn batches(&self) -> bool {
        self.batch_prefix.is_some()
    }

    fn name(&self) -> &'static str {
        self.name
    }
}
