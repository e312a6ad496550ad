//! The sections about groups and the application backend in the loop:
//! which groups exist for whom (`groups`, with conflation), the backend's
//! say on subscriptions (`authorize`), history for recovery (`history`),
//! other stacks' publishers (`compat`), the transactional outbox
//! (`outbox`) and feed demand (`occupancy`). Validated in `validate` and
//! `validate_backend`, like every section.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    pub allow: Vec<String>,
    pub auto_join: Vec<String>,
    pub client_publish: Vec<String>,
    /// Groups whose messages a slow reader may receive conflated: only the
    /// latest queued message per value of `key` (a dotted path in `data`).
    pub conflate: Vec<ConflateRule>,
    /// Groups whose latest publication is kept, so a `subscribe` with
    /// `"latest":true` gets it at once (market snapshots).
    pub snapshot: Vec<String>,
    /// How long a `groups.snapshot` group's latest publication is kept
    /// after it was published.
    #[serde(with = "humantime_serde")]
    pub snapshot_ttl: Duration,
    /// Groups the application backend authorizes per user (`[authorize]`):
    /// subscribing needs the hook's allow or a valid grant, whatever
    /// `allow` says.
    pub authorize: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConflateRule {
    /// A group pattern (`*` matches any run of characters).
    pub groups: String,
    /// Dotted path of the key in the message data, e.g. `symbol`.
    pub key: String,
}

impl Default for GroupsConfig {
    fn default() -> Self {
        GroupsConfig {
            allow: vec!["*".into()],
            auto_join: vec!["user.{user_id}".into()],
            client_publish: Vec::new(),
            conflate: Vec::new(),
            snapshot: Vec::new(),
            snapshot_ttl: Duration::from_secs(3600),
            authorize: Vec::new(),
        }
    }
}

/// How the backend authorizes `groups.authorize` groups: the subscribe hook
/// and subscription grants.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthorizeConfig {
    /// The backend URL wsgate POSTs `{user_id, group, ...}` to.
    pub hook_url: Option<String>,
    /// HMAC-SHA256 secret signing each hook call (at least 32 bytes).
    pub hook_secret: Option<String>,
    /// Sent as `Authorization: Bearer <key>` on each hook call.
    pub hook_api_key: Option<String>,
    /// Longest wait for the hook's answer.
    #[serde(with = "humantime_serde")]
    pub hook_timeout: Duration,
    /// How long an allow is kept per (user, group).
    #[serde(with = "humantime_serde")]
    pub allow_ttl: Duration,
    /// How long a deny is kept per (user, group).
    #[serde(with = "humantime_serde")]
    pub deny_ttl: Duration,
    /// Most (user, group) answers kept, each of allow and deny.
    pub cache_size: u64,
    /// HS256 secret of subscription grants (at least 32 bytes).
    pub grant_secret: Option<String>,
    /// Longest a grant may live (`exp` minus now at subscribe); also how
    /// long an unsubscribe keeps refusing grants issued before it.
    #[serde(with = "humantime_serde")]
    pub grant_max_lifetime: Duration,
}

impl Default for AuthorizeConfig {
    fn default() -> Self {
        AuthorizeConfig {
            hook_url: None,
            hook_secret: None,
            hook_api_key: None,
            hook_timeout: Duration::from_secs(2),
            allow_ttl: Duration::from_secs(30),
            deny_ttl: Duration::from_secs(5),
            cache_size: 100_000,
            grant_secret: None,
            grant_max_lifetime: Duration::from_secs(3600),
        }
    }
}

/// Message history, for recovery after a reconnect (`since`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Group patterns whose publications get an offset and are kept.
    pub groups: Vec<String>,
    /// Publications kept per group.
    pub size: usize,
    /// How long a group's history outlives its last publication.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a group's offset and epoch outlive its last publication
    /// (longer than `ttl`, so a client that is away for a while is told
    /// `recovered: false` rather than getting offsets that start again).
    #[serde(with = "humantime_serde")]
    pub meta_ttl: Duration,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            groups: Vec::new(),
            size: 100,
            ttl: Duration::from_secs(300),
            meta_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Compatibility with other stacks' publishers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompatConfig {
    /// Also deliver what Django Channels' `RedisPubSubChannelLayer`
    /// publishes with `group_send` (needs `redis.url`).
    pub channels_redis: bool,
    /// The channel layer's `prefix` setting.
    pub channels_prefix: String,
    /// Which key of a `group_send` message is delivered as `data`; empty
    /// means the whole message without its `type`.
    pub payload_key: String,
}

impl Default for CompatConfig {
    fn default() -> Self {
        CompatConfig {
            channels_redis: false,
            channels_prefix: "asgi".into(),
            payload_key: String::new(),
        }
    }
}

/// The transactional outbox (`wsgate_outbox`, PostgreSQL only): rows a
/// backend inserts in its own transactions, published by the nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboxConfig {
    /// Publish the rows of `wsgate_outbox` (needs a PostgreSQL `database.url`).
    pub enabled: bool,
    /// Most rows published per claimed partition and transaction.
    pub batch: u32,
    /// Longest wait between looks at the table when no notice arrives.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Longest one batch may hold its partition (claim, publish, delete);
    /// past it the batch is rolled back and its rows published again later.
    #[serde(with = "humantime_serde")]
    pub batch_timeout: Duration,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            enabled: false,
            batch: 500,
            poll_interval: Duration::from_secs(1),
            batch_timeout: Duration::from_secs(30),
        }
    }
}

/// Feed demand: events when a group gets its first member anywhere in the
/// cluster (`occupied`) and when its last one has been gone for `linger`
/// (`vacated`), as a signed webhook and a Redis stream; the groups API lists
/// the occupied groups.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OccupancyConfig {
    /// Track occupancy at all (one Redis script per local first join and
    /// last leave of a group; nothing per message).
    pub enabled: bool,
    /// How long a group stays occupied after its last member left; a join
    /// within it cancels the `vacated` event.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Redis stream the events are appended to (key
    /// `<redis.prefix>{occ}:<stream>`); empty: no stream.
    pub stream: String,
    /// Approximate bound on the stream's length (`XADD MAXLEN ~`).
    pub stream_maxlen: u64,
    /// `http(s)://` URL the events are POSTed to; unset: no webhook.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the webhook's signature (at least 16 bytes;
    /// required with `webhook_url`).
    pub webhook_secret: Option<String>,
    /// Longest wait for one webhook attempt.
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// Attempts per event (the first one included), with exponential
    /// backoff and jitter between them.
    pub webhook_attempts: u32,
    /// Events waiting for the webhook; past it, new ones are dropped and
    /// counted.
    pub queue: usize,
}

impl Default for OccupancyConfig {
    fn default() -> Self {
        OccupancyConfig {
            enabled: true,
            linger: Duration::from_secs(30),
            stream: "events".into(),
            stream_maxlen: 10_000,
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout: Duration::from_secs(5),
            webhook_attempts: 5,
            queue: 1024,
        }
    }
}
