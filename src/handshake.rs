//! The WebSocket upgrade (section 1): Origin allow-list, capacity and drain
//! checks, then hand-off to a session.
//!
//! The request URI (and so any query string) is never logged or read: a
//! token put there by a misguided client goes nowhere.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::limits::{Refusal, SessionSlot};
use crate::metrics::Rejection;
use crate::session;
use crate::state::AppState;
use crate::ws::WebSocketUpgrade;

/// Seconds a refused client is asked to wait.
const RETRY_AFTER_SECS: &str = "5";

pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let span = tracing::info_span!("handshake", outcome = tracing::field::Empty);
    let _enter = span.enter(); // no .await below: the guard never crosses one
    let (outcome, response) = decide(&state, peer, &headers, ws);
    span.record("outcome", outcome);
    response
}

/// Why an upgrade was refused.
#[derive(Debug, Clone, Copy)]
enum Refused {
    Origin,
    Draining,
    Limit(Refusal),
}

impl Refused {
    fn reason(self) -> Rejection {
        match self {
            Refused::Origin => Rejection::Origin,
            Refused::Draining => Rejection::Draining,
            Refused::Limit(r) => r.rejection(),
        }
    }

    fn response(self) -> Response {
        match self {
            Refused::Origin => (StatusCode::FORBIDDEN, "origin not allowed\n").into_response(),
            Refused::Draining => unavailable("node draining\n"),
            // The node as a whole is busy: another node may take the client.
            Refused::Limit(Refusal::Full | Refusal::Pending) => unavailable("node full\n"),
            // This client holds too much: slow it down.
            Refused::Limit(Refusal::PerIp | Refusal::PendingPerIp) => (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
                "too many connections from this address\n",
            )
                .into_response(),
        }
    }
}

/// The handshake's answer, and a word for the span.
fn decide(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    ws: WebSocketUpgrade,
) -> (&'static str, Response) {
    match check(state, peer, headers) {
        Ok(slot) => {
            let state = state.clone();
            let max_message = state.config.limits.max_message_bytes;
            let response =
                ws.on_upgrade(max_message, move |socket| session::run(socket, state, slot));
            ("upgraded", response)
        }
        Err(refused) => {
            let reason = refused.reason();
            tracing::debug!(reason = reason.as_str(), "handshake refused");
            state.metrics.rejected(reason);
            (reason.as_str(), refused.response())
        }
    }
}

/// Origin, drain and capacity checks; a place for the socket if they pass.
fn check(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<SessionSlot, Refused> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = &state.config.server.allowed_origins;
        let ok = origin
            .to_str()
            .is_ok_and(|origin| origin_allowed(allowed, origin));
        if !ok {
            return Err(Refused::Origin);
        }
    }
    if state.is_draining() {
        return Err(Refused::Draining);
    }
    let ip = state.proxies.client_ip(peer.ip(), headers);
    state.limits.try_open(ip).map_err(Refused::Limit)
}

fn unavailable(text: &'static str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS)],
        text,
    )
        .into_response()
}

/// An empty list allows every origin. Entries are exact origins
/// (`https://app.example.com`) or `*.example.com` (any scheme), or
/// `https://*.example.com`; host names compare case-insensitively.
pub fn origin_allowed(allowed: &[String], origin: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let origin = origin.to_ascii_lowercase();
    let (scheme, host_port) = origin.split_once("://").unwrap_or(("", origin.as_str()));
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, port)| {
        if port.chars().all(|c| c.is_ascii_digit()) {
            h
        } else {
            host_port
        }
    });
    allowed.iter().any(|entry| {
        let entry = entry.to_ascii_lowercase();
        let (entry_scheme, entry_host) = match entry.split_once("://") {
            Some((s, h)) => (Some(s), h),
            None => (None, entry.as_str()),
        };
        if let Some(suffix) = entry_host.strip_prefix("*.") {
            entry_scheme.is_none_or(|s| s == scheme)
                && host.len() > suffix.len() + 1
                && host.ends_with(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        } else {
            entry == origin
        }
    })
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        let list = vec![
            "https://app.example.com".to_string(),
            "*.trusted.io".to_string(),
        ];
        assert!(origin_allowed(&[], "https://evil.com"));
        assert!(origin_allowed(&list, "https://app.example.com"));
        assert!(origin_allowed(&list, "https://APP.example.com"));
        assert!(!origin_allowed(&list, "http://app.example.com"));
        assert!(!origin_allowed(&list, "https://app.example.com.evil.com"));
        assert!(origin_allowed(&list, "https://a.trusted.io"));
        assert!(origin_allowed(&list, "http://a.b.trusted.io:8443"));
        assert!(!origin_allowed(&list, "https://trusted.io"));
        assert!(!origin_allowed(&list, "https://eviltrusted.io"));
        assert!(!origin_allowed(&list, "null"));
        let scoped = vec!["https://*.trusted.io".to_string()];
        assert!(origin_allowed(&scoped, "https://a.trusted.io"));
        assert!(!origin_allowed(&scoped, "http://a.trusted.io"));
    }
}
