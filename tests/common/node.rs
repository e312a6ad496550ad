//! An in-process node for one test: its config, starting it, and the API,
//! metrics and token helpers around it.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wsgate::auth::sql::{Db, NativeStore};
use wsgate::config::Config;
use wsgate::server::{Addrs, Server};
use wsgate::state::AppState;

use super::API_KEY;

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

/// A node of a test cluster: its own node id, the given Redis and
/// PostgreSQL, and short Redis timers so a lost node or link shows quickly.
pub fn redis_node_config(
    dir: &std::path::Path,
    node: &str,
    redis_url: &str,
    prefix: &str,
    pg_url: &str,
) -> Config {
    let mut c = test_config(dir);
    c.server.node_id = Some(node.into());
    c.redis.url = Some(redis_url.into());
    c.redis.prefix = prefix.into();
    c.redis.heartbeat = Duration::from_millis(200);
    c.redis.node_ttl = Duration::from_secs(1);
    c.redis.command_timeout = Duration::from_millis(500);
    c.database.url = Some(pg_url.into());
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

/// A node on the [`test_config`] of a fresh temporary directory (kept as
/// long as the returned directory is).
pub async fn node() -> (tempfile::TempDir, TestNode) {
    node_with(|_| {}).await
}

/// Like [`node`], with `f` applied to the config first.
pub async fn node_with(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    f(&mut config);
    (dir, spawn(config).await)
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
