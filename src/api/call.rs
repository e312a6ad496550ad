//! What every API call goes through around its handler's own work: a
//! request id and a span, the key check, the body read within
//! `api.body_timeout`, and on the way out the id echoed, the refusal
//! counted.
//!
//! An extractor ([`Call`]) and one function ([`Call::answer`]) rather than
//! middleware layers: axum clones each layer's boxed inner service and boxes
//! a future for it on every request, and the four layers this replaced
//! (three `from_fn` and a body limit) were a third of a publish request's
//! instructions (docs/performance.md, "Round twelve").

use std::fmt;

use axum::extract::{FromRequest, Request};
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tracing::Instrument;

use super::{ApiError, ApiState, MAX_BODY_BYTES, bad};
use crate::protocol::ApiErrorCode;

/// Every response carries it, so backend logs and ours can be joined.
/// A `HeaderName` made once: from a `&str` it would be parsed and copied
/// into a new allocation on every answer.
static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The caller's `X-Request-Id` when it is a short plain token, else a new
/// one: anything else from a caller would be written into our logs.
enum RequestId {
    Given(HeaderValue),
    /// 16 hex digits, kept on the stack: its header value is made once,
    /// at the answer.
    Made([u8; 16]),
}

impl RequestId {
    fn of(headers: &HeaderMap) -> RequestId {
        let given = headers.get(&REQUEST_ID).filter(|v| {
            let v = v.as_bytes();
            !v.is_empty()
                && v.len() <= 64
                && v.iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        match given {
            Some(id) => RequestId::Given(id.clone()),
            None => {
                let mut id = [0u8; 16];
                hex::encode_to_slice(rand::random::<[u8; 8]>(), &mut id)
                    .expect("8 bytes are 16 hex digits");
                RequestId::Made(id)
            }
        }
    }

    fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Given(v) => v.as_bytes(),
            RequestId::Made(id) => id,
        }
    }

    fn header_value(&self) -> HeaderValue {
        match self {
            RequestId::Given(v) => v.clone(),
            RequestId::Made(id) => {
                HeaderValue::from_bytes(id).expect("hex is a valid header value")
            }
        }
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Checked or made as plain ASCII above.
        f.write_str(std::str::from_utf8(self.as_bytes()).unwrap_or("?"))
    }
}

/// One API call under way: its id and span, and, once taken as an
/// extractor, the key checked and the whole body read.
pub(super) struct Call {
    id: RequestId,
    span: tracing::Span,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Call {
    /// A call whose key is not checked and whose body is not read: the
    /// unknown paths' answer, which is the same with or without a key.
    pub fn unchecked(request: Request) -> Call {
        Call::begin(request.into_parts().0)
    }

    /// The id and the span; the body is read by `from_request`.
    fn begin(parts: Parts) -> Call {
        let id = RequestId::of(&parts.headers);
        let span = tracing::info_span!(
            "api_request",
            request_id = %id,
            method = %parts.method,
            path = %parts.uri.path(),
        );
        Call {
            id,
            span,
            headers: parts.headers,
            body: Bytes::new(),
        }
    }

    /// Runs `work` in the call's span and answers with its outcome.
    pub async fn answer<R: IntoResponse>(
        &self,
        state: &ApiState,
        work: impl Future<Output = R>,
    ) -> Response {
        let response = work.instrument(self.span.clone()).await.into_response();
        self.finish(state, response)
    }

    fn finish(&self, state: &ApiState, mut response: Response) -> Response {
        let status = response.status().as_u16();
        self.span.in_scope(|| tracing::debug!(status, "api call"));
        if let Some(code) = ApiErrorCode::from_status(status) {
            state.metrics.api_error(code);
        }
        response
            .headers_mut()
            .insert(&REQUEST_ID, self.id.header_value());
        response
    }
}

impl FromRequest<ApiState> for Call {
    /// A refusal, answered already (id, count) as `answer` would.
    type Rejection = Response;

    async fn from_request(request: Request, state: &ApiState) -> Result<Call, Response> {
        let (parts, body) = request.into_parts();
        let mut call = Call::begin(parts);
        if !authorized(state, &call.headers) {
            return Err(call.finish(state, ApiError::Unauthorized.into_response()));
        }
        // Read once the key is checked, and within `api.body_timeout`: a
        // caller that declares 100 bytes and sends 9 does not hold a
        // connection and a task open for as long as it likes (hyper bounds
        // only the headers).
        let read = axum::body::to_bytes(body, MAX_BODY_BYTES);
        let refusal = match tokio::time::timeout(state.body_timeout, read).await {
            Ok(Ok(bytes)) => {
                call.body = bytes;
                return Ok(call);
            }
            Ok(Err(e)) if is_length_limit(&e) => ApiError::TooLarge.into_response(),
            Ok(Err(_)) => bad("could not read the request body").into_response(),
            Err(_elapsed) => {
                let mut response = ApiError::BodyTimeout.into_response();
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                response
            }
        };
        Err(call.finish(state, refusal))
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
