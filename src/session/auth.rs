//! The token checks of a session: the first frame (phase 1) and the in-band
//! `refresh`, which share one check (caches, store, `auth.timeout`).

use crate::ws::{Message, WebSocket};
use tracing::Instrument;

use std::net::IpAddr;

use super::End;
use super::socket::{client_code, violation};
use crate::auth::{Identity, Token};
use crate::hub::ConnHandle;
use crate::metrics::{AuthFailure, RateLimit};
use crate::protocol::{self, CloseCode};
use crate::state::AppState;

/// Phase 1: the first frame and the token check.
pub(super) async fn authenticate(
    socket: &mut WebSocket,
    state: &AppState,
) -> Result<(Identity, Token), End> {
    let metrics = &state.metrics;
    let mut closing = state.closing();
    let first = tokio::select! {
        first = tokio::time::timeout(state.config.auth.timeout, first_frame(socket)) => first,
        _ = closing.wait_for(|c| *c) => return Err(End::Close(CloseCode::Draining)),
    };
    let text = match first {
        Err(_elapsed) => {
            metrics.auth_failed(AuthFailure::Timeout);
            return Err(End::Close(CloseCode::AuthTimeout));
        }
        Ok(FirstFrame::Text(text)) => text,
        Ok(FirstFrame::Malformed) => {
            metrics.auth_failed(AuthFailure::Malformed);
            return Err(End::Close(CloseCode::AuthRequired));
        }
        Ok(FirstFrame::Gone(code)) => return Err(End::ClientGone(code)),
    };
    let token = match protocol::parse_auth_frame(&text) {
        Ok(token) => Token::new(token),
        Err(e) => {
            tracing::debug!(error = %e, "first frame refused");
            metrics.auth_failed(AuthFailure::Malformed);
            return Err(End::Close(CloseCode::AuthRequired));
        }
    };
    drop(text);
    // The store gets its own deadline so a hung database cannot hold a
    // socket open forever: answering "try again later" is the honest reply.
    let span = tracing::info_span!(
        "authenticate",
        auth.source = tracing::field::Empty,
        auth.result = tracing::field::Empty,
    );
    let (result, verdict) = match check_token(state, &token, &span).await {
        Checked::Valid(identity) => match state.policy.auto_join(&identity.user_id) {
            Ok(_) => ("ok", Ok((identity, token))),
            // The store's answer cannot be used safely as `{user_id}`: fail
            // closed (the client's token is fine, the id is the backend's).
            Err(e) => {
                span.in_scope(
                    || tracing::warn!(user_id = ?identity.user_id, error = %e, "user refused"),
                );
                metrics.auth_failed(AuthFailure::InvalidUserId);
                ("invalid_user_id", Err(End::Close(CloseCode::AuthFailed)))
            }
        },
        Checked::Invalid => {
            metrics.auth_failed(AuthFailure::InvalidToken);
            ("invalid_token", Err(End::Close(CloseCode::AuthFailed)))
        }
        Checked::Unavailable => {
            metrics.auth_failed(AuthFailure::BackendUnavailable);
            (
                "backend_unavailable",
                Err(End::Close(CloseCode::TryAgainLater)),
            )
        }
    };
    span.record("auth.result", result);
    verdict
}

/// What the caches and the store say of a token.
pub(super) enum Checked {
    Valid(Identity),
    /// Unknown, expired, revoked, or its user inactive.
    Invalid,
    /// No layer could answer within `auth.timeout`.
    Unavailable,
}

/// Checks a token as every authentication does: caches, then the store,
/// within `auth.timeout` (so a hung database cannot hold a socket open
/// forever), recording its source on `span` and its duration.
pub(super) async fn check_token(state: &AppState, token: &Token, span: &tracing::Span) -> Checked {
    let answer = tokio::time::timeout(state.config.auth.timeout, state.auth.authenticate(token))
        .instrument(span.clone())
        .await;
    let store = state.auth.store_name();
    match answer {
        Ok(Ok(answer)) => {
            span.record("auth.source", answer.source.as_str());
            state
                .metrics
                .auth_duration(answer.source, answer.elapsed.as_secs_f64());
            answer.identity.map_or(Checked::Invalid, Checked::Valid)
        }
        Ok(Err(e)) => {
            span.in_scope(|| tracing::warn!(error = %e, store, "token check failed"));
            Checked::Unavailable
        }
        Err(_elapsed) => {
            span.in_scope(|| tracing::warn!(store, "token check timed out"));
            Checked::Unavailable
        }
    }
}

pub(super) enum FirstFrame {
    Text(String),
    Malformed,
    Gone(u16),
}

pub(super) async fn first_frame(socket: &mut WebSocket) -> FirstFrame {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => return FirstFrame::Text(text),
            Some(Ok(Message::Binary(_))) => return FirstFrame::Malformed,
            // Control frames are answered by the socket; keep waiting.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => return FirstFrame::Gone(client_code(frame)),
            // A first frame too big, not UTF-8 or not a valid frame at
            // all is a malformed first frame (4001).
            Some(Err(e)) if violation(&e).is_some() => {
                return FirstFrame::Malformed;
            }
            Some(Err(_)) | None => return FirstFrame::Gone(1006),
        }
    }
}

/// An in-band token refresh: checks `token` as the first frame's token is
/// checked (caches, `auth.timeout`, the per-IP failure limiter, the same
/// metrics) and, when it is valid and of the same user, makes it the
/// connection's token and answers its expiry. Any refusal ends the connection: 4003 for a token that
/// is not valid or belongs to someone else, 4029 for an address over its
/// failure limit, 1013 when no layer can answer.
pub(super) async fn refresh(
    state: &AppState,
    conn: &ConnHandle,
    ip: IpAddr,
    token: Token,
) -> Result<Option<u64>, End> {
    let metrics = &state.metrics;
    if state.auth_failures.is_blocked(ip) {
        metrics.rate_limited(RateLimit::Auth);
        return Err(End::Close(CloseCode::RateLimited));
    }
    let span = tracing::info_span!(
        "refresh",
        auth.source = tracing::field::Empty,
        auth.result = tracing::field::Empty,
    );
    let (result, verdict) = match check_token(state, &token, &span).await {
        Checked::Valid(identity) if identity.user_id == conn.user_id => {
            ("ok", Ok(identity.expires_at))
        }
        // Unknown, expired, revoked, inactive, or another user's.
        Checked::Valid(_) | Checked::Invalid => ("invalid_token", Err(AuthFailure::InvalidToken)),
        Checked::Unavailable => ("backend_unavailable", Err(AuthFailure::BackendUnavailable)),
    };
    span.record("auth.result", result);
    match verdict {
        Ok(expires_at) => {
            conn.credential.replace(token);
            metrics.auth_success.inc();
            tracing::debug!("token refreshed");
            Ok(expires_at)
        }
        Err(reason) => {
            metrics.auth_failed(reason);
            if reason == AuthFailure::BackendUnavailable {
                return Err(End::Close(CloseCode::TryAgainLater));
            }
            if state.auth_failures.record_failure(ip) {
                tracing::info!(%ip, "authentication failures over the limit; address blocked for a while");
            }
            Err(End::Close(CloseCode::AuthFailed))
        }
    }
}
