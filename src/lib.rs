//! wsgate: a WebSocket gateway that authenticates on the first frame and
//! fans group messages out across a cluster.
//!
//! The map, bottom-up: each module uses only those above it in this list,
//! so there are no cycles between them (`tests/structure.rs` checks that).
//!
//! Leaves, pure:
//! - [`token`]: the client's secret and its SHA-256 digest.
//! - [`clock`]: the wall clock, in the units we store and send.
//! - `tls`: TLS to PostgreSQL and Redis: PEM files, checks, clear errors.
//! - [`ws`]: the WebSocket protocol (RFC 6455), server side: frames
//!   (pure), the socket (messages in, encoded frames out with vectored
//!   writes), the opening handshake; and `prefixed`, the TCP stream type the
//!   listener serves so that an upgrade can take the socket back.
//! - [`protocol`]: client frames, server frames, the broker envelope, close
//!   and error codes. No I/O.
//! - [`config`]: layered configuration (defaults, file, environment),
//!   validated section by section.
//! - [`metrics`]: Prometheus metrics; every label set comes from an enum.
//! - [`telemetry`]: logs and OpenTelemetry traces.
//!
//! The node's parts:
//! - [`auth`]: the `TokenStore` trait, its SQL stores, the JWT store (with
//!   its JWKS cache), the token caches, and the gatherer that sends
//!   concurrent store lookups as one query.
//! - `policy`: which groups a user may join or publish to.
//! - [`subscribe_auth`]: `groups.authorize`, the backend's say on who joins
//!   which group: the subscribe hook, its answer cache, subscription grants.
//! - `limits`: per-node and per-IP caps and rate limits at the edge.
//! - [`hub`]: this node's connections and groups (local, synchronous), with
//!   each connection's bounded, conflating outbound queue (`queue`).
//! - [`broker`]: moves publications and commands between nodes: the
//!   `Broker` trait (with `History`, `Snapshots` (a group's latest message),
//!   `Presence`, `NodeRegistry` and `Occupancy` beside it), the in-process
//!   broker and the Redis one (one server, a Redis Cluster, or independent
//!   shards with each group on one), and idempotency keys
//!   (`idempotency`: in process, or on Redis). [`redis_client`] builds
//!   the Redis clients (broker, token cache, channels_redis bridge).
//! - `outbox`: publishes the rows a backend commits to `wsgate_outbox`
//!   (PostgreSQL), claimed per partition, at least once.
//! - `pg_listen`: a PostgreSQL `LISTEN` connection made again however long
//!   it takes (revocation and the outbox's wake-up each hold one); `retry`:
//!   the backoff every background retry loop waits by.
//! - `occupancy`: feed demand: counts the `occupied` / `vacated` events the
//!   broker decides and POSTs them to the signed webhook.
//! - `revocation`: forgetting a token everywhere and closing its sockets
//!   (the API, the CLI, the Postgres listener and re-validation share it).
//! - `dispatch`: what the broker delivers, handed to the hub.
//! - `compat`: delivers Django Channels `group_send` (`channels_redis`).
//!
//! The edges, where typed errors become close codes and HTTP answers:
//! - [`state`]: what the WebSocket side shares; `handshake` and `session`:
//!   one socket, from upgrade to close; `ops`: health, `/metrics`, drain.
//!   `healthcheck`: `wsgate healthcheck`, the client side of `/healthz`.
//! - `api`: the backend HTTP API, with its own state.
//! - [`server`]: the composition root, the only module that names concrete
//!   stores and brokers; [`cli`]: the command line; `demo`: `wsgate demo`.
//!
//! Modules shown without a link are private: tests drive them through a
//! running node, over real sockets.

mod api;
pub mod auth;
pub mod broker;
pub mod cli;
pub mod clock;
mod compat;
pub mod config;
mod demo;
mod dispatch;
mod handshake;
mod healthcheck;
pub mod hub;
mod limits;
pub mod metrics;
mod occupancy;
mod ops;
mod outbox;
mod pg_listen;
mod policy;
mod prefixed;
pub mod protocol;
mod queue;
pub mod redis_client;
mod retry;
mod revocation;
pub mod server;
mod session;
pub mod state;
pub mod subscribe_auth;
pub mod telemetry;
mod tls;
pub mod token;
pub mod ws;
