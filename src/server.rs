//! The composition root: the one place that picks concrete backends (which
//! store, which broker), binds the listeners and runs the node until it is
//! told to stop, then drains.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::StoreError;
use crate::auth::cache::RedisTokenCache;
use crate::auth::revalidate::Revalidator;
use crate::auth::sql::{Backend, Db, store_for};
use crate::auth::{Authenticator, TokenStore};
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, HistoryPolicy};
use crate::config::Config;
use crate::ops::metrics::Metrics;
use crate::state::AppState;
use crate::{api, handshake, ops, redis_client};

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
}

/// Where a running node listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub ws: SocketAddr,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Public,
    Api,
    Metrics,
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
    compat: Option<crate::compat::ChannelsBridge>,
    listeners: Vec<(TcpListener, Router)>,
    addrs: Addrs,
}

impl Server {
    /// Connects the backends, applies migrations and binds every listener.
    pub async fn build(config: Config) -> Result<Server, StartError> {
        let metrics = Arc::new(Metrics::new());
        // Keys first: a refused start should not create a database file.
        let api_keys = resolve_api_keys(&config)?;
        let db = Db::connect(&config).await?;
        if config.database.migrate {
            db.migrate().await?;
        }
        let on_postgres = db.backend == Backend::Postgres;
        let store: Arc<dyn TokenStore> = Arc::from(store_for(&config, db));
        // Without Redis: the in-process broker and an in-process token cache.
        // With Redis: the Redis broker, and the Redis cache in front of the store.
        let (broker, auth, cache_client): (Arc<dyn Broker>, _, _) = match &config.redis.url {
            None => {
                metrics.redis_up.set(1);
                let auth = Authenticator::with_local_cache(
                    store,
                    config.auth.cache_ttl,
                    config.auth.negative_ttl,
                    metrics.clone(),
                );
                let history = HistoryPolicy::new(&config.history);
                (Arc::new(MemoryBroker::with_history(history)), auth, None)
            }
            Some(_) => {
                let history = HistoryPolicy::new(&config.history);
                let broker = RedisBroker::connect_with(
                    &config.redis,
                    config.node_id(),
                    metrics.clone(),
                    history,
                )
                .await
                .map_err(|e| StartError::Redis(e.to_string()))?;
                let client = redis_client::client(&config.redis)
                    .map_err(|e| StartError::Redis(e.to_string()))?;
                let within = config.redis.command_timeout * 3;
                redis_client::connect(&client, within)
                    .await
                    .map_err(|e| StartError::Redis(e.to_string()))?;
                let cache = RedisTokenCache::new(
                    client.clone(),
                    config.redis.prefix.clone(),
                    config.auth.cache_ttl,
                    config.auth.negative_ttl,
                    config.redis.command_timeout,
                    metrics.clone(),
                );
                let auth = Authenticator::with_cache(store, cache);
                (broker as Arc<dyn Broker>, auth, Some(client))
            }
        };
        let auth = Arc::new(auth);
        let state = AppState::new(config, broker, auth, metrics, &api_keys);
        // channels_redis group messages, delivered to this node's members only.
        let compat = if state.config.compat.channels_redis {
            let hub = state.hub.clone();
            let deliver: crate::compat::Deliver = Arc::new(move |p| hub.deliver(p));
            let bridge = crate::compat::ChannelsBridge::start(&state.config, deliver)
                .await
                .map_err(|e| StartError::Redis(e.to_string()))?;
            Some(bridge)
        } else {
            None
        };
        // Periodic re-validation, and the catch-up sweep after the listener
        // below reconnects (notices sent meanwhile are lost): see auth::revalidate.
        let revalidator = (on_postgres || !state.config.auth.revalidate_interval.is_zero())
            .then(|| Revalidator::new(state.hub.clone(), state.auth.clone(), &state.config.auth));
        // Deleting or revoking a token in Postgres closes its sockets.
        let revocations = if on_postgres {
            let url = Db::url(&state.config);
            let (auth, hub) = (state.auth.clone(), state.hub.clone());
            let task = crate::auth::listen::listen(&url, auth, hub, revalidator.clone())
                .await
                .map_err(|e| StartError::Store(StoreError::Unavailable(e.to_string())))?;
            Some(task)
        } else {
            None
        };

        let config = &state.config;
        // One listener per distinct address (port 0 always gets its own);
        // roles that share an address share its router.
        let mut by_addr: Vec<(SocketAddr, Vec<Role>)> = Vec::new();
        for (addr, role) in [
            (config.server.listen, Role::Public),
            (config.api.listen, Role::Api),
            (config.metrics.listen, Role::Metrics),
        ] {
            match by_addr
                .iter_mut()
                .find(|(a, _)| *a == addr && addr.port() != 0)
            {
                Some((_, roles)) => roles.push(role),
                None => by_addr.push((addr, vec![role])),
            }
        }
        let mut listeners = Vec::new();
        let (mut ws, mut api, mut metrics) = (None, None, None);
        for (addr, roles) in by_addr {
            let listener = bind(addr).map_err(|source| StartError::Bind { addr, source })?;
            let local = listener
                .local_addr()
                .map_err(|source| StartError::Bind { addr, source })?;
            let mut router = Router::new();
            if roles.contains(&Role::Public) || roles.contains(&Role::Metrics) {
                router = router.merge(ops::health_router(state.clone()));
            }
            for role in roles {
                router = match role {
                    Role::Public => {
                        ws = Some(local);
                        router.merge(
                            Router::new()
                                .route(&config.server.ws_path, get(handshake::upgrade))
                                .with_state(state.clone()),
                        )
                    }
                    Role::Api => {
                        api = Some(local);
                        router.merge(api::router(state.clone()))
                    }
                    Role::Metrics => {
                        metrics = Some(local);
                        router.merge(ops::metrics_router(state.clone()))
                    }
                };
            }
            listeners.push((listener, router));
        }
        let (Some(ws), Some(api), Some(metrics)) = (ws, api, metrics) else {
            unreachable!("every role is bound above");
        };
        let addrs = Addrs { ws, api, metrics };
        Ok(Server {
            state,
            revocations,
            revalidation: revalidator.map(Revalidator::spawn),
            cache_client,
            compat,
            listeners,
            addrs,
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
            servers.push(tokio::spawn(serve_listener(
                listener,
                router,
                handshake_timeout,
                self.state.metrics.clone(),
                stop_rx.clone(),
            )));
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

/// Listen backlog: reconnect storms (a drained node's clients arriving at
/// once) need more than the usual 128 or 1024 pending handshakes.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accepts connections until `stop` flips, serving HTTP/1.1 with upgrades.
///
/// Our own loop rather than `axum::serve`, for two things it does not do: a
/// deadline on the request headers (`server.handshake_timeout`), so slow or
/// half-open upgrades (slowloris) are dropped, and the peer address as
/// `ConnectInfo` for the per-IP limits.
async fn serve_listener(
    listener: TcpListener,
    router: Router,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // Every connection task holds a sender; when all are dropped, all are done.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                tower_service::Service::call(&mut router.clone(), request)
            },
        );
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(handshake_timeout)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        let mut stop = stop.clone();
        let done = done_tx.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _done = done;
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    // The request headers did not arrive in time (slowloris).
                    metrics.rejected("handshake_timeout");
                }
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    // Plain HTTP connections (API calls, probes) get a moment to finish;
    // an upgraded socket leaves hyper at its upgrade (the drain closed it).
    drop(done_tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), done_rx.recv()).await;
}

/// The API keys in force. Without configured keys, embedded mode (no
/// database URL, no Redis) generates one at first start and keeps it in a
/// file readable only by its owner; any other mode refuses to start, so no
/// default key can ever open a production API.
fn resolve_api_keys(config: &Config) -> Result<Vec<String>, StartError> {
    if !config.api.keys.is_empty() {
        return Ok(config.api.keys.clone());
    }
    if !config.is_embedded() {
        return Err(StartError::Config {
            key: "api.keys",
            message: "required when database.url or redis.url is set".into(),
        });
    }
    let path = config
        .api
        .key_file
        .clone()
        .unwrap_or_else(|| config.database.sqlite_path.with_extension("api-key"));
    let key_file_error = |source| StartError::KeyFile {
        path: path.clone(),
        source,
    };
    if path.exists() {
        let key = std::fs::read_to_string(&path).map_err(key_file_error)?;
        return Ok(vec![key.trim().to_string()]);
    }
    let key = generate_api_key();
    write_private(&path, &key).map_err(key_file_error)?;
    eprintln!(
        "wsgate: no api.keys configured; generated an API key for embedded mode in {} \
         (use it with: Authorization: Bearer $(cat {}))",
        path.display(),
        path.display()
    );
    Ok(vec![key])
}

fn generate_api_key() -> String {
    use base64::Engine;
    let bytes: [u8; 32] = rand::random();
    format!(
        "wsk_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.write_all(b"\n")
}
