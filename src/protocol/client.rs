//! What a client sends: the first (authentication) frame and the requests
//! after `welcome`, parsed into typed values or a typed refusal.

use serde_json::value::RawValue;

use serde::Deserialize;

use super::Position;

use super::{MAX_AUTH_FRAME_BYTES, MAX_GROUP_LEN};
use crate::token::Token;

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
    /// `token`: a subscription grant for the group (`groups.authorize`).
    Subscribe {
        group: String,
        since: Option<Position>,
        /// `"latest":true`: send the group's latest message first (snapshot
        /// and history groups).
        latest: bool,
        token: Option<Token>,
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
    /// The backend that authorizes the group did not answer: try again.
    Unavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 6] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::Forbidden,
        ErrorCode::TooManyGroups,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
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
        #[serde(default)]
        latest: Option<Box<RawValue>>,
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
            let latest = match raw.latest.as_deref().map(|l| l.get()) {
                None | Some("null") | Some("false") => false,
                Some("true") => true,
                Some(_) => return Err(RequestError::bad("latest must be a boolean")),
            };
            let token = match raw.token.as_deref() {
                None => None,
                Some(t) if t.get() == "null" => None,
                Some(t) => match serde_json::from_str::<String>(t.get()) {
                    Ok(t) if !t.is_empty() && t.len() <= MAX_AUTH_FRAME_BYTES => {
                        Some(Token::new(t))
                    }
                    _ => {
                        return Err(RequestError::bad(
                            "token must be a non-empty string of at most 4 KiB",
                        ));
                    }
                },
            };
            Ok(Request::Subscribe {
                group,
                since,
                latest,
                token,
            })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Reply;

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
            matches!(f.request, Ok(Request::Subscribe { ref group, since: None, latest: false, token: None }) if group == "market.AAPL")
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
        let f = parse_request(r#"{"type":"subscribe","group":"g","token":"t.t.t"}"#);
        assert!(
            matches!(f.request, Ok(Request::Subscribe { token: Some(ref t), .. }) if t.expose() == "t.t.t")
        );
        for bad in ["\"\"", "5", "{}"] {
            let f = parse_request(&format!(
                r#"{{"type":"subscribe","group":"g","token":{bad}}}"#
            ));
            assert_eq!(f.request.unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
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
}
