//! The backend API (section 5): publish, disconnect, revoke, unsubscribe,
//! presence, the occupied groups (`groups`) and the cluster listing, behind
//! `Authorization: Bearer <api key>`.
//!
//! Bodies are read as bytes and parsed here rather than with the `Json`
//! extractor, so any content type works (`curl -d` sends a form type) and
//! every refusal gets the same JSON error shape.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::Instrument;

use std::sync::Arc;

mod call;
mod groups;
mod idempotent;

use call::Call;

use crate::auth::Authenticator;
use crate::auth::Token;
use crate::broker::idempotency::Idempotency;
use crate::broker::{Broker, HistoryPolicy};
use crate::clock::unix_micros;
use crate::metrics::Metrics;
use crate::protocol::{ApiErrorCode, Control, Publication, is_valid_group};
use crate::revocation::{RevokeError, revoke_everywhere};

mod unsubscribe;

/// Largest request body.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Refusals, each with its status and a stable `error` code.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("request body over 1 MiB")]
    TooLarge,
    #[error("request body not received within api.body_timeout")]
    BodyTimeout,
    #[error("{0}")]
    Unavailable(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
}

impl ApiError {
    pub fn code(&self) -> ApiErrorCode {
        match self {
            ApiError::Unauthorized => ApiErrorCode::Unauthorized,
            ApiError::BadRequest(_) => ApiErrorCode::BadRequest,
            ApiError::TooLarge => ApiErrorCode::PayloadTooLarge,
            ApiError::BodyTimeout => ApiErrorCode::RequestTimeout,
            ApiError::Unavailable(_) => ApiErrorCode::Unavailable,
            ApiError::NotFound => ApiErrorCode::NotFound,
            ApiError::MethodNotAllowed => ApiErrorCode::MethodNotAllowed,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.code();
        let status = code
            .status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = Json(json!({"error": code.as_str(), "message": self.to_string()}));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::BadRequest(message.into())
}

/// What the API handlers use, and nothing of the WebSocket side.
#[derive(Clone)]
pub struct ApiState(Arc<ApiShared>);

pub struct ApiShared {
    pub keys: ApiKeys,
    pub broker: Arc<dyn Broker>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Whether any group keeps history (then publish answers offsets).
    pub history: HistoryPolicy,
    /// `api.body_timeout`.
    pub body_timeout: std::time::Duration,
    /// Where publish's `idempotency_key`s are remembered.
    pub idempotency: Arc<dyn Idempotency>,
    /// `api.idempotency_window`.
    pub idempotency_window: std::time::Duration,
}

impl ApiState {
    pub fn new(shared: ApiShared) -> ApiState {
        ApiState(Arc::new(shared))
    }
}

impl std::ops::Deref for ApiState {
    type Target = ApiShared;
    fn deref(&self) -> &ApiShared {
        &self.0
    }
}

/// The API keys, kept as SHA-256 digests: keys are compared as digests so
/// the comparison takes the same time whatever the key's length or content.
pub struct ApiKeys(Vec<[u8; 32]>);

impl ApiKeys {
    pub fn new(keys: &[String]) -> ApiKeys {
        ApiKeys(keys.iter().map(|k| digest(k.as_bytes())).collect())
    }

    /// Whether `given` is one of the keys. Checks every key, without
    /// stopping at a match.
    pub fn accepts(&self, given: &str) -> bool {
        let given = digest(given.as_bytes());
        let mut ok = subtle::Choice::from(0);
        for key in &self.0 {
            ok |= key.ct_eq(&given);
        }
        ok.into()
    }
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/publish", post(publish))
        .route("/api/v1/disconnect", post(disconnect))
        .route("/api/v1/revoke", post(revoke))
        .route("/api/v1/groups", get(groups::list))
        .route("/api/v1/unsubscribe", post(unsubscribe::unsubscribe))
        .route("/api/v1/groups/{group}/presence", get(presence))
        .route("/api/v1/cluster", get(cluster))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An unknown path: the same answer with or without a key.
async fn not_found(State(state): State<ApiState>, request: Request) -> Response {
    let call = Call::unchecked(request);
    call.answer(&state, async { ApiError::NotFound }).await
}

/// A known path with another method: after the key check, as every route.
async fn method_not_allowed(State(state): State<ApiState>, call: Call) -> Response {
    call.answer(&state, async { ApiError::MethodNotAllowed })
        .await
}

/// `{"ok":true}`, the answer of most calls, from static bytes (a header
/// value from a `&str` would be copied into a new allocation each time).
fn ok() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Bytes::from_static(br#"{"ok":true}"#),
    )
        .into_response()
}

/// Parses a JSON body (read whole by [`Call`]).
fn parse_body<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    group: Option<String>,
    // `"data": null` is data like any other JSON, not a missing field.
    #[serde(default, deserialize_with = "crate::protocol::present")]
    data: Option<Box<RawValue>>,
    messages: Option<Vec<PublishItem>>,
    /// A retry with the same key within `api.idempotency_window` delivers
    /// nothing (see `idempotent`).
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishItem {
    group: String,
    data: Box<RawValue>,
}

fn check_group(group: &str) -> Result<(), ApiError> {
    if is_valid_group(group) {
        Ok(())
    } else {
        Err(bad(format!(
            "invalid group name {group:?}: 1 to 128 characters of A-Z a-z 0-9 . _ : @ -"
        )))
    }
}

async fn publish(State(state): State<ApiState>, call: Call) -> Response {
    let span = tracing::info_span!("publish", messages = tracing::field::Empty);
    crate::telemetry::set_parent_from_headers(&span, &call.headers);
    let work = publish_in_span(&state, &call.body, span.clone()).instrument(span);
    call.answer(&state, work).await
}

async fn publish_in_span(
    state: &ApiState,
    body: &[u8],
    span: tracing::Span,
) -> Result<Response, ApiError> {
    let body: PublishBody = parse_body(body)?;
    let idempotency_key = body.idempotency_key;
    let items = match (body.group, body.data, body.messages) {
        (Some(group), Some(data), None) => vec![PublishItem { group, data }],
        (None, None, Some(messages)) if !messages.is_empty() => messages,
        _ => {
            return Err(bad(
                "expected {\"group\":..,\"data\":..} or a non-empty {\"messages\":[..]}",
            ));
        }
    };
    for item in &items {
        check_group(&item.group)?;
    }
    let claim = match &idempotency_key {
        Some(key) => match idempotent::claim(state, key).await? {
            Some(claim) => Some(claim),
            None => return Ok(Json(json!({"ok": true, "duplicate": true})).into_response()),
        },
        None => None,
    };
    let ts = unix_micros();
    let trace = crate::telemetry::current_traceparent();
    let n = items.len() as u64;
    span.record("messages", n);
    let publications = items
        .into_iter()
        .map(|item| Publication {
            group: item.group,
            data: item.data,
            position: None,
            ts: Some(ts),
            trace: trace.clone(),
            seq: None,
        })
        .collect();
    let published = state.broker.publish(publications).await;
    if let Some(claim) = claim {
        match &published {
            Ok(_) => claim.done(state).await,
            Err(_) => claim.failed(state).await,
        }
    }
    let positions = published.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    state.metrics.messages_published.inc_by(n);
    if !state.history.is_on() {
        return Ok(ok());
    }
    // One offset per message, in request order (null: no history there).
    let offsets: Vec<Option<u64>> = positions
        .iter()
        .map(|p| p.as_ref().map(|p| p.offset))
        .collect();
    Ok(Json(json!({"ok": true, "offsets": offsets})).into_response())
}

/// A user id may be sent as a string or a number; it is a string on the wire.
#[derive(Deserialize)]
#[serde(untagged)]
enum UserId {
    Text(String),
    Number(i64),
}

impl UserId {
    /// The id as text; `None` when it is an empty string.
    fn into_string(self) -> Option<String> {
        match self {
            UserId::Text(s) if !s.is_empty() => Some(s),
            UserId::Number(n) => Some(n.to_string()),
            UserId::Text(_) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    user_id: UserId,
}

async fn disconnect(State(state): State<ApiState>, call: Call) -> Response {
    call.answer(&state, disconnect_user(&state, &call.body))
        .await
}

async fn disconnect_user(state: &ApiState, body: &[u8]) -> Result<Response, ApiError> {
    let body: DisconnectBody = parse_body(body)?;
    let user_id = body
        .user_id
        .into_string()
        .ok_or_else(|| bad("user_id must not be empty"))?;
    state
        .broker
        .control(Control::DisconnectUser { user_id })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: String,
}

async fn revoke(State(state): State<ApiState>, call: Call) -> Response {
    call.answer(&state, revoke_token(&state, &call.body)).await
}

async fn revoke_token(state: &ApiState, body: &[u8]) -> Result<Response, ApiError> {
    let body: RevokeBody = parse_body(body)?;
    if body.token.is_empty() {
        return Err(bad("token must not be empty"));
    }
    let digest = Token::new(body.token).digest();
    revoke_everywhere(&state.auth, state.broker.as_ref(), &digest)
        .await
        .map_err(|e| match e {
            RevokeError::Store(e) => {
                tracing::warn!(error = %e, "revoke failed");
                ApiError::Unavailable("token store unavailable".into())
            }
            RevokeError::Broker(e) => ApiError::Unavailable(e),
        })?;
    Ok(ok())
}

async fn presence(
    State(state): State<ApiState>,
    group: Result<Path<String>, PathRejection>,
    call: Call,
) -> Response {
    call.answer(&state, members(&state, group)).await
}

async fn members(
    state: &ApiState,
    group: Result<Path<String>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Path(group) = group.map_err(|e| bad(e.body_text()))?;
    check_group(&group)?;
    let members = state
        .broker
        .presence(&group)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(
        json!({"group": group, "count": members.len(), "members": members}),
    ))
}

async fn cluster(State(state): State<ApiState>, call: Call) -> Response {
    call.answer(&state, nodes(&state)).await
}

async fn nodes(state: &ApiState) -> Result<Json<serde_json::Value>, ApiError> {
    let nodes = state
        .broker
        .nodes()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({"nodes": nodes})))
}
