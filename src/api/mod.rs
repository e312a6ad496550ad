//! The backend API (section 5): publish, disconnect, revoke, unsubscribe,
//! presence, the occupied groups (`groups`) and the cluster listing, behind
//! `Authorization: Bearer <api key>`.
//!
//! Bodies are read as bytes and parsed here rather than with the `Json`
//! extractor, so any content type works (`curl -d` sends a form type) and
//! every refusal gets the same JSON error shape.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
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

mod groups;
mod idempotent;

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
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(middleware::from_fn_with_state(state.clone(), read_body))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), request_span))
        .with_state(state)
}

/// Every API call runs in a span with a request id (the caller's
/// `X-Request-Id` when it is a short plain token, else a new one), echoed in
/// the response so backend logs and ours can be joined.
async fn request_span(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_string);
    let request_id = given.unwrap_or_else(|| hex::encode(rand::random::<[u8; 8]>()));
    let span = tracing::info_span!(
        "api_request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = next.run(request).instrument(span.clone()).await;
    span.in_scope(|| tracing::debug!(status = response.status().as_u16(), "api call"));
    if let Some(code) = ApiErrorCode::from_status(response.status().as_u16()) {
        state.metrics.api_error(code);
    }
    if let Ok(value) = header::HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn require_key(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if authorized(&state, request.headers()) {
        next.run(request).await
    } else {
        ApiError::Unauthorized.into_response()
    }
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    state.keys.accepts(given.trim())
}

/// Reads the whole body, once the key is checked, within `api.body_timeout`:
/// a caller that declares 100 bytes and sends 9 does not hold a connection
/// and a task open for as long as it likes (hyper bounds only the headers).
async fn read_body(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
    match tokio::time::timeout(state.body_timeout, read).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                .await
        }
        Ok(Err(e)) if is_length_limit(&e) => ApiError::TooLarge.into_response(),
        Ok(Err(_)) => bad("could not read the request body").into_response(),
        Err(_elapsed) => {
            let mut response = ApiError::BodyTimeout.into_response();
            response.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            response
        }
    }
}

fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Reads a JSON body, mapping size and syntax errors to 413 and 400.
fn parse_body<T: for<'de> Deserialize<'de>>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge
        } else {
            bad(e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("invalid JSON body: {e}")))
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

async fn publish(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let span = tracing::info_span!("publish", messages = tracing::field::Empty);
    crate::telemetry::set_parent_from_headers(&span, &headers);
    publish_in_span(state, body, span.clone())
        .instrument(span)
        .await
}

async fn publish_in_span(
    state: ApiState,
    body: Result<Bytes, BytesRejection>,
    span: tracing::Span,
) -> Result<Json<serde_json::Value>, ApiError> {
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
        Some(key) => match idempotent::claim(&state, key).await? {
            Some(claim) => Some(claim),
            None => return Ok(Json(json!({"ok": true, "duplicate": true}))),
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
            Ok(_) => claim.done(&state).await,
            Err(_) => claim.failed(&state).await,
        }
    }
    let positions = published.map_err(|e| ApiError::Unavailable(e.to_string()))?;
    state.metrics.messages_published.inc_by(n);
    if !state.history.is_on() {
        return Ok(Json(json!({"ok": true})));
    }
    // One offset per message, in request order (null: no history there).
    let offsets: Vec<Option<u64>> = positions
        .iter()
        .map(|p| p.as_ref().map(|p| p.offset))
        .collect();
    Ok(Json(json!({"ok": true, "offsets": offsets})))
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

async fn disconnect(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({"ok": true})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    token: String,
}

async fn revoke(
    State(state): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({"ok": true})))
}

async fn presence(
    State(state): State<ApiState>,
    Path(group): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
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

async fn cluster(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    let nodes = state
        .broker
        .nodes()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({"nodes": nodes})))
}
