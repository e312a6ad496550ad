//! Shared by the integration tests: start real nodes on free ports, create
//! throwaway Postgres databases and Redis key prefixes that clean up after
//! themselves, and drive real WebSocket clients.
//!
//! - [`node`]: a config for one test and an in-process node ([`TestNode`],
//!   [`node`], [`node_with`]), and the metric and token helpers around it.
//! - [`db`]: throwaway databases in the shared Postgres ([`PgDb`], dropped
//!   on drop, also when the test panics), token digests and Django's tables.
//! - [`client`]: a WebSocket client ([`Client`]) and how it saw a close.
//! - [`bin`]: the real `wsgate` binary ([`BinNode`], [`run_bin`]) and `node`
//!   (Node.js) for the JavaScript tests.
//! - [`django`]: the example Django project: `manage.py`, `runserver`.
//! - [`hook_backend`]: a stand-in backend answering the subscribe hook.
//! - [`ports`]: free ports and waiting for one to open or close.
//! - [`redis_servers`]: the shared Redis ([`RedisPrefix`], deleted on drop),
//!   throwaway `redis-server` processes and a Redis Cluster.
//! - [`pg_server`]: a throwaway PostgreSQL cluster to stop, restart, freeze.
//! - [`raw_ws`]: a raw WebSocket client over TCP, frames encoded by hand.
//! - [`webhook`]: a webhook receiver that records requests and fails the first few.
#![allow(dead_code, unused_imports)]

pub mod bin;
pub mod client;
pub mod db;
pub mod django;
pub mod hook_backend;
pub mod node;
pub mod outbox;
pub mod pg_server;
pub mod ports;
pub mod raw_ws;
pub mod redis_servers;
pub mod tls_servers;
pub mod webhook;

use std::time::Duration;

pub use bin::*;
pub use client::*;
pub use db::*;
pub use node::*;
pub use ports::*;
pub use redis_servers::{RedisPrefix, SHARED_REDIS};

pub const API_KEY: &str = "test-api-key-0123456789";

/// How long a test waits for any one expected frame.
pub const WAIT: Duration = Duration::from_secs(5);

/// Polls `f` until it is true or `wait` passes; returns the time it took.
pub async fn eventually<F, Fut>(wait: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < wait, "{what}: not within {wait:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
