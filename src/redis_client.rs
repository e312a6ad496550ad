//! Building Redis clients from `[redis]` configuration.
//!
//! The broker and the auth cache both talk to Redis and must behave the same
//! way when it goes away: reconnect forever with a short, capped backoff
//! (a node should come back within a second or two of Redis), and never let
//! a command wait longer than `redis.command_timeout`, so a Redis outage
//! turns into quick errors rather than stuck sessions. Keeping the policy in
//! one place keeps the two from drifting apart.
//!
//! Cluster mode is chosen by a `redis-cluster://` URL or by `redis.cluster =
//! true` with a `redis://` URL; the URL then names one seed node (more can be
//! given with `?node=host:port`), the rest are discovered.

use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config, ConnectionConfig, PerformanceConfig, ReconnectPolicy,
};
use fred::types::config::UnresponsiveConfig;
use fred::types::{ConnectHandle, RespVersion, Value};

use crate::config::RedisConfig;

/// First reconnection delay, in milliseconds (doubled on each failure).
const RECONNECT_MIN_MS: u32 = 100;
/// Longest reconnection delay, in milliseconds.
const RECONNECT_MAX_MS: u32 = 1_000;
/// Most commands queued inside one client (a full queue fails commands fast).
const MAX_QUEUED_COMMANDS: usize = 50_000;

#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    #[error("redis.url is not set")]
    NoUrl,
    /// The fred error text names the problem, never the URL (it may hold a password).
    #[error("invalid redis.url: {0}")]
    BadUrl(String),
    #[error("cannot build the Redis client: {0}")]
    Build(String),
    #[error("cannot connect to Redis: {0}")]
    Connect(String),
    #[error("timed out connecting to Redis")]
    ConnectTimeout,
}

/// Whether the configuration asks for Redis Cluster.
pub fn is_cluster(cfg: &RedisConfig) -> bool {
    cfg.cluster
        || cfg.url.as_deref().is_some_and(|u| {
            u.starts_with("redis-cluster://") || u.starts_with("rediss-cluster://")
        })
}

/// The fred configuration for `cfg.url` (centralized or clustered).
pub fn fred_config(cfg: &RedisConfig) -> Result<Config, RedisSetupError> {
    let url = cfg.url.as_deref().ok_or(RedisSetupError::NoUrl)?;
    let mut config = if is_cluster(cfg) {
        Config::from_url_clustered(url)
    } else {
        Config::from_url(url)
    }
    .map_err(|e| RedisSetupError::BadUrl(e.details().to_string()))?;
    // `redis.tls_*`: a private CA and/or a client certificate (checked at
    // start-up by the configuration's validation).
    if let Some(tls) = crate::tls::client_config(&cfg.tls_files())
        .map_err(|e| RedisSetupError::Build(e.to_string()))?
    {
        config.tls = Some(tls.into());
    }
    // A node that starts while Redis is unreachable reports it instead of
    // hanging; once connected, the reconnect policy takes over.
    config.fail_fast = true;
    Ok(config)
}

/// Exponential backoff from 100 ms, capped at 1 s, unlimited attempts.
pub fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, RECONNECT_MIN_MS, RECONNECT_MAX_MS, 2)
}

/// A builder carrying the shared policy: reconnect forever, every command
/// bounded by `cfg.command_timeout`, connections that stop answering closed
/// and reopened.
pub fn builder(cfg: &RedisConfig) -> Result<Builder, RedisSetupError> {
    let config = fred_config(cfg)?;
    let timeout = cfg.command_timeout;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(reconnect_policy())
        .set_performance_config(PerformanceConfig {
            default_command_timeout: timeout,
            ..PerformanceConfig::default()
        })
        .set_connection_config(ConnectionConfig {
            connection_timeout: timeout.max(Duration::from_secs(1)),
            internal_command_timeout: timeout.max(Duration::from_secs(1)),
            max_command_buffer_len: MAX_QUEUED_COMMANDS,
            // One write per command. fred's default (3) writes a command
            // again after a reconnection if its connection closed while it
            // was in flight, whether or not Redis had run it: a publish was
            // delivered twice, answered 200, and an idempotency claim found
            // its own key and answered `duplicate` for a message never
            // published (tests/faults/lost_reply.rs). Such a command now
            // fails, which callers already handle as "may have run".
            // Commands not yet written when a connection drops still wait
            // for the reconnection, within their timeout.
            max_command_attempts: 1,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(timeout.max(Duration::from_millis(500)) * 2),
                interval: Duration::from_millis(500),
            },
            ..ConnectionConfig::default()
        });
    builder.with_connection_config(|c| c.tcp.nodelay = Some(true));
    Ok(builder)
}

/// A command client (not yet connected; see [`connect`]).
pub fn client(cfg: &RedisConfig) -> Result<Client, RedisSetupError> {
    builder(cfg)?
        .build()
        .map_err(|e| RedisSetupError::Build(e.details().to_string()))
}

/// A subscriber client whose message channel holds `capacity` messages
/// before a slow reader starts losing them.
pub fn subscriber(cfg: &RedisConfig, capacity: usize) -> Result<SubscriberClient, RedisSetupError> {
    subscriber_speaking(cfg, capacity, RespVersion::RESP2)
}

/// A [`subscriber`] that also runs other commands on its connection: RESP3
/// (`HELLO 3`, Redis 6 and later), where a subscribed connection is not
/// limited to (un)subscribing. The broker publishes on it (see
/// `broker::redis`). Connecting to a server without RESP3 fails, and
/// [`connect`] says why.
pub fn publishing_subscriber(
    cfg: &RedisConfig,
    capacity: usize,
) -> Result<SubscriberClient, RedisSetupError> {
    subscriber_speaking(cfg, capacity, RespVersion::RESP3)
}

fn subscriber_speaking(
    cfg: &RedisConfig,
    capacity: usize,
    version: RespVersion,
) -> Result<SubscriberClient, RedisSetupError> {
    let mut b = builder(cfg)?;
    b.with_performance_config(|p| p.broadcast_channel_capacity = capacity.max(32));
    b.with_config(|c| c.version = version);
    b.build_subscriber_client()
        .map_err(|e| RedisSetupError::Build(e.details().to_string()))
}

/// Connects `client`, waiting at most `within` for the first connection.
/// The returned handle drives the connection (and later reconnections)
/// until `quit`.
pub async fn connect<C: ClientLike>(
    client: &C,
    within: Duration,
) -> Result<ConnectHandle, RedisSetupError> {
    match tokio::time::timeout(within, client.init()).await {
        Ok(Ok(handle)) => Ok(handle),
        Ok(Err(e)) => Err(RedisSetupError::Connect(
            crate::tls::redis_error(e.details()).unwrap_or_else(|| explain(e.details())),
        )),
        Err(_) => {
            // Stop the connection task that `init` left behind.
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
            Err(RedisSetupError::ConnectTimeout)
        }
    }
}

/// What Redis made of a subscription (see [`subscribe_confirmed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    Held,
    /// Refused, with Redis's answer where fred passed it on.
    Refused(String),
}

/// Runs `subscribe` (a `SUBSCRIBE` or `PSUBSCRIBE` on `subscriber`, a RESP2
/// connection, see [`subscriber`]) with a `PING` queued behind it, and
/// reads Redis's verdict from the `PING`. fred answers subscription
/// commands when it writes them; Redis's refusal (`NOPERM`, a Redis user
/// without the channel) then reaches the `PING` as its answer, or is
/// dropped when the reply arrives before fred has the `PING` in flight
/// (seen in some runs of the channels_redis test). The `PING`'s answer tells
/// either way: a subscribed RESP2 connection answers `["pong", ""]`, any
/// other `+PONG`. On Redis Cluster fred sends a `PING` to any node, not
/// the one subscribed: there the subscription is taken as held, unchecked.
pub async fn subscribe_confirmed(
    subscriber: &SubscriberClient,
    subscribe: impl std::future::Future<Output = Result<(), fred::error::Error>>,
) -> Result<Subscription, fred::error::Error> {
    if subscriber.is_clustered() {
        return subscribe.await.map(|()| Subscription::Held);
    }
    let (subscribed, pong) = tokio::join!(subscribe, subscriber.ping::<Value>(None));
    subscribed?;
    match pong {
        Ok(Value::Array(reply))
            if reply
                .first()
                .and_then(Value::as_str)
                .is_some_and(|s| s.eq_ignore_ascii_case("pong")) =>
        {
            Ok(Subscription::Held)
        }
        Ok(_) => Ok(Subscription::Refused(
            "Redis refused the subscription; fred dropped its answer".into(),
        )),
        Err(e) if e.details().starts_with("NOPERM") => {
            Ok(Subscription::Refused(e.details().to_string()))
        }
        Err(e) => Err(e),
    }
}

/// fred's connect error, naming what a refused `HELLO` means (Redis 5:
/// "unknown command `HELLO`"; a server with the command renamed away says
/// the same).
fn explain(details: &str) -> String {
    let lower = details.to_ascii_lowercase();
    if lower.contains("unknown command") && lower.contains("hello") {
        let details = details.trim_end();
        format!(
            "{details} (the server does not speak RESP3, which the broker needs: Redis 6 or later)"
        )
    } else {
        details.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str, cluster: bool) -> RedisConfig {
        RedisConfig {
            url: Some(url.into()),
            cluster,
            ..RedisConfig::default()
        }
    }

    #[test]
    fn a_refused_hello_is_explained_and_nothing_else_is() {
        let refused = explain("ERR unknown command 'HELLO', with args beginning with: '3' ");
        assert!(
            refused.ends_with(
                "'3' (the server does not speak RESP3, which the broker needs: Redis 6 or later)"
            ),
            "{refused}"
        );
        let other = "failed to lookup address information: hello.invalid";
        assert_eq!(explain(other), other);
    }

    #[test]
    fn modes() {
        let c = fred_config(&cfg("redis://127.0.0.1:6379", false)).unwrap();
        assert!(c.server.is_centralized());
        let c = fred_config(&cfg("redis-cluster://127.0.0.1:7000", false)).unwrap();
        assert!(c.server.is_clustered());
        let c = fred_config(&cfg("redis://127.0.0.1:7000", true)).unwrap();
        assert!(c.server.is_clustered());
        let c = fred_config(&cfg("redis://u:pw@h:1/2", false)).unwrap();
        assert_eq!(c.password.as_deref(), Some("pw"));
        assert_eq!(c.database, Some(2));
        assert!(matches!(
            fred_config(&RedisConfig::default()),
            Err(RedisSetupError::NoUrl)
        ));
        let err = fred_config(&cfg("redis://u:secret@", false))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret"), "{err}");
    }
}
