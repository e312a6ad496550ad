//! `AppState`: everything a handler or session needs, shared by all of them.
//!
//! Built once by the composition root (`server`), which alone picks the
//! concrete store and broker. Also holds the [`Dispatcher`], the broker's
//! way into this node's hub.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::watch;

use crate::auth::{Authenticator, TokenDigest};
use crate::broker::{Broker, BrokerHandler, HistoryPolicy, NodeInfo};
use crate::config::Config;
use crate::hub::{Hub, Member};
use crate::limits::{AuthFailureLimiter, ConnectionLimits, TrustedProxies};
use crate::metrics::Metrics;
use crate::policy::GroupPolicy;
use crate::protocol::{CloseCode, Control, Publication};

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
    /// Which groups keep history (`history.*`); the broker keeps it.
    pub history: HistoryPolicy,
    /// SHA-256 digests of the API keys.
    pub api_key_digests: Vec<[u8; 32]>,
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
        api_keys: &[String],
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
        let limits = ConnectionLimits::new(&config.limits);
        let proxies = TrustedProxies::new(&config.server);
        let auth_failures = AuthFailureLimiter::new(&config.limits);
        let api_key_digests = api_keys
            .iter()
            .map(|k| crate::api::key_digest(k.as_bytes()))
            .collect();
        let state = AppState(Arc::new(Shared {
            config,
            node_id,
            hub: hub.clone(),
            broker: broker.clone(),
            auth,
            metrics: metrics.clone(),
            policy,
            history,
            api_key_digests,
            limits,
            proxies,
            auth_failures,
            next_conn_id: AtomicU64::new(1),
            draining: AtomicBool::new(false),
            closing: watch::channel(false).0,
        }));
        broker.attach(Arc::new(Dispatcher {
            hub,
            auth: state.auth.clone(),
        }));
        state
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

/// Receives what the broker delivers to this node and hands it to the hub.
pub struct Dispatcher {
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
}

impl BrokerHandler for Dispatcher {
    fn on_publication(&self, publication: Publication) {
        let span = tracing::info_span!(
            "deliver",
            group = %publication.group,
            recipients = tracing::field::Empty,
        );
        if let Some(tp) = &publication.trace {
            crate::telemetry::set_parent_from_traceparent(&span, tp);
        }
        let _enter = span.enter();
        let n = self.hub.deliver(&publication);
        span.record("recipients", n);
    }

    fn on_control(&self, control: Control) {
        let closed = match &control {
            Control::DisconnectUser { user_id } => {
                self.hub.close_user(user_id, CloseCode::AuthFailed)
            }
            Control::RevokeDigest { digest } => match TokenDigest::from_hex(digest) {
                Some(d) => {
                    // Forget it here first, so a reconnect cannot be let in
                    // by this node's in-process cache.
                    self.auth.forget_local(&d);
                    self.hub.close_digest(&d, CloseCode::AuthFailed)
                }
                None => 0,
            },
        };
        if closed > 0 {
            tracing::info!(closed, op = control_name(&control), "closing connections");
        }
    }

    fn local_presence(&self, group: &str) -> Vec<Member> {
        self.hub.presence(group)
    }

    fn local_node(&self) -> NodeInfo {
        NodeInfo {
            node: self.hub.node().to_string(),
            connections: self.hub.connection_count() as u64,
            last_seen_ms: crate::clock::unix_ms(),
        }
    }
}

fn control_name(c: &Control) -> &'static str {
    match c {
        Control::DisconnectUser { .. } => "disconnect",
        Control::RevokeDigest { .. } => "revoke",
    }
}
