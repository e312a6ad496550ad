//! A JWKS URL's keys, fetched and cached (`auth.jwt_jwks_url`).
//!
//! - The set is kept for its `Cache-Control: max-age`, bounded to
//!   [`MIN_MAX_AGE`]..[`MAX_MAX_AGE`] ([`DEFAULT_MAX_AGE`] without one).
//! - A token whose `kid` the set lacks makes it fetched again at once (the
//!   provider rotated its keys), at most once per [`REFETCH_EVERY`] (a
//!   `governor` limiter): random `kid`s cannot make us hammer the provider.
//! - A fetch that fails while a set is held keeps the held set; with no set
//!   at all the answer is "unavailable" (close 1013), never an allow.
//! - Verifications read the held set without waiting on anything; one fetch
//!   runs at a time, and verifications that needed it wait for it and use
//!   its result rather than fetching again.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{JwkSet, PublicKeyUse};
use tokio::sync::Mutex;

use super::StoreError;

pub const MIN_MAX_AGE: Duration = Duration::from_secs(30);
pub const MAX_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// At most one fetch for an unknown `kid` per this long.
pub const REFETCH_EVERY: Duration = Duration::from_secs(5);
/// Longest wait for the JWKS endpoint (the token check has its own
/// `auth.timeout` around it as well).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document we read.
const MAX_BODY: usize = 256 * 1024;

/// One usable key of the set.
#[derive(Clone)]
pub struct JwkKey {
    pub key: DecodingKey,
    /// The key's own `alg`, when the set names one: only that one is used.
    pub alg: Option<String>,
}

struct Held {
    keys: Arc<HashMap<String, JwkKey>>,
    /// Keys without a `kid`, tried for tokens without one.
    unnamed: Arc<Vec<JwkKey>>,
    fresh_until: Instant,
}

impl Held {
    fn is_fresh(&self) -> bool {
        self.fresh_until > Instant::now()
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct Jwks {
    url: String,
    client: HttpsClient,
    /// The set in use, swapped whole by a fetch.
    held: RwLock<Option<Arc<Held>>>,
    /// Held only while fetching: one fetch at a time.
    fetching: Mutex<()>,
    refetch: DefaultDirectRateLimiter,
}

/// What the set says of a `kid`.
pub enum Lookup {
    Found(Vec<JwkKey>),
    Unknown,
}

impl Jwks {
    pub fn new(url: String) -> Result<Jwks, StoreError> {
        let tls = crate::tls::system_client_config()
            .map_err(|e| StoreError::Unavailable(format!("JWKS TLS: {e}")))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(https);
        let quota = Quota::with_period(REFETCH_EVERY).expect("a non-zero period");
        Ok(Jwks {
            url,
            client,
            held: RwLock::new(None),
            fetching: Mutex::new(()),
            refetch: RateLimiter::direct(quota),
        })
    }

    /// The keys for `kid` (`None`: the token named none), fetching the set
    /// when none is held, when it is stale, or (rate-limited) when it lacks
    /// `kid`.
    pub async fn lookup(&self, kid: Option<&str>) -> Result<Lookup, StoreError> {
        let held = self.current();
        let stale = held.as_ref().is_none_or(|h| !h.is_fresh());
        let set = if stale {
            self.refresh(held.as_ref()).await?
        } else {
            held.expect("a fresh set is held")
        };
        if let Some(found) = find(&set, kid) {
            return Ok(Lookup::Found(found));
        }
        // An unknown kid: the provider may have rotated. Fetch again unless
        // we just did (this call, or the limiter says so).
        if stale || self.refetch.check().is_err() {
            return Ok(Lookup::Unknown);
        }
        let set = self.refresh(Some(&set)).await?;
        Ok(find(&set, kid).map_or(Lookup::Unknown, Lookup::Found))
    }

    fn current(&self) -> Option<Arc<Held>> {
        self.held.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces `seen` (the set the caller found wanting, or none) with a
    /// fetched one, one fetch at a time: a caller that waited while another
    /// fetched uses that result. A failed fetch keeps a held set (and logs);
    /// without one it is `Unavailable`.
    async fn refresh(&self, seen: Option<&Arc<Held>>) -> Result<Arc<Held>, StoreError> {
        let _fetching = self.fetching.lock().await;
        let held = self.current();
        if let Some(h) = &held {
            let replaced = seen.is_none_or(|s| !Arc::ptr_eq(s, h));
            if replaced && h.is_fresh() {
                return Ok(h.clone());
            }
        }
        let next = match (self.fetch().await, held) {
            (Ok(set), _) => Arc::new(set),
            (Err(e), Some(old)) => {
                tracing::warn!(url = %crate::config::mask_url(&self.url), error = %e, "JWKS fetch failed; keeping the keys held");
                // Try again after the shortest interval, not on every token.
                Arc::new(Held {
                    keys: old.keys.clone(),
                    unnamed: old.unnamed.clone(),
                    fresh_until: Instant::now() + MIN_MAX_AGE,
                })
            }
            (Err(e), None) => {
                return Err(StoreError::Unavailable(format!("JWKS fetch failed: {e}")));
            }
        };
        *self.held.write().unwrap_or_else(|e| e.into_inner()) = Some(next.clone());
        Ok(next)
    }

    async fn fetch(&self) -> Result<Held, String> {
        tokio::time::timeout(FETCH_TIMEOUT, self.fetch_unbounded())
            .await
            .map_err(|_| format!("no answer within {FETCH_TIMEOUT:?}"))?
    }

    async fn fetch_unbounded(&self) -> Result<Held, String> {
        let uri: hyper::Uri = self.url.parse().map_err(|e| format!("{e}"))?;
        let request = hyper::Request::get(uri)
            .header("accept", "application/json")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(request)
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get_all("cache-control")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let body = Limited::new(resp.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading the JWKS: {e}"))?
            .to_bytes();
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = HashMap::new();
        let mut unnamed = Vec::new();
        for jwk in &set.keys {
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                continue;
            }
            // Symmetric ("oct") keys in a public set would turn a public
            // document into an HMAC secret: never used.
            if matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            ) {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let entry = JwkKey {
                key,
                alg: jwk.common.key_algorithm.map(|a| a.to_string()),
            };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.insert(kid.clone(), entry);
                }
                None => unnamed.push(entry),
            }
        }
        Ok(Held {
            keys: Arc::new(keys),
            unnamed: Arc::new(unnamed),
            fresh_until: Instant::now() + max_age,
        })
    }
}

fn find(set: &Held, kid: Option<&str>) -> Option<Vec<JwkKey>> {
    match kid {
        Some(kid) => set.keys.get(kid).map(|k| vec![k.clone()]),
        None if !set.unnamed.is_empty() => Some(set.unnamed.to_vec()),
        // No kid and no unnamed key: every key may be tried.
        None => Some(set.keys.values().cloned().collect()).filter(|v: &Vec<_>| !v.is_empty()),
    }
}

/// `max-age=N` of a Cache-Control value; `no-cache`/`no-store` count as 0
/// (then bounded up to the minimum).
pub fn max_age(value: &str) -> Option<Duration> {
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            return n.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_max_age() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=x"), None);
    }
}
