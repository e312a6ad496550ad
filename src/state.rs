//! `AppState`: what the WebSocket side (handshake, sessions, health, drain)
//! shares. The backend API has its own, smaller state ([`crate::api::ApiState`]).
//!
//! Built once by the composition root (`server`), which alone picks the
//! concrete store and broker, and attaches the broker to the hub through a
//! [`crate::dispatch::Dispatcher`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::broker::{Broker, HistoryPolicy};
use crate::config::Config;
use crate::hub::Hub;
use crate::limits::{AuthFailureLimiter, ConnectionLimits, TrustedProxies};
use crate::metrics::Metrics;
use crate::policy::GroupPolicy;
use crate::subscribe_auth::SubscribeAuth;

#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Config,
    pub node_id: String,
    pub hub: Arc<Hub>,
    pub broker: Arc<dyn Broker>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    pub policy: GroupPolicy,
    /// `groups.authorize`: the backend's say on who joins which group.
    pub subscribe_auth: Arc<SubscribeAuth>,
    /// Which groups keep history (`history.*`); the broker keeps it.
    pub history: HistoryPolicy,
    /// Socket counts against `limits.max_*`, per node and per client IP.
    pub limits: Arc<ConnectionLimits>,
    /// Which peers' forwarding headers name the client.
    pub proxies: TrustedProxies,
    /// Authentication failures per client IP.
    pub auth_failures: AuthFailureLimiter,
    next_conn_id: AtomicU64,
    draining: AtomicBool,
    /// Flips to true when sessions must close with 1012 now (end of drain);
    /// pending sessions, which are not in the hub, watch it.
    closing: watch::Sender<bool>,
}

impl AppState {
    pub fn new(
        config: Config,
        broker: Arc<dyn Broker>,
        auth: Arc<Authenticator>,
        metrics: Arc<Metrics>,
        subscribe_auth: Arc<SubscribeAuth>,
    ) -> AppState {
        let node_id = config.node_id();
        let hub = Arc::new(
            Hub::new(
                node_id.clone(),
                config.limits.max_groups_per_connection,
                metrics.clone(),
            )
            .with_conflation(config.groups.conflate.clone())
            .with_max_held(config.limits.outbound_queue),
        );
        let policy = GroupPolicy::new(&config.groups);
        let history = HistoryPolicy::new(&config.history);
        let limits = ConnectionLimits::new(&config.limits, metrics.client_addresses.clone());
        let proxies = TrustedProxies::new(&config.server);
        let auth_failures = AuthFailureLimiter::new(&config.limits);
        AppState(Arc::new(Shared {
            config,
            node_id,
            hub,
            broker,
            auth,
            metrics,
            policy,
            subscribe_auth,
            history,
            limits,
            proxies,
            auth_failures,
            next_conn_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closing: watch::channel(false).0,
        }))
    }

    /// WebSocket sessions open on this node, pending or authenticated.
    pub fn open_sessions(&self) -> usize {
        self.limits.open()
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
        self.metrics.draining.set(1);
    }

    /// Tells sessions that have not authenticated yet to close with 1012.
    pub fn close_pending(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ready to take clients: not draining and the broker is up.
    pub fn is_ready(&self) -> bool {
        !self.is_draining() && self.broker.is_up()
    }
}
