//! The wire protocol: client requests, server frames, close codes, group
//! names and the broker envelope.
//!
//! Pure data and parsing, no I/O, so that every rule of `docs/protocol.md`
//! can be unit-tested (and fuzzed) without a socket. The session turns what
//! this module returns into socket writes and closes. One file per
//! direction: [`client`] (what a client sends), [`frames`] (what the server
//! sends), [`envelope`] (what travels between nodes); this file holds what
//! all of them share: limits, close codes, error codes.

mod client;
mod envelope;
mod frames;

pub use client::*;
pub use envelope::*;
pub use frames::*;

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

/// The backend API's `error` codes, each with its HTTP status. Also the
/// `error` label of `wsgate_api_errors_total`, which counts `Other` for a
/// refusal with any other status (one axum produced, say), so a caller
/// cannot grow the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiErrorCode {
    BadRequest,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    Other,
}

impl ApiErrorCode {
    pub const ALL: [ApiErrorCode; 8] = [
        ApiErrorCode::BadRequest,
        ApiErrorCode::Unauthorized,
        ApiErrorCode::NotFound,
        ApiErrorCode::MethodNotAllowed,
        ApiErrorCode::PayloadTooLarge,
        ApiErrorCode::RequestTimeout,
        ApiErrorCode::Unavailable,
        ApiErrorCode::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiErrorCode::BadRequest => "bad_request",
            ApiErrorCode::Unauthorized => "unauthorized",
            ApiErrorCode::NotFound => "not_found",
            ApiErrorCode::MethodNotAllowed => "method_not_allowed",
            ApiErrorCode::PayloadTooLarge => "payload_too_large",
            ApiErrorCode::RequestTimeout => "request_timeout",
            ApiErrorCode::Unavailable => "unavailable",
            ApiErrorCode::Other => "other",
        }
    }

    /// The HTTP status wsgate answers with (`None` for `Other`).
    pub fn status(self) -> Option<u16> {
        Some(match self {
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::MethodNotAllowed => 405,
            ApiErrorCode::PayloadTooLarge => 413,
            ApiErrorCode::RequestTimeout => 408,
            ApiErrorCode::Unavailable => 503,
            ApiErrorCode::Other => return None,
        })
    }

    /// The code for a refused call's status; `None` below 400.
    pub fn from_status(status: u16) -> Option<ApiErrorCode> {
        if status < 400 {
            return None;
        }
        Some(
            Self::ALL
                .into_iter()
                .find(|c| c.status() == Some(status))
                .unwrap_or(ApiErrorCode::Other),
        )
    }
}
