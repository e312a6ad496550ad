//! Shared by the integration tests: start real nodes on free ports, create
//! throwaway Postgres databases, and drive real WebSocket clients.
#![allow(dead_code)]

pub mod pg_server;
pub mod redis_servers;
pub mod tls_servers;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wsgate::auth::sql::{Db, NativeStore};
use wsgate::config::Config;
use wsgate::server::{Addrs, Server};
use wsgate::state::AppState;

pub const API_KEY: &str = "test-api-key-0123456789";
/// Postgres the machine runs (trust auth); tests make their own databases in it.
pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// How long a test waits for any one expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// A config for one test: loopback port 0 everywhere, an embedded SQLite file
/// in `dir`, a known API key, short drain.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.api.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = "127.0.0.1:0".parse().unwrap();
    c.server.node_id = Some("test-node".into());
    c.database.sqlite_path = dir.join("wsgate.db");
    c.api.keys = vec![API_KEY.into()];
    c.drain.grace = Duration::ZERO;
    c.drain.spread = Duration::from_millis(50);
    c
}

/// A running node.
pub struct TestNode {
    pub addrs: Addrs,
    pub state: AppState,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a node with `config` and returns once it listens.
pub async fn spawn(config: Config) -> TestNode {
    let server = Server::build(config.clone()).await.expect("server starts");
    let addrs = server.addrs();
    let state = server.state().clone();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async move {
        let _ = rx.await;
    }));
    TestNode {
        addrs,
        state,
        config,
        shutdown: Some(tx),
        task: Some(task),
    }
}

impl TestNode {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addrs.ws)
    }
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.api, path)
    }
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addrs.metrics, path)
    }

    /// Issues a native token for `user` in this node's database.
    pub async fn issue_token(&self, user: &str) -> String {
        issue_token(&self.config, user, None).await
    }

    /// POSTs JSON to the API with the test key; returns status and body.
    pub async fn api_post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .post(self.api_url(path))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
            .await
            .expect("api reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let resp = reqwest::Client::new()
            .get(self.api_url(path))
            .bearer_auth(API_KEY)
            .send()
            .await
            .expect("api reachable");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn publish(&self, group: &str, data: Value) {
        let (status, body) = self
            .api_post("/api/v1/publish", json!({"group": group, "data": data}))
            .await;
        assert_eq!(status, 200, "publish answered {body}");
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.metrics_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one sample line, e.g. `wsgate_auth_success_total` or
    /// `wsgate_connections_closed_total{code="4003"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }

    /// Triggers the drain and waits for the node to stop.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("node stops")
                .expect("node task");
        }
    }

    /// Starts the drain without waiting for it.
    pub fn start_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("metric {series} not found"))
}

pub async fn issue_token(config: &Config, user: &str, ttl: Option<Duration>) -> String {
    let db = Db::connect(config).await.expect("db");
    db.migrate().await.expect("migrate");
    let token = NativeStore::new(db.clone())
        .issue(user, ttl)
        .await
        .expect("issue");
    db.pool.close().await;
    token.expose().to_string()
}

// ---------------------------------------------------------------------------
// Throwaway Postgres databases.

/// A database created for one test, dropped by [`PgDb::drop_db`].
pub struct PgDb {
    pub name: String,
    pub url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let name = format!("wsgate_t_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL)
            .await
            .expect("Postgres at 127.0.0.1:5432 (see README: services)");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await
            .expect("create database");
        admin.close().await;
        PgDb {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connect test db")
    }

    pub async fn drop_db(self) {
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.expect("admin");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

// ---------------------------------------------------------------------------
// A WebSocket client.

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    NoCloseFrame,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Client { ws }
    }

    /// Connects and authenticates; returns the client and its `welcome`.
    pub async fn authed(url: &str, token: &str) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        c.send_json(json!({"type": "auth", "token": token})).await;
        let welcome = c.recv_json().await;
        assert_eq!(welcome["type"], "welcome", "got {welcome}");
        (c, welcome)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// The next text frame as JSON; fails on close or after [`WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("stream open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the next frame.
    pub async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        self.recv_json().await
    }

    pub async fn subscribe(&mut self, group: &str) {
        let reply = self
            .request(json!({"type": "subscribe", "group": group}))
            .await;
        assert_eq!(reply["type"], "subscribed", "got {reply}");
    }

    /// Waits for the server to close; returns its code, failing if a data
    /// frame arrives first.
    pub async fn expect_close(&mut self) -> Closed {
        self.close_within(WAIT).await
    }

    pub async fn close_within(&mut self, wait: Duration) -> Closed {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("the server closes within the wait");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed::Code(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Closed::NoCloseFrame;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a close, got {other:?}"),
            }
        }
    }

    /// Asserts nothing but control frames arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Just the code of a close, for terse asserts.
pub fn code(c: Closed) -> u16 {
    match c {
        Closed::Code(code, _) => code,
        Closed::NoCloseFrame => 0,
    }
}

// ---------------------------------------------------------------------------
// The real binary, for tests about signals, exit codes and logs.

/// A `wsgate` process started by a test; killed on drop.
pub struct BinNode {
    pub child: std::process::Child,
    pub ws: String,
    pub api: String,
    pub metrics: String,
    lines: std::sync::mpsc::Receiver<String>,
    pub log: Vec<String>,
}

/// Runs `wsgate <args>` in `dir` and returns its stdout (fails on a non-zero exit).
pub fn run_bin(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run wsgate");
    assert!(
        out.status.success(),
        "wsgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl BinNode {
    /// Starts `wsgate serve` on loopback port 0 with JSON logs, the test API
    /// key and `env` on top, and waits for its "serving" line.
    #[allow(clippy::zombie_processes)] // the child is killed and waited for in Drop
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> BinNode {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .current_dir(dir)
            .env("WSGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("WSGATE__API__LISTEN", "127.0.0.1:0")
            .env("WSGATE__METRICS__LISTEN", "127.0.0.1:0")
            .env("WSGATE__API__KEYS", API_KEY)
            .env("WSGATE__LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut log = Vec::new();
        loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) else {
                // Never leave the process behind.
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsgate did not start; log so far:\n{}", log.join("\n"));
            };
            log.push(line.clone());
            if line.contains("wsgate serving") {
                let v: Value = serde_json::from_str(&line).expect("JSON log line");
                let field = |k: &str| v[k].as_str().unwrap().to_string();
                return BinNode {
                    ws: field("ws"),
                    api: field("api"),
                    metrics: field("metrics"),
                    child,
                    lines,
                    log,
                };
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// Waits for the process to exit (up to `wait`) and collects its log.
    pub fn wait_exit(&mut self, wait: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wsgate did not exit in {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines received so far.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for BinNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `node` with `args` and `env` in the repository root (blocking, off
/// the runtime), prints everything it wrote, and returns whether it
/// succeeded and that output.
pub async fn run_node(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(&args)
            .envs(env)
            .current_dir(root)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    (out.status.success(), report)
}
