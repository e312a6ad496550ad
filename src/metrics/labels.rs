//! The label sets: every label a metric takes comes from one of these
//! enums through [`LabelSet`], so the values exposed (created at start-up)
//! and the ones a test checks against the README are the enum's, never a
//! second list kept by hand.

use crate::protocol::{ApiErrorCode, CloseCode, ErrorCode};

/// A label whose values are fixed: its enum lists them all.
pub trait LabelSet: Copy + 'static {
    fn all() -> Vec<Self>;
    fn label(self) -> &'static str;
    /// Every value, as label text.
    fn labels() -> Vec<&'static str> {
        Self::all().into_iter().map(Self::label).collect()
    }
}

macro_rules! label_set {
    ($t:ty, $all:expr, $f:ident) => {
        impl LabelSet for $t {
            fn all() -> Vec<Self> {
                $all.to_vec()
            }
            fn label(self) -> &'static str {
                self.$f()
            }
        }
    };
}

/// Which layer answered an authentication (the `source` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthSource {
    Local,
    Redis,
    Database,
}

impl AuthSource {
    pub const ALL: [AuthSource; 3] = [AuthSource::Local, AuthSource::Redis, AuthSource::Database];
    pub fn as_str(self) -> &'static str {
        match self {
            AuthSource::Local => "local",
            AuthSource::Redis => "redis",
            AuthSource::Database => "database",
        }
    }
}

/// Why a session's authentication failed (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    InvalidToken,
    Timeout,
    Malformed,
    BackendUnavailable,
    /// A valid token whose user id cannot stand for `{user_id}` (policy).
    InvalidUserId,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::InvalidToken,
        AuthFailure::Timeout,
        AuthFailure::Malformed,
        AuthFailure::BackendUnavailable,
        AuthFailure::InvalidUserId,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::InvalidToken => "invalid_token",
            AuthFailure::Timeout => "timeout",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BackendUnavailable => "backend_unavailable",
            AuthFailure::InvalidUserId => "invalid_user_id",
        }
    }
}

/// Why a message was not delivered to a connection (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The connection's outbound queue was full; it is closed with 4009.
    SlowConsumer,
    /// The connection was already closing.
    Closed,
    /// Lost between Redis and this node: the broker's dispatcher fell
    /// behind and fred's buffer overflowed (counted once per message, not
    /// per recipient).
    BrokerLag,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::SlowConsumer,
        DropReason::Closed,
        DropReason::BrokerLag,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Closed => "closed",
            DropReason::BrokerLag => "broker_lag",
        }
    }
}

/// Which side of the cache answered (the `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheResult {
    Hit,
    Miss,
    NegativeHit,
}

impl CacheResult {
    pub const ALL: [CacheResult; 3] = [
        CacheResult::Hit,
        CacheResult::Miss,
        CacheResult::NegativeHit,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            CacheResult::Hit => "hit",
            CacheResult::Miss => "miss",
            CacheResult::NegativeHit => "negative_hit",
        }
    }
}

/// Close codes a peer sends that are not ours to send: going away, no
/// status, link dropped. With [`CloseCode::ALL`] they are the `code` label's
/// values; anything else a client chooses counts as `other`.
pub const PEER_CLOSE_CODES: [u16; 3] = [1001, 1005, 1006];

/// The codes with a `code` label of their own, in order.
pub(super) fn labelled_close_codes() -> Vec<u16> {
    let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
    codes.extend(PEER_CLOSE_CODES);
    codes.sort_unstable();
    codes
}

/// Why an upgrade was refused (`wsgate_connections_rejected_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No upgrade request within `server.handshake_timeout`.
    HandshakeTimeout,
    /// The `Origin` is not in `server.allowed_origins`.
    Origin,
    /// The node is draining.
    Draining,
    /// `limits.max_connections` reached.
    Full,
    /// `limits.max_connections_per_ip` reached.
    IpLimit,
    /// `limits.max_pending` reached.
    PendingLimit,
    /// `limits.max_pending_per_ip` reached.
    PendingIpLimit,
    /// `server.proxy_protocol` is on and the connection did not start with
    /// a valid PROXY protocol header: dropped before HTTP.
    ProxyProtocol,
}

impl Rejection {
    pub const ALL: [Rejection; 8] = [
        Rejection::HandshakeTimeout,
        Rejection::Origin,
        Rejection::Draining,
        Rejection::Full,
        Rejection::IpLimit,
        Rejection::PendingLimit,
        Rejection::PendingIpLimit,
        Rejection::ProxyProtocol,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::HandshakeTimeout => "handshake_timeout",
            Rejection::Origin => "origin",
            Rejection::Draining => "draining",
            Rejection::Full => "full",
            Rejection::IpLimit => "ip_limit",
            Rejection::PendingLimit => "pending_limit",
            Rejection::PendingIpLimit => "pending_ip_limit",
            Rejection::ProxyProtocol => "proxy_protocol",
        }
    }
}

/// Which rate limit refused something (`wsgate_rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimit {
    /// Per-IP authentication failures: the socket was closed with 4029.
    Auth,
    /// Per-connection requests: answered `rate_limited`.
    Messages,
    /// Per-connection requests, far over the limit: closed with 4029.
    Closed,
}

impl RateLimit {
    pub const ALL: [RateLimit; 3] = [RateLimit::Auth, RateLimit::Messages, RateLimit::Closed];
    pub fn as_str(self) -> &'static str {
        match self {
            RateLimit::Auth => "auth",
            RateLimit::Messages => "messages",
            RateLimit::Closed => "closed",
        }
    }
}

/// An occupancy transition this node emitted (`wsgate_occupancy_events_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OccupancyEventLabel {
    Occupied,
    Vacated,
}

impl OccupancyEventLabel {
    pub const ALL: [OccupancyEventLabel; 2] =
        [OccupancyEventLabel::Occupied, OccupancyEventLabel::Vacated];
    pub fn as_str(self) -> &'static str {
        match self {
            OccupancyEventLabel::Occupied => "occupied",
            OccupancyEventLabel::Vacated => "vacated",
        }
    }
}

/// What became of an occupancy webhook attempt (`wsgate_occupancy_webhooks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookResult {
    /// Answered 2xx.
    Delivered,
    /// Failed (5xx, 408, 429, timeout, connection); tried again later.
    Retried,
    /// Given up: attempts used up, or another 4xx.
    Failed,
    /// Not attempted: the queue was full.
    Dropped,
}

impl WebhookResult {
    pub const ALL: [WebhookResult; 4] = [
        WebhookResult::Delivered,
        WebhookResult::Retried,
        WebhookResult::Failed,
        WebhookResult::Dropped,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Retried => "retried",
            WebhookResult::Failed => "failed",
            WebhookResult::Dropped => "dropped",
        }
    }
}

/// How a subscribe to a `groups.authorize` group was decided
/// (`wsgate_subscribe_authorizations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthorizeOutcome {
    /// The hook said allow.
    Allow,
    /// The hook said deny (or there is no hook and no grant was sent).
    Deny,
    /// The hook failed: timeout, error status, bad answer (`unavailable`).
    Error,
    /// An allow from the cache, no hook call.
    CachedAllow,
    /// A deny from the cache, no hook call.
    CachedDeny,
    /// A valid subscription grant.
    Grant,
    /// A grant that is invalid, expired, for someone else or revoked.
    GrantInvalid,
}

impl AuthorizeOutcome {
    pub const ALL: [AuthorizeOutcome; 7] = [
        AuthorizeOutcome::Allow,
        AuthorizeOutcome::Deny,
        AuthorizeOutcome::Error,
        AuthorizeOutcome::CachedAllow,
        AuthorizeOutcome::CachedDeny,
        AuthorizeOutcome::Grant,
        AuthorizeOutcome::GrantInvalid,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorizeOutcome::Allow => "allow",
            AuthorizeOutcome::Deny => "deny",
            AuthorizeOutcome::Error => "error",
            AuthorizeOutcome::CachedAllow => "cached_allow",
            AuthorizeOutcome::CachedDeny => "cached_deny",
            AuthorizeOutcome::Grant => "grant",
            AuthorizeOutcome::GrantInvalid => "grant_invalid",
        }
    }
}

label_set!(OccupancyEventLabel, OccupancyEventLabel::ALL, as_str);
label_set!(WebhookResult, WebhookResult::ALL, as_str);
label_set!(AuthorizeOutcome, AuthorizeOutcome::ALL, as_str);
label_set!(AuthFailure, AuthFailure::ALL, as_str);
label_set!(DropReason, DropReason::ALL, as_str);
label_set!(CacheResult, CacheResult::ALL, as_str);
label_set!(AuthSource, AuthSource::ALL, as_str);
label_set!(Rejection, Rejection::ALL, as_str);
label_set!(RateLimit, RateLimit::ALL, as_str);
label_set!(ErrorCode, ErrorCode::ALL, as_str);
label_set!(ApiErrorCode, ApiErrorCode::ALL, as_str);
