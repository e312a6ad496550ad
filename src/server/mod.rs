//! The composition root: the one place that picks concrete backends (which
//! store, which broker), binds the listeners and runs the node until it is
//! told to stop, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

mod keys;
mod listen;
mod proxy_protocol;

use crate::api::{ApiKeys, ApiShared, ApiState};
use crate::auth::StoreError;
use crate::auth::batch::{self, Batched};
use crate::auth::cache::RedisTokenCache;
use crate::auth::sql::{Backend, Db, store_for};
use crate::auth::{Authenticator, TokenStore};
use crate::broker::idempotency::Idempotency;
use crate::broker::idempotency_memory::MemoryIdempotency;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::idempotency::RedisIdempotency;
use crate::broker::redis::{RedisControl, ShardedBroker};
use crate::broker::{Broker, HistoryPolicy, SnapshotPolicy};
use crate::compat::ChannelsBridge;
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::ops;
use crate::outbox::{Outbox, OutboxTasks};
use crate::redis_client;
use crate::revocation::Forget;
use crate::revocation::revalidate::Revalidator;
use crate::state::AppState;
use crate::subscribe_auth::SubscribeAuth;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("database: {0}")]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("API key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(#[from] crate::config::ConfigError),
    #[error("outbox: {0}")]
    Outbox(#[from] crate::outbox::OutboxError),
}

/// Where a running node listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
}

pub struct Server {
    state: AppState,
    /// The Postgres revocation listener, when the store is on Postgres.
    revocations: Option<tokio::task::JoinHandle<()>>,
    /// Re-validation sweeps (`auth.revalidate_interval`, and catch-ups after
    /// the revocation listener reconnects).
    revalidation: Option<tokio::task::JoinHandle<()>>,
    /// The auth cache's Redis client, closed after the broker at the end of
    /// a drain.
    cache_client: Option<fred::clients::Client>,
    /// Delivers Django Channels `group_send` (`compat.channels_redis`).
    compat: Option<ChannelsBridge>,
    /// Publishes `wsgate_outbox` rows (`outbox.enabled`).
    outbox: Option<OutboxTasks>,
    listeners: Vec<(TcpListener, Router)>,
    addrs: Addrs,
    /// Counting occupancy events and the webhook (`[occupancy]`).
    occupancy: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Connects the backends, applies migrations and binds every listener,
    /// one named step at a time.
    pub async fn build(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Keys first: a refused start should not create a database file.
        let api_keys = keys::resolve_api_keys(&config)?;
        let (store, on_postgres) = open_store(&config).await?;
        let backends = connect_backends(&config, store, &metrics).await?;
        let history = HistoryPolicy::new(&config.history);
        let idempotency = backends.idempotency;
        let subscribe_auth = Arc::new(
            SubscribeAuth::new(
                &config.groups,
                &config.authorize,
                config.node_id(),
                metrics.clone(),
            )
            .map_err(|message| StartError::Config {
                key: "authorize",
                message,
            })?,
        );
        let state = AppState::new(
            config,
            backends.broker.clone(),
            backends.auth,
            metrics,
            subscribe_auth,
        );
        let forget = Forget::new(state.auth.clone(), state.hub.clone());
        state.broker.attach(Arc::new(Dispatcher::new(
            state.hub.clone(),
            forget.clone(),
            state.subscribe_auth.clone(),
            Arc::downgrade(&state.broker),
        )));
        let occupancy = crate::occupancy::start(&state.config, &state.broker, &state.metrics)
            .map_err(|e| StartError::Config {
                key: "occupancy.webhook_url",
                message: e.to_string(),
            })?;
        let compat = start_compat(&state).await?;
        let (revalidator, revocations) = start_revocation(&state, on_postgres, forget).await?;
        let outbox = start_outbox(&state, idempotency.clone()).await?;
        let api = ApiState::new(ApiShared {
            keys: ApiKeys::new(&api_keys),
            broker: state.broker.clone(),
            auth: state.auth.clone(),
            metrics: state.metrics.clone(),
            history,
            body_timeout: state.config.api.body_timeout,
            idempotency,
            idempotency_window: state.config.api.idempotency_window,
        });
        let (listeners, addrs) = listen::bind_roles(&state, api)?;
        Ok(Server {
            state,
            revocations,
            revalidation: revalidator.map(Revalidator::spawn),
            cache_client: backends.cache_client,
            compat,
            outbox,
            listeners,
            addrs,
            occupancy,
        })
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Adds routes to the public listener. Only `wsgate demo` does (its
    /// page), so no configuration can expose them in `serve`.
    pub fn with_public_routes(mut self, routes: Router) -> Server {
        let ws = self.addrs.ws;
        for (listener, router) in &mut self.listeners {
            if listener.local_addr().ok() == Some(ws) {
                *router = std::mem::take(router).merge(routes.clone());
            }
        }
        self
    }

    /// Serves until `shutdown` completes, then drains and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut servers = Vec::new();
        let handshake_timeout = self.state.config.server.handshake_timeout;
        for (listener, router) in self.listeners {
            let public = listener.local_addr().ok() == Some(self.addrs.ws);
            // Only the public listener speaks PROXY protocol (validation
            // refuses a shared one).
            let proxy_protocol = self.state.config.server.proxy_protocol && public;
            servers.push(tokio::spawn(listen::serve_listener(
                listener,
                router,
                handshake_timeout,
                proxy_protocol,
                public,
                self.state.metrics.clone(),
                stop_rx.clone(),
            )));
        }
        for warning in self.state.config.startup_warnings() {
            tracing::warn!("{warning}");
        }
        tracing::info!(
            node = %self.state.node_id,
            ws = %self.addrs.ws,
            api = %self.addrs.api,
            metrics = %self.addrs.metrics,
            store = self.state.auth.store_name(),
            "wsgate serving"
        );
        shutdown.await;
        // Other nodes take over the outbox while this one drains.
        if let Some(outbox) = &self.outbox {
            outbox.stop();
        }
        ops::drain::drain(&self.state).await;
        if let Some(compat) = &self.compat {
            compat.shutdown().await;
        }
        if let Some(task) = &self.revocations {
            task.abort();
        }
        if let Some(task) = &self.revalidation {
            task.abort();
        }
        // Leaves the cluster (a no-op for the in-process broker).
        self.state.broker.shutdown().await;
        for task in &self.occupancy {
            task.abort();
        }
        if let Some(cache_client) = &self.cache_client {
            use fred::interfaces::ClientLike;
            let _ = tokio::time::timeout(Duration::from_secs(2), cache_client.quit()).await;
        }
        let _ = stop_tx.send(true);
        for server in servers {
            let _ = server.await;
        }
    }
}

/// Opens the database, applies migrations when asked, and picks the store
/// (`auth.store`). Also says whether it is on Postgres (which has the
/// revocation listener).
async fn open_store(config: &Config) -> Result<(Arc<dyn TokenStore>, bool), StartError> {
    // The store's SQL is checked before the database is touched.
    config.auth.django_user()?;
    let db = Db::connect(config).await?;
    if config.database.migrate {
        db.migrate().await?;
    }
    let on_postgres = db.backend == Backend::Postgres;
    let store: Arc<dyn TokenStore> = Arc::from(store_for(config, db)?);
    // Concurrent lookups of uncached tokens share one query.
    let store = Batched::wrap(store, batch::IN_FLIGHT, config.auth.timeout);
    Ok((store, on_postgres))
}

/// The broker and the token caches, chosen by `redis.url`.
struct Backends {
    broker: Arc<dyn Broker>,
    auth: Arc<Authenticator>,
    /// The auth cache's Redis client, closed at the end of a drain.
    cache_client: Option<fred::clients::Client>,
    /// Where idempotency keys are remembered: beside the broker, as wide
    /// as delivery (Redis, or this process).
    idempotency: Arc<dyn Idempotency>,
}

/// Without Redis: the in-process broker and an in-process token cache.
/// With Redis: the Redis broker, and the Redis cache in front of the store.
async fn connect_backends(
    config: &Config,
    store: Arc<dyn TokenStore>,
    metrics: &Arc<Metrics>,
) -> Result<Backends, StartError> {
    let history = HistoryPolicy::new(&config.history);
    let snapshots = SnapshotPolicy::new(&config.groups);
    if config.redis.url.is_none() {
        metrics.redis_up.set(1);
        let auth = Authenticator::with_local_cache(
            store,
            config.auth.cache_ttl,
            config.auth.negative_ttl,
            metrics.clone(),
        )
        .with_lookup_timeout(config.auth.timeout);
        return Ok(Backends {
            broker: Arc::new({
                let broker = MemoryBroker::with_history(history).with_snapshots(snapshots);
                match crate::occupancy::settings(config) {
                    Some(occupancy) => broker.with_occupancy(&occupancy),
                    None => broker,
                }
            }),
            auth: Arc::new(auth),
            cache_client: None,
            idempotency: Arc::new(MemoryIdempotency::new(
                config.api.idempotency_capacity,
                config.api.idempotency_window,
            )),
        });
    }
    let redis_error = |e: &dyn std::fmt::Display| StartError::Redis(e.to_string());
    let broker = ShardedBroker::connect(
        &config.redis,
        config.node_id(),
        metrics.clone(),
        history,
        snapshots,
    )
    .await
    .map_err(|e| redis_error(&e))?;
    if let Some(occupancy) = crate::occupancy::settings(config) {
        broker.start_occupancy(occupancy);
    }
    let (cache, client) = token_cache(config, metrics.clone()).await?;
    // Shares the token cache's client: both are plain key commands.
    // (built by `redis_client`, so each command is bounded by
    // `redis.command_timeout`).
    let idempotency = RedisIdempotency::new(client.clone(), &config.redis.prefix);
    Ok(Backends {
        broker,
        auth: Arc::new(
            Authenticator::with_cache(store, cache).with_lookup_timeout(config.auth.timeout),
        ),
        cache_client: Some(client),
        idempotency: Arc::new(idempotency),
    })
}

/// Django Channels `group_send` (`compat.channels_redis`), delivered to this
/// node's members only.
async fn start_compat(state: &AppState) -> Result<Option<ChannelsBridge>, StartError> {
    if !state.config.compat.channels_redis {
        return Ok(None);
    }
    let hub = state.hub.clone();
    let deliver: crate::compat::Deliver = Arc::new(move |p| hub.deliver(p));
    ChannelsBridge::start(&state.config, deliver)
        .await
        .map(Some)
        .map_err(|e| StartError::Redis(e.to_string()))
}

/// Periodic re-validation, the Postgres revocation listener, and the
/// catch-up sweep the listener asks for after it reconnects (notices sent
/// meanwhile are lost): see [`crate::revocation`].
async fn start_revocation(
    state: &AppState,
    on_postgres: bool,
    forget: Forget,
) -> Result<
    (
        Option<Arc<Revalidator>>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    StartError,
> {
    let revalidator = (on_postgres || !state.config.auth.revalidate_interval.is_zero())
        .then(|| Revalidator::new(state.hub.clone(), state.auth.clone(), &state.config.auth));
    if !on_postgres {
        return Ok((revalidator, None));
    }
    let url = Db::url(&state.config);
    let task = crate::revocation::listen::listen(&url, forget, revalidator.clone())
        .await
        .map_err(|e| StartError::Store(StoreError::Unavailable(e.to_string())))?;
    Ok((revalidator, Some(task)))
}

/// The transactional outbox (`outbox.enabled`; validation made sure the
/// database is PostgreSQL): see [`crate::outbox`].
async fn start_outbox(
    state: &AppState,
    idempotency: Arc<dyn Idempotency>,
) -> Result<Option<OutboxTasks>, StartError> {
    if !state.config.outbox.enabled {
        return Ok(None);
    }
    let url = Db::url(&state.config);
    let outbox = Outbox::connect(
        &state.config,
        &url,
        state.broker.clone(),
        idempotency,
        state.metrics.clone(),
    )
    .await?;
    Ok(Some(outbox.start(&url).await?))
}

/// What `wsgate token revoke` needs to revoke a token in a running cluster
/// without joining it: the store behind the shared token cache (so the
/// revocation writes the Redis tombstone), and a sender of control commands
/// (so every node closes the token's sockets). Embedded mode has neither a
/// shared cache nor a channel to the node: `None`.
pub async fn revoker(config: &Config) -> Result<(Authenticator, Option<RedisControl>), StartError> {
    let (store, _) = open_store(config).await?;
    if config.redis.url.is_none() {
        return Ok((Authenticator::new(store), None));
    }
    let redis_error = |e: &dyn std::fmt::Display| StartError::Redis(e.to_string());
    let control = RedisControl::connect(&config.redis)
        .await
        .map_err(|e| redis_error(&e))?;
    let (cache, _client) = token_cache(config, Arc::new(Metrics::new())).await?;
    let auth = Authenticator::with_cache(store, cache).with_lookup_timeout(config.auth.timeout);
    Ok((auth, Some(control)))
}

/// The Redis token cache, and its client (to close at the end of a drain).
async fn token_cache(
    config: &Config,
    metrics: Arc<Metrics>,
) -> Result<(RedisTokenCache, fred::clients::Client), StartError> {
    let redis_error = |e: &dyn std::fmt::Display| StartError::Redis(e.to_string());
    let client = redis_client::client(&config.redis).map_err(|e| redis_error(&e))?;
    redis_client::connect(&client, config.redis.command_timeout * 3)
        .await
        .map_err(|e| redis_error(&e))?;
    let cache = RedisTokenCache::new(
        client.clone(),
        config.redis.prefix.clone(),
        config.auth.cache_ttl,
        config.auth.negative_ttl,
        config.redis.command_timeout,
        metrics,
    );
    Ok((cache, client))
}
