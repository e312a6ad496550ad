//! `wsgate demo`: a node in embedded mode with a synthetic market feed and a
//! page that shows it, so a newcomer sees data move within a minute.
//!
//! Why a module of its own: the demo is the one place where wsgate issues a
//! token to whoever asks, and where it publishes on its own. Both are fine on
//! a developer's machine and wrong anywhere else, so they live here, wired in
//! only by the `demo` command, and never by `serve`:
//! - the page's routes (`/demo`, its scripts and `/demo/token`) are added to
//!   the public listener by [`run`] alone (through
//!   [`Server::with_public_routes`]), not by configuration, so no setting
//!   can turn them on in a deployment;
//! - [`run`] refuses anything but embedded mode (no `database.url`, no
//!   `redis.url`), so a demo token is never written to a shared database.
//!
//! The feed publishes through the node's broker, as the HTTP API does, so
//! the ticks take the real path: history offsets (`market.*` keeps history
//! here, and is a snapshot group, so the page's rows fill at once), the
//! hub, each connection's queue.
//!
//! It publishes every symbol's opening price once at start (the rows' first
//! snapshot), then only the symbols someone watches: it follows the
//! broker's occupancy events (`occupied` / `vacated` of `market.*`), as a
//! backend feed would follow the webhook or the Redis stream, so an
//! unwatched symbol costs nothing.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;
use serde_json::value::RawValue;

use crate::auth::sql::{Db, NativeStore};
use crate::broker::{Broker, OccupancyKind};
use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::protocol::Publication;
use crate::server::Server;
use crate::state::AppState;

/// The groups the feed publishes to: `market.<SYMBOL>`.
pub const GROUP_PATTERN: &str = "market.*";
/// Who the demo token belongs to.
pub const DEMO_USER: &str = "demo";
/// How long the demo token lives.
const TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
/// The feed publishes a batch this often ...
const BATCH_EVERY: Duration = Duration::from_millis(100);
/// ... of this many ticks: 40 ticks per second in all, whatever the load.
const TICKS_PER_BATCH: usize = 4;

/// Symbols, their opening prices and how busy they are (relative tick rate).
pub const SYMBOLS: &[(&str, f64, u32)] = &[
    ("AAPL", 189.30, 4),
    ("MSFT", 415.50, 4),
    ("NVDA", 875.20, 5),
    ("AMZN", 178.25, 3),
    ("GOOGL", 152.80, 3),
    ("META", 492.10, 3),
    ("TSLA", 175.40, 5),
    ("AMD", 164.70, 3),
    ("NFLX", 620.90, 2),
    ("INTC", 42.15, 2),
    ("ORCL", 125.60, 1),
    ("CRM", 298.40, 1),
    ("ADBE", 505.30, 1),
    ("AVGO", 1310.00, 2),
    ("QCOM", 168.90, 1),
    ("CSCO", 48.70, 1),
    ("IBM", 186.20, 1),
    ("JPM", 198.50, 2),
    ("BAC", 37.80, 2),
    ("GS", 452.60, 1),
    ("V", 279.90, 1),
    ("MA", 468.30, 1),
    ("WMT", 60.25, 1),
    ("KO", 60.10, 1),
    ("PEP", 171.40, 1),
    ("DIS", 112.30, 1),
    ("NKE", 93.80, 1),
    ("XOM", 118.70, 2),
    ("CVX", 157.20, 1),
    ("PFE", 27.90, 1),
];

/// Runs the demo until `shutdown` completes: the node, the feed, the page.
pub async fn run(
    mut config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error>> {
    if !config.is_embedded() {
        return Err(
            "wsgate demo runs in embedded mode only: unset database.url and redis.url".into(),
        );
    }
    if !config.occupancy.enabled {
        return Err("wsgate demo's feed follows occupancy: occupancy.enabled must be true".into());
    }
    if config.auth.store != StoreKind::Native {
        return Err("wsgate demo issues a native token: auth.store must be \"native\"".into());
    }
    if !config.history.groups.iter().any(|g| g == GROUP_PATTERN) {
        config.history.groups.push(GROUP_PATTERN.into());
    }
    // The page subscribes with `latest`, so every row shows a price at once
    // (history serves it here; a snapshot group too, should history be
    // turned off for `market.*`).
    if !config.groups.snapshot.iter().any(|g| g == GROUP_PATTERN) {
        config.groups.snapshot.push(GROUP_PATTERN.into());
    }
    let telemetry = crate::telemetry::init(&config.log);
    let server = Server::build(config).await?;
    let token = issue_token(&server.state().config).await?;
    let routes = router(token.clone(), &server.state().config);
    let server = server.with_public_routes(routes);
    let state = server.state().clone();
    let page = page_url(server.addrs().ws);

    // Every symbol's opening price is its first snapshot, published before
    // the page's address is printed: no row ever waits for its first tick.
    let market = Market::new();
    publish_opening(&state, &market).await;
    let feed = tokio::spawn(feed(state.broker.clone(), state.metrics.clone(), market));
    println!("wsgate demo: open {page}");
    println!("wsgate demo: token for user \"{DEMO_USER}\" (valid 24h): {token}");
    server.run(shutdown).await;
    feed.abort();
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    Ok(())
}

async fn issue_token(config: &Config) -> Result<String, Box<dyn std::error::Error>> {
    let db = Db::connect(config).await?;
    let token = NativeStore::new(db.clone())
        .issue(DEMO_USER, Some(TOKEN_TTL))
        .await?;
    db.pool.close().await;
    Ok(token.expose().to_string())
}

/// Where a browser on this machine finds the page.
fn page_url(ws: SocketAddr) -> String {
    let host = match ws.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        ip if ip.is_ipv6() => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    format!("http://{host}:{}/demo", ws.port())
}

// ---------------------------------------------------------------------------
// The page.

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
/// The JavaScript client, as shipped in `clients/js`.
const CLIENT_JS: &str = include_str!("../clients/js/wsgate.js");

/// The page's routes, for the public listener.
///
/// `/demo/token` hands the demo token to any caller. That is the point of a
/// demo (the page fetches it like an app fetches a token from its backend)
/// and acceptable only because this router exists in `wsgate demo` alone,
/// on an embedded node of its own, for user `demo`, for 24 hours.
fn router(token: String, config: &Config) -> Router {
    let page_config = json!({
        "ws_path": config.server.ws_path,
        "symbols": SYMBOLS.iter().map(|(s, _, _)| s).collect::<Vec<_>>(),
    });
    let token_body = json!({ "token": token, "user_id": DEMO_USER });
    Router::new()
        .route("/demo", get(|| async { asset("text/html", INDEX_HTML) }))
        .route("/demo/", get(|| async { asset("text/html", INDEX_HTML) }))
        .route(
            "/demo/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route(
            "/demo/wsgate.js",
            get(|| async { asset("text/javascript", CLIENT_JS) }),
        )
        .route(
            "/demo/config",
            get(move || async move { axum::Json(page_config) }),
        )
        .route(
            "/demo/token",
            get(move || async move {
                (
                    [(header::CACHE_CONTROL, "no-store")],
                    axum::Json(token_body),
                )
            }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (
                header::CONTENT_TYPE,
                format!("{content_type}; charset=utf-8"),
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".into()),
        ],
        body,
    )
}

// ---------------------------------------------------------------------------
// The feed.

/// Publishes up to [`TICKS_PER_BATCH`] ticks of the watched symbols every
/// [`BATCH_EVERY`] until aborted; nothing while nobody watches.
async fn feed(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, mut market: Market) {
    let Some(mut events) = broker.occupancy_events() else {
        tracing::warn!("demo feed: occupancy is off; nothing to follow");
        return;
    };
    let mut watched = occupied_symbols(broker.as_ref()).await;
    let mut every = tokio::time::interval(BATCH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) => {
                    if let Some(symbol) = event.group.strip_prefix("market.") {
                        match event.event {
                            OccupancyKind::Occupied => watched.insert(symbol.to_string()),
                            OccupancyKind::Vacated => watched.remove(symbol),
                        };
                    }
                }
                // Fell behind: read the whole picture again.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    watched = occupied_symbols(broker.as_ref()).await;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            _ = every.tick() => {
                let publications: Vec<Publication> = (0..TICKS_PER_BATCH)
                    .filter_map(|_| market.tick_among(&watched, rand::random(), rand::random()))
                    .map(|tick| tick.publication())
                    .collect();
                if publications.is_empty() {
                    continue;
                }
                let n = publications.len() as u64;
                match broker.publish(publications).await {
                    Ok(_) => metrics.messages_published.inc_by(n),
                    Err(e) => tracing::warn!(error = %e, "demo feed: publish failed"),
                }
            }
        }
    }
}

/// The symbols of the occupied `market.*` groups now.
async fn occupied_symbols(broker: &dyn Broker) -> HashSet<String> {
    match broker.occupied(GROUP_PATTERN, SYMBOLS.len() * 4).await {
        Ok(listed) => listed
            .groups
            .into_iter()
            .filter_map(|g| g.group.strip_prefix("market.").map(str::to_string))
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "demo feed: could not list occupied groups");
            HashSet::new()
        }
    }
}

/// Publishes every symbol's opening price (each row's first snapshot).
async fn publish_opening(state: &AppState, market: &Market) {
    let publications: Vec<Publication> = market.opening().iter().map(Tick::publication).collect();
    let n = publications.len() as u64;
    match state.broker.publish(publications).await {
        Ok(_) => state.metrics.messages_published.inc_by(n),
        Err(e) => tracing::warn!(error = %e, "demo feed: publish failed"),
    }
}

/// A random walk per symbol, pulled gently back towards its opening price.
struct Market {
    quotes: Vec<Quote>,
}

struct Quote {
    symbol: &'static str,
    open: f64,
    price: f64,
    weight: u32,
}

/// One price update of one symbol.
#[derive(Debug, Clone, PartialEq)]
struct Tick {
    symbol: &'static str,
    price: f64,
    change: f64,
    change_pct: f64,
    ts_ms: u64,
}

impl Market {
    fn new() -> Market {
        Market {
            quotes: SYMBOLS
                .iter()
                .map(|&(symbol, open, weight)| Quote {
                    symbol,
                    open,
                    price: open,
                    weight,
                })
                .collect(),
        }
    }

    /// Every symbol at its opening price.
    fn opening(&self) -> Vec<Tick> {
        let ts_ms = crate::clock::unix_ms();
        self.quotes
            .iter()
            .map(|q| Tick {
                symbol: q.symbol,
                price: q.price,
                change: round2(q.price - q.open),
                change_pct: round2((q.price - q.open) / q.open * 100.0),
                ts_ms,
            })
            .collect()
    }

    /// Moves one symbol, picked by weight with `pick` in [0, 1), by a step
    /// drawn from `step` in [0, 1).
    #[cfg(test)]
    fn tick(&mut self, pick: f64, step: f64) -> Tick {
        let all: HashSet<String> = SYMBOLS.iter().map(|s| s.0.to_string()).collect();
        self.tick_among(&all, pick, step)
            .expect("every symbol is watched")
    }

    /// As [`Market::tick`], among the `watched` symbols only (`None`: none
    /// of ours is watched).
    fn tick_among(&mut self, watched: &HashSet<String>, pick: f64, step: f64) -> Option<Tick> {
        let total: u32 = self
            .quotes
            .iter()
            .filter(|q| watched.contains(q.symbol))
            .map(|q| q.weight)
            .sum();
        if total == 0 {
            return None;
        }
        let mut at = ((pick * total as f64) as u32).min(total - 1);
        let quote = self
            .quotes
            .iter_mut()
            .filter(|q| watched.contains(q.symbol))
            .find(|q| {
                if at < q.weight {
                    true
                } else {
                    at -= q.weight;
                    false
                }
            })?;
        // Up to ±0.2% a tick, plus 1% of the distance back to the open.
        let moved = quote.price * (1.0 + (step - 0.5) * 0.004) + (quote.open - quote.price) * 0.01;
        quote.price = round2(moved.max(0.01));
        Some(Tick {
            symbol: quote.symbol,
            price: quote.price,
            change: round2(quote.price - quote.open),
            change_pct: round2((quote.price - quote.open) / quote.open * 100.0),
            ts_ms: crate::clock::unix_ms(),
        })
    }
}

impl Tick {
    fn publication(&self) -> Publication {
        let data = json!({
            "symbol": self.symbol,
            "price": self.price,
            "change": self.change,
            "change_pct": self.change_pct,
            "ts": self.ts_ms,
        });
        Publication {
            group: format!("market.{}", self.symbol),
            data: RawValue::from_string(data.to_string()).expect("serde_json writes JSON"),
            position: None,
            ts: Some(crate::clock::unix_micros()),
            trace: None,
            seq: None,
        }
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_symbols_by_weight_and_walks_prices_near_their_open() {
        let mut market = Market::new();
        let first = market.tick(0.0, 1.0);
        assert_eq!(first.symbol, "AAPL");
        assert_eq!(first.price, round2(189.30 * 1.002));
        let last = market.tick(0.999_999, 0.5);
        assert_eq!(last.symbol, "PFE");
        // Many random ticks: every symbol moves, none wanders off.
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            let pick = (i as f64 * 0.618_033_988_7).fract();
            let step = (i as f64 * 0.414_213_562_3).fract();
            let t = market.tick(pick, step);
            seen.insert(t.symbol);
            let open = SYMBOLS.iter().find(|s| s.0 == t.symbol).unwrap().1;
            assert!(t.price > open * 0.5 && t.price < open * 2.0, "{t:?}");
            assert_eq!(t.change, round2(t.price - open));
        }
        assert_eq!(seen.len(), SYMBOLS.len());
    }

    #[test]
    fn a_tick_is_a_market_group_message() {
        let tick = Market::new().tick(0.0, 0.5);
        let p = tick.publication();
        assert_eq!(p.group, "market.AAPL");
        let data: serde_json::Value = serde_json::from_str(p.data.get()).unwrap();
        assert_eq!(data["symbol"], "AAPL");
        assert_eq!(data["price"], 189.30);
        assert_eq!(data["change"], 0.0);
        assert!(data["ts"].as_u64().unwrap() > 0);
    }

    /// Records the groups of what the broker delivers.
    struct Recorder(std::sync::Mutex<Vec<String>>);

    impl crate::broker::BrokerHandler for Recorder {
        fn on_publication(&self, publication: Publication) {
            self.0.lock().unwrap().push(publication.group);
        }
        fn on_control(&self, _control: crate::protocol::Control) {}
        fn local_presence(&self, _group: &str) -> Vec<crate::hub::Member> {
            Vec::new()
        }
        fn local_node(&self) -> crate::broker::NodeInfo {
            crate::broker::NodeInfo {
                node: "n".into(),
                connections: 0,
                last_seen_ms: 0,
            }
        }
    }

    #[tokio::test]
    async fn the_feed_publishes_only_watched_symbols() {
        use crate::broker::memory::MemoryBroker;
        use crate::broker::occupancy::OccupancySettings;
        let settings = OccupancySettings {
            linger: Duration::from_millis(50),
            stream: None,
            stream_maxlen: 10,
            queue: 64,
        };
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new().with_occupancy(&settings));
        let recorder = Arc::new(Recorder(Default::default()));
        broker.attach(recorder.clone());
        let metrics = Arc::new(Metrics::new());
        let member = crate::hub::Member {
            user_id: "u".into(),
            session: "s".into(),
            node: "n".into(),
        };
        // Watched before the feed starts: found by the listing.
        broker.subscribe("market.ORCL", &member).await.unwrap();
        let task = tokio::spawn(feed(broker.clone(), metrics.clone(), Market::new()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        // Watched later: found by the event.
        broker.subscribe("market.PFE", &member).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        broker.unsubscribe("market.ORCL", "s").await.unwrap();
        broker.unsubscribe("market.PFE", "s").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after_vacate = recorder.0.lock().unwrap().len();
        tokio::time::sleep(Duration::from_millis(400)).await;
        task.abort();
        let seen = recorder.0.lock().unwrap().clone();
        println!(
            "demo feed: {} ticks, {} published",
            seen.len(),
            metrics.messages_published.get()
        );
        assert!(seen.iter().any(|g| g == "market.ORCL"), "{seen:?}");
        assert!(seen.iter().any(|g| g == "market.PFE"), "{seen:?}");
        assert!(
            seen.iter().all(|g| g == "market.ORCL" || g == "market.PFE"),
            "an unwatched symbol was published: {seen:?}"
        );
        assert_eq!(seen.len() as u64, metrics.messages_published.get());
        assert_eq!(seen.len(), after_vacate, "nothing after both vacated");
    }

    #[test]
    fn the_page_url_names_a_reachable_host() {
        assert_eq!(
            page_url("0.0.0.0:8080".parse().unwrap()),
            "http://127.0.0.1:8080/demo"
        );
        assert_eq!(
            page_url("127.0.0.1:4000".parse().unwrap()),
            "http://127.0.0.1:4000/demo"
        );
        assert_eq!(page_url("[::]:80".parse().unwrap()), "http://[::1]:80/demo");
    }
}
