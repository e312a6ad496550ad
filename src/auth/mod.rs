//! Token verification.
//!
//! A [`TokenStore`] answers "who owns this token?" from a database. The
//! [`Authenticator`] is what sessions call; caches slot in front of the store
//! there without the session or the stores knowing. Below the caches,
//! [`batch::Batched`] gathers concurrent lookups into one store query.
//!
//! Tokens themselves ([`Token`], [`TokenDigest`], [`Credential`]) live in
//! [`crate::token`]; they are re-exported here.

pub mod batch;
pub mod cache;
pub mod django;
mod jwks;
pub mod jwt;
pub mod sql;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

pub use crate::metrics::AuthSource;
pub use crate::token::{Credential, Token, TokenDigest};

/// Who a valid token belongs to, and until when. The user id is a string
/// whatever its type in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    /// When the token expires (unix ms), if it does: no cache layer keeps
    /// the answer past it.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// A token that does not expire (or whose store does not say).
    pub fn user(user_id: impl Into<String>) -> Identity {
        Identity {
            user_id: user_id.into(),
            expires_at: None,
        }
    }

    /// How long an answer about this token may be cached: `ttl`, or less
    /// when the token expires sooner (zero once it has).
    pub fn cacheable_for(&self, ttl: std::time::Duration) -> std::time::Duration {
        match self.expires_at {
            None => ttl,
            Some(at) => ttl.min(std::time::Duration::from_millis(
                at.saturating_sub(crate::clock::unix_ms()),
            )),
        }
    }
}

/// Clone: one failed query answers every caller that waited for it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend did not answer (connection refused, timeout, pool closed).
    #[error("token store unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error (bad SQL, wrong schema).
    #[error("token store error: {0}")]
    Query(String),
    #[error("operation not supported by the {0} store")]
    Unsupported(&'static str),
}

/// Where a token is verified.
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// `Ok(None)` means the token is unknown, expired, revoked, or its user inactive.
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError>;
    /// [`TokenStore::verify`] for many tokens at once, answers in the same
    /// order (re-validation of live connections). The default asks one by
    /// one; stores that can answer a batch in one query override it.
    async fn verify_many(&self, tokens: &[Token]) -> Result<Vec<Option<Identity>>, StoreError> {
        let mut answers = Vec::with_capacity(tokens.len());
        for token in tokens {
            answers.push(self.verify(token).await?);
        }
        Ok(answers)
    }
    /// Whether [`TokenStore::verify_many`] asks one query per batch, so
    /// that gathering concurrent lookups into it saves round trips
    /// ([`batch::Batched`]).
    fn batches(&self) -> bool {
        false
    }
    /// Refuses the token from now on. Stores that read someone else's table
    /// record the digest in `wsgate_revocations`.
    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

#[derive(Debug)]
pub struct AuthAnswer {
    pub identity: Option<Identity>,
    pub source: AuthSource,
    pub elapsed: std::time::Duration,
}

/// What sessions and the API use to check and revoke tokens.
///
/// Three shapes (see [`cache`] for the layers):
/// - [`Authenticator::new`]: the store alone, every authentication a query
///   (tools and tests);
/// - [`Authenticator::with_local_cache`]: the short in-process layer in front
///   of the store (embedded mode: one node, so a revocation on it clears the
///   only local layer there is; a token revoked by another process, such as
///   `wsgate token revoke`, may still open a connection for up to 5 s);
/// - [`Authenticator::with_cache`]: the in-process layer, then Redis, then the
///   store (cluster mode).
pub struct Authenticator {
    store: Arc<dyn TokenStore>,
    cache: Option<cache::TokenCache>,
}

impl Authenticator {
    /// The store alone, no cache.
    pub fn new(store: Arc<dyn TokenStore>) -> Authenticator {
        Authenticator { store, cache: None }
    }

    /// The in-process layer (TTLs capped at 5 s and 2 s) in front of the store.
    pub fn with_local_cache(
        store: Arc<dyn TokenStore>,
        cache_ttl: Duration,
        negative_ttl: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Authenticator {
        Authenticator {
            store,
            cache: Some(cache::TokenCache::local_only(
                cache_ttl,
                negative_ttl,
                metrics,
            )),
        }
    }

    /// The in-process layer, then `redis`, then the store.
    pub fn with_cache(store: Arc<dyn TokenStore>, redis: cache::RedisTokenCache) -> Authenticator {
        Authenticator {
            store,
            cache: Some(cache::TokenCache::layered(redis)),
        }
    }

    /// Bounds each cache-miss lookup (Redis, then the store) to `timeout`
    /// (`auth.timeout`). Such a lookup runs in its own task, so that a
    /// caller giving up does not cancel it for others waiting on the same
    /// token; this is what ends it. Without a cache there is no such task,
    /// and the caller's own deadline bounds the query.
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Authenticator {
        if let Some(cache) = &mut self.cache {
            cache.set_lookup_timeout(timeout);
        }
        self
    }

    /// Who owns `token`. `Err` only when no layer could answer.
    pub async fn authenticate(&self, token: &Token) -> Result<AuthAnswer, StoreError> {
        if let Some(cache) = &self.cache {
            return cache.authenticate(&self.store, token).await;
        }
        let started = Instant::now();
        let identity = self.store.verify(token).await?;
        Ok(AuthAnswer {
            identity,
            source: AuthSource::Database,
            elapsed: started.elapsed(),
        })
    }

    /// Revokes in the store, then forgets the token in Redis and in this
    /// node's local layer. Other nodes' local layers are cleared by the
    /// `RevokeDigest` control message ([`Authenticator::forget_local`]).
    /// Fails when the cache could not forget it (the store revocation stands
    /// and may be retried: it is idempotent).
    pub async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.store.revoke(digest).await?;
        self.forget(digest).await
    }

    /// Forgets `digest` in Redis and this node's local layer without touching
    /// the store (its row was already deleted or revoked elsewhere).
    pub async fn forget(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        match &self.cache {
            Some(cache) => cache.forget(digest).await.map_err(|e| {
                StoreError::Unavailable(format!("token cache could not forget the token: {e}"))
            }),
            None => Ok(()),
        }
    }

    /// Forgets `digest` in this node's local layer. Synchronous and cheap:
    /// the control-message dispatcher calls it on every node when a
    /// `RevokeDigest` arrives.
    pub fn forget_local(&self, digest: &TokenDigest) {
        if let Some(cache) = &self.cache {
            cache.forget_local(digest);
        }
    }

    /// Whether `digest` was forgotten on this node at or after `since`: a
    /// session checks this once its connection is in the hub, for a
    /// revocation that landed between its token check and its registration
    /// (the revocation's close found no connection to close then).
    pub fn forgotten_since(&self, digest: &TokenDigest, since: Instant) -> bool {
        self.cache
            .as_ref()
            .is_some_and(|cache| cache.forgotten_since(digest, since))
    }

    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    /// The store itself, bypassing the caches (re-validation: a cached
    /// answer could hide a revocation for up to `auth.cache_ttl`).
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }
}
