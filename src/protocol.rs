//! The wire protocol: client requests, server frames, close codes, group
//! names and the broker envelope.
//!
//! Pure data and parsing, no I/O, so that every rule of `docs/protocol.md`
//! can be unit-tested (and fuzzed) without a socket. The session turns what
//! this module returns into socket writes and closes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Token;

/// Largest first (authentication) frame, in bytes.
pub const MAX_AUTH_FRAME_BYTES: usize = 4 * 1024;
/// Longest group name, in characters.
pub const MAX_GROUP_LEN: usize = 128;

/// Close codes of the protocol (section 4), with the reason text we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    Normal = 1000,
    ProtocolError = 1002,
    Unsupported = 1003,
    InvalidData = 1007,
    PolicyViolation = 1008,
    TooBig = 1009,
    InternalError = 1011,
    Draining = 1012,
    TryAgainLater = 1013,
    AuthRequired = 4001,
    AuthFailed = 4003,
    AuthTimeout = 4008,
    SlowConsumer = 4009,
    RateLimited = 4029,
}

impl CloseCode {
    /// Every code, so metrics can be exposed at zero from start-up.
    pub const ALL: [CloseCode; 14] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::Unsupported,
        CloseCode::InvalidData,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::InternalError,
        CloseCode::Draining,
        CloseCode::TryAgainLater,
        CloseCode::AuthRequired,
        CloseCode::AuthFailed,
        CloseCode::AuthTimeout,
        CloseCode::SlowConsumer,
        CloseCode::RateLimited,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    pub fn from_u16(code: u16) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// The reason text sent in the close frame. Authentication failures share
    /// one text whatever the cause, so a client cannot probe which tokens exist.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol error",
            CloseCode::Unsupported => "binary frames are not supported",
            CloseCode::InvalidData => "invalid UTF-8",
            CloseCode::PolicyViolation => "policy violation",
            CloseCode::TooBig => "message too big",
            CloseCode::InternalError => "internal error",
            CloseCode::Draining => "node draining",
            CloseCode::TryAgainLater => "try again later",
            CloseCode::AuthRequired => "auth required",
            CloseCode::AuthFailed => "authentication failed",
            CloseCode::AuthTimeout => "auth timeout",
            CloseCode::SlowConsumer => "slow consumer",
            CloseCode::RateLimited => "rate limited",
        }
    }
}

// ---------------------------------------------------------------------------
// The first frame.

/// Why a first frame was refused (always close 4001).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFrameError {
    #[error("first frame over {MAX_AUTH_FRAME_BYTES} bytes")]
    TooLarge,
    #[error("first frame is not a JSON object")]
    NotAnObject,
    #[error("first frame has no string token")]
    NoToken,
    #[error("first frame has a type other than auth")]
    WrongType,
}

/// Parses the first frame: `{"type":"auth","token":..}` or `{"token":..}`.
/// Returns the token; the caller wraps it so it can never be logged.
pub fn parse_auth_frame(text: &str) -> Result<String, AuthFrameError> {
    if text.len() > MAX_AUTH_FRAME_BYTES {
        return Err(AuthFrameError::TooLarge);
    }
    #[derive(Deserialize)]
    struct AuthFrame<'a> {
        #[serde(rename = "type", borrow, default)]
        kind: Option<&'a RawValue>,
        #[serde(borrow, default)]
        token: Option<&'a RawValue>,
    }
    let frame: AuthFrame = match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) if raw.get().starts_with('{') => {
            serde_json::from_str(raw.get()).map_err(|_| AuthFrameError::NotAnObject)?
        }
        _ => return Err(AuthFrameError::NotAnObject),
    };
    if let Some(kind) = frame.kind
        && serde_json::from_str::<String>(kind.get()).ok().as_deref() != Some("auth")
    {
        return Err(AuthFrameError::WrongType);
    }
    let raw = frame.token.ok_or(AuthFrameError::NoToken)?;
    match serde_json::from_str::<String>(raw.get()) {
        Ok(token) if !token.is_empty() => Ok(token),
        _ => Err(AuthFrameError::NoToken),
    }
}

// ---------------------------------------------------------------------------
// Requests after authentication.

/// A request id, echoed in the reply: a JSON number or string, kept as written.
pub type RequestId = Box<RawValue>;

/// A request after `welcome`. `Refresh` is the in-band token refresh: the
/// connection continues on its token.
#[derive(Debug)]
pub enum Request {
    /// `since`: where a reconnecting client left off in the group's history.
    Subscribe {
        group: String,
        since: Option<Position>,
    },
    Unsubscribe {
        group: String,
    },
    Publish {
        group: String,
        data: Box<RawValue>,
    },
    Ping,
    Refresh {
        token: Token,
    },
}

/// A refused request: the error frame's `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    UnknownType,
    Forbidden,
    TooManyGroups,
    RateLimited,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl RequestError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// A parsed client frame: its id (when valid) and the request or why it was refused.
#[derive(Debug)]
pub struct ClientFrame {
    pub id: Option<RequestId>,
    pub request: Result<Request, RequestError>,
}

/// Parses one text frame sent after `welcome`.
pub fn parse_request(text: &str) -> ClientFrame {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type", default)]
        kind: Option<Box<RawValue>>,
        #[serde(default)]
        id: Option<Box<RawValue>>,
        #[serde(default)]
        group: Option<Box<RawValue>>,
        // `"data":null` is data like any other JSON, not a missing field.
        #[serde(default, deserialize_with = "present")]
        data: Option<Box<RawValue>>,
        #[serde(default)]
        since: Option<Box<RawValue>>,
        #[serde(default)]
        token: Option<Box<RawValue>>,
    }
    let raw: Raw = match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(v) if v.get().starts_with('{') => match serde_json::from_str(v.get()) {
            Ok(raw) => raw,
            Err(_) => return refused(None, RequestError::bad("invalid JSON object")),
        },
        Ok(_) => return refused(None, RequestError::bad("a request must be a JSON object")),
        Err(_) => return refused(None, RequestError::bad("invalid JSON")),
    };
    // The id is echoed only when it is a number or a string.
    let id = match raw.id {
        None => None,
        Some(id) if is_number_or_string(id.get()) => Some(id),
        Some(_) => return refused(None, RequestError::bad("id must be a number or a string")),
    };
    let kind = match raw
        .kind
        .as_deref()
        .map(|k| serde_json::from_str::<String>(k.get()))
    {
        Some(Ok(kind)) => kind,
        Some(Err(_)) => return refused(id, RequestError::bad("type must be a string")),
        None => return refused(id, RequestError::bad("missing type")),
    };
    let group = || -> Result<String, RequestError> {
        let raw = raw
            .group
            .as_deref()
            .ok_or_else(|| RequestError::bad("missing group"))?;
        let group: String = serde_json::from_str(raw.get())
            .map_err(|_| RequestError::bad("group must be a string"))?;
        validate_group(&group)?;
        Ok(group)
    };
    let request = match kind.as_str() {
        "subscribe" => group().and_then(|group| {
            let since = match raw.since.as_deref() {
                None => None,
                Some(s) if s.get() == "null" => None,
                Some(s) => Some(serde_json::from_str::<Position>(s.get()).map_err(|_| {
                    RequestError::bad("since must be {\"offset\":<integer>,\"epoch\":<string>}")
                })?),
            };
            Ok(Request::Subscribe { group, since })
        }),
        "unsubscribe" => group().map(|group| Request::Unsubscribe { group }),
        "publish" => group().and_then(|group| match raw.data {
            Some(data) => Ok(Request::Publish { group, data }),
            None => Err(RequestError::bad("missing data")),
        }),
        "ping" => Ok(Request::Ping),
        // The same bounds as the first frame: at most 4 KiB, a non-empty
        // string token.
        "refresh" if text.len() > MAX_AUTH_FRAME_BYTES => {
            Err(RequestError::bad("a refresh frame may be at most 4 KiB"))
        }
        "refresh" => match raw
            .token
            .as_deref()
            .and_then(|t| serde_json::from_str::<String>(t.get()).ok())
        {
            Some(token) if !token.is_empty() => Ok(Request::Refresh {
                token: Token::new(token),
            }),
            _ => Err(RequestError::bad("refresh needs a non-empty string token")),
        },
        "auth" => Err(RequestError::bad("already authenticated")),
        _ => Err(RequestError::new(
            ErrorCode::UnknownType,
            "unknown request type",
        )),
    };
    ClientFrame { id, request }
}

/// A field that is there, even when it is `null`.
pub(crate) fn present<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn refused(id: Option<RequestId>, error: RequestError) -> ClientFrame {
    ClientFrame {
        id,
        request: Err(error),
    }
}

fn is_number_or_string(raw: &str) -> bool {
    raw.starts_with('"') || raw.starts_with('-') || raw.starts_with(|c: char| c.is_ascii_digit())
}

/// Group names: 1 to 128 characters of `A-Z a-z 0-9 . _ : @ -`.
pub fn validate_group(group: &str) -> Result<(), RequestError> {
    if is_valid_group(group) {
        Ok(())
    } else {
        Err(RequestError::bad(
            "group names are 1 to 128 characters of A-Z a-z 0-9 . _ : @ -",
        ))
    }
}

pub fn is_valid_group(group: &str) -> bool {
    !group.is_empty()
        && group.len() <= MAX_GROUP_LEN
        && group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-'))
}

// ---------------------------------------------------------------------------
// Server frames.

/// An encoded text frame: UTF-8 JSON, cheap to clone, shared by every
/// recipient of a broadcast so the JSON is built once per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame(Bytes);

impl Frame {
    pub fn from_string(s: String) -> Frame {
        Frame(Bytes::from(s))
    }
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
    pub fn as_str(&self) -> &str {
        // Built only from `String`, so always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `{"type":"message","group":..,"data":..}`, with `offset`/`epoch` when the
/// group has history.
pub fn message_frame(group: &str, data: &RawValue, position: Option<&Position>) -> Frame {
    let mut s = String::with_capacity(48 + group.len() + data.get().len());
    s.push_str(r#"{"type":"message","group":"#);
    s.push_str(&json_str(group));
    s.push_str(r#","data":"#);
    s.push_str(data.get());
    if let Some(p) = position {
        s.push_str(r#","offset":"#);
        s.push_str(&p.offset.to_string());
        s.push_str(r#","epoch":"#);
        s.push_str(&json_str(&p.epoch));
    }
    s.push('}');
    Frame::from_string(s)
}

/// A message's place in a group's history (also a client's `since`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    pub offset: u64,
    pub epoch: String,
}

/// Replies and other frames addressed to one connection.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Welcome {
        user_id: &'a str,
        session: &'a str,
        node: &'a str,
        groups: &'a [String],
    },
    Subscribed {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Unsubscribed {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Published {
        group: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    /// A `refresh` was accepted: the connection now runs on the new token.
    Refreshed {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
}

impl Reply<'_> {
    pub fn encode(&self) -> Frame {
        // Serializing these plain structs cannot fail.
        Frame::from_string(serde_json::to_string(self).unwrap_or_default())
    }

    pub fn error(error: &RequestError, id: Option<&RawValue>) -> Frame {
        Reply::Error {
            code: error.code.as_str(),
            message: &error.message,
            id,
        }
        .encode()
    }
}

// ---------------------------------------------------------------------------
// The broker envelope and control messages.

/// One message to a group, as it travels between nodes:
/// `{"v":1,"group":"g","data":<JSON>}` (section 5). `ts` (unix microseconds
/// at publish) is optional and feeds the delivery-latency histogram.
#[derive(Debug, Clone)]
pub struct Publication {
    pub group: String,
    pub data: Box<RawValue>,
    pub position: Option<Position>,
    pub ts: Option<u64>,
    /// W3C `traceparent` of the publish, so delivery spans on every node
    /// join the publisher's trace (`tp` in the envelope).
    pub trace: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("envelope is not valid JSON of the expected shape")]
    Malformed,
    #[error("unsupported envelope version")]
    Version,
    #[error("envelope group does not match its channel or is invalid")]
    Group,
}

pub fn encode_envelope(p: &Publication) -> String {
    #[derive(Serialize)]
    struct Envelope<'a> {
        v: u8,
        group: &'a str,
        data: &'a RawValue,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ts: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        tp: Option<&'a str>,
    }
    serde_json::to_string(&Envelope {
        v: 1,
        group: &p.group,
        data: &p.data,
        offset: p.position.as_ref().map(|p| p.offset),
        epoch: p.position.as_ref().map(|p| p.epoch.as_str()),
        ts: p.ts,
        tp: p.trace.as_deref(),
    })
    .unwrap_or_default()
}

/// Decodes an envelope received on the channel of `channel_group`.
pub fn decode_envelope(channel_group: &str, payload: &[u8]) -> Result<Publication, EnvelopeError> {
    #[derive(Deserialize)]
    struct Envelope {
        v: u64,
        group: String,
        data: Box<RawValue>,
        #[serde(default)]
        offset: Option<u64>,
        #[serde(default)]
        epoch: Option<String>,
        #[serde(default)]
        ts: Option<u64>,
        #[serde(default)]
        tp: Option<String>,
    }
    let env: Envelope = serde_json::from_slice(payload).map_err(|_| EnvelopeError::Malformed)?;
    if env.v != 1 {
        return Err(EnvelopeError::Version);
    }
    if env.group != channel_group || !is_valid_group(&env.group) {
        return Err(EnvelopeError::Group);
    }
    let position = match (env.offset, env.epoch) {
        (Some(offset), Some(epoch)) => Some(Position { offset, epoch }),
        _ => None,
    };
    Ok(Publication {
        group: env.group,
        data: env.data,
        position,
        ts: env.ts,
        // Only a plausible traceparent is carried on (bounded, printable).
        trace: env
            .tp
            .filter(|t| t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic())),
    })
}

/// Cluster-wide commands that act on connections wherever they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of this user with 4003.
    DisconnectUser { user_id: String },
    /// Close every connection authenticated with the token of this SHA-256
    /// digest (hex) with 4003.
    RevokeDigest { digest: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_frame_forms() {
        assert_eq!(
            parse_auth_frame(r#"{"type":"auth","token":"abc"}"#).unwrap(),
            "abc"
        );
        assert_eq!(parse_auth_frame(r#"{"token":"abc"}"#).unwrap(), "abc");
        assert_eq!(
            parse_auth_frame(r#"{"type":"subscribe","token":"abc"}"#),
            Err(AuthFrameError::WrongType)
        );
        assert_eq!(parse_auth_frame(r#"[1]"#), Err(AuthFrameError::NotAnObject));
        assert_eq!(parse_auth_frame("nope"), Err(AuthFrameError::NotAnObject));
        assert_eq!(
            parse_auth_frame(r#"{"token":5}"#),
            Err(AuthFrameError::NoToken)
        );
        assert_eq!(
            parse_auth_frame(r#"{"token":""}"#),
            Err(AuthFrameError::NoToken)
        );
        assert_eq!(
            parse_auth_frame(r#"{"type":"auth"}"#),
            Err(AuthFrameError::NoToken)
        );
        let big = format!(r#"{{"token":"{}"}}"#, "a".repeat(MAX_AUTH_FRAME_BYTES));
        assert_eq!(parse_auth_frame(&big), Err(AuthFrameError::TooLarge));
    }

    #[test]
    fn requests() {
        let f = parse_request(r#"{"type":"subscribe","group":"market.AAPL","id":7}"#);
        assert_eq!(f.id.unwrap().get(), "7");
        assert!(
            matches!(f.request, Ok(Request::Subscribe { ref group, since: None }) if group == "market.AAPL")
        );

        let f =
            parse_request(r#"{"type":"subscribe","group":"g","since":{"offset":3,"epoch":"e"}}"#);
        assert!(matches!(
            f.request,
            Ok(Request::Subscribe {
                since: Some(Position { offset: 3, .. }),
                ..
            })
        ));
        let f = parse_request(r#"{"type":"subscribe","group":"g","since":{"offset":-3}}"#);
        assert_eq!(f.request.unwrap_err().code, ErrorCode::BadRequest);

        let f = parse_request(r#"{"type":"nope","id":"x"}"#);
        assert_eq!(f.id.unwrap().get(), "\"x\"");
        assert_eq!(f.request.unwrap_err().code, ErrorCode::UnknownType);

        for bad in [
            "not json",
            "[]",
            r#"{"type":5}"#,
            r#"{"group":"g"}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","group":"bad group"}"#,
            r#"{"type":"subscribe","group":""}"#,
            r#"{"type":"publish","group":"g"}"#,
            r#"{"type":"ping","id":{"a":1}}"#,
        ] {
            assert_eq!(
                parse_request(bad).request.unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
        assert!(matches!(
            parse_request(r#"{"type":"ping"}"#).request,
            Ok(Request::Ping)
        ));
        // `null` is data like any other JSON.
        let f = parse_request(r#"{"type":"publish","group":"g","data":null}"#);
        assert!(matches!(f.request, Ok(Request::Publish { ref data, .. }) if data.get() == "null"));
    }

    #[test]
    fn refresh_requests() {
        let f = parse_request(r#"{"type":"refresh","token":"wsg_new","id":4}"#);
        assert_eq!(f.id.as_ref().unwrap().get(), "4");
        match f.request {
            Ok(Request::Refresh { token }) => assert_eq!(token.expose(), "wsg_new"),
            other => panic!("expected a refresh, got {other:?}"),
        }
        // The token never shows in a debug print of the request.
        let f = parse_request(r#"{"type":"refresh","token":"super-secret"}"#);
        assert!(!format!("{f:?}").contains("super-secret"));
        let id = RawValue::from_string("4".into()).unwrap();
        assert_eq!(
            Reply::Refreshed { id: Some(&id) }.encode().as_str(),
            r#"{"type":"refreshed","id":4}"#
        );
        assert_eq!(
            Reply::Refreshed { id: None }.encode().as_str(),
            r#"{"type":"refreshed"}"#
        );
        let big = format!(
            r#"{{"type":"refresh","token":"{}","id":1}}"#,
            "a".repeat(MAX_AUTH_FRAME_BYTES)
        );
        let almost = format!(
            r#"{{"type":"refresh","token":"{}"}}"#,
            "a".repeat(MAX_AUTH_FRAME_BYTES - 30)
        );
        assert!(almost.len() <= MAX_AUTH_FRAME_BYTES);
        assert!(matches!(
            parse_request(&almost).request,
            Ok(Request::Refresh { .. })
        ));
        let f = parse_request(&big);
        assert_eq!(f.id.unwrap().get(), "1", "the id is still echoed");
        assert_eq!(f.request.unwrap_err().code, ErrorCode::BadRequest);
        for bad in [
            r#"{"type":"refresh"}"#,
            r#"{"type":"refresh","token":null}"#,
            r#"{"type":"refresh","token":""}"#,
            r#"{"type":"refresh","token":5}"#,
            r#"{"type":"refresh","token":["a"]}"#,
            r#"{"type":"refresh","token":{"t":"a"}}"#,
        ] {
            assert_eq!(
                parse_request(bad).request.unwrap_err().code,
                ErrorCode::BadRequest,
                "{bad}"
            );
        }
    }

    #[test]
    fn group_names() {
        assert!(is_valid_group("market.AAPL"));
        assert!(is_valid_group("a:b@c-d_e"));
        assert!(is_valid_group(&"x".repeat(128)));
        assert!(!is_valid_group(&"x".repeat(129)));
        assert!(!is_valid_group("a b"));
        assert!(!is_valid_group("a*"));
        assert!(!is_valid_group("é"));
    }

    #[test]
    fn frames_encode() {
        let data = RawValue::from_string(r#"{"p":1}"#.into()).unwrap();
        assert_eq!(
            message_frame("g", &data, None).as_str(),
            r#"{"type":"message","group":"g","data":{"p":1}}"#
        );
        let pos = Position {
            offset: 4,
            epoch: "e1".into(),
        };
        assert_eq!(
            message_frame("g", &data, Some(&pos)).as_str(),
            r#"{"type":"message","group":"g","data":{"p":1},"offset":4,"epoch":"e1"}"#
        );
        let id = RawValue::from_string("3".into()).unwrap();
        assert_eq!(
            Reply::Pong { id: Some(&id) }.encode().as_str(),
            r#"{"type":"pong","id":3}"#
        );
    }

    #[test]
    fn envelope_roundtrip() {
        let p = Publication {
            group: "g".into(),
            data: RawValue::from_string("[1,2]".into()).unwrap(),
            position: None,
            ts: None,
            trace: None,
        };
        let s = encode_envelope(&p);
        assert_eq!(s, r#"{"v":1,"group":"g","data":[1,2]}"#);
        assert_eq!(
            decode_envelope("g", s.as_bytes()).unwrap().data.get(),
            "[1,2]"
        );
        assert_eq!(
            decode_envelope("h", s.as_bytes()).unwrap_err(),
            EnvelopeError::Group
        );
        assert_eq!(
            decode_envelope("g", br#"{"v":2,"group":"g","data":1}"#).unwrap_err(),
            EnvelopeError::Version
        );
        assert_eq!(
            decode_envelope("g", b"{").unwrap_err(),
            EnvelopeError::Malformed
        );
        // The trace context travels with the message to other nodes.
        let traced = Publication {
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..p
        };
        let s = encode_envelope(&traced);
        assert_eq!(
            decode_envelope("g", s.as_bytes()).unwrap().trace,
            traced.trace
        );
    }
}
