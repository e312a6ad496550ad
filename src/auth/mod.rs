//! Token verification.
//!
//! A [`TokenStore`] answers "who owns this token?" from a database. The
//! [`Authenticator`] is what sessions call; caches slot in front of the store
//! there without the session or the stores knowing.
//!
//! Tokens are secrets: they live in [`Token`], whose `Debug` prints nothing,
//! and everything that is stored, cached or sent between nodes uses the
//! SHA-256 [`TokenDigest`] instead.

pub mod cache;
pub mod listen;
pub mod revalidate;
pub mod sql;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// A client's token. Never printed: `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: String) -> Token {
        Token(token)
    }
    /// The secret itself, for the one place that needs it: a store whose
    /// SQL compares the token (the `query` and `django` stores).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(Sha256::digest(self.0.as_bytes()).into())
    }
    /// A new random token for the native store: `wsg_` and 43 base64url characters.
    pub fn generate() -> Token {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Token(format!(
            "wsg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a token: what we store, cache and log instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<TokenDigest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenDigest(out))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..12])
    }
}

/// The token a live connection holds, and its digest: replaced by an in-band
/// `refresh`, read by revocation (which matches the digest) and by
/// re-validation (which needs the token itself for the `query` and `django`
/// stores). One lock for both, so they never disagree.
pub struct Credential(Mutex<(Token, TokenDigest)>);

impl Credential {
    pub fn new(token: Token) -> Credential {
        let digest = token.digest();
        Credential(Mutex::new((token, digest)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Token, TokenDigest)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn digest(&self) -> TokenDigest {
        self.lock().1
    }

    /// The token and its digest, as of now.
    pub fn get(&self) -> (Token, TokenDigest) {
        self.lock().clone()
    }

    /// Swaps in `token`; returns the digest it replaced.
    pub fn replace(&self, token: Token) -> TokenDigest {
        let digest = token.digest();
        std::mem::replace(&mut *self.lock(), (token, digest)).1
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?})", self.digest())
    }
}

/// Who a valid token belongs to. The user id is a string whatever its type
/// in the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
}

#[derive(Debug, thiserror::Error)]
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
    /// Refuses the token from now on. Stores that read someone else's table
    /// record the digest in `wsgate_revocations`.
    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError>;
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Which layer answered an authentication (the `source` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    Local,
    Redis,
    Database,
}

impl AuthSource {
    pub const ALL: [AuthSource; 3] = [AuthSource::Local, AuthSource::Redis, AuthSource::Database];
    pub fn as_str(self) -> &'static str {
        match self {
            AuthSource::Local => "local",
            AuthSource::Redis => "redis",
            AuthSource::Database => "database",
        }
    }
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
        metrics: Arc<crate::ops::metrics::Metrics>,
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

    /// Who owns `token`. `Err` only when no layer could answer.
    pub async fn authenticate(&self, token: &Token) -> Result<AuthAnswer, StoreError> {
        if let Some(cache) = &self.cache {
            return cache.authenticate(self.store.as_ref(), token).await;
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

    pub fn store_name(&self) -> &'static str {
        self.store.name()
    }

    /// The store itself, bypassing the caches (re-validation: a cached
    /// answer could hide a revocation for up to `auth.cache_ttl`).
    pub fn store(&self) -> &Arc<dyn TokenStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted() {
        let t = Token::new("super-secret".into());
        assert!(!format!("{t:?}").contains("super-secret"));
        assert!(!format!("{:?}", t.digest()).contains("super-secret"));
    }

    #[test]
    fn digest_is_sha256_hex() {
        let d = Token::new("abc".into()).digest();
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
    }

    #[test]
    fn credential_swaps_token_and_digest_together() {
        let old = Token::new("old-secret".into());
        let new = Token::new("new-secret".into());
        let c = Credential::new(old.clone());
        assert_eq!(c.digest(), old.digest());
        assert_eq!(c.replace(new.clone()), old.digest());
        assert_eq!(c.get(), (new.clone(), new.digest()));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn generated_tokens_differ() {
        let a = Token::generate();
        assert!(a.expose().starts_with("wsg_"));
        assert_eq!(a.expose().len(), 47);
        assert_ne!(a, Token::generate());
    }
}
