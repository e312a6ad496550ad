//! The subscribe hook: one signed `POST` to the backend per (user, group)
//! the caches do not answer.
//!
//! The request is JSON `{"user_id","group","node","session","conn","ip"}`.
//! It carries `X-Wsgate-Timestamp` (unix seconds) and, with
//! `authorize.hook_secret`, `X-Wsgate-Signature: sha256=<hex>`, the
//! HMAC-SHA256 of `<timestamp>.<body>`: the backend checks it in constant
//! time and refuses old timestamps, so a captured call cannot be replayed
//! later. With `authorize.hook_api_key`, `Authorization: Bearer <key>`.
//!
//! Only a 2xx answer whose body is a JSON object with a boolean `allow` is
//! an answer; anything else (another status, a timeout, a body over
//! [`MAX_BODY`], bad JSON) is a [`HookError`], which the caller turns into
//! the `unavailable` error, never an allow. Redirects are not followed.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Largest hook answer we read.
const MAX_BODY: usize = 16 * 1024;

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("hook call failed: {0}")]
    Transport(String),
    #[error("hook did not answer within authorize.hook_timeout")]
    Timeout,
    #[error("hook answered HTTP {0}")]
    Status(u16),
    #[error("hook answer is not {{\"allow\": true|false}}")]
    BadAnswer,
}

/// What the backend is told about a subscribe.
#[derive(Debug, Serialize)]
pub struct HookRequest<'a> {
    pub user_id: &'a str,
    pub group: &'a str,
    pub node: &'a str,
    pub session: &'a str,
    pub conn: u64,
    pub ip: IpAddr,
}

#[derive(Deserialize)]
struct HookAnswer {
    allow: bool,
}

pub struct Hook {
    url: hyper::Uri,
    secret: Option<Vec<u8>>,
    /// `Bearer <key>`, ready to send.
    api_key: Option<header::HeaderValue>,
    timeout: Duration,
    client: HttpsClient,
}

impl Hook {
    pub fn new(
        url: &str,
        secret: Option<&str>,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Hook, String> {
        let url: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let api_key = match api_key {
            Some(k) => {
                let mut v = header::HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| "the API key is not a header value".to_string())?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        let tls = crate::tls::system_client_config()?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Ok(Hook {
            url,
            secret: secret.map(|s| s.as_bytes().to_vec()),
            api_key,
            timeout,
            client,
        })
    }

    /// Asks the backend; `Ok(allow)` only for a well-formed answer.
    pub async fn ask(&self, request: &HookRequest<'_>) -> Result<bool, HookError> {
        let body = serde_json::to_vec(request).map_err(|_| HookError::BadAnswer)?;
        let timestamp = crate::clock::unix_ms() / 1000;
        let mut builder = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .header("x-wsgate-timestamp", timestamp.to_string());
        if let Some(secret) = &self.secret {
            builder = builder.header("x-wsgate-signature", sign(secret, timestamp, &body));
        }
        if let Some(key) = &self.api_key {
            builder = builder.header(header::AUTHORIZATION, key.clone());
        }
        let http = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError::Transport(e.to_string()))?;
        let call = async {
            let response = self
                .client
                .request(http)
                .await
                .map_err(|e| HookError::Transport(e.to_string()))?;
            let status = response.status();
            if !status.is_success() {
                return Err(HookError::Status(status.as_u16()));
            }
            let body = Limited::new(response.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|_| HookError::BadAnswer)?
                .to_bytes();
            serde_json::from_slice::<HookAnswer>(&body)
                .map(|a| a.allow)
                .map_err(|_| HookError::BadAnswer)
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| HookError::Timeout)?
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_of_timestamp_dot_body() {
        // Checked against: printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        let s = sign(b"key", 1_700_000_000, b"{}");
        assert_eq!(
            s,
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_ne!(s, sign(b"key", 1_700_000_001, b"{}"));
        assert_ne!(s, sign(b"kez", 1_700_000_000, b"{}"));
    }
}
