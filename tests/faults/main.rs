//! Fault tests (issue 5, "Fault tests"): throwaway servers the tests start
//! and break, each test bounded in time and cleaning up after itself (Drop
//! guards) even when it fails.
//!
//! One file per fault; this one holds what they share.
//!
//! - [`redis_link`]: the Redis link cut (reset, then blackholed) and
//!   delayed, through an in-process fault-injecting TCP proxy between real
//!   `wsgate` processes and a throwaway `redis-server`. The proxy is
//!   `noxious`, the Rust port of Toxiproxy, run as a library (see
//!   [`proxy::FaultProxy`] for what it can and cannot do).
//! - [`subscription`]: a join is confirmed only once Redis has run its
//!   `SUBSCRIBE`, with the subscriber connection backed up behind the proxy.
//! - [`lost_reply`]: a command Redis ran whose reply was lost with its
//!   connection is not sent again (a publish delivered twice, a claim taken
//!   for a duplicate).
//! - [`postgres`]: Postgres stopped, restarted and frozen under two nodes
//!   with a warm Redis token cache ([`PgServer`], a throwaway PostgreSQL
//!   cluster).
//! - [`storm`]: 5,000 clients drained off one node reconnect at once to
//!   another; Postgres counts the token lookups itself.
//! - [`slow_consumer`]: one among 50 readers is closed with 4009, and the
//!   readers' delivery latency is measured with and without it.
//!
//! Timings are printed (run with `--nocapture`); assertions are about
//! correctness, with generous bounds where a time is part of the contract
//! (the auth deadline).

// The shared helpers live beside the test files, not in this directory.
#[path = "../common/mod.rs"]
mod common;
mod lost_reply;
mod postgres;
mod proxy;
mod redis_link;
mod slow_consumer;
mod storm;
mod subscription;

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
    assert_alive_or_exited_cleanly(node, name);
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

fn pg_config(dir: &std::path::Path, url: &str) -> Config {
    let mut c = test_config(dir);
    c.database.url = Some(url.into());
    c
}

/// Asserts a `wsgate` process logged no panic (it may have exited).
fn assert_alive_or_exited_cleanly(node: &mut BinNode, name: &str) {
    let panics: Vec<&String> = node
        .drain_log()
        .iter()
        .filter(|l| l.contains("panicked"))
        .collect();
    assert!(panics.is_empty(), "{name} panicked: {panics:?}");
}
