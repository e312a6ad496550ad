//! Layered configuration: defaults, then a TOML file, then `WSGATE__SECTION__KEY`
//! environment variables.
//!
//! Every key has a default so `cargo run` works with no file at all. Unknown
//! keys are errors, so a typo does not silently fall back to a default, and
//! every error names the key it is about.
//!
//! This file holds the keys (one struct per section, with its defaults;
//! the sections about groups and the backend in the loop are in [`groups`]);
//! [`load`] reads the layers (with [`files`]: `WSGATE__SECTION__KEY__FILE`
//! variables), [`validate`] checks what types alone cannot express, section
//! by section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod files;
mod groups;
mod load;
mod sql_ident;
mod validate;
mod validate_backend;

pub use groups::{
    AuthorizeConfig, CompatConfig, ConflateRule, GroupsConfig, HistoryConfig, OccupancyConfig,
    OutboxConfig,
};
pub use load::mask_url;
pub use sql_ident::DjangoUser;
pub use validate::{MIN_API_KEY_LEN, api_key_problem};

impl RedisConfig {
    /// The `redis.tls_*` files, for [`crate::tls::client_config`].
    pub(crate) fn tls_files(&self) -> crate::tls::ClientTlsFiles<'_> {
        crate::tls::ClientTlsFiles {
            section: "redis",
            ca: self.tls_ca_file.as_deref(),
            cert: self.tls_cert_file.as_deref(),
            key: self.tls_key_file.as_deref(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {key}: {message}")]
    Invalid { key: String, message: String },
    #[error("invalid configuration: {0}")]
    Load(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, message: impl Into<String>) -> Self {
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
    pub outbox: OutboxConfig,
    pub occupancy: OccupancyConfig,
    pub authorize: AuthorizeConfig,
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
    /// Every connection to `listen` starts with a PROXY protocol v1/v2
    /// header (a layer-4 load balancer's), whose source address is the
    /// client's; a connection without one is dropped.
    pub proxy_protocol: bool,
    /// Opt-in write coalescing: after a frame is queued for a connection,
    /// wait this long for more before writing, so a socket in many busy
    /// groups takes one write for several frames (0 = write at once).
    #[serde(with = "humantime_serde")]
    pub write_delay: Duration,
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
            proxy_protocol: false,
            write_delay: Duration::ZERO,
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
    /// Longest time a caller may take to send a request body.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// How long a publish's `idempotency_key` is remembered (a retry with
    /// the same key within it is not delivered again); also the outbox's.
    #[serde(with = "humantime_serde")]
    pub idempotency_window: Duration,
    /// Without Redis: most idempotency keys kept in memory (the oldest go
    /// first past it).
    pub idempotency_capacity: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: ([0, 0, 0, 0], 8081).into(),
            keys: Vec::new(),
            key_file: None,
            body_timeout: Duration::from_secs(10),
            idempotency_window: Duration::from_secs(600),
            idempotency_capacity: 100_000,
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
    /// Signed JWTs (SimpleJWT, OIDC): verified with a key, no token table.
    Jwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub store: StoreKind,
    /// SQL for `store = "query"`: takes the token as its one parameter and
    /// returns a row whose first column is the user id.
    pub query: Option<String>,
    /// `store = "django"`: the table of Django's user model
    /// (`AUTH_USER_MODEL`), optionally `schema.table`.
    pub django_user_table: String,
    /// Its primary key column (what `authtoken_token.user_id` refers to).
    pub django_user_pk: String,
    /// Its boolean "active" column; inactive users' tokens are refused.
    pub django_user_active: String,
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
    /// `store = "jwt"`: the HMAC secret (HS256/384/512), at least 32 bytes.
    pub jwt_secret: Option<String>,
    /// `store = "jwt"`: a PEM public key (RSA, EC P-256/P-384, Ed25519).
    pub jwt_public_key_file: Option<PathBuf>,
    /// `store = "jwt"`: a JWKS URL, fetched and cached.
    pub jwt_jwks_url: Option<String>,
    /// The claim holding the user id (SimpleJWT: `user_id`, OIDC: `sub`).
    pub jwt_user_claim: String,
    /// When set, a token must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must contain it (a token with an `aud` is
    /// refused when unset).
    pub jwt_audience: Option<String>,
    /// Clock-skew allowance for `nbf`.
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// Accepted `alg` values; empty: `HS256` with a secret, else `RS256`.
    pub jwt_algorithms: Vec<String>,
    /// Also refuse tokens whose `jti` SimpleJWT's blacklist app lists
    /// (PostgreSQL `database.url`).
    pub jwt_blacklist: bool,
}

impl AuthConfig {
    /// The `alg` values the jwt store accepts (`jwt_algorithms`, or its default).
    pub fn jwt_algorithms(&self) -> Vec<String> {
        if !self.jwt_algorithms.is_empty() {
            return self.jwt_algorithms.clone();
        }
        let default = if self.jwt_secret.is_some() {
            "HS256"
        } else {
            "RS256"
        };
        vec![default.to_string()]
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            store: StoreKind::Native,
            query: None,
            django_user_table: "auth_user".into(),
            django_user_pk: "id".into(),
            django_user_active: "is_active".into(),
            timeout: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            revalidate_interval: Duration::ZERO,
            jwt_secret: None,
            jwt_public_key_file: None,
            jwt_jwks_url: None,
            jwt_user_claim: "user_id".into(),
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway: Duration::from_secs(5),
            jwt_algorithms: Vec::new(),
            jwt_blacklist: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    pub url: Option<String>,
    pub cluster: bool,
    /// Independent Redis servers (`redis://` or `rediss://`): each group's
    /// channel, history, latest value and presence live on one of them,
    /// chosen by consistent hashing of the group name, so pub/sub grows with
    /// the list. The first also holds what belongs to no group (node
    /// registry, control channel, token cache, idempotency keys); `url` is
    /// it. Empty: `url` alone. Every node must list the same servers in the
    /// same order.
    pub shards: Vec<String>,
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
    /// `rediss://` only: PEM file of the CAs the server's certificate must
    /// come from (instead of the system's store).
    pub tls_ca_file: Option<PathBuf>,
    /// `rediss://` only: PEM client certificate (chain), with `tls_key_file`.
    pub tls_cert_file: Option<PathBuf>,
    /// `rediss://` only: PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            cluster: false,
            shards: Vec::new(),
            prefix: "wsgate:".into(),
            heartbeat: Duration::from_secs(2),
            node_ttl: Duration::from_secs(10),
            command_timeout: Duration::from_secs(2),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
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
    /// IPv6 clients count as one for the per-IP limits per prefix of this
    /// many bits (1..=128; IPv4 clients by their whole address).
    pub ipv6_prefix: u8,
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
            ipv6_prefix: 64,
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

/// Largest `outbox.batch`.
pub const MAX_OUTBOX_BATCH: u32 = 10_000;
/// Largest `api.idempotency_capacity`.
pub const MAX_IDEMPOTENCY_CAPACITY: u64 = 10_000_000;
/// Longest `api.idempotency_window`.
pub const MAX_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

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
/// Longest `server.write_delay`: it is added to every message's latency.
pub const MAX_WRITE_DELAY: Duration = Duration::from_secs(1);
/// Largest `limits.outbound_queue` (frames queued for one connection).
pub const MAX_OUTBOUND_QUEUE: usize = 1_000_000;

/// Largest `history.size` (publications kept per group).
pub const MAX_HISTORY_SIZE: usize = 100_000;

impl Config {
    /// Embedded mode: no database and no Redis configured (one node, SQLite,
    /// in-process broker).
    pub fn is_embedded(&self) -> bool {
        self.database.url.is_none() && self.redis.url.is_none()
    }

    /// Whether `database.url` names a PostgreSQL server (what the outbox
    /// and SimpleJWT's blacklist need).
    pub fn database_is_postgres(&self) -> bool {
        self.database
            .url
            .as_deref()
            .is_some_and(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
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
}

/// Parses `10.0.0.0/8`, `::1/128`, or a plain address.
pub fn parse_cidr(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}
