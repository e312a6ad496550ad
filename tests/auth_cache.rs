//! The token cache against real Redis (127.0.0.1:6379) and real Postgres
//! (127.0.0.1:5432): each test uses its own Redis key prefix and its own
//! throwaway database, and never flushes or stops the shared servers. Redis
//! outages are played on a `redis-server` the test starts on a free port.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fred::prelude::{
    Builder, Client, ClientLike, Config as RedisConfig, KeysInterface, ReconnectPolicy,
};
use wsgate::auth::cache::{Cached, RedisTokenCache};
use wsgate::auth::sql::{Db, NativeStore};
use wsgate::auth::{
    AuthSource, Authenticator, Identity, StoreError, Token, TokenDigest, TokenStore,
};
use wsgate::config::Config;
use wsgate::metrics::Metrics;

use common::redis_servers::RedisProc;
use common::{PgDb, RedisPrefix, SHARED_REDIS};

const COMMAND_TIMEOUT: Duration = Duration::from_millis(300);
const CACHE_TTL: Duration = Duration::from_secs(60);
const NEGATIVE_TTL: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------
// Fixtures.

/// A real store wrapped to count lookups, optionally slowed down.
struct Counting {
    inner: Arc<dyn TokenStore>,
    lookups: AtomicUsize,
    delay: Duration,
}

impl Counting {
    fn new(inner: impl TokenStore, delay: Duration) -> Arc<Counting> {
        Arc::new(Counting {
            inner: Arc::new(inner),
            lookups: AtomicUsize::new(0),
            delay,
        })
    }
    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl TokenStore for Counting {
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.inner.verify(token).await
    }
    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.inner.revoke(digest).await
    }
    fn name(&self) -> &'static str {
        "counting"
    }
}

/// A throwaway database with wsgate's schema (dropped with this value).
struct Pg {
    db: Db,
    pg: PgDb,
}

impl Pg {
    async fn create() -> Pg {
        let pg = PgDb::create().await;
        let db = Db::connect(&Self::config(&pg))
            .await
            .expect("connect test db");
        db.migrate().await.expect("migrate");
        Pg { db, pg }
    }

    fn config(pg: &PgDb) -> Config {
        let mut config = Config::default();
        config.database.url = Some(pg.url.clone());
        config.database.max_connections = 4;
        config.database.connect_timeout = Duration::from_secs(2);
        config
    }

    /// The native store on this database, counted.
    fn store(&self, delay: Duration) -> Arc<Counting> {
        Counting::new(NativeStore::new(self.db.clone()), delay)
    }

    /// A native store whose pool is closed: the database "is down" for it.
    async fn dead_store(&self) -> Arc<Counting> {
        let db = Db::connect(&Self::config(&self.pg)).await.expect("connect");
        db.pool.close().await;
        Counting::new(NativeStore::new(db), Duration::ZERO)
    }

    async fn issue(&self, user: &str) -> Token {
        NativeStore::new(self.db.clone())
            .issue(user, None)
            .await
            .expect("issue token")
    }
}

async fn redis_client(url: &str) -> Client {
    let config = RedisConfig::from_url(url).expect("redis url");
    let client = Builder::from_config(config)
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .build()
        .expect("redis client");
    client.init().await.expect("Redis at 127.0.0.1:6379");
    client
}

fn redis_cache(client: &Client, prefix: &str, metrics: &Arc<Metrics>) -> RedisTokenCache {
    RedisTokenCache::new(
        client.clone(),
        prefix,
        CACHE_TTL,
        NEGATIVE_TTL,
        COMMAND_TIMEOUT,
        metrics.clone(),
    )
}

/// A counted store slowed by `delay`, behind the local layer and the shared
/// Redis under a fresh prefix, each lookup given up after `lookup_timeout`.
struct Layered {
    pg: Pg,
    store: Arc<Counting>,
    metrics: Arc<Metrics>,
    auth: Arc<Authenticator>,
    _prefix: RedisPrefix,
}

async fn layered(delay: Duration, lookup_timeout: Duration) -> Layered {
    let pg = Pg::create().await;
    let client = redis_client(SHARED_REDIS).await;
    let prefix = RedisPrefix::random();
    let metrics = Arc::new(Metrics::new());
    let store = pg.store(delay);
    let auth = Authenticator::with_cache(store.clone(), redis_cache(&client, &prefix, &metrics))
        .with_lookup_timeout(lookup_timeout);
    Layered {
        pg,
        store,
        metrics,
        auth: Arc::new(auth),
        _prefix: prefix,
    }
}

fn metric(metrics: &Metrics, series: &str) -> f64 {
    common::metric_value(&metrics.render(), series)
}

fn requests(metrics: &Metrics, result: &str) -> f64 {
    metric(
        metrics,
        &format!("wsgate_auth_cache_requests_total{{result=\"{result}\"}}"),
    )
}

fn cache_errors(metrics: &Metrics) -> f64 {
    metric(metrics, "wsgate_auth_cache_errors_total")
}

fn bad_token() -> Token {
    Token::new(format!(
        "wsg_bad_{}",
        hex::encode(rand::random::<[u8; 16]>())
    ))
}

async fn user_of(auth: &Authenticator, token: &Token) -> (Option<String>, AuthSource) {
    let answer = auth.authenticate(token).await.expect("an answer");
    (answer.identity.map(|i| i.user_id), answer.source)
}

/// Every key under `prefix`.
async fn keys_under(client: &Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let (next, page): (String, Vec<String>) = client
            .scan_page(cursor, format!("{prefix}*"), Some(100), None)
            .await
            .expect("scan");
        keys.extend(page);
        if next == "0" {
            return keys;
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn miss_hit_and_negative_paths_are_counted() {
    let pg = Pg::create().await;
    let client = redis_client(SHARED_REDIS).await;
    let prefix = RedisPrefix::random();
    let token = pg.issue("42").await;
    let bad = bad_token();

    let metrics_a = Arc::new(Metrics::new());
    let store_a = pg.store(Duration::ZERO);
    let a = Authenticator::with_cache(store_a.clone(), redis_cache(&client, &prefix, &metrics_a));

    // First sight: the store answers and the answer is cached.
    assert_eq!(
        user_of(&a, &token).await,
        (Some("42".into()), AuthSource::Database)
    );
    assert_eq!(user_of(&a, &bad).await, (None, AuthSource::Database));
    // Again: the local layer answers.
    assert_eq!(
        user_of(&a, &token).await,
        (Some("42".into()), AuthSource::Local)
    );
    assert_eq!(user_of(&a, &bad).await, (None, AuthSource::Local));
    assert_eq!(store_a.lookups(), 2);
    assert_eq!(requests(&metrics_a, "miss"), 2.0);
    assert_eq!(requests(&metrics_a, "hit"), 1.0);
    assert_eq!(requests(&metrics_a, "negative_hit"), 1.0);

    // Redis holds the answers, keyed by digest, with their TTLs.
    let key = format!("{prefix}auth:{}", token.digest().to_hex());
    let value: Option<String> = client.get(&key).await.expect("get");
    assert_eq!(value.as_deref(), Some("u:42"));
    let ttl: i64 = client.pttl(&key).await.expect("pttl");
    assert!(ttl > 55_000 && ttl <= 60_000, "positive ttl {ttl}");
    let bad_key = format!("{prefix}auth:{}", bad.digest().to_hex());
    let value: Option<String> = client.get(&bad_key).await.expect("get");
    assert_eq!(value.as_deref(), Some("-"));
    let ttl: i64 = client.pttl(&bad_key).await.expect("pttl");
    assert!(ttl > 5_000 && ttl <= 10_000, "negative ttl {ttl}");

    // Another node (its own local layer) is answered by Redis.
    let metrics_b = Arc::new(Metrics::new());
    let store_b = pg.store(Duration::ZERO);
    let b = Authenticator::with_cache(store_b.clone(), redis_cache(&client, &prefix, &metrics_b));
    assert_eq!(
        user_of(&b, &token).await,
        (Some("42".into()), AuthSource::Redis)
    );
    assert_eq!(user_of(&b, &bad).await, (None, AuthSource::Redis));
    assert_eq!(store_b.lookups(), 0);
    assert_eq!(requests(&metrics_b, "miss"), 0.0);
    assert_eq!(requests(&metrics_b, "hit"), 1.0);
    assert_eq!(requests(&metrics_b, "negative_hit"), 1.0);
    assert_eq!(cache_errors(&metrics_a) + cache_errors(&metrics_b), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_authentications_share_one_lookup() {
    const N: usize = 200;
    // A slow store, so every caller arrives while the lookup is in flight.
    let Layered {
        pg,
        store,
        metrics,
        auth,
        _prefix,
    } = layered(Duration::from_millis(200), Duration::from_secs(5)).await;

    for (token, expected) in [
        (pg.issue("7").await, Some("7".to_string())),
        (bad_token(), None),
    ] {
        let before = store.lookups();
        let barrier = Arc::new(tokio::sync::Barrier::new(N));
        let tasks: Vec<_> = (0..N)
            .map(|_| {
                let (auth, token, barrier) = (auth.clone(), token.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    auth.authenticate(&token).await
                })
            })
            .collect();
        for task in tasks {
            let answer = task.await.expect("task").expect("answer");
            assert_eq!(answer.identity.map(|i| i.user_id), expected);
        }
        assert_eq!(store.lookups() - before, 1, "{N} callers, one store lookup");
    }
    // One caller ran each lookup; the others were answered in-process.
    assert_eq!(requests(&metrics, "miss"), 2.0);
    assert_eq!(requests(&metrics, "hit"), (N - 1) as f64);
    assert_eq!(requests(&metrics, "negative_hit"), (N - 1) as f64);
}

/// A caller that gives up mid-lookup (its session's `auth.timeout` on a
/// starved node, its client gone) neither cancels the lookup for a caller
/// still waiting on it nor leaves its own retry to query again: one store
/// query in all. Before the lookup had its own task, dropping the first
/// caller dropped the lookup and the next caller ran a second one (seen as
/// more queries than tokens in `faults::reconnect_storm_after_drain_5000_clients`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_giving_up_does_not_cancel_the_lookup() {
    let Layered {
        pg,
        store,
        auth,
        _prefix,
        ..
    } = layered(Duration::from_millis(500), Duration::from_secs(5)).await;

    // Another caller joins while the first is waiting, then the first gives up.
    let token = pg.issue("7").await;
    let second = {
        let (auth, token) = (auth.clone(), token.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            auth.authenticate(&token).await
        })
    };
    let first = tokio::time::timeout(Duration::from_millis(150), auth.authenticate(&token)).await;
    assert!(first.is_err(), "the first caller gave up mid-lookup");
    let second = second.await.expect("task").expect("an answer");
    assert_eq!(second.identity.map(|i| i.user_id).as_deref(), Some("7"));
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("7".into()), AuthSource::Local)
    );
    assert_eq!(
        store.lookups(),
        1,
        "the waiting caller and the retry share one query"
    );

    // A caller alone gives up; its lookup still ends and answers the retry.
    let token = pg.issue("8").await;
    let alone = tokio::time::timeout(Duration::from_millis(150), auth.authenticate(&token)).await;
    assert!(alone.is_err(), "the caller gave up mid-lookup");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("8".into()), AuthSource::Local)
    );
    assert_eq!(store.lookups(), 2, "one query per token");
}

/// A lookup that outlives its callers still ends: after the lookup timeout
/// (`auth.timeout` in the server) every caller waiting on it is answered
/// "unavailable", and that answer is not kept (the next caller asks again).
#[tokio::test]
async fn a_hung_lookup_ends_at_the_lookup_timeout() {
    let Layered {
        pg,
        store,
        auth,
        _prefix,
        ..
    } = layered(Duration::from_secs(3600), Duration::from_millis(300)).await;
    let token = pg.issue("9").await;
    for lookups in 1..=2 {
        // The outer timeout only keeps a broken build from hanging the suite.
        let answer = tokio::time::timeout(Duration::from_secs(30), auth.authenticate(&token))
            .await
            .expect("the lookup timeout ends the lookup");
        match answer {
            Err(StoreError::Unavailable(reason)) => assert!(reason.contains("300ms"), "{reason}"),
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert_eq!(store.lookups(), lookups, "an error is not cached");
    }
}

#[tokio::test]
async fn warm_redis_answers_while_postgres_is_down() {
    let pg = Pg::create().await;
    let client = redis_client(SHARED_REDIS).await;
    let prefix = RedisPrefix::random();
    let cached = pg.issue("1").await;
    let uncached = pg.issue("2").await;
    let bad = bad_token();

    // A healthy node warms Redis.
    let metrics = Arc::new(Metrics::new());
    let warm = Authenticator::with_cache(
        pg.store(Duration::ZERO),
        redis_cache(&client, &prefix, &metrics),
    );
    assert_eq!(user_of(&warm, &cached).await.0.as_deref(), Some("1"));
    assert_eq!(user_of(&warm, &bad).await.0, None);

    // A node whose database is unreachable.
    let metrics = Arc::new(Metrics::new());
    let dead = pg.dead_store().await;
    let auth = Authenticator::with_cache(dead.clone(), redis_cache(&client, &prefix, &metrics));
    assert_eq!(
        user_of(&auth, &cached).await,
        (Some("1".into()), AuthSource::Redis)
    );
    assert_eq!(
        user_of(&auth, &cached).await,
        (Some("1".into()), AuthSource::Local)
    );
    assert_eq!(user_of(&auth, &bad).await, (None, AuthSource::Redis));
    assert_eq!(dead.lookups(), 0);

    // Neither Redis nor the database knows this one: an error, not cached.
    for _ in 0..2 {
        match auth.authenticate(&uncached).await {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("expected StoreError::Unavailable, got {other:?}"),
        }
    }
    assert_eq!(dead.lookups(), 2);
    let key = format!("{prefix}auth:{}", uncached.digest().to_hex());
    let value: Option<String> = client.get(&key).await.expect("get");
    assert_eq!(value, None, "a store error is never cached");
    assert_eq!(cache_errors(&metrics), 0.0);
}

#[tokio::test]
async fn redis_down_falls_back_to_postgres() {
    let pg = Pg::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let client = redis_client(&redis.url()).await;
    let metrics = Arc::new(Metrics::new());
    let store = pg.store(Duration::ZERO);
    let auth = Authenticator::with_cache(store.clone(), redis_cache(&client, "wsgate:", &metrics));
    let token = pg.issue("5").await;
    redis.kill();

    let started = Instant::now();
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("5".into()), AuthSource::Database)
    );
    assert!(
        started.elapsed() < COMMAND_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        user_of(&auth, &bad_token()).await,
        (None, AuthSource::Database)
    );
    assert_eq!(store.lookups(), 2);
    // One failed read each; no write-back attempted after a failed read.
    assert_eq!(cache_errors(&metrics), 2.0);
    assert_eq!(requests(&metrics, "miss"), 2.0);

    // Redis and the database both down: the store's error.
    let dead = Authenticator::with_cache(
        pg.dead_store().await,
        redis_cache(&client, "wsgate:", &metrics),
    );
    assert!(matches!(
        dead.authenticate(&pg.issue("6").await).await,
        Err(StoreError::Unavailable(_))
    ));
    // Revocation still reaches the store, and reports the cache it could not clear.
    assert!(auth.revoke(&token.digest()).await.is_err());
    assert_eq!(user_of(&auth, &token).await, (None, AuthSource::Database));
}

#[tokio::test]
async fn hung_redis_is_bounded_by_the_command_timeout() {
    let pg = Pg::create().await;
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisProc::start(dir.path());
    let client = redis_client(&redis.url()).await;
    let metrics = Arc::new(Metrics::new());
    let store = pg.store(Duration::ZERO);
    let auth = Authenticator::with_cache(store.clone(), redis_cache(&client, "wsgate:", &metrics));
    let token = pg.issue("8").await;
    redis.freeze();

    let started = Instant::now();
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("8".into()), AuthSource::Database)
    );
    let took = started.elapsed();
    assert!(took >= COMMAND_TIMEOUT, "waited for the read: {took:?}");
    assert!(
        took < COMMAND_TIMEOUT * 2 + Duration::from_millis(500),
        "one timeout, not two: {took:?}"
    );
    assert_eq!(cache_errors(&metrics), 1.0);
    assert_eq!(store.lookups(), 1);
}

#[tokio::test]
async fn revocation_clears_redis_and_local_layers() {
    let pg = Pg::create().await;
    let client = redis_client(SHARED_REDIS).await;
    let prefix = RedisPrefix::random();
    let metrics = Arc::new(Metrics::new());
    let token = pg.issue("9").await;
    let digest = token.digest();
    let key = format!("{prefix}auth:{}", digest.to_hex());

    // Two nodes, both warm: A from the store, B from Redis.
    let a = Authenticator::with_cache(
        pg.store(Duration::ZERO),
        redis_cache(&client, &prefix, &metrics),
    );
    let b = Authenticator::with_cache(
        pg.store(Duration::ZERO),
        redis_cache(&client, &prefix, &metrics),
    );
    assert_eq!(user_of(&a, &token).await.0.as_deref(), Some("9"));
    assert_eq!(
        user_of(&b, &token).await,
        (Some("9".into()), AuthSource::Redis)
    );
    assert_eq!(
        user_of(&b, &token).await,
        (Some("9".into()), AuthSource::Local)
    );

    a.revoke(&digest).await.expect("revoke");

    // Redis holds a tombstone, long enough to outlive any cached positive.
    let value: Option<String> = client.get(&key).await.expect("get");
    assert_eq!(value.as_deref(), Some("-"));
    let ttl: i64 = client.pttl(&key).await.expect("pttl");
    assert!(ttl > 55_000, "tombstone ttl {ttl}");
    // A lookup that read the old answer before the revocation cannot put it back.
    let late = redis_cache(&client, &prefix, &metrics);
    late.put(&digest, Some(&Identity::user("9")), false)
        .await
        .expect("put");
    assert_eq!(late.get(&digest).await.expect("get"), Some(Cached::Invalid));

    // The revoking node forgot it locally.
    assert_eq!(user_of(&a, &token).await.0, None);
    // The other node keeps its short local answer until the control message
    // arrives and its dispatcher calls `forget_local`.
    assert_eq!(
        user_of(&b, &token).await,
        (Some("9".into()), AuthSource::Local)
    );
    b.forget_local(&digest);
    assert_eq!(user_of(&b, &token).await, (None, AuthSource::Redis));
    assert_eq!(user_of(&b, &token).await, (None, AuthSource::Local));

    // Without Redis the store says the same.
    let fresh = Authenticator::new(pg.store(Duration::ZERO));
    assert_eq!(user_of(&fresh, &token).await, (None, AuthSource::Database));
    assert_eq!(cache_errors(&metrics), 0.0);
}

#[tokio::test]
async fn local_only_cache_for_embedded_mode() {
    let pg = Pg::create().await;
    let metrics = Arc::new(Metrics::new());
    let store = pg.store(Duration::ZERO);
    // A short cache_ttl also caps the local layer's TTL.
    let auth = Authenticator::with_local_cache(
        store.clone(),
        Duration::from_millis(300),
        NEGATIVE_TTL,
        metrics.clone(),
    );
    let token = pg.issue("3").await;
    let bad = bad_token();

    assert_eq!(
        user_of(&auth, &token).await,
        (Some("3".into()), AuthSource::Database)
    );
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("3".into()), AuthSource::Local)
    );
    assert_eq!(user_of(&auth, &bad).await, (None, AuthSource::Database));
    assert_eq!(user_of(&auth, &bad).await, (None, AuthSource::Local));
    assert_eq!(store.lookups(), 2);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        user_of(&auth, &token).await,
        (Some("3".into()), AuthSource::Database)
    );
    assert_eq!(store.lookups(), 3);

    auth.revoke(&token.digest()).await.expect("revoke");
    assert_eq!(user_of(&auth, &token).await, (None, AuthSource::Database));
    assert_eq!(requests(&metrics, "miss"), 4.0);
    assert_eq!(requests(&metrics, "hit"), 1.0);
    assert_eq!(requests(&metrics, "negative_hit"), 1.0);
}

#[tokio::test]
async fn the_token_never_reaches_redis() {
    let pg = Pg::create().await;
    let client = redis_client(SHARED_REDIS).await;
    let prefix = RedisPrefix::random();
    let metrics = Arc::new(Metrics::new());
    let auth = Authenticator::with_cache(
        pg.store(Duration::ZERO),
        redis_cache(&client, &prefix, &metrics),
    );
    let good = pg.issue("11").await;
    let revoked = pg.issue("12").await;
    let bad = bad_token();
    for t in [&good, &revoked, &bad] {
        user_of(&auth, t).await;
    }
    auth.revoke(&revoked.digest()).await.expect("revoke");

    let keys = keys_under(&client, &prefix).await;
    assert_eq!(keys.len(), 3, "{keys:?}");
    for key in keys {
        let hex = key
            .strip_prefix(&format!("{prefix}auth:"))
            .unwrap_or_else(|| panic!("unexpected key {key}"));
        assert!(
            TokenDigest::from_hex(hex).is_some(),
            "key is a digest: {key}"
        );
        let value: String = client.get(&key).await.expect("get");
        for t in [&good, &revoked, &bad] {
            assert!(!key.contains(t.expose()) && !value.contains(t.expose()));
        }
    }
}
