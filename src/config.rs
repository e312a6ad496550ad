//! Layered configuration: defaults, then a TOML file, then `WSGATE__SECTION__KEY`
//! environment variables (section 9 of the protocol).
//!
//! Every key has a default so `cargo run` works with no file at all. Unknown
//! keys are errors, so a typo does not silently fall back to a default, and
//! every error names the key it is about.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid configuration: {0}")]
    Load(String),
}

impl ConfigError {
    fn invalid(key: &str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub redis: RedisConfig,
    pub groups: GroupsConfig,
    pub limits: LimitsConfig,
    pub drain: DrainConfig,
    pub log: LogConfig,
    pub history: HistoryConfig,
    pub compat: CompatConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub ws_path: String,
    /// Defaults to the host name.
    pub node_id: Option<String>,
    pub allowed_origins: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub pong_timeout: Duration,
    /// Longest time a client may take to send its HTTP request headers
    /// (slow or half-open upgrades are dropped).
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Proxies (CIDRs) whose `X-Forwarded-For` / `Forwarded` headers are
    /// believed when finding a client's IP; empty means the peer address.
    pub trusted_proxies: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 8080).into(),
            ws_path: "/ws".into(),
            node_id: None,
            allowed_origins: Vec::new(),
            ping_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub keys: Vec<String>,
    /// Where embedded mode keeps the API key it generates when `keys` is empty.
    pub key_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: ([0, 0, 0, 0], 8081).into(),
            keys: Vec::new(),
            key_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: ([0, 0, 0, 0], 9090).into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...` or `sqlite://...`; unset means embedded SQLite.
    pub url: Option<String>,
    pub sqlite_path: PathBuf,
    pub max_connections: u32,
    /// Apply wsgate's migrations at start-up.
    pub migrate: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: None,
            sqlite_path: "wsgate.db".into(),
            max_connections: 16,
            migrate: true,
            connect_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Native,
    Query,
    Django,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub store: StoreKind,
    /// SQL for `store = "query"`: takes the token as its one parameter and
    /// returns a row whose first column is the user id.
    pub query: Option<String>,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// How often live connections' tokens are checked again against the
    /// store (expired, revoked, user deactivated); `0s` turns it off.
    #[serde(with = "humantime_serde")]
    pub revalidate_interval: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            store: StoreKind::Native,
            query: None,
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            revalidate_interval: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Option<String>,
    pub cluster: bool,
    pub prefix: String,
    /// How often a node refreshes its registry entry and presence.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// How long a node's registry entry and presence outlive its last
    /// heartbeat (a killed node disappears within this).
    #[serde(with = "humantime_serde")]
    pub node_ttl: Duration,
    /// Longest wait for one Redis command before it counts as failed.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: false,
            prefix: "wsgate:".into(),
            heartbeat: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GroupsConfig {
    pub allow: Vec<String>,
    pub auto_join: Vec<String>,
    pub client_publish: Vec<String>,
    /// Groups whose messages a slow reader may receive conflated: only the
    /// latest queued message per value of `key` (a dotted path in `data`).
    pub conflate: Vec<ConflateRule>,
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
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub max_groups_per_connection: usize,
    /// Frames queued for one connection before it is closed as a slow consumer.
    pub outbound_queue: usize,
    /// Queued frames past which messages of `groups.conflate` groups replace
    /// their older queued version instead of queuing more.
    pub conflate_after: usize,
    /// WebSocket connections from one client IP (0 = no limit).
    pub max_connections_per_ip: usize,
    /// Connections still waiting for their first frame, per node.
    pub max_pending: usize,
    /// Connections still waiting for their first frame, per client IP.
    pub max_pending_per_ip: usize,
    /// Failed authentications per client IP per minute before further
    /// attempts are closed with 4029 unseen by the cache and database (0 = off).
    pub auth_failures_per_minute: u32,
    /// Requests per second one connection may send; over it, requests get
    /// `rate_limited`, and a client that keeps going at twice the rate is
    /// closed with 4029 (0 = off).
    pub messages_per_second: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_message_bytes: 65_536,
            max_groups_per_connection: 100,
            outbound_queue: 1024,
            conflate_after: 64,
            max_connections_per_ip: 1000,
            max_pending: 10_000,
            max_pending_per_ip: 100,
            auth_failures_per_minute: 30,
            messages_per_second: 100,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainConfig {
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    #[serde(with = "humantime_serde")]
    pub spread: Duration,
}

impl Default for DrainConfig {
    fn default() -> Self {
        DrainConfig {
            grace: Duration::from_secs(5),
            spread: Duration::from_secs(20),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Longest duration any setting accepts.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// Largest `limits.outbound_queue` (frames queued for one connection).
pub const MAX_OUTBOUND_QUEUE: usize = 1_000_000;

/// Largest `history.size` (publications kept per group).
pub const MAX_HISTORY_SIZE: usize = 100_000;

/// Keys whose environment value is a comma-separated list.
const LIST_KEYS: &[&str] = &[
    "server.allowed_origins",
    "server.trusted_proxies",
    "api.keys",
    "groups.allow",
    "groups.auto_join",
    "groups.client_publish",
    "history.groups",
];

impl Config {
    /// Loads defaults, then `file` (if given), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            if !file.exists() {
                return Err(ConfigError::Load(format!(
                    "config file {} does not exist",
                    file.display()
                )));
            }
            let source = config::File::from(file).format(config::FileFormat::Toml);
            let table = config::Source::collect(&source).map_err(describe)?;
            // The config crate reads a top-level key as a path, where
            // `"a[99999999999]"` allocates that many entries: only plain
            // names get through.
            if let Some(key) = table.keys().find(|k| !is_plain_key(k)) {
                let key = if key.is_empty() { "\"\"" } else { key };
                return Err(ConfigError::invalid(key, "not a configuration key"));
            }
            builder = builder.add_source(Collected(table));
        }
        builder = builder.add_source(Collected(env_values(env)?));
        let raw = builder.build().map_err(describe)?;
        let config: Config = raw.try_deserialize().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.server.ws_path.starts_with('/') {
            return Err(ConfigError::invalid(
                "server.ws_path",
                "must start with '/'",
            ));
        }
        for origin in &self.server.allowed_origins {
            if origin.is_empty() || origin.contains(char::is_whitespace) {
                return Err(ConfigError::invalid(
                    "server.allowed_origins",
                    format!("invalid origin {origin:?}"),
                ));
            }
        }
        if self.server.ping_interval.is_zero() {
            return Err(ConfigError::invalid(
                "server.ping_interval",
                "must be above zero",
            ));
        }
        if self.server.handshake_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.handshake_timeout",
                "must be above zero",
            ));
        }
        for cidr in &self.server.trusted_proxies {
            if parse_cidr(cidr).is_none() {
                return Err(ConfigError::invalid(
                    "server.trusted_proxies",
                    format!("{cidr:?} is not an IP address or CIDR"),
                ));
            }
        }
        if self.server.pong_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.pong_timeout",
                "must be above zero",
            ));
        }
        if self.api.keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::invalid(
                "api.keys",
                "every key must be at least 16 characters",
            ));
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::invalid(
                "database.url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be above zero",
            ));
        }
        match (self.auth.store, &self.auth.query) {
            (StoreKind::Query, None) => {
                return Err(ConfigError::invalid(
                    "auth.query",
                    "required when auth.store = \"query\"",
                ));
            }
            (StoreKind::Query, Some(q)) if q.trim().is_empty() => {
                return Err(ConfigError::invalid("auth.query", "must not be empty"));
            }
            _ => {}
        }
        if self.auth.timeout.is_zero() {
            return Err(ConfigError::invalid("auth.timeout", "must be above zero"));
        }
        if let Some(url) = &self.redis.url
            && !(url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis-cluster://"))
        {
            return Err(ConfigError::invalid(
                "redis.url",
                "must start with redis://, rediss:// or redis-cluster://",
            ));
        }
        if self.redis.prefix.is_empty() {
            return Err(ConfigError::invalid("redis.prefix", "must not be empty"));
        }
        if self.redis.heartbeat.is_zero() {
            return Err(ConfigError::invalid(
                "redis.heartbeat",
                "must be above zero",
            ));
        }
        if self.redis.node_ttl <= self.redis.heartbeat {
            return Err(ConfigError::invalid(
                "redis.node_ttl",
                "must be longer than redis.heartbeat",
            ));
        }
        if self.redis.command_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "redis.command_timeout",
                "must be above zero",
            ));
        }
        for (key, patterns) in [
            ("groups.allow", &self.groups.allow),
            ("groups.auto_join", &self.groups.auto_join),
            ("groups.client_publish", &self.groups.client_publish),
        ] {
            for p in patterns {
                let probe = p.replace("{user_id}", "1").replace('*', "x");
                if !crate::protocol::is_valid_group(&probe) {
                    return Err(ConfigError::invalid(
                        key,
                        format!(
                            "{p:?} is not a group pattern (group characters, '*' and {{user_id}})"
                        ),
                    ));
                }
            }
        }
        for rule in &self.groups.conflate {
            let probe = rule.groups.replace('*', "x");
            if !crate::protocol::is_valid_group(&probe) {
                return Err(ConfigError::invalid(
                    "groups.conflate",
                    format!("{:?} is not a group pattern", rule.groups),
                ));
            }
            if rule.key.is_empty() || rule.key.split('.').any(str::is_empty) {
                return Err(ConfigError::invalid(
                    "groups.conflate",
                    format!("{:?} is not a dotted key path", rule.key),
                ));
            }
        }
        for p in &self.history.groups {
            if !crate::protocol::is_valid_group(&p.replace('*', "x")) {
                return Err(ConfigError::invalid(
                    "history.groups",
                    format!("{p:?} is not a group pattern"),
                ));
            }
        }
        if self.history.size == 0 || self.history.size > MAX_HISTORY_SIZE {
            return Err(ConfigError::invalid(
                "history.size",
                format!("must be between 1 and {MAX_HISTORY_SIZE}"),
            ));
        }
        if self.history.ttl.is_zero() {
            return Err(ConfigError::invalid("history.ttl", "must be above zero"));
        }
        if self.history.meta_ttl < self.history.ttl {
            return Err(ConfigError::invalid(
                "history.meta_ttl",
                "must be at least history.ttl",
            ));
        }
        if self.compat.channels_redis && self.redis.url.is_none() {
            return Err(ConfigError::invalid(
                "compat.channels_redis",
                "needs redis.url (channels_redis publishes through Redis)",
            ));
        }
        if self.limits.conflate_after > self.limits.outbound_queue {
            return Err(ConfigError::invalid(
                "limits.conflate_after",
                "must not exceed limits.outbound_queue",
            ));
        }
        if self.groups.auto_join.iter().any(|p| p.contains('*')) {
            return Err(ConfigError::invalid(
                "groups.auto_join",
                "auto-joined groups cannot contain '*'",
            ));
        }
        for (key, value) in [
            ("limits.max_connections", self.limits.max_connections),
            ("limits.max_message_bytes", self.limits.max_message_bytes),
            (
                "limits.max_groups_per_connection",
                self.limits.max_groups_per_connection,
            ),
            ("limits.outbound_queue", self.limits.outbound_queue),
            ("limits.max_pending", self.limits.max_pending),
            ("limits.max_pending_per_ip", self.limits.max_pending_per_ip),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(key, "must be above zero"));
            }
        }
        if self.limits.max_message_bytes < crate::protocol::MAX_AUTH_FRAME_BYTES {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                "must be at least 4096 (the first frame may be 4 KiB)",
            ));
        }
        if self
            .server
            .node_id
            .as_deref()
            .is_some_and(|id| id.trim().is_empty())
        {
            return Err(ConfigError::invalid(
                "server.node_id",
                "must not be empty (leave it unset for the host name)",
            ));
        }
        // Past these, deadlines overflow (`Instant + Duration` panics in
        // every session) or a queue cannot be made: no setting needs them.
        // New duration settings belong in this list.
        for (key, value) in [
            ("server.ping_interval", self.server.ping_interval),
            ("server.pong_timeout", self.server.pong_timeout),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("database.connect_timeout", self.database.connect_timeout),
            ("auth.timeout", self.auth.timeout),
            ("auth.cache_ttl", self.auth.cache_ttl),
            ("auth.negative_ttl", self.auth.negative_ttl),
            ("redis.heartbeat", self.redis.heartbeat),
            ("redis.node_ttl", self.redis.node_ttl),
            ("redis.command_timeout", self.redis.command_timeout),
            ("drain.grace", self.drain.grace),
            ("drain.spread", self.drain.spread),
            ("auth.revalidate_interval", self.auth.revalidate_interval),
            ("history.ttl", self.history.ttl),
            ("history.meta_ttl", self.history.meta_ttl),
        ] {
            if value > MAX_DURATION {
                return Err(ConfigError::invalid(key, "must be at most 365 days"));
            }
        }
        if self.limits.outbound_queue > MAX_OUTBOUND_QUEUE {
            return Err(ConfigError::invalid(
                "limits.outbound_queue",
                format!("must be at most {MAX_OUTBOUND_QUEUE}"),
            ));
        }
        // The filter parser panics on some non-ASCII input (tracing-subscriber
        // 0.3.23 slices inside a character; found by fuzzing), so only ASCII
        // directives reach it, and a panic is still caught.
        if !self.log.level.is_ascii() {
            return Err(ConfigError::invalid("log.level", "must be ASCII"));
        }
        let level = self.log.level.clone();
        match std::panic::catch_unwind(move || tracing_subscriber::EnvFilter::try_new(level)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ConfigError::invalid("log.level", e.to_string())),
            Err(_) => return Err(ConfigError::invalid("log.level", "not a valid filter")),
        }
        Ok(())
    }

    /// Embedded mode: no database and no Redis configured (one node, SQLite,
    /// in-process broker).
    pub fn is_embedded(&self) -> bool {
        self.database.url.is_none() && self.redis.url.is_none()
    }

    pub fn node_id(&self) -> String {
        self.server.node_id.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "wsgate".into())
        })
    }

    /// The configuration as TOML with secrets masked, for `config check`.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.api.keys = masked.api.keys.iter().map(|_| "********".into()).collect();
        masked.database.url = masked.database.url.as_deref().map(mask_url);
        masked.redis.url = masked.redis.url.as_deref().map(mask_url);
        if masked.server.node_id.is_none() {
            masked.server.node_id = Some(self.node_id());
        }
        toml_string(&masked)
    }
}

fn toml_string(config: &Config) -> String {
    // `config` brings a TOML serializer with its `toml` feature.
    toml::to_string_pretty(config).unwrap_or_else(|e| format!("# cannot render: {e}"))
}

/// Hides the password of `scheme://user:password@host/...`.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{scheme}://{user}:********@{host}{tail}")
            } else {
                format!("{scheme}://{user}@{host}{tail}")
            }
        }
        None => url.to_string(),
    }
}

/// Configuration values gathered beforehand, handed to the config crate.
#[derive(Debug, Clone)]
struct Collected(config::Map<String, config::Value>);

impl config::Source for Collected {
    fn clone_into_box(&self) -> Box<dyn config::Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<config::Map<String, config::Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

/// A section or field name: letters, digits, `_` and `-`.
fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// `WSGATE__SECTION__KEY=value` as `section.key`. Values stay the strings
/// they are (the field's type parses them, so `007` stays `007` in a string
/// field and `1.5` is no count); list keys split on `,`, an empty value
/// being the empty list. A variable whose name is not such a key is an
/// error that names it.
fn env_values(
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<config::Map<String, config::Value>, ConfigError> {
    let origin = "the environment".to_string();
    let mut values = config::Map::new();
    for (var, value) in env {
        let Some(name) = var.strip_prefix("WSGATE__") else {
            continue;
        };
        let segments: Vec<String> = name.split("__").map(str::to_lowercase).collect();
        if !segments.iter().all(|s| is_plain_key(s)) {
            return Err(ConfigError::invalid(
                &var,
                "not a configuration key (WSGATE__SECTION__KEY: letters, digits and _)",
            ));
        }
        let key = segments.join(".");
        let kind = if LIST_KEYS.contains(&key.as_str()) {
            let items = value
                .split(',')
                .filter(|_| !value.is_empty())
                .map(|item| config::Value::new(Some(&origin), item.to_string()))
                .collect::<Vec<_>>();
            config::ValueKind::Array(items)
        } else {
            config::ValueKind::String(value)
        };
        values.insert(key, config::Value::new(Some(&origin), kind));
    }
    Ok(values)
}

/// Turns the config crate's errors into one line that names the key.
fn describe(e: config::ConfigError) -> ConfigError {
    let text = e.to_string();
    // The config crate says "... for key `auth.timeout`" or names the key
    // after "unknown field"; keep its words and make the key easy to spot.
    if let Some(key) = text
        .split("for key `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
    {
        let mut key = key.trim_start_matches("WSGATE.").to_lowercase();
        let message = text.split(" for key `").next().unwrap_or(&text).to_string();
        // "unknown field `x`" inside section `s`: the key is `s.x`.
        if let Some(field) = message
            .strip_prefix("unknown field `")
            .and_then(|rest| rest.split('`').next())
        {
            key = format!("{key}.{field}");
        }
        return ConfigError::Invalid { key, message };
    }
    // An unknown section: the config crate names no key, the field is it.
    if let Some(field) = text
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
        .filter(|field| !field.is_empty())
    {
        return ConfigError::Invalid {
            key: field.to_lowercase(),
            message: text.clone(),
        };
    }
    ConfigError::Load(text)
}

/// Parses `10.0.0.0/8`, `::1/128`, or a plain address.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults() {
        let c = Config::load_with_env(None, env(&[])).unwrap();
        assert_eq!(c.server.listen.port(), 8080);
        assert_eq!(c.auth.timeout, Duration::from_secs(5));
        assert_eq!(c.groups.auto_join, vec!["user.{user_id}"]);
        assert!(c.is_embedded());
    }

    #[test]
    fn env_overrides_and_lists() {
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__REDIS__URL", "redis://127.0.0.1:6379"),
                ("WSGATE__AUTH__TIMEOUT", "250ms"),
                ("WSGATE__GROUPS__ALLOW", "market.*,user.{user_id}"),
                ("WSGATE__LIMITS__MAX_CONNECTIONS", "10"),
            ]),
        )
        .unwrap();
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.auth.timeout, Duration::from_millis(250));
        assert_eq!(c.groups.allow, vec!["market.*", "user.{user_id}"]);
        assert_eq!(c.limits.max_connections, 10);
    }

    #[test]
    fn errors_name_the_key() {
        for (k, v, key) in [
            ("WSGATE__AUTH__TIMEOUT", "five", "auth.timeout"),
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "0",
                "limits.max_connections",
            ),
            ("WSGATE__REDIS__URL", "http://x", "redis.url"),
            ("WSGATE__SERVER__LISTEN", "nowhere", "server.listen"),
            ("WSGATE__AUTH__STORE", "ldap", "auth.store"),
        ] {
            let err = Config::load_with_env(None, env(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{k}={v}: {err}");
        }
    }

    #[test]
    fn masks_secrets() {
        assert_eq!(
            mask_url("postgres://u:secret@db:5432/x"),
            "postgres://u:********@db:5432/x"
        );
        assert_eq!(mask_url("redis://h:6379"), "redis://h:6379");
    }

    /// Inputs found by the property tests and fuzzing (tests/proptest_protocol.rs).
    #[test]
    fn odd_inputs_are_errors_that_name_the_key() {
        // Environment values are not re-typed: a string field keeps them.
        let c = Config::load_with_env(
            None,
            env(&[
                ("WSGATE__SERVER__NODE_ID", "007"),
                ("WSGATE__REDIS__PREFIX", "1e3"),
                ("WSGATE__API__KEYS", "00001234567890123456789"),
                ("WSGATE__GROUPS__AUTO_JOIN", ""),
            ]),
        )
        .unwrap();
        assert_eq!(c.server.node_id.as_deref(), Some("007"));
        assert_eq!(c.redis.prefix, "1e3");
        assert_eq!(c.api.keys, vec!["00001234567890123456789"]);
        assert!(c.groups.auto_join.is_empty());
        for (k, v, key) in [
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "1.5",
                "limits.max_connections",
            ),
            (
                "WSGATE__LIMITS__MAX_CONNECTIONS",
                "1e400",
                "limits.max_connections",
            ),
            (
                "WSGATE__LIMITS__OUTBOUND_QUEUE",
                "18446744073709551615",
                "limits.outbound_queue",
            ),
            (
                "WSGATE__SERVER__PING_INTERVAL",
                "300000000000years",
                "server.ping_interval",
            ),
            ("WSGATE__DRAIN__GRACE", "400days", "drain.grace"),
            ("WSGATE__SERVER__NODE_ID", " ", "server.node_id"),
            ("WSGATE__FOO", "1", "foo"),
            ("WSGATE__", "1", "WSGATE__"),
            ("WSGATE__SERVER__", "1", "WSGATE__SERVER__"),
            // Read as a path, this would allocate 10^11 entries.
            (
                "WSGATE__SERVER__ALLOWED_ORIGINS[99999999999]",
                "x",
                "ALLOWED_ORIGINS[99999999999]",
            ),
        ] {
            let err = Config::load_with_env(None, env(&[(k, v)])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: named, .. } if named.contains(key)),
                "{k}={v}: {err:?}"
            );
        }
        let dir = std::env::temp_dir().join(format!("wsgate-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (body, key) in [
            ("\"server[99999999999]\" = 1\n", "server[99999999999]"),
            ("foo = 1\n", "foo"),
            ("[\"\"]\n", "\"\""),
        ] {
            let file = dir.join("c.toml");
            std::fs::write(&file, body).unwrap();
            let err = Config::load_with_env(Some(&file), env(&[])).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { key: named, .. } if named == key),
                "{body}: {err:?}"
            );
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
