//! Prometheus metrics.
//!
//! Every metric is registered, and every fixed label value created, at
//! start-up, so dashboards and alerts see zeros rather than gaps. The struct
//! holds ready-made children for the hot paths, so counting is one atomic
//! add with no label lookup.
//!
//! Every label set comes from an enum through [`LabelSet`]: the values a
//! metric can take are the enum's, never a second list kept by hand (a test
//! checks the README's tables against [`Metrics::catalog`]). A leaf module:
//! the wire protocol's codes are all it names. Beside them: the standard
//! `process_*` metrics (Linux) and `wsgate_build_info{version,commit}`,
//! whose two labels come from the build rather than an enum.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::protocol::{ApiErrorCode, ErrorCode};

/// The crate version, the `version` label of `wsgate_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit built (`build.rs`: git, else `WSGATE_COMMIT`, else
/// `unknown`), the `commit` label of `wsgate_build_info`.
pub const COMMIT: &str = env!("WSGATE_COMMIT");

mod labels;

pub use labels::*;

/// Creates every value of `L` on `vec`, so each is exposed at zero.
fn precreate<L: LabelSet>(vec: &IntCounterVec) {
    for label in L::labels() {
        vec.with_label_values(&[label]);
    }
}

pub struct Metrics {
    registry: Registry,
    pub connections_pending: IntGauge,
    pub connections_authenticated: IntGauge,
    pub connections_opened: IntCounter,
    connections_closed: IntCounterVec,
    /// The children of `connections_closed`, made once: a close counts with
    /// no formatting and no label lookup.
    closes: Vec<(u16, IntCounter)>,
    close_other: IntCounter,
    pub auth_success: IntCounter,
    auth_failures: IntCounterVec,
    auth_duration: HistogramVec,
    cache_requests: IntCounterVec,
    /// Redis token-cache calls that failed or timed out (never fatal: the
    /// store answers instead).
    pub auth_cache_errors: IntCounter,
    pub messages_published: IntCounter,
    pub messages_delivered: IntCounter,
    pub messages_conflated: IntCounter,
    /// Publishes not delivered again because their idempotency key was
    /// already held (an API retry, an outbox row published before).
    pub publish_duplicates: IntCounter,
    /// Outbox rows this node published.
    pub outbox_published: IntCounter,
    /// Outbox batches that failed (rolled back, retried) and rows dropped
    /// as invalid.
    pub outbox_errors: IntCounter,
    messages_dropped: IntCounterVec,
    pub delivery_latency: Histogram,
    pub groups: IntGauge,
    pub redis_up: IntGauge,
    pub draining: IntGauge,
    /// Distinct client addresses (per-IP limit keys) among open WebSocket
    /// connections: a handful under load means an undeclared proxy.
    pub client_addresses: IntGauge,
    rejected: IntCounterVec,
    request_errors: IntCounterVec,
    api_errors: IntCounterVec,
    rate_limited: IntCounterVec,
    occupancy_events: IntCounterVec,
    occupancy_webhooks: IntCounterVec,
    authorizations: IntCounterVec,
    /// Round trips of the subscribe hook, answered or not.
    pub authorize_hook_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("wsgate_connections", "Open WebSocket connections by state."),
            &["state"],
        )
        .expect("metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "wsgate_connections_closed_total",
                "WebSocket connections closed, by close code.",
            ),
            &["code"],
        )
        .expect("metric");
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "wsgate_auth_failures_total",
                "Failed authentications, by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let auth_duration = HistogramVec::new(
            HistogramOpts::new(
                "wsgate_auth_duration_seconds",
                "Time to verify a token, by the layer that answered.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
            &["source"],
        )
        .expect("metric");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "wsgate_auth_cache_requests_total",
                "Token cache lookups, by result.",
            ),
            &["result"],
        )
        .expect("metric");
        let messages_dropped = IntCounterVec::new(
            Opts::new(
                "wsgate_messages_dropped_total",
                "Messages not delivered to a connection, by reason.",
            ),
            &["reason"],
        )
        .expect("metric");
        let m = Metrics {
            connections_pending: connections.with_label_values(&["pending"]),
            connections_authenticated: connections.with_label_values(&["authenticated"]),
            connections_opened: IntCounter::new(
                "wsgate_connections_opened_total",
                "WebSocket connections upgraded.",
            )
            .expect("metric"),
            closes: labelled_close_codes()
                .into_iter()
                .map(|c| (c, connections_closed.with_label_values(&[&c.to_string()])))
                .collect(),
            close_other: connections_closed.with_label_values(&["other"]),
            connections_closed,
            auth_success: IntCounter::new(
                "wsgate_auth_success_total",
                "Successful authentications.",
            )
            .expect("metric"),
            auth_failures,
            auth_duration,
            cache_requests,
            auth_cache_errors: IntCounter::new(
                "wsgate_auth_cache_errors_total",
                "Redis token-cache calls that failed or timed out.",
            )
            .expect("metric"),
            messages_published: IntCounter::new(
                "wsgate_messages_published_total",
                "Messages published through this node (API, client publish).",
            )
            .expect("metric"),
            messages_delivered: IntCounter::new(
                "wsgate_messages_delivered_total",
                "Messages written to client sockets.",
            )
            .expect("metric"),
            messages_conflated: IntCounter::new(
                "wsgate_messages_conflated_total",
                "Queued messages replaced by a newer one with the same key (groups.conflate).",
            )
            .expect("metric"),
            publish_duplicates: IntCounter::new(
                "wsgate_publish_duplicates_total",
                "Publishes not delivered again: their idempotency key was held (API retries, outbox rows).",
            )
            .expect("metric"),
            outbox_published: IntCounter::new(
                "wsgate_outbox_published_total",
                "Outbox rows published by this node.",
            )
            .expect("metric"),
            outbox_errors: IntCounter::new(
                "wsgate_outbox_errors_total",
                "Outbox batches rolled back after an error, and invalid rows dropped.",
            )
            .expect("metric"),
            messages_dropped,
            delivery_latency: Histogram::with_opts(
                HistogramOpts::new(
                    "wsgate_delivery_latency_seconds",
                    "Time from publish to the write to a client socket.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("metric"),
            groups: IntGauge::new("wsgate_groups", "Groups with at least one local member.")
                .expect("metric"),
            redis_up: IntGauge::new(
                "wsgate_redis_up",
                "1 while Redis is reachable (1 when not configured).",
            )
            .expect("metric"),
            draining: IntGauge::new("wsgate_draining", "1 while the node drains.").expect("metric"),
            client_addresses: IntGauge::new(
                "wsgate_client_addresses",
                "Distinct client addresses (IPv6 by limits.ipv6_prefix) among open WebSocket \
                 connections.",
            )
            .expect("metric"),
            rejected: IntCounterVec::new(
                Opts::new(
                    "wsgate_connections_rejected_total",
                    "WebSocket upgrades refused before the upgrade, by reason.",
                ),
                &["reason"],
            )
            .expect("metric"),
            api_errors: IntCounterVec::new(
                Opts::new(
                    "wsgate_api_errors_total",
                    "Backend API calls refused, by error (401, 400, 413, ...).",
                ),
                &["error"],
            )
            .expect("metric"),
            request_errors: IntCounterVec::new(
                Opts::new(
                    "wsgate_request_errors_total",
                    "Client requests refused with an error reply, by code.",
                ),
                &["code"],
            )
            .expect("metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "wsgate_rate_limited_total",
                    "Requests refused by a rate limit: auth (per-IP failures, closed 4029), \
                     messages (per-connection requests, rate_limited), closed (4029).",
                ),
                &["kind"],
            )
            .expect("metric"),
            occupancy_events: IntCounterVec::new(
                Opts::new(
                    "wsgate_occupancy_events_total",
                    "Occupancy transitions this node emitted (each is emitted by one node).",
                ),
                &["event"],
            )
            .expect("metric"),
            occupancy_webhooks: IntCounterVec::new(
                Opts::new(
                    "wsgate_occupancy_webhooks_total",
                    "Occupancy webhook attempts and events, by result.",
                ),
                &["result"],
            )
            .expect("metric"),
            authorizations: IntCounterVec::new(
                Opts::new(
                    "wsgate_subscribe_authorizations_total",
                    "Subscribes to groups.authorize groups, by how they were decided.",
                ),
                &["outcome"],
            )
            .expect("metric"),
            authorize_hook_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "wsgate_subscribe_hook_duration_seconds",
                    "Round trips of the subscribe hook (cache hits make none).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            )
            .expect("metric"),
            registry,
        };
        precreate::<AuthFailure>(&m.auth_failures);
        for s in AuthSource::labels() {
            m.auth_duration.with_label_values(&[s]);
        }
        precreate::<CacheResult>(&m.cache_requests);
        precreate::<DropReason>(&m.messages_dropped);
        precreate::<Rejection>(&m.rejected);
        precreate::<ErrorCode>(&m.request_errors);
        precreate::<ApiErrorCode>(&m.api_errors);
        precreate::<RateLimit>(&m.rate_limited);
        precreate::<OccupancyEventLabel>(&m.occupancy_events);
        precreate::<WebhookResult>(&m.occupancy_webhooks);
        precreate::<AuthorizeOutcome>(&m.authorizations);
        let build_info = IntGaugeVec::new(
            Opts::new(
                "wsgate_build_info",
                "Always 1; the labels say which version and commit this node runs.",
            ),
            &["version", "commit"],
        )
        .expect("metric");
        build_info.with_label_values(&[VERSION, COMMIT]).set(1);
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(connections),
            Box::new(m.connections_opened.clone()),
            Box::new(m.connections_closed.clone()),
            Box::new(m.auth_success.clone()),
            Box::new(m.auth_failures.clone()),
            Box::new(m.auth_duration.clone()),
            Box::new(m.cache_requests.clone()),
            Box::new(m.auth_cache_errors.clone()),
            Box::new(m.messages_published.clone()),
            Box::new(m.messages_delivered.clone()),
            Box::new(m.messages_dropped.clone()),
            Box::new(m.messages_conflated.clone()),
            Box::new(m.publish_duplicates.clone()),
            Box::new(m.outbox_published.clone()),
            Box::new(m.outbox_errors.clone()),
            Box::new(m.delivery_latency.clone()),
            Box::new(m.groups.clone()),
            Box::new(m.redis_up.clone()),
            Box::new(m.draining.clone()),
            Box::new(m.client_addresses.clone()),
            Box::new(m.rejected.clone()),
            Box::new(m.rate_limited.clone()),
            Box::new(m.request_errors.clone()),
            Box::new(m.api_errors.clone()),
            Box::new(m.occupancy_events.clone()),
            Box::new(m.occupancy_webhooks.clone()),
            Box::new(m.authorizations.clone()),
            Box::new(m.authorize_hook_duration.clone()),
            Box::new(build_info),
            // process_open_fds, process_max_fds, process_*_memory_bytes,
            // process_cpu_seconds_total, process_start_time_seconds,
            // process_threads: read from /proc at each scrape.
            #[cfg(target_os = "linux")]
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ];
        for c in collectors {
            m.registry.register(c).expect("unique metric names");
        }
        m
    }

    /// Counts an upgrade refused before it happened.
    pub fn rejected(&self, reason: Rejection) {
        self.rejected.with_label_values(&[reason.as_str()]).inc();
    }

    /// Counts a refused API call.
    pub fn api_error(&self, error: ApiErrorCode) {
        self.api_errors.with_label_values(&[error.as_str()]).inc();
    }

    /// Counts an occupancy event this node emitted.
    pub fn occupancy_event(&self, event: OccupancyEventLabel) {
        self.occupancy_events
            .with_label_values(&[event.as_str()])
            .inc();
    }

    /// Counts webhook results.
    pub fn webhook(&self, result: WebhookResult, n: u64) {
        self.occupancy_webhooks
            .with_label_values(&[result.as_str()])
            .inc_by(n);
    }

    /// Counts an `error` reply to a client request.
    pub fn request_error(&self, code: ErrorCode) {
        self.request_errors
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Counts a rate-limit refusal of the given kind.
    pub fn rate_limited(&self, kind: RateLimit) {
        self.rate_limited.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts a subscribe decided for a `groups.authorize` group.
    pub fn authorize(&self, outcome: AuthorizeOutcome) {
        self.authorizations
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Counts a close. Codes a client chose are bounded to the known set
    /// (ours, 1001, 1005 no status, 1006 link dropped) or "other", so a
    /// client cannot grow the label set.
    pub fn closed(&self, code: u16) {
        match self.closes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.inc(),
            None => self.close_other.inc(),
        }
    }

    pub fn auth_failed(&self, reason: AuthFailure) {
        self.auth_failures
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    pub fn auth_duration(&self, source: AuthSource, seconds: f64) {
        self.auth_duration
            .with_label_values(&[source.as_str()])
            .observe(seconds);
    }

    pub fn cache_request(&self, result: CacheResult) {
        self.cache_requests
            .with_label_values(&[result.as_str()])
            .inc();
    }

    pub fn dropped(&self, reason: DropReason, n: u64) {
        self.messages_dropped
            .with_label_values(&[reason.as_str()])
            .inc_by(n);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
