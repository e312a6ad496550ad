//! The opening handshake (RFC 6455 section 4.2) as an axum extractor: the
//! request is checked, the answer is `101 Switching Protocols`, and once
//! hyper lets go of the connection its `TcpStream` is taken back for a
//! [`WebSocket`].

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::net::TcpStream;

use super::WebSocket;
use crate::prefixed::Prefixed;

/// Section 1.3.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A valid upgrade request, not yet answered.
pub struct WebSocketUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
}

/// Why an upgrade request was refused, with the HTTP answer it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("a WebSocket upgrade must be a GET")]
    NotGet,
    #[error("a WebSocket upgrade needs HTTP/1.1")]
    NotHttp11,
    #[error("the Connection header must include 'upgrade'")]
    Connection,
    #[error("the Upgrade header must be 'websocket'")]
    Upgrade,
    #[error("only Sec-WebSocket-Version 13 is supported")]
    Version,
    #[error("Sec-WebSocket-Key must be 16 bytes in base64")]
    Key,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let text = format!("{self}\n");
        match self {
            Refusal::NotGet => (StatusCode::METHOD_NOT_ALLOWED, text).into_response(),
            // Section 4.2.2: name the version we speak.
            Refusal::Version => (
                StatusCode::UPGRADE_REQUIRED,
                [(header::SEC_WEBSOCKET_VERSION, "13")],
                text,
            )
                .into_response(),
            Refusal::NotUpgradable => (StatusCode::UPGRADE_REQUIRED, text).into_response(),
            _ => (StatusCode::BAD_REQUEST, text).into_response(),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Refusal> {
        if parts.method != Method::GET {
            return Err(Refusal::NotGet);
        }
        if parts.version != Version::HTTP_11 {
            return Err(Refusal::NotHttp11);
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(Refusal::Connection);
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(Refusal::Upgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(Refusal::Version);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|k| STANDARD.decode(k.as_bytes()).is_ok_and(|b| b.len() == 16))
            .ok_or(Refusal::Key)?
            .clone();
        let on_upgrade = parts
            .extensions
            .remove::<OnUpgrade>()
            .ok_or(Refusal::NotUpgradable)?;
        Ok(WebSocketUpgrade { key, on_upgrade })
    }
}

/// Whether a comma-separated header holds `token` (case-insensitive), as
/// `Connection: keep-alive, Upgrade` does.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// `Sec-WebSocket-Accept` for a request's key (section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(ACCEPT_GUID);
    STANDARD.encode(sha1.finalize())
}

impl WebSocketUpgrade {
    /// Answers `101` and, once hyper hands the connection over, runs
    /// `session` on it in a task of its own. `max_message` bounds a
    /// client's message (and frame), in bytes.
    pub fn on_upgrade<F, Fut>(self, max_message: usize, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let accept = accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(e) => {
                    tracing::debug!(error = %e, "upgrade did not complete");
                    return;
                }
            };
            // The listener serves `Prefixed<TcpStream>` (src/server/listen.rs);
            // anything else is a wiring mistake, and the client is dropped.
            let Ok(parts) = upgraded.downcast::<TokioIo<Prefixed<TcpStream>>>() else {
                tracing::error!("upgraded connection is not a TCP stream; dropped");
                return;
            };
            let (prefix, stream) = parts.io.into_inner().into_parts();
            // Bytes the client sent right after its request (an auth frame
            // pipelined with the upgrade): what hyper read past the request,
            // then what it never read of the prefix.
            let read = if prefix.is_empty() {
                parts.read_buf
            } else {
                [parts.read_buf, prefix].concat().into()
            };
            session(WebSocket::new(stream, read, max_message)).await;
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_sample_key() {
        // Section 1.3.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn header_tokens() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&h, header::CONNECTION, "upgrade"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrades"));
        assert!(!has_token(&h, header::CONNECTION, "upgrade"));
    }
}
