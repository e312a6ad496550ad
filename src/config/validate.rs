//! Checks of what types alone cannot express, one step per section, each
//! error naming its key.

use super::{
    Config, ConfigError, MAX_DURATION, MAX_HISTORY_SIZE, MAX_OUTBOUND_QUEUE, MAX_WRITE_DELAY,
    StoreKind, parse_cidr,
};

impl Config {
    /// Checks what types alone cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.validate_api()?;
        self.validate_database()?;
        self.validate_auth()?;
        self.validate_redis()?;
        self.validate_groups()?;
        self.validate_authorize()?;
        self.validate_history()?;
        self.validate_compat()?;
        self.validate_idempotency()?;
        self.validate_outbox()?;
        self.validate_occupancy()?;
        self.validate_limits()?;
        self.validate_bounds()?;
        self.validate_log()?;
        Ok(())
    }

    /// `[server]`: paths, origins, timers, proxies, node id.
    fn validate_server(&self) -> Result<(), ConfigError> {
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
        // The API and metrics roles share the public listener when they
        // share its address; their callers (backends, Prometheus, probes)
        // send no PROXY header, and a listener that does without one would
        // let anyone skip it.
        let port = self.server.listen.port();
        if self.server.proxy_protocol
            && port != 0
            && (self.api.listen == self.server.listen || self.metrics.listen == self.server.listen)
        {
            return Err(ConfigError::invalid(
                "server.proxy_protocol",
                "needs server.listen to itself: api.listen and metrics.listen must be other \
                 addresses (their clients send no PROXY header)",
            ));
        }
        if self.server.write_delay > MAX_WRITE_DELAY {
            return Err(ConfigError::invalid(
                "server.write_delay",
                "must be at most 1s (it delays every message by up to this)",
            ));
        }
        if self.server.pong_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.pong_timeout",
                "must be above zero",
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
        Ok(())
    }

    /// `[api]`: key length.
    fn validate_api(&self) -> Result<(), ConfigError> {
        for key in &self.api.keys {
            api_key_problem(key).map_err(|problem| ConfigError::invalid("api.keys", problem))?;
        }
        if self.api.body_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "api.body_timeout",
                "must be above zero",
            ));
        }
        Ok(())
    }

    /// `[database]`: URL scheme and pool size.
    fn validate_database(&self) -> Result<(), ConfigError> {
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
        if let Some(url) = &self.database.url {
            crate::tls::check_postgres_url(url)
                .map_err(|message| ConfigError::invalid("database.url", message))?;
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be above zero",
            ));
        }
        Ok(())
    }

    /// `[auth]`: the query store needs its query; the django store's
    /// user table and columns are SQL identifiers.
    fn validate_auth(&self) -> Result<(), ConfigError> {
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
        // Checked whatever the store, so a bad value never waits for the
        // day the store is switched to fail.
        self.auth.django_user()?;
        if self.auth.timeout.is_zero() {
            return Err(ConfigError::invalid("auth.timeout", "must be above zero"));
        }
        self.validate_jwt()
    }

    /// `[auth]` for `store = "jwt"`: exactly one key source, a long enough
    /// secret, and only algorithms of that key's family (so an HS token is
    /// never checked with a public key used as an HMAC secret).
    fn validate_jwt(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if a.store != StoreKind::Jwt {
            return Ok(());
        }
        let sources = [
            a.jwt_secret.is_some(),
            a.jwt_public_key_file.is_some(),
            a.jwt_jwks_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(ConfigError::invalid(
                "auth.jwt_secret",
                "auth.store = \"jwt\" needs exactly one of auth.jwt_secret, \
                 auth.jwt_public_key_file, auth.jwt_jwks_url",
            ));
        }
        if let Some(secret) = &a.jwt_secret
            && secret.len() < 32
        {
            return Err(ConfigError::invalid(
                "auth.jwt_secret",
                "must be at least 32 bytes",
            ));
        }
        if let Some(url) = &a.jwt_jwks_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::invalid(
                "auth.jwt_jwks_url",
                "must be an http:// or https:// URL",
            ));
        }
        if a.jwt_user_claim.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt_user_claim",
                "must not be empty",
            ));
        }
        if a.jwt_leeway > std::time::Duration::from_secs(300) {
            return Err(ConfigError::invalid("auth.jwt_leeway", "at most 5m"));
        }
        const HMAC: [&str; 3] = ["HS256", "HS384", "HS512"];
        const PUBLIC: [&str; 9] = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
        ];
        let family: &[&str] = if a.jwt_secret.is_some() {
            &HMAC
        } else {
            &PUBLIC
        };
        for alg in a.jwt_algorithms() {
            if !family.contains(&alg.as_str()) {
                let with = if a.jwt_secret.is_some() {
                    "with auth.jwt_secret: HS256, HS384, HS512"
                } else {
                    "with a public key: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                };
                return Err(ConfigError::invalid(
                    "auth.jwt_algorithms",
                    format!("{alg:?} is not accepted {with}"),
                ));
            }
        }
        if a.jwt_blacklist && !self.database_is_postgres() {
            return Err(ConfigError::invalid(
                "auth.jwt_blacklist",
                "needs a PostgreSQL database.url (SimpleJWT's blacklist tables)",
            ));
        }
        Ok(())
    }

    /// `redis.shards`: independent servers only (a Redis Cluster spreads
    /// its channels itself), each once, the first being `redis.url`.
    fn validate_redis_shards(&self) -> Result<(), ConfigError> {
        let shards = &self.redis.shards;
        if shards.is_empty() {
            return Ok(());
        }
        let invalid = |why: &str| Err(ConfigError::invalid("redis.shards", why));
        if shards.len() > MAX_REDIS_SHARDS {
            return invalid(&format!("at most {MAX_REDIS_SHARDS} servers"));
        }
        for (i, url) in shards.iter().enumerate() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return invalid("each must start with redis:// or rediss:// (one server each)");
            }
            if shards[..i].contains(url) {
                return invalid("lists a server twice");
            }
        }
        if self.redis.cluster {
            return invalid("independent servers only; not with redis.cluster");
        }
        if self.redis.url.as_deref() != shards.first().map(String::as_str) {
            return Err(ConfigError::invalid(
                "redis.url",
                "must be the first of redis.shards (or left unset)",
            ));
        }
        Ok(())
    }

    /// `[redis]`: URL scheme, prefix and timers.
    fn validate_redis(&self) -> Result<(), ConfigError> {
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
        self.validate_redis_shards()?;
        let tls = self.redis.tls_files();
        if !tls.is_empty()
            && !self
                .redis
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
        {
            let key = ["tls_ca_file", "tls_cert_file", "tls_key_file"]
                .into_iter()
                .zip([tls.ca, tls.cert, tls.key])
                .find_map(|(k, v)| v.map(|_| k))
                .unwrap_or("tls_ca_file");
            return Err(ConfigError::invalid(
                &format!("redis.{key}"),
                "needs a rediss:// redis.url (TLS); with redis:// it would not be used",
            ));
        }
        crate::tls::client_config(&tls).map_err(|e| ConfigError::invalid(&e.key, e.message))?;
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
        Ok(())
    }

    /// `[groups]`: every pattern must be able to name a group.
    fn validate_groups(&self) -> Result<(), ConfigError> {
        for (key, patterns) in [
            ("groups.allow", &self.groups.allow),
            ("groups.auto_join", &self.groups.auto_join),
            ("groups.client_publish", &self.groups.client_publish),
            ("groups.authorize", &self.groups.authorize),
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
        for p in &self.groups.snapshot {
            if !crate::protocol::is_valid_group(&p.replace('*', "x")) {
                return Err(ConfigError::invalid(
                    "groups.snapshot",
                    format!("{p:?} is not a group pattern (group characters and '*')"),
                ));
            }
        }
        if self.groups.snapshot_ttl.is_zero() {
            return Err(ConfigError::invalid(
                "groups.snapshot_ttl",
                "must be above zero",
            ));
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
        if self.groups.auto_join.iter().any(|p| p.contains('*')) {
            return Err(ConfigError::invalid(
                "groups.auto_join",
                "auto-joined groups cannot contain '*'",
            ));
        }
        Ok(())
    }

    /// `[history]`: patterns, size and lifetimes.
    fn validate_history(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[compat]`: channels_redis needs Redis.
    fn validate_compat(&self) -> Result<(), ConfigError> {
        if self.compat.channels_redis && self.redis.url.is_none() {
            return Err(ConfigError::invalid(
                "compat.channels_redis",
                "needs redis.url (channels_redis publishes through Redis)",
            ));
        }
        Ok(())
    }

    /// `[limits]`: counts above zero, and consistent with each other.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        if self.limits.conflate_after > self.limits.outbound_queue {
            return Err(ConfigError::invalid(
                "limits.conflate_after",
                "must not exceed limits.outbound_queue",
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
        if !(1..=128).contains(&self.limits.ipv6_prefix) {
            return Err(ConfigError::invalid(
                "limits.ipv6_prefix",
                "must be between 1 and 128",
            ));
        }
        if self.limits.max_message_bytes < crate::protocol::MAX_AUTH_FRAME_BYTES {
            return Err(ConfigError::invalid(
                "limits.max_message_bytes",
                "must be at least 4096 (the first frame may be 4 KiB)",
            ));
        }
        Ok(())
    }

    /// Upper bounds: past these, deadlines overflow or a queue cannot be made.
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        // Past these, deadlines overflow (`Instant + Duration` panics in
        // every session) or a queue cannot be made: no setting needs them.
        // New duration settings belong in this list.
        for (key, value) in [
            ("server.ping_interval", self.server.ping_interval),
            ("server.pong_timeout", self.server.pong_timeout),
            ("server.handshake_timeout", self.server.handshake_timeout),
            ("api.body_timeout", self.api.body_timeout),
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
            ("groups.snapshot_ttl", self.groups.snapshot_ttl),
            ("occupancy.linger", self.occupancy.linger),
            ("occupancy.webhook_timeout", self.occupancy.webhook_timeout),
            ("authorize.hook_timeout", self.authorize.hook_timeout),
            ("authorize.allow_ttl", self.authorize.allow_ttl),
            ("authorize.deny_ttl", self.authorize.deny_ttl),
            (
                "authorize.grant_max_lifetime",
                self.authorize.grant_max_lifetime,
            ),
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
        Ok(())
    }

    /// `[log]`: a filter the tracing parser accepts.
    fn validate_log(&self) -> Result<(), ConfigError> {
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
}

/// Why `key` cannot be an API key, if it cannot: the one rule for
/// `api.keys` and the embedded key file.
pub fn api_key_problem(key: &str) -> Result<(), &'static str> {
    if key.chars().count() < MIN_API_KEY_LEN {
        return Err("every key must be at least 16 characters");
    }
    if key.chars().any(char::is_whitespace) {
        return Err("a key must not contain white space");
    }
    Ok(())
}

/// Shortest API key.
pub const MIN_API_KEY_LEN: usize = 16;
/// Most servers in `redis.shards` (each costs every node three connections).
pub const MAX_REDIS_SHARDS: usize = 64;

impl Config {
    /// What is allowed but unsafe in production, said loudly at start-up
    /// (after validation, which refuses what is never right).
    pub fn startup_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.is_embedded() && self.server.allowed_origins.is_empty() {
            warnings.push(
                "server.allowed_origins is empty: any web page can open a WebSocket to this \
                 node with its visitors' tokens (cross-site WebSocket hijacking); list your \
                 front end's origins"
                    .to_string(),
            );
        }
        warnings
    }
}
