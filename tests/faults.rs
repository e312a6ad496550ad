//! Fault tests (issue 5, "Fault tests"): throwaway servers the tests start
//! and break, each test bounded in time and cleaning up after itself (Drop
//! guards) even when it fails.
//!
//! - The Redis link cut (reset, then blackholed) and delayed, through an
//!   in-process fault-injecting TCP proxy between real `wsgate` processes and
//!   a throwaway `redis-server`. The proxy is `noxious`, the Rust port of
//!   Toxiproxy, run as a library (see [`FaultProxy`] for what it can and
//!   cannot do).
//! - Postgres stopped, restarted and frozen under two nodes with a warm Redis
//!   token cache ([`PgServer`], a throwaway PostgreSQL cluster).
//! - A reconnect storm: 5,000 clients drained off one node reconnect at once
//!   to another; Postgres counts the token lookups itself.
//! - A slow consumer among 50 readers: it is closed with 4009 and the
//!   readers' delivery latency is measured with and without it.
//!
//! Timings are printed (run with `--nocapture`); assertions are about
//! correctness, with generous bounds where a time is part of the contract
//! (the auth deadline).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

use common::pg_server::PgServer;
use common::redis_servers::*;
use common::*;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use noxious::error::ToxicUpdateError;
use noxious::proxy::{ProxyConfig, ProxyRunner, Runner, Toxics};
use noxious::signal::{Close, Stop, Stopper};
use noxious::toxic::{StreamDirection, Toxic, ToxicEvent, ToxicEventKind, ToxicKind};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::config::Config;

// ---------------------------------------------------------------------------
// Shared helpers.

/// Runs a test body with a deadline: past it the body is dropped (every
/// guard inside it kills or removes what it started) and the test fails.
async fn bounded(limit: Duration, body: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(limit, body).await.is_err() {
        panic!("test did not finish within {limit:?}");
    }
}

/// Microseconds since the first call in this process: the clock for
/// publish-to-delivery latencies (publisher and readers share the process).
fn now_us() -> u64 {
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Panics raised outside the test files (in wsgate or a library it runs),
/// counted by a process-wide hook installed once.
static LIB_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info
                .location()
                .is_none_or(|l| !l.file().starts_with("tests/"))
            {
                LIB_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            previous(info);
        }));
    });
}

fn lib_panics() -> usize {
    LIB_PANICS.load(Ordering::SeqCst)
}

/// Raises this process's open-file soft limit to its hard limit; returns it.
fn raise_nofile_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

/// The status of a GET, or None when the node does not answer.
async fn get_status(url: &str) -> Option<u16> {
    http()
        .get(url)
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Polls `url` until it answers `want`; returns the time since `since`.
async fn wait_status(url: &str, want: u16, since: Instant, within: Duration) -> Duration {
    loop {
        if get_status(url).await == Some(want) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < within,
            "{url} did not answer {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows `/readyz` through a reconnection that may be quick: returns when
/// it went to 503 (None if it never did within 5 s) and when it was back to
/// 200, both since `since`.
async fn readyz_blip(node: &BinNode, since: Instant) -> (Option<Duration>, Duration) {
    let url = format!("http://{}/readyz", node.metrics);
    let mut down = None;
    loop {
        let status = get_status(&url).await;
        if status != Some(200) && down.is_none() {
            down = Some(since.elapsed());
        }
        if status == Some(200) && (down.is_some() || since.elapsed() > Duration::from_secs(5)) {
            return (down, since.elapsed());
        }
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "{url} not back to 200 within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bin_metric(node: &BinNode, series: &str) -> f64 {
    let text = http()
        .get(format!("http://{}/metrics", node.metrics))
        .send()
        .await
        .expect("metrics reachable")
        .text()
        .await
        .unwrap();
    metric_value(&text, series)
}

async fn post_publish(api: &str, body: Value) -> u16 {
    match http()
        .post(format!("http://{api}/api/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&body)
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            if status != 200 {
                // The answer's message says which part refused (shown
                // with the test's output when it fails).
                let text = r.text().await.unwrap_or_default();
                eprintln!("publish to {api} answered {status}: {text}");
            }
            status
        }
        Err(e) => {
            eprintln!("publish to {api} failed: {e}");
            0
        }
    }
}

/// Asserts a `wsgate` process is still running and has logged no panic.
fn assert_alive_without_panic(node: &mut BinNode, name: &str) {
    assert!(
        node.child.try_wait().expect("try_wait").is_none(),
        "{name} exited"
    );
    let panics: Vec<&String> = node
        .drain_log()
        .iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{name} panicked: {panics:?}");
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// An authenticated client whose frames are read by a background task, so
/// the test can keep measuring while it does other things.
struct Live {
    name: String,
    sink: SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, Message>,
    frames: mpsc::UnboundedReceiver<(u64, Value)>,
    reader: JoinHandle<()>,
}

impl Live {
    async fn join(url: &str, token: &str, group: &str, name: &str) -> Live {
        let (mut client, _) = Client::authed(url, token).await;
        client.subscribe(group).await;
        let (sink, mut stream) = client.ws.split();
        let (tx, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            loop {
                let closed = match stream.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("JSON frame");
                        if tx.send((now_us(), v)).is_err() {
                            return;
                        }
                        continue;
                    }
                    Some(Ok(Message::Close(Some(CloseFrame { code, .. })))) => {
                        json!({"type": "__closed", "code": u16::from(code)})
                    }
                    Some(Ok(Message::Close(None))) | None => {
                        json!({"type": "__closed", "code": 0})
                    }
                    Some(Err(e)) => json!({"type": "__closed", "error": e.to_string()}),
                    Some(Ok(_)) => continue,
                };
                let _ = tx.send((now_us(), closed));
                return;
            }
        });
        Live {
            name: name.into(),
            sink,
            frames,
            reader,
        }
    }

    /// The next frame for which `pick` is true (others are skipped); fails
    /// if the connection closes or nothing matches within `wait`.
    async fn next_where(&mut self, wait: Duration, pick: impl Fn(&Value) -> bool) -> (u64, Value) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (at, v) = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .unwrap_or_else(|_| panic!("{}: no matching frame within {wait:?}", self.name))
                .unwrap_or_else(|| panic!("{}: reader ended", self.name));
            assert_ne!(
                v["type"], "__closed",
                "{}: connection closed: {v}",
                self.name
            );
            if pick(&v) {
                return (at, v);
            }
        }
    }

    /// Like [`Live::latency_of`], but `None` when the message does not come.
    async fn try_latency_of(&mut self, tag: &str, wait: Duration) -> Option<u64> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (at, v) = match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Err(_) => return None,
                Ok(frame) => frame.unwrap_or_else(|| panic!("{}: reader ended", self.name)),
            };
            assert_ne!(
                v["type"], "__closed",
                "{}: connection closed: {v}",
                self.name
            );
            if v["type"] == "message" && v["data"]["tag"] == tag {
                return Some(at.saturating_sub(v["data"]["t"].as_u64().unwrap()));
            }
        }
    }

    /// A ping/pong round trip over the WebSocket; returns its duration.
    async fn ping(&mut self, wait: Duration) -> Duration {
        let start = Instant::now();
        self.sink
            .send(Message::text(json!({"type": "ping"}).to_string()))
            .await
            .unwrap_or_else(|e| panic!("{}: send ping: {e}", self.name));
        self.next_where(wait, |v| v["type"] == "pong").await;
        start.elapsed()
    }

    /// Waits for the message whose `data.tag` is `tag`; returns its
    /// publish-to-delivery latency in microseconds (`data.t` is `now_us`).
    async fn latency_of(&mut self, tag: &str, wait: Duration) -> u64 {
        let (at, v) = self
            .next_where(wait, |v| v["type"] == "message" && v["data"]["tag"] == tag)
            .await;
        at.saturating_sub(v["data"]["t"].as_u64().unwrap())
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

// ---------------------------------------------------------------------------
// The fault-injecting proxy.

/// A TCP proxy from a local port to `upstream`, run in-process by the
/// `noxious` library (a Rust port of Shopify's Toxiproxy, same toxic model;
/// noxious 1.0.4, last released in 2021). What each fault really does, as
/// measured against noxious itself:
/// - `disable`/`enable`: the proxy stops (every connection closed, new ones
///   refused) and starts again on the same port. noxious has no
///   `reset_peer` toxic, so this is the "connections reset" cut.
/// - `blackhole`: `timeout` toxics (timeout 0) both ways: bytes are
///   swallowed, connections stay open, new connections are accepted and
///   swallowed too. After `clear`, new connections pass but the ones that
///   were open stay dead: noxious does not give a live connection its
///   toxic-free link back. They are half-open connections from then on, as
///   after a middlebox lost their state.
/// - `restart_with(latency)`: noxious adds a toxic to live connections but
///   never removes one from them, so latency is applied and taken away by
///   restarting the proxy with (or without) the toxic: each change closes
///   the proxied connections, and the nodes reconnect through the new link.
///   noxious delays chunks one after the other (`Stream::then`), so a
///   connection gets at most one chunk per `latency` through and the delay
///   grows when more arrive than that.
/// - `RemoveAllToxics` clears only the upstream direction (the event stops
///   at the first list it applies to), so toxics are removed by name.
struct FaultProxy {
    listen: String,
    upstream: String,
    running: Option<ProxyRun>,
    toxics: Vec<String>,
}

struct ProxyRun {
    stopper: Stopper,
    closed: Close,
    events: bmrng::RequestSender<ToxicEvent, Result<(), ToxicUpdateError>>,
    task: JoinHandle<std::io::Result<()>>,
}

const PROXY_NAME: &str = "redis";

impl FaultProxy {
    async fn start(upstream_port: u16) -> FaultProxy {
        let mut proxy = FaultProxy {
            listen: format!("127.0.0.1:{}", free_port()),
            upstream: format!("127.0.0.1:{upstream_port}"),
            running: None,
            toxics: Vec::new(),
        };
        proxy.enable().await;
        proxy
    }

    fn url(&self) -> String {
        format!("redis://{}", self.listen)
    }

    /// Starts forwarding (again) on the same port.
    async fn enable(&mut self) {
        self.enable_with(Toxics::empty()).await;
    }

    /// Restarts the proxy with `toxics` from the first byte of every
    /// connection (open connections are closed by the restart).
    async fn restart_with(&mut self, toxics: Vec<Toxic>) {
        self.disable().await;
        let (upstream, downstream) = toxics
            .into_iter()
            .partition(|t| t.direction == StreamDirection::Upstream);
        self.enable_with(Toxics {
            upstream,
            downstream,
        })
        .await;
    }

    async fn enable_with(&mut self, toxics: Toxics) {
        assert!(self.running.is_none(), "proxy already running");
        let config = ProxyConfig {
            name: PROXY_NAME.into(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: true,
            rand_seed: None,
        };
        let (listener, info) =
            ProxyRunner::initialize_proxy::<noxious::socket::TcpListener>(config, toxics)
                .await
                .expect("proxy binds its port");
        let (stop, stopper) = Stop::new();
        let (closed, closer) = Close::new();
        let (events, receiver) = bmrng::channel(4);
        let task = tokio::spawn(ProxyRunner::run_proxy(
            listener, info, receiver, stop, closer,
        ));
        self.running = Some(ProxyRun {
            stopper,
            closed,
            events,
            task,
        });
        self.toxics.clear();
    }

    /// Stops the proxy: every proxied connection is closed and new ones are
    /// refused until [`FaultProxy::enable`].
    async fn disable(&mut self) {
        let run = self.running.take().expect("proxy running");
        run.stopper.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), run.closed.recv()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), run.task).await;
        let start = Instant::now();
        while TcpStream::connect(&self.listen).await.is_ok() {
            assert!(start.elapsed() < Duration::from_secs(5), "proxy still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn event(&self, kind: ToxicEventKind) {
        let run = self.running.as_ref().expect("proxy running");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            run.events.send_receive(ToxicEvent {
                proxy_name: PROXY_NAME.into(),
                kind,
            }),
        )
        .await
        .expect("proxy answers a toxic update");
        assert!(
            matches!(answer, Ok(Ok(()))),
            "toxic update refused: {answer:?}"
        );
    }

    async fn add(&mut self, name: &str, kind: ToxicKind, direction: StreamDirection) {
        self.event(ToxicEventKind::AddToxic(Toxic {
            kind,
            name: name.into(),
            toxicity: 1.0,
            direction,
        }))
        .await;
        self.toxics.push(name.into());
    }

    /// Swallows every byte both ways, on open and new connections.
    async fn blackhole(&mut self) {
        let kind = ToxicKind::Timeout { timeout: 0 };
        self.add("blackhole-up", kind, StreamDirection::Upstream)
            .await;
        self.add("blackhole-down", kind, StreamDirection::Downstream)
            .await;
    }

    /// Removes every toxic, by name.
    async fn clear(&mut self) {
        for name in std::mem::take(&mut self.toxics) {
            self.event(ToxicEventKind::RemoveToxic(name)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(run) = self.running.take() {
            run.stopper.stop();
            run.task.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// 1. The Redis link cut and delayed.

/// A `wsgate` process whose Redis is behind the proxy.
fn proxied_node(
    dir: &std::path::Path,
    name: &str,
    redis_url: &str,
    prefix: &str,
    pg: &PgDb,
    timing: &[(&str, &str)],
) -> BinNode {
    let mut env = vec![
        ("WSGATE__SERVER__NODE_ID", name),
        ("WSGATE__REDIS__URL", redis_url),
        ("WSGATE__REDIS__PREFIX", prefix),
        ("WSGATE__DATABASE__URL", pg.url.as_str()),
        ("WSGATE__DRAIN__GRACE", "0s"),
        ("WSGATE__DRAIN__SPREAD", "100ms"),
    ];
    env.extend_from_slice(timing);
    BinNode::start(dir, &env)
}

fn pg_config(dir: &std::path::Path, url: &str) -> Config {
    let mut c = test_config(dir);
    c.database.url = Some(url.into());
    c
}

/// A background publisher through one node's API, every 20 ms, until
/// stopped; returns (accepted, refused) counts.
fn publish_in_background(
    api: String,
    group: &str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u32, u32)> {
    let group = group.to_string();
    tokio::spawn(async move {
        let (mut ok, mut refused) = (0, 0);
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let body = json!({"group": group, "data": {"tag": "bg", "i": i, "t": now_us()}});
            if post_publish(&api, body).await == 200 {
                ok += 1;
            } else {
                refused += 1;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, refused)
    })
}

/// A publish after recovery reaches every client.
async fn delivery_resumes(api: &str, clients: &mut [Live], tag: &str) {
    let status = post_publish(
        api,
        json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}}),
    )
    .await;
    assert_eq!(status, 200, "publish after recovery ({tag})");
    for c in clients.iter_mut() {
        let us = c.latency_of(tag, Duration::from_secs(5)).await;
        println!("  {}: '{tag}' delivered in {}", c.name, ms(us));
    }
}

/// During an outage that began at `cut_at`: both nodes report 503 on
/// `/readyz` (the time it took is printed), `wsgate_redis_up` is 0,
/// `/healthz` stays 200, every client still answers a ping, and neither
/// process died or panicked.
async fn outage_checks(
    label: &str,
    nodes: &mut [&mut BinNode],
    clients: &mut [Live],
    cut_at: Instant,
    detect_within: Duration,
) {
    let mut detected = Vec::new();
    for n in nodes.iter() {
        let t = wait_status(
            &format!("http://{}/readyz", n.metrics),
            503,
            cut_at,
            detect_within,
        )
        .await;
        assert_eq!(bin_metric(n, "wsgate_redis_up").await, 0.0);
        detected.push(t);
    }
    println!("{label}: /readyz 503 after {detected:?} (node-a, node-b)");
    for n in nodes.iter() {
        assert_eq!(
            get_status(&format!("http://{}/healthz", n.metrics)).await,
            Some(200),
            "healthz during the outage"
        );
    }
    for c in clients.iter_mut() {
        let rtt = c.ping(Duration::from_secs(3)).await;
        println!("{label}: {} ping/pong during the outage in {rtt:?}", c.name);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        assert_alive_without_panic(n, &format!("node {i} during {label}"));
    }
}

/// Waits for both nodes to report ready again, then publishes once through
/// each node's API: a ready node should accept a publish. Returns the
/// publishes that were refused although the node said it was ready.
async fn recovery_checks(
    label: &str,
    nodes: &mut [&mut BinNode],
    restored_at: Instant,
    cut_at: Instant,
) -> Vec<String> {
    let mut recovered = Vec::new();
    for n in nodes.iter() {
        let t = wait_status(
            &format!("http://{}/readyz", n.metrics),
            200,
            restored_at,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(bin_metric(n, "wsgate_redis_up").await, 1.0);
        recovered.push(t);
    }
    println!(
        "{label}: /readyz 200 again {recovered:?} after the link came back (outage lasted {:?} in all)",
        cut_at.elapsed()
    );
    let mut refused_while_ready = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let start = Instant::now();
        let mut statuses = Vec::new();
        loop {
            let status = post_publish(
                &n.api,
                json!({"group": "ticks", "data": {"tag": "ready-probe", "t": now_us()}}),
            )
            .await;
            statuses.push(status);
            if status == 200 || start.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if statuses.len() > 1 {
            let line = format!(
                "{label}: {} answered /readyz 200 but then refused {} publishes over {:?}{}",
                ["node-a", "node-b"][i.min(1)],
                statuses.iter().filter(|s| **s != 200).count(),
                start.elapsed(),
                if statuses.last() == Some(&200) {
                    " before accepting one"
                } else {
                    ", and still refuses"
                }
            );
            println!("{line}");
            refused_while_ready.push(line);
        }
    }
    refused_while_ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_link_reset_and_blackholed_through_fault_proxy() {
    bounded(Duration::from_secs(90), async {
        let pg = PgDb::create().await;
        let dir = tempfile::tempdir().unwrap();
        let mut redis = RedisProc::start(dir.path());
        let mut proxy = FaultProxy::start(redis.port).await;
        let prefix = random_prefix();
        // Short Redis timings, as in tests/cluster.rs, so faults show quickly.
        let timing = [
            ("WSGATE__REDIS__HEARTBEAT", "200ms"),
            ("WSGATE__REDIS__NODE_TTL", "2s"),
            ("WSGATE__REDIS__COMMAND_TIMEOUT", "500ms"),
        ];
        let mut a = proxied_node(dir.path(), "node-a", &proxy.url(), &prefix, &pg, &timing);
        let mut b = proxied_node(dir.path(), "node-b", &proxy.url(), &prefix, &pg, &timing);
        let token = issue_token(&pg_config(dir.path(), &pg.url), "1", None).await;
        let mut clients = vec![
            Live::join(&a.ws_url(), &token, "ticks", "client@node-a").await,
            Live::join(&b.ws_url(), &token, "ticks", "client@node-b").await,
        ];
        delivery_resumes(&a.api, &mut clients, "before").await;

        // Cut 1: the proxy goes away (connections closed, new ones refused)
        // for ~2 s, while node-a's API publishes every 20 ms.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = publish_in_background(a.api.clone(), "ticks", stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = Instant::now();
        proxy.disable().await;
        outage_checks(
            "reset",
            &mut [&mut a, &mut b],
            &mut clients,
            cut_at,
            Duration::from_secs(5),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
        let restored_at = Instant::now();
        proxy.enable().await;
        let mut refused_while_ready =
            recovery_checks("reset", &mut [&mut a, &mut b], restored_at, cut_at).await;
        stop.store(true, Ordering::Release);
        let (ok, refused) = publisher.await.unwrap();
        println!("reset: background publishes: {ok} accepted, {refused} refused");
        assert!(refused > 0, "publishes during the outage are refused (503)");
        delivery_resumes(&b.api, &mut clients, "after-reset").await;

        // Cut 2: blackhole. Every byte is swallowed, connections stay open, so
        // only timeouts can tell; lasts until both nodes noticed, at least 2 s.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = publish_in_background(b.api.clone(), "ticks", stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = Instant::now();
        proxy.blackhole().await;
        outage_checks(
            "blackhole",
            &mut [&mut a, &mut b],
            &mut clients,
            cut_at,
            Duration::from_secs(10),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
        let restored_at = Instant::now();
        proxy.clear().await;
        refused_while_ready
            .extend(recovery_checks("blackhole", &mut [&mut a, &mut b], restored_at, cut_at).await);
        stop.store(true, Ordering::Release);
        let (ok, refused) = publisher.await.unwrap();
        println!("blackhole: background publishes: {ok} accepted, {refused} refused");
        delivery_resumes(&a.api, &mut clients, "after-blackhole").await;

        // New clients authenticate on both nodes after the outages (the auth
        // cache's Redis connection was blackholed too).
        for (n, name) in [(&a, "node-a"), (&b, "node-b")] {
            let start = Instant::now();
            let (_c, w) = Client::authed(&n.ws_url(), &token).await;
            assert_eq!(w["user_id"], "1");
            println!(
                "new client authenticated on {name} in {:?}",
                start.elapsed()
            );
        }
        for c in &mut clients {
            c.ping(Duration::from_secs(3)).await;
        }
        assert_alive_without_panic(&mut a, "node-a");
        assert_alive_without_panic(&mut b, "node-b");
        drop(clients);
        for (n, name) in [(&mut a, "node-a"), (&mut b, "node-b")] {
            n.signal("TERM");
            let status = n.wait_exit(Duration::from_secs(15));
            assert!(status.success(), "{name} exited with {status}");
            assert_alive_or_exited_cleanly(n, name);
        }
        drop(proxy);
        redis.kill();
        drop(pg);
        assert!(
            refused_while_ready.is_empty(),
            "a node that answers /readyz 200 accepts publishes: {refused_while_ready:?}"
        );
    })
    .await;
}

fn assert_alive_or_exited_cleanly(node: &mut BinNode, name: &str) {
    let panics: Vec<&String> = node
        .drain_log()
        .iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{name} panicked: {panics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_link_latency_through_fault_proxy() {
    bounded(Duration::from_secs(90), async {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let mut proxy = FaultProxy::start(redis.port).await;
    let prefix = random_prefix();
    // The default timings (command timeout 2 s, heartbeat 2 s): 500 ms of
    // latency is slow, not down. Not a faster heartbeat: through noxious a
    // connection passes one reply chunk per 500 ms (see `FaultProxy`), and a
    // heartbeat is two pipelines one after the other, so a 1 s heartbeat
    // alone filled the command connection's link; replies then queued behind
    // it for more than the command timeout, and a publish was answered 503
    // ("Request timed out") although the link was only slow.
    let mut a = proxied_node(dir.path(), "node-a", &proxy.url(), &prefix, &pg, &[]);
    let mut b = proxied_node(dir.path(), "node-b", &proxy.url(), &prefix, &pg, &[]);
    let token = issue_token(&pg_config(dir.path(), &pg.url), "1", None).await;
    let mut clients = vec![
        Live::join(&a.ws_url(), &token, "ticks", "client@node-a").await,
        Live::join(&b.ws_url(), &token, "ticks", "client@node-b").await,
    ];

    // Delivery latency through the proxy, before, during and after.
    async fn probe(api: &str, clients: &mut [Live], tag: &str, wait: Duration) -> Vec<u64> {
        let status = post_publish(
            api,
            json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}}),
        )
        .await;
        assert_eq!(status, 200, "publish {tag}");
        let mut out = Vec::new();
        for c in clients.iter_mut() {
            out.push(c.latency_of(tag, wait).await);
        }
        out
    }
    let mut before = Vec::new();
    for i in 0..5 {
        before.extend(probe(&a.api, &mut clients, &format!("before-{i}"), WAIT).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    before.sort();

    // 500 ms on everything Redis sends to the nodes (replies and pub/sub),
    // from the first byte of every connection (see `FaultProxy`).
    let latency = Toxic {
        kind: ToxicKind::Latency {
            latency: 500,
            jitter: 0,
        },
        name: "latency".into(),
        toxicity: 1.0,
        direction: StreamDirection::Downstream,
    };
    let added_at = Instant::now();
    proxy.restart_with(vec![latency]).await;
    // The restart closed the nodes' connections: they come back through
    // the slow link.
    let slow_ready = tokio::join!(readyz_blip(&a, added_at), readyz_blip(&b, added_at));
    let watching = Arc::new(AtomicBool::new(true));
    let readyz_watch = {
        let urls = [
            format!("http://{}/readyz", a.metrics),
            format!("http://{}/readyz", b.metrics),
        ];
        let watching = watching.clone();
        tokio::spawn(async move {
            let (mut ok, mut not_ready) = (0u32, 0u32);
            while watching.load(Ordering::Acquire) {
                for url in &urls {
                    match get_status(url).await {
                        Some(200) => ok += 1,
                        _ => not_ready += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, not_ready)
        })
    };
    let mut during = Vec::new();
    for i in 0..4 {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        let tag = format!("during-{i}");
        during.extend(probe(api, &mut clients, &tag, Duration::from_secs(15)).await);
        for c in &mut clients {
            let rtt = c.ping(Duration::from_secs(3)).await;
            assert!(
                rtt < Duration::from_millis(400),
                "a WebSocket ping does not wait for Redis: {rtt:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    during.sort();
    watching.store(false, Ordering::Release);
    let (ok, not_ready) = readyz_watch.await.unwrap();
    assert_alive_without_panic(&mut a, "node-a");
    assert_alive_without_panic(&mut b, "node-b");

    // Back to a fast link (again a restart of the proxy).
    let removed_at = Instant::now();
    proxy.restart_with(Vec::new()).await;
    // Recovered: a publish reaches both clients in under 100 ms again
    // (publishes made while the nodes reconnect may be refused or lost).
    let fast_again = async {
        let mut probes = 0;
        loop {
            probes += 1;
            let tag = format!("after-{probes}");
            let body = json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}});
            if post_publish(&b.api, body).await == 200 {
                let mut fast = true;
                for c in clients.iter_mut() {
                    match c.try_latency_of(&tag, Duration::from_millis(300)).await {
                        Some(us) if us < 100_000 => {}
                        _ => fast = false,
                    }
                }
                if fast {
                    return (removed_at.elapsed(), probes);
                }
            }
            assert!(
                removed_at.elapsed() < Duration::from_secs(20),
                "delivery latency did not come back down after {probes} probes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (recovered, ready_a, ready_b) = tokio::join!(
        fast_again,
        readyz_blip(&a, removed_at),
        readyz_blip(&b, removed_at)
    );
    let ready_again = (ready_a, ready_b);
    println!(
        "latency: before the fault, delivery p50 {} max {}",
        ms(percentile(&before, 50.0)),
        ms(*before.last().unwrap()),
    );
    println!(
        "latency 500 ms (Redis to nodes): /readyz (503 at, 200 at) through the restart {slow_ready:?}; \
         delivery p50 {} max {}; /readyz polled while slow: {ok}x 200, {not_ready}x not 200; \
         slow for {:?}",
        ms(percentile(&during, 50.0)),
        ms(*during.last().unwrap()),
        removed_at - added_at,
    );
    println!(
        "latency removed: /readyz (503 at, 200 at) {ready_again:?}, delivery under 100 ms after {:?} ({} probes)",
        recovered.0, recovered.1
    );
    assert!(
        percentile(&during, 50.0) >= 450_000,
        "the latency toxic delays delivery (harness check): {during:?}"
    );
    assert_eq!(
        not_ready, 0,
        "/readyz stays 200 while Redis is slow but reachable"
    );
    for c in &mut clients {
        c.ping(Duration::from_secs(3)).await;
    }
    assert_alive_without_panic(&mut a, "node-a");
    assert_alive_without_panic(&mut b, "node-b");
    drop(clients);
    drop(proxy);
    redis.kill();
    drop(pg);
    })
    .await;
}

// ---------------------------------------------------------------------------
// 2. Postgres stopped, restarted, frozen.

/// Connects, sends `token`, and returns how the server answered (welcome
/// or close code) and how long it took.
async fn try_auth(url: &str, token: &str) -> (Result<Value, u16>, Duration) {
    let start = Instant::now();
    let mut c = Client::connect(url).await;
    c.send_json(json!({"type": "auth", "token": token})).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), c.ws.next())
        .await
        .expect("an answer within 10 s");
    let out = match answer {
        Some(Ok(Message::Text(t))) => Ok(serde_json::from_str(&t).unwrap()),
        Some(Ok(Message::Close(Some(f)))) => Err(u16::from(f.code)),
        other => panic!("unexpected answer {other:?}"),
    };
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_restarted_and_frozen() {
    bounded(Duration::from_secs(90), async {
    watch_panics();
    let panics_before = lib_panics();
    let mut pg = PgServer::start();
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let config = |node: &str| {
        let mut c = test_config(dir.path());
        c.server.node_id = Some(node.into());
        c.database.url = Some(pg.url("postgres"));
        c.redis.url = Some(SHARED_REDIS.into());
        c.redis.prefix = prefix.to_string();
        c.redis.command_timeout = Duration::from_millis(500);
        c.auth.timeout = Duration::from_secs(1);
        c
    };
    let a = spawn(config("node-a")).await;
    let b = spawn(config("node-b")).await;
    let cached = a.issue_token("1").await;
    let uncached = a.issue_token("2").await;
    let frozen_probe = a.issue_token("3").await;
    let (_, w) = Client::authed(&a.ws_url(), &cached).await;
    assert_eq!(w["user_id"], "1", "token A authenticates and is cached");

    pg.stop_immediate();
    // Token A: node-b has never seen it, so Redis answers for it.
    let (_, w) = Client::authed(&b.ws_url(), &cached).await;
    assert_eq!(w["user_id"], "1");
    assert_eq!(
        b.metric("wsgate_auth_duration_seconds_count{source=\"redis\"}")
            .await,
        1.0,
        "node-b answered token A from Redis"
    );
    let (_, w) = Client::authed(&a.ws_url(), &cached).await;
    assert_eq!(w["user_id"], "1");
    // Token B: nobody can answer; 1013 within the 1 s auth deadline.
    for (n, name) in [(&a, "node-a"), (&b, "node-b")] {
        let (answer, took) = try_auth(&n.ws_url(), &uncached).await;
        println!(
            "postgres stopped: uncached token on {name} closed with {answer:?} after {took:?} (auth.timeout 1 s)"
        );
        assert_eq!(answer, Err(1013), "uncached token while Postgres is down");
        assert!(
            took < Duration::from_millis(1500),
            "closed within the auth deadline: {took:?}"
        );
    }

    // Postgres back on the same port: the pools reconnect by themselves.
    let restarted_at = Instant::now();
    pg.start_again();
    println!("postgres restarted in {:?}", restarted_at.elapsed());
    let restarted_at = Instant::now();
    for (n, name) in [(&a, "node-a"), (&b, "node-b")] {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (answer, _) = try_auth(&n.ws_url(), &uncached).await;
            match answer {
                Ok(w) => {
                    assert_eq!(w["user_id"], "2");
                    break;
                }
                Err(code) => {
                    assert_eq!(code, 1013);
                    assert!(
                        restarted_at.elapsed() < Duration::from_secs(10),
                        "token B never authenticated after the restart"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        println!(
            "postgres restarted: token B authenticates on {name} at attempt {attempts}, {:?} after the restart",
            restarted_at.elapsed()
        );
        assert_eq!(
            attempts, 1,
            "the first attempt after the restart on {name} succeeds (no stale pooled connection)"
        );
    }

    // A hung Postgres (processes stopped, port open): the deadline holds.
    pg.freeze();
    for (n, name) in [(&a, "node-a"), (&b, "node-b")] {
        let (answer, took) = try_auth(&n.ws_url(), &frozen_probe).await;
        println!("postgres frozen: uncached token on {name} closed with {answer:?} after {took:?}");
        assert_eq!(answer, Err(1013), "uncached token while Postgres hangs");
        assert!(
            took < Duration::from_millis(1500),
            "closed within the auth deadline: {took:?}"
        );
    }
    let (_, w) = Client::authed(&b.ws_url(), &cached).await;
    assert_eq!(w["user_id"], "1", "cached token while Postgres hangs");
    let thawed_at = Instant::now();
    pg.thaw();
    loop {
        let (answer, _) = try_auth(&a.ws_url(), &frozen_probe).await;
        if answer.is_ok() {
            break;
        }
        assert!(
            thawed_at.elapsed() < Duration::from_secs(10),
            "no recovery after the thaw: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "postgres thawed: an uncached token authenticates again after {:?}",
        thawed_at.elapsed()
    );

    assert_eq!(lib_panics(), panics_before, "no panic in wsgate");
    a.shutdown().await;
    b.shutdown().await;
    drop(pg);
    })
    .await;
}

/// sqlx does not ping a pooled connection before each query (that would be
/// a round trip per token lookup), so after a PostgreSQL restart every idle
/// connection in the pool is dead and is found so on first use. The store
/// then repeats the read on another connection: no connect after the
/// restart is refused because of a dead pooled connection. (With the
/// repeat removed, the first uncached connect after the restart is closed
/// with 1013.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_across_a_postgres_restart() {
    bounded(Duration::from_secs(90), async {
        let mut pg = tokio::task::spawn_blocking(PgServer::start).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.database.url = Some(pg.url("postgres"));
        config.database.max_connections = 4;
        config.auth.timeout = Duration::from_secs(5);
        let node = spawn(config).await;
        let mut tokens = Vec::new();
        for user in 0..24 {
            tokens.push(node.issue_token(&user.to_string()).await);
        }
        // Fill the pool: 8 uncached connects at once want 4 connections.
        let url = node.ws_url();
        let warm = tokens.drain(..8).map(|token| {
            let url = url.clone();
            tokio::spawn(async move { try_auth(&url, &token).await.0 })
        });
        for answer in futures_util::future::join_all(warm).await {
            assert!(answer.unwrap().is_ok(), "connect before the restart");
        }

        pg.stop_immediate();
        pg.start_again();

        // One by one first (each may meet a dead connection), then at once.
        for token in tokens.drain(..8) {
            let (answer, _) = try_auth(&url, &token).await;
            assert!(
                answer.is_ok(),
                "uncached connect after the restart: {answer:?}"
            );
        }
        let burst = tokens.drain(..).map(|token| {
            let url = url.clone();
            tokio::spawn(async move { try_auth(&url, &token).await.0 })
        });
        for answer in futures_util::future::join_all(burst).await {
            let answer = answer.unwrap();
            assert!(answer.is_ok(), "burst after the restart: {answer:?}");
        }
        node.shutdown().await;
    })
    .await;
}

// ---------------------------------------------------------------------------
// 3. Reconnect storm.

const STORM_CLIENTS: usize = 5_000;
const STORM_TOKENS: usize = 500;

enum StormEvent {
    Connected,
    Reconnected {
        closed_at: Instant,
        code: u16,
        welcome_at: Instant,
        retries: u32,
    },
}

async fn storm_client(
    i: usize,
    a_url: String,
    b_url: String,
    connect_slots: Arc<tokio::sync::Semaphore>,
    events: mpsc::UnboundedSender<StormEvent>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let token = format!("storm-token-{}", i % STORM_TOKENS);
    let mut client = {
        let _slot = connect_slots.acquire().await.unwrap();
        let (c, _) = Client::authed(&a_url, &token).await;
        c
    };
    let _ = events.send(StormEvent::Connected);
    let closed = client.close_within(Duration::from_secs(60)).await;
    let closed_at = Instant::now();
    let code = common::code(closed);
    // Straight back, to the other node, as a load balancer would send it.
    let mut retries = 0;
    let mut client = loop {
        let attempt = async {
            let (mut c, _) = tokio_tungstenite::connect_async(b_url.as_str())
                .await
                .ok()?;
            c.send(Message::text(
                json!({"type": "auth", "token": token}).to_string(),
            ))
            .await
            .ok()?;
            match c.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Some(c),
                _ => None,
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Some(c)) => break c,
            _ => {
                retries += 1;
                assert!(retries < 20, "client {i} could not reconnect");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let _ = events.send(StormEvent::Reconnected {
        closed_at,
        code,
        welcome_at: Instant::now(),
        retries,
    });
    let _ = done.wait_for(|d| *d).await;
    let _ = client.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_drain_5000_clients() {
    bounded(Duration::from_secs(110), async {
    let test_start = Instant::now();
    let nofile = raise_nofile_limit();
    assert!(
        nofile >= 8_000,
        "open-file limit {nofile} too low for the storm"
    );
    let pg = PgDb::create().await;
    let pool = pg.pool().await;
    for sql in [
        "CREATE TABLE lookups (n integer NOT NULL)",
        "INSERT INTO lookups VALUES (0)",
        "CREATE TABLE storm_tokens (token text PRIMARY KEY, user_id text NOT NULL)",
        "INSERT INTO storm_tokens SELECT 'storm-token-' || g, (g % 100)::text FROM generate_series(0, 499) g",
        "CREATE FUNCTION lookup_token(t text) RETURNS TABLE(user_id text) LANGUAGE plpgsql VOLATILE AS $$ \
         BEGIN UPDATE lookups SET n = n + 1; \
         RETURN QUERY SELECT s.user_id FROM storm_tokens s WHERE s.token = t; END $$",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let lookups = async || {
        sqlx::query_scalar::<_, i32>("SELECT n FROM lookups")
            .fetch_one(&pool)
            .await
            .unwrap() as usize
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let node = |name: &str| {
        BinNode::start(
            dir.path(),
            &[
                ("WSGATE__SERVER__NODE_ID", name),
                ("WSGATE__REDIS__URL", SHARED_REDIS),
                ("WSGATE__REDIS__PREFIX", &prefix),
                ("WSGATE__DATABASE__URL", &pg.url),
                ("WSGATE__AUTH__STORE", "query"),
                (
                    "WSGATE__AUTH__QUERY",
                    "SELECT user_id FROM lookup_token($1)",
                ),
                ("WSGATE__LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
                ("WSGATE__LIMITS__MAX_PENDING", "10000"),
                ("WSGATE__LIMITS__MAX_PENDING_PER_IP", "10000"),
                ("WSGATE__DRAIN__GRACE", "0s"),
                ("WSGATE__DRAIN__SPREAD", "200ms"),
            ],
        )
    };
    let mut a = node("node-a");
    let mut b = node("node-b");

    // 5,000 clients on node-a, 500 distinct tokens.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..STORM_CLIENTS)
        .map(|i| {
            tokio::spawn(storm_client(
                i,
                a.ws_url(),
                b.ws_url(),
                slots.clone(),
                events_tx.clone(),
                done_rx.clone(),
            ))
        })
        .collect();
    drop(events_tx);
    let mut connected = 0;
    while connected < STORM_CLIENTS {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(StormEvent::Connected)) => connected += 1,
            other => panic!(
                "only {connected} clients connected to node-a ({})",
                if other.is_err() {
                    "timeout"
                } else {
                    "a client failed"
                }
            ),
        }
    }
    let connect_time = started.elapsed();
    let initial_lookups = lookups().await;
    println!(
        "storm: {STORM_CLIENTS} clients ({STORM_TOKENS} tokens) authenticated on node-a in {connect_time:?} \
         ({:.0} auth/s), {initial_lookups} database lookups",
        STORM_CLIENTS as f64 / connect_time.as_secs_f64()
    );
    assert!(
        initial_lookups <= STORM_TOKENS,
        "{initial_lookups} lookups for {STORM_TOKENS} distinct tokens"
    );

    // Half of the tokens leave the Redis cache (under this test's prefix):
    // node-b has never seen any of them, so exactly those 250 are uncached.
    let uncached = STORM_TOKENS / 2;
    let keys: Vec<String> = (0..uncached)
        .map(|t| {
            let token = wsgate::auth::Token::new(format!("storm-token-{t}"));
            format!("{prefix}auth:{}", token.digest().to_hex())
        })
        .collect();
    for chunk in keys.chunks(100) {
        let mut args = vec!["del"];
        args.extend(chunk.iter().map(String::as_str));
        let deleted: usize = redis_cli(6379, &args)[0].parse().unwrap();
        assert_eq!(
            deleted,
            chunk.len(),
            "auth cache entries present before the storm"
        );
    }

    // Drain node-a: every client is closed with 1012 within drain.spread
    // and reconnects to node-b at once.
    let before_storm = lookups().await;
    let term_at = Instant::now();
    a.signal("TERM");
    let mut first_close: Option<Instant> = None;
    let mut last_welcome = term_at;
    let mut codes = std::collections::BTreeMap::new();
    let mut retries = 0;
    for _ in 0..STORM_CLIENTS {
        match tokio::time::timeout(Duration::from_secs(40), events.recv()).await {
            Ok(Some(StormEvent::Reconnected {
                closed_at,
                code,
                welcome_at,
                retries: r,
            })) => {
                first_close = Some(first_close.map_or(closed_at, |f| f.min(closed_at)));
                last_welcome = last_welcome.max(welcome_at);
                *codes.entry(code).or_insert(0) += 1;
                retries += r;
            }
            other => panic!(
                "a client did not reconnect ({})",
                if other.is_err() {
                    "timeout"
                } else {
                    "it failed"
                }
            ),
        }
    }
    let storm_lookups = lookups().await - before_storm;
    let first_close = first_close.unwrap();
    let wall = last_welcome - first_close;
    println!(
        "storm: drain closed {codes:?} (code: clients); all {STORM_CLIENTS} re-authenticated on node-b \
         {wall:?} after the first close ({:?} after SIGTERM), {:.0} auth/s, {retries} retried connects; \
         {storm_lookups} database lookups for {uncached} uncached tokens",
        last_welcome - term_at,
        STORM_CLIENTS as f64 / wall.as_secs_f64(),
    );
    assert_eq!(
        codes.get(&1012),
        Some(&STORM_CLIENTS),
        "every client closed with 1012"
    );
    assert!(
        storm_lookups <= uncached,
        "{storm_lookups} database lookups for {uncached} uncached tokens"
    );
    let status = a.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "drained node exits 0: {status}");
    assert_eq!(
        bin_metric(&b, "wsgate_connections{state=\"authenticated\"}").await,
        STORM_CLIENTS as f64
    );
    assert_eq!(
        bin_metric(&b, "wsgate_auth_success_total").await,
        STORM_CLIENTS as f64
    );
    assert_alive_without_panic(&mut b, "node-b");
    assert_alive_or_exited_cleanly(&mut a, "node-a");

    let _ = done_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(b);
    pool.close().await;
    drop(pg);
    println!("storm test took {:?}", test_start.elapsed());
    })
    .await;
}

// ---------------------------------------------------------------------------
// 4. Slow consumer.

const READERS: usize = 50;
const MESSAGES: u64 = 3_000;
const BATCH: u64 = 10;

/// Publishes `MESSAGES` messages of phase `phase` in batches of `BATCH`
/// every 5 ms (2,000 messages/s), each stamped with `now_us`.
async fn publish_phase(node: &TestNode, phase: u64) {
    let client = http();
    let url = node.api_url("/api/v1/publish");
    let pad = "x".repeat(1_000);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for start in (0..MESSAGES).step_by(BATCH as usize) {
        tick.tick().await;
        let messages: Vec<Value> = (start..start + BATCH)
            .map(|i| json!({"group": "ticks", "data": {"p": phase, "i": i, "t": now_us(), "pad": pad}}))
            .collect();
        let r = client
            .post(&url)
            .bearer_auth(API_KEY)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A reader: checks that every message of both phases arrives, in order,
/// and reports each phase's latencies.
/// Reads both phases, then hands the client back so it stays connected.
async fn reader(
    mut c: Client,
    id: usize,
    report: mpsc::UnboundedSender<(usize, u64, Vec<u64>)>,
) -> Client {
    for phase in 0..2u64 {
        let mut latencies = Vec::with_capacity(MESSAGES as usize);
        for i in 0..MESSAGES {
            let frame = tokio::time::timeout(Duration::from_secs(20), c.ws.next())
                .await
                .unwrap_or_else(|_| panic!("reader {id}: message {phase}/{i} missing"))
                .expect("stream open")
                .expect("frame");
            let at = now_us();
            let Message::Text(t) = frame else {
                panic!("reader {id}: unexpected frame {frame:?}");
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (v["data"]["p"].as_u64(), v["data"]["i"].as_u64()),
                (Some(phase), Some(i)),
                "reader {id}: every message, in order"
            );
            latencies.push(at.saturating_sub(v["data"]["t"].as_u64().unwrap()));
        }
        let _ = report.send((id, phase, latencies));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_does_not_slow_the_others() {
    bounded(Duration::from_secs(90), async {
    watch_panics();
    let panics_before = lib_panics();
    let (_dir, node) = node_with(|config| {
        config.limits.outbound_queue = 64;
    })
    .await;
    let token = node.issue_token("1").await;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for id in 0..READERS {
        let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
        c.subscribe("ticks").await;
        readers.push(tokio::spawn(reader(c, id, report_tx.clone())));
    }
    let mut results: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let mut collect = async |phase: u64, results: &mut Vec<Vec<u64>>| {
        for _ in 0..READERS {
            let (_, p, lat) = tokio::time::timeout(Duration::from_secs(60), reports.recv())
                .await
                .expect("readers finish the phase")
                .expect("a reader failed");
            assert_eq!(p, phase);
            results[p as usize].extend(lat);
        }
    };

    // Phase 0: 50 readers only.
    publish_phase(&node, 0).await;
    collect(0, &mut results).await;

    // Phase 1: plus one client that reads nothing, with a small receive
    // buffer so its socket fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addrs.ws).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(node.ws_url(), MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut slow = Client { ws };
    slow.send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(slow.recv_json().await["type"], "welcome");
    slow.subscribe("ticks").await;
    let phase1_at = Instant::now();
    publish_phase(&node, 1).await;
    collect(1, &mut results).await;
    // The readers stay connected, so the gauge below counts exactly them.
    let mut kept = Vec::with_capacity(READERS);
    for r in readers {
        kept.push(r.await.expect("reader"));
    }

    let dropped = node
        .metric("wsgate_messages_dropped_total{reason=\"slow_consumer\"}")
        .await;
    // The server should close the slow connection while its client still
    // reads nothing: wait up to 5 s without reading.
    let stalled_at = Instant::now();
    let mut closed_while_stalled = None;
    while stalled_at.elapsed() < Duration::from_secs(5) {
        if node
            .metric("wsgate_connections_closed_total{code=\"4009\"}")
            .await
            >= 1.0
            && node
                .metric("wsgate_connections{state=\"authenticated\"}")
                .await
                == READERS as f64
        {
            closed_while_stalled = Some(stalled_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Now the slow client reads what is left: messages, then the close.
    let mut skipped = 0u64;
    let slow_end = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => skipped += 1,
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some(u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => break None,
            Ok(Some(Ok(_))) => {}
            Err(_) => break None,
        }
    };

    for (phase, label) in [(0, "without"), (1, "with")] {
        let lat = &mut results[phase];
        lat.sort_unstable();
        println!(
            "slow consumer: {READERS} readers x {MESSAGES} messages (1 KB, 2,000/s) {label} a stalled client: \
             delivery latency p50 {} p99 {} max {}",
            ms(percentile(lat, 50.0)),
            ms(percentile(lat, 99.0)),
            ms(*lat.last().unwrap()),
        );
    }
    println!(
        "slow consumer: {dropped} messages dropped for it; server closed it while stalled: {:?} \
         (phase 1 began {:?} earlier); once it read again it got {skipped} messages, then close {slow_end:?}",
        closed_while_stalled,
        stalled_at - phase1_at,
    );
    assert!(dropped >= 1.0, "the stalled client's queue overflowed");
    assert_eq!(
        slow_end,
        Some(4009),
        "the slow consumer is closed with 4009"
    );
    assert!(
        closed_while_stalled.is_some(),
        "the server closes a slow consumer that stays stalled (4009 counted, connection gone) \
         without waiting for it to read again"
    );
    assert_eq!(lib_panics(), panics_before, "no panic in wsgate");
    node.shutdown().await;
    })
    .await;
}
