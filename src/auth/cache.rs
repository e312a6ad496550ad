//! Token caches in front of a [`TokenStore`].
//!
//! # Layers
//!
//! An authentication asks, in order:
//!
//! 1. **The local layer**, an in-process [moka] cache keyed by the token's
//!    [`TokenDigest`]. It answers bursts (a reconnect storm after a deploy, a
//!    client hammering one bad token) without a network round trip, and it is
//!    where single-flight happens: concurrent calls for the same missing
//!    digest share one lookup, so N simultaneous authentications of one
//!    uncached token make one Redis read and at most one store query, not N.
//!    The lookup runs in its own task, bounded by the lookup timeout
//!    (`auth.timeout`), and fills the local layer when it ends: a caller that
//!    gives up (its client went away, or its own `auth.timeout` struck first
//!    on a starved node) neither cancels it for the callers still waiting
//!    nor makes the next caller start a second query, and the client's retry
//!    finds the answer in-process.
//! 2. **Redis** (`{prefix}auth:{sha256 hex}`), shared by every node: the value
//!    is `u:<user id>` for a valid token (`e:<expiry ms>:<user id>` for one
//!    that expires), kept `auth.cache_ttl`, or `-` for an
//!    invalid one, kept `auth.negative_ttl`, so a flood of bad tokens is
//!    answered by Redis instead of Postgres. The token itself is never sent to
//!    Redis, and never appears in a log line or an error from this module.
//! 3. **The store** (Postgres or SQLite), the source of truth. Its answer is
//!    written back to Redis. Store errors are never cached.
//!
//! # TTLs
//!
//! No layer keeps a valid answer past the token's own expiry: each positive
//! lives `min(layer TTL, time the token has left)`, in Redis (the key's TTL,
//! and the expiry in the value for the local layers that read it) and in
//! the local layer.
//!
//! The local layer keeps positives `min(auth.cache_ttl, 5 s)` and negatives
//! `min(auth.negative_ttl, 2 s)`. It is short on purpose: only the
//! `RevokeDigest` control message can clear it on other nodes, and that
//! travels over pub/sub, which can miss a message during a Redis reconnect. A
//! few seconds is enough to absorb a burst and bounds how long a lost message
//! can matter. Redis holds the long TTLs because it is shared and a revocation
//! clears it directly.
//!
//! # Failures
//!
//! Every Redis call is bounded by `redis.command_timeout` (and fails at once
//! while the connection is down), is counted in
//! `wsgate_auth_cache_errors_total` when it fails, and is never fatal: the
//! store answers instead. After a failed read the write-back is skipped, so a
//! hung Redis costs one timeout, not two. With Redis warm and the store down,
//! cached tokens still authenticate; when neither can answer, the store's
//! error is returned (the session closes with 1013).
//!
//! # Revocation
//!
//! A revocation writes a negative entry ("tombstone") to Redis, kept for the
//! longer of the two TTLs, rather than deleting the key: cache writes after a
//! lookup use `SET NX`, so a lookup that read the old answer just before the
//! revocation cannot put it back afterwards. On each node, forgetting a digest
//! records the instant; a cached positive fetched before that instant is not
//! trusted and is looked up again, which closes the same race for the local
//! layer (a lookup in flight while the revocation arrived).
//!
//! # Metrics
//!
//! Each authentication counts once in `wsgate_auth_cache_requests_total` and
//! reports its source (`wsgate_auth_duration_seconds{source}`):
//! a local-layer answer is `hit`/`negative_hit` with source `local` (a caller
//! that waited for another caller's lookup of the same token counts here too:
//! it was answered in-process); a Redis answer is `hit`/`negative_hit` with
//! source `redis`; a store answer is `miss` with source `database`, valid or
//! not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use fred::clients::Client;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::Options;
use fred::types::{Expiration, SetOptions, Value};
use moka::Expiry;
use moka::future::Cache;

use super::{AuthAnswer, AuthSource, Identity, StoreError, Token, TokenDigest, TokenStore};
use crate::metrics::{CacheResult, Metrics};

/// Upper bound of the local layer's TTL for valid tokens.
pub const LOCAL_POSITIVE_TTL: Duration = Duration::from_secs(5);
/// Upper bound of the local layer's TTL for invalid tokens.
pub const LOCAL_NEGATIVE_TTL: Duration = Duration::from_secs(2);
/// Most digests the local layer holds (about 100 bytes each).
const LOCAL_CAPACITY: u64 = 100_000;
/// How long a forgotten digest is remembered beyond the local positive TTL:
/// longer than any lookup can run (each is given up after the lookup
/// timeout, `auth.timeout`, at most a minute).
const FORGET_SLACK: Duration = Duration::from_secs(60);
/// The lookup timeout until [`TokenCache::set_lookup_timeout`] (the default
/// `auth.timeout`).
const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most lookups of different digests in flight on a node: past it an
/// authentication is answered "unavailable" (1013) instead of adding a task.
/// Sessions are bounded by `limits.max_pending` long before this in practice.
pub const MAX_LOOKUPS_IN_FLIGHT: usize = 16_384;

/// The Redis value of an invalid (unknown or revoked) token.
const NEGATIVE: &str = "-";
/// The Redis value of a valid token is this prefix and the user id.
const POSITIVE_PREFIX: &str = "u:";
/// A valid token that expires: `e:<unix ms>:<user id>`.
const EXPIRING_PREFIX: &str = "e:";

/// A Redis token-cache call that did not succeed. Never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis token cache timed out after {0:?}")]
    Timeout(Duration),
    #[error("redis token cache: {0}")]
    Redis(#[from] fred::error::Error),
    /// The key holds something this module did not write.
    #[error("redis token cache entry is unreadable")]
    Corrupt,
}

/// What Redis remembers about a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cached {
    Valid(Identity),
    Invalid,
}

/// The shared layer: token answers in Redis, by digest.
pub struct RedisTokenCache {
    client: Client,
    options: Options,
    prefix: String,
    cache_ttl: Duration,
    negative_ttl: Duration,
    command_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl RedisTokenCache {
    /// `client` is already connected; `prefix` is `redis.prefix` (`wsgate:`).
    /// A zero TTL turns off caching of that kind of answer in Redis.
    pub fn new(
        client: Client,
        prefix: impl Into<String>,
        cache_ttl: Duration,
        negative_ttl: Duration,
        command_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> RedisTokenCache {
        let options = Options {
            timeout: Some(command_timeout),
            // A cache that is down should be skipped, not waited for.
            fail_fast: true,
            ..Options::default()
        };
        RedisTokenCache {
            client,
            options,
            prefix: prefix.into(),
            cache_ttl,
            negative_ttl,
            command_timeout,
            metrics,
        }
    }

    /// `{prefix}auth:{sha256 hex}`.
    pub fn key(&self, digest: &TokenDigest) -> String {
        format!("{}auth:{}", self.prefix, digest.to_hex())
    }

    pub fn cache_ttl(&self) -> Duration {
        self.cache_ttl
    }

    pub fn negative_ttl(&self) -> Duration {
        self.negative_ttl
    }

    /// The cached answer for `digest`, `None` when Redis has none.
    pub async fn get(&self, digest: &TokenDigest) -> Result<Option<Cached>, CacheError> {
        let client = self.client.with_options(&self.options);
        let raw: Option<String> = self.bounded(client.get(self.key(digest))).await?;
        match raw.as_deref() {
            None => Ok(None),
            Some(NEGATIVE) => Ok(Some(Cached::Invalid)),
            Some(v) => match parse_positive(v) {
                // Expired while the key lived (clocks differ): ask the store.
                Some(identity) if identity.cacheable_for(Duration::MAX).is_zero() => Ok(None),
                Some(identity) => Ok(Some(Cached::Valid(identity))),
                None => {
                    self.metrics.auth_cache_errors.inc();
                    Err(CacheError::Corrupt)
                }
            },
        }
    }

    /// Caches a store answer. Without `overwrite` an existing entry wins
    /// (`SET NX`), so a stale answer cannot replace a revocation's tombstone.
    pub async fn put(
        &self,
        digest: &TokenDigest,
        identity: Option<&Identity>,
        overwrite: bool,
    ) -> Result<(), CacheError> {
        let (value, ttl) = match identity {
            Some(id) => (positive_value(id), id.cacheable_for(self.cache_ttl)),
            None => (NEGATIVE.to_string(), self.negative_ttl),
        };
        if ttl.is_zero() {
            return Ok(());
        }
        let condition = (!overwrite).then_some(SetOptions::NX);
        let client = self.client.with_options(&self.options);
        let _: Value = self
            .bounded(client.set(self.key(digest), value, Some(px(ttl)), condition, false))
            .await?;
        Ok(())
    }

    /// Makes every node refuse `digest` from Redis: writes a tombstone kept
    /// for the longer TTL (deletes the key when both TTLs are zero).
    pub async fn forget(&self, digest: &TokenDigest) -> Result<(), CacheError> {
        let ttl = self.cache_ttl.max(self.negative_ttl);
        let client = self.client.with_options(&self.options);
        if ttl.is_zero() {
            let _: i64 = self.bounded(client.del(self.key(digest))).await?;
        } else {
            let _: Value = self
                .bounded(client.set(self.key(digest), NEGATIVE, Some(px(ttl)), None, false))
                .await?;
        }
        Ok(())
    }

    /// Runs one Redis call under the command timeout and counts failures.
    /// The call is boxed before the future this returns is made: a fred
    /// command's future is several KB, and held inline (an async fn keeps
    /// its arguments in its state) it made every token lookup's task,
    /// which is spawned and so copied in and out, 14 KB.
    fn bounded<'a, T: Send + 'a>(
        &'a self,
        call: impl Future<Output = Result<T, fred::error::Error>> + Send + 'a,
    ) -> impl Future<Output = Result<T, CacheError>> + Send + 'a {
        let call = Box::pin(call);
        async move {
            let result = match tokio::time::timeout(self.command_timeout, call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(CacheError::Redis(e)),
                Err(_) => Err(CacheError::Timeout(self.command_timeout)),
            };
            if result.is_err() {
                self.metrics.auth_cache_errors.inc();
            }
            result
        }
    }
}

fn positive_value(id: &Identity) -> String {
    match id.expires_at {
        None => format!("{POSITIVE_PREFIX}{}", id.user_id),
        Some(at) => format!("{EXPIRING_PREFIX}{at}:{}", id.user_id),
    }
}

fn parse_positive(v: &str) -> Option<Identity> {
    if let Some(user_id) = v.strip_prefix(POSITIVE_PREFIX) {
        return Some(Identity::user(user_id));
    }
    let (at, user_id) = v.strip_prefix(EXPIRING_PREFIX)?.split_once(':')?;
    Some(Identity {
        user_id: user_id.to_string(),
        expires_at: Some(at.parse().ok()?),
    })
}

fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

// ---------------------------------------------------------------------------

/// One answer in the local layer.
#[derive(Debug, Clone)]
struct Looked {
    identity: Option<Identity>,
    /// Where the lookup that produced it was answered.
    source: AuthSource,
    /// When that lookup started: answers older than a revocation are stale.
    fetched: Instant,
}

/// Positives and negatives live for different times in the local layer.
struct LocalExpiry {
    positive: Duration,
    negative: Duration,
}

impl LocalExpiry {
    fn ttl(&self, value: &Looked) -> Duration {
        match &value.identity {
            Some(identity) => identity.cacheable_for(self.positive),
            None => self.negative,
        }
    }
}

impl Expiry<TokenDigest, Looked> for LocalExpiry {
    fn expire_after_create(&self, _: &TokenDigest, value: &Looked, _: Instant) -> Option<Duration> {
        Some(self.ttl(value))
    }

    fn expire_after_update(
        &self,
        _: &TokenDigest,
        value: &Looked,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(value))
    }
}

/// The local layer, optionally backed by Redis: what an [`Authenticator`]
/// with a cache holds.
///
/// [`Authenticator`]: super::Authenticator
pub(crate) struct TokenCache {
    local: Cache<TokenDigest, Looked>,
    redis: Option<Arc<RedisTokenCache>>,
    /// Lookups in flight, by digest: what a caller for a missing digest
    /// waits on. Each removes itself when it ends.
    in_flight: Arc<Mutex<HashMap<TokenDigest, Pending>>>,
    lookup_timeout: Duration,
    /// Digests forgotten on this node, and when.
    forgotten: Mutex<HashMap<TokenDigest, Instant>>,
    forget_retention: Duration,
    metrics: Arc<Metrics>,
}

/// One lookup in flight, shared by every caller that waits for it.
type Pending = Shared<BoxFuture<'static, Result<Looked, StoreError>>>;

impl TokenCache {
    /// The local layer alone (embedded mode).
    pub(crate) fn local_only(
        cache_ttl: Duration,
        negative_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> TokenCache {
        Self::build(cache_ttl, negative_ttl, None, metrics)
    }

    /// The local layer in front of Redis.
    pub(crate) fn layered(redis: RedisTokenCache) -> TokenCache {
        let metrics = redis.metrics.clone();
        Self::build(redis.cache_ttl, redis.negative_ttl, Some(redis), metrics)
    }

    fn build(
        cache_ttl: Duration,
        negative_ttl: Duration,
        redis: Option<RedisTokenCache>,
        metrics: Arc<Metrics>,
    ) -> TokenCache {
        let positive = cache_ttl.min(LOCAL_POSITIVE_TTL);
        let negative = negative_ttl.min(LOCAL_NEGATIVE_TTL);
        let local = Cache::builder()
            .name("wsgate-auth")
            .max_capacity(LOCAL_CAPACITY)
            .expire_after(LocalExpiry { positive, negative })
            .build();
        TokenCache {
            local,
            redis: redis.map(Arc::new),
            in_flight: Arc::default(),
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            forgotten: Mutex::new(HashMap::new()),
            forget_retention: positive + FORGET_SLACK,
            metrics,
        }
    }

    /// Bounds each lookup below the local layer (Redis, then the store);
    /// the composition root sets `auth.timeout`.
    pub(crate) fn set_lookup_timeout(&mut self, timeout: Duration) {
        self.lookup_timeout = timeout;
    }

    pub(crate) async fn authenticate(
        &self,
        store: &Arc<dyn TokenStore>,
        token: &Token,
    ) -> Result<AuthAnswer, StoreError> {
        let started = Instant::now();
        let digest = token.digest();
        let (fresh, mut looked) = loop {
            // A hit is answered without touching the lookup machinery below.
            if let Some(looked) = self.local.get(&digest).await {
                break (false, looked);
            }
            match self.join_or_start(store, token, digest)? {
                Some((fresh, pending)) => break (fresh, pending.await?),
                // Answered between the `get` and the lock: read it.
                None => continue,
            }
        };
        let mut source = if fresh {
            looked.source
        } else {
            AuthSource::Local
        };
        if looked.identity.is_some() && self.forgotten_since(&digest, looked.fetched) {
            // A lookup that was in flight when this node forgot the digest:
            // ask again rather than trust it. Boxed: the lookup holds the
            // Redis and store calls inline, and this future stays small.
            looked = Box::pin(bounded_lookup(
                self.redis.as_deref(),
                store.as_ref(),
                token,
                &digest,
                self.lookup_timeout,
            ))
            .await?;
            source = looked.source;
            self.local.insert(digest, looked.clone()).await;
        }
        self.metrics
            .cache_request(match (source, &looked.identity) {
                (AuthSource::Database, _) => CacheResult::Miss,
                (_, Some(_)) => CacheResult::Hit,
                (_, None) => CacheResult::NegativeHit,
            });
        Ok(AuthAnswer {
            identity: looked.identity,
            source,
            elapsed: started.elapsed(),
        })
    }

    /// The lookup in flight for `digest`, or a new one (`fresh`); `None`
    /// when the local layer has the answer after all.
    fn join_or_start(
        &self,
        store: &Arc<dyn TokenStore>,
        token: &Token,
        digest: TokenDigest,
    ) -> Result<Option<(bool, Pending)>, StoreError> {
        let mut in_flight = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(pending) = in_flight.get(&digest) {
            return Ok(Some((false, pending.clone())));
        }
        // A lookup puts its answer in the local layer before it leaves
        // `in_flight`, so under the lock this sees one that ended since the
        // caller's `get`.
        if self.local.contains_key(&digest) {
            return Ok(None);
        }
        if in_flight.len() >= MAX_LOOKUPS_IN_FLIGHT {
            return Err(StoreError::Unavailable(format!(
                "{MAX_LOOKUPS_IN_FLIGHT} token lookups already in flight"
            )));
        }
        let task = tokio::spawn(run_lookup(
            self.redis.clone(),
            store.clone(),
            token.clone(),
            digest,
            self.local.clone(),
            self.in_flight.clone(),
            self.lookup_timeout,
        ));
        let pending = async move {
            task.await
                .unwrap_or_else(|e| Err(StoreError::Unavailable(format!("token lookup: {e}"))))
        }
        .boxed()
        .shared();
        in_flight.insert(digest, pending.clone());
        Ok(Some((true, pending)))
    }

    /// Forgets `digest` in Redis (tombstone) and on this node. The local
    /// layer forgets it even when Redis fails.
    pub(crate) async fn forget(&self, digest: &TokenDigest) -> Result<(), CacheError> {
        let shared = match self.redis.as_deref() {
            Some(redis) => redis.forget(digest).await,
            None => Ok(()),
        };
        // After the tombstone, so a lookup started from here on cannot read
        // the old answer from Redis.
        self.forget_local(digest);
        shared
    }

    /// Forgets `digest` in this node's local layer only.
    pub(crate) fn forget_local(&self, digest: &TokenDigest) {
        let now = Instant::now();
        let mut forgotten = self.forgotten.lock().unwrap_or_else(|e| e.into_inner());
        forgotten.retain(|_, at| now.duration_since(*at) < self.forget_retention);
        // The moka entry stays until it expires: `authenticate` refuses to
        // trust a positive fetched before this instant. That works from the
        // (synchronous) control dispatcher, and also covers a lookup still
        // in flight, which would re-insert the old answer after a removal.
        forgotten.insert(*digest, now);
    }

    /// Whether `digest` was forgotten at or after `fetched`.
    pub(crate) fn forgotten_since(&self, digest: &TokenDigest, fetched: Instant) -> bool {
        let forgotten = self.forgotten.lock().unwrap_or_else(|e| e.into_inner());
        forgotten.get(digest).is_some_and(|at| *at >= fetched)
    }
}

/// One lookup in its own task: it outlives the caller that started it, ends
/// within `timeout`, puts a valid or invalid answer in the local layer (an
/// error is not kept), then leaves `in_flight`.
async fn run_lookup(
    redis: Option<Arc<RedisTokenCache>>,
    store: Arc<dyn TokenStore>,
    token: Token,
    digest: TokenDigest,
    local: Cache<TokenDigest, Looked>,
    in_flight: Arc<Mutex<HashMap<TokenDigest, Pending>>>,
    timeout: Duration,
) -> Result<Looked, StoreError> {
    let looked = bounded_lookup(redis.as_deref(), store.as_ref(), &token, &digest, timeout).await;
    if let Ok(looked) = &looked {
        local.insert(digest, looked.clone()).await;
    }
    in_flight
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&digest);
    looked
}

/// [`lookup`], given up after `timeout`.
async fn bounded_lookup(
    redis: Option<&RedisTokenCache>,
    store: &dyn TokenStore,
    token: &Token,
    digest: &TokenDigest,
    timeout: Duration,
) -> Result<Looked, StoreError> {
    tokio::time::timeout(timeout, lookup(redis, store, token, digest))
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "token lookup gave no answer within {timeout:?}"
            )))
        })
}

/// Below the local layer: Redis, then the store (written back to Redis).
async fn lookup(
    redis: Option<&RedisTokenCache>,
    store: &dyn TokenStore,
    token: &Token,
    digest: &TokenDigest,
) -> Result<Looked, StoreError> {
    let fetched = Instant::now();
    let answer = |identity, source| Looked {
        identity,
        source,
        fetched,
    };
    let mut write_back = redis.is_some();
    let mut overwrite = false;
    if let Some(redis) = redis {
        match redis.get(digest).await {
            Ok(Some(Cached::Valid(identity))) => {
                return Ok(answer(Some(identity), AuthSource::Redis));
            }
            Ok(Some(Cached::Invalid)) => return Ok(answer(None, AuthSource::Redis)),
            Ok(None) => {}
            Err(CacheError::Corrupt) => {
                tracing::warn!(digest = ?digest, "unreadable auth cache entry replaced");
                overwrite = true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "auth cache read failed; asking the store");
                // Redis is failing: do not wait on it a second time.
                write_back = false;
            }
        }
    }
    let identity = store.verify(token).await?;
    if let (true, Some(redis)) = (write_back, redis)
        && let Err(e) = redis.put(digest, identity.as_ref(), overwrite).await
    {
        tracing::warn!(error = %e, "auth cache write failed");
    }
    Ok(answer(identity, AuthSource::Database))
}

#[cfg(test)]
mod sizes {
    //! A token lookup runs in a spawned task, and a spawned future is moved
    //! whole, a few times, into and out of the task: it must not hold a
    //! fred command's future (6-8 KB) inline. It held two, 14.7 KB in all.

    use std::future::Future;
    use std::mem::size_of;

    fn future_size<A, B, C, D, E, F, G, R: Future>(_: fn(A, B, C, D, E, F, G) -> R) -> usize {
        size_of::<R>()
    }

    #[test]
    fn a_lookup_task_holds_no_redis_command_inline() {
        let client = fred::clients::Client::default();
        let command = size_of_val(&fred::interfaces::KeysInterface::get::<Option<String>, _>(
            &client, "k",
        ));
        let task = future_size(super::run_lookup);
        println!("token lookup task {task} B, one fred GET {command} B");
        assert!(
            task < command / 2,
            "the lookup task's future is {task} B, a fred command's {command} B: a Redis call is held inline"
        );
    }
}
