//! wsgate: a WebSocket gateway that authenticates on the first frame and
//! fans group messages out across a cluster.
//!
//! The map, top-down:
//! - [`config`]: layered configuration (defaults, file, environment).
//! - [`protocol`]: frames, close codes, group names, the broker envelope. Pure.
//! - [`auth`]: tokens, the `TokenStore` trait and its SQL stores.
//! - [`policy`]: which groups a user may join or publish to.
//! - [`hub`]: this node's connections and groups (local, synchronous), and
//!   [`queue`]: each connection's bounded, conflating outbound queue.
//! - [`broker`]: moves publications and commands between nodes (trait + in-process).
//! - [`handshake`] and [`session`]: one socket, from upgrade to close;
//!   [`limits`]: per-node and per-IP caps and rate limits at that edge.
//! - [`api`]: the backend HTTP API.
//! - [`ops`]: metrics, health, logging, drain.
//! - [`state`]: `AppState`, shared by handlers and sessions.
//! - [`redis_client`]: builds the fred clients (one reconnect and timeout policy
//!   for the broker, the auth cache and [`compat`]).
//! - [`compat`]: delivers Django Channels `group_send` (`channels_redis`).
//! - [`server`]: the composition root; [`cli`]: the command line;
//!   [`demo`]: `wsgate demo`, a market feed and its page.

pub mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod compat;
pub mod config;
pub mod demo;
pub mod handshake;
pub mod hub;
pub mod limits;
pub mod ops;
pub mod policy;
pub mod protocol;
pub mod queue;
pub mod redis_client;
pub mod server;
pub mod session;
pub mod state;
