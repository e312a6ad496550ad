//! Re-validation of live connections (`auth.revalidate_interval`).
//!
//! A token is checked when a socket authenticates (and when it refreshes),
//! but a socket can live for days: its token may expire, be revoked by a
//! path that sends no notice (SQLite, a store without the trigger, a notice
//! lost while the listener was reconnecting), or its Django user may be
//! deactivated. With an interval set, this module asks the token store again
//! about every live connection's current token, once per interval, and closes
//! those whose token is no longer valid, or no longer their user's, with 4003.
//!
//! # The store, not the cache
//!
//! Sweeps ask the [`TokenStore`](crate::auth::TokenStore) directly. The caches
//! would answer from memory for up to `auth.cache_ttl` and so hide exactly
//! what a sweep is for: an expiry or a revocation that sent no notice. A
//! token found invalid is also forgotten in the caches, so it cannot open a
//! new socket either.
//!
//! # Load on the database
//!
//! - Connections are grouped by token first: N sockets of one token cost one
//!   lookup.
//! - Tokens are looked up in batches of [`BATCH`] with
//!   [`TokenStore::verify_many`](crate::auth::TokenStore::verify_many): one
//!   `digest IN (...)` query per batch for the `native` store, two for
//!   `django` (`wsgate_revocations`, then `authtoken_token` joined to
//!   `auth_user`); an arbitrary `auth.query` cannot be batched and costs one
//!   query per token (plus one per batch).
//! - One batch at a time per node, and the batches of a sweep are spread
//!   evenly over the interval rather than sent at once.
//!
//! So a node with `T` distinct tokens makes `ceil(T / 512)` queries
//! (`native`) per interval, one at a time, evenly spaced: 50,000 sockets with
//! their own tokens and a 5-minute interval is 98 queries in 5 minutes, about
//! one every 3 s, each an index lookup of up to 512 keys.
//!
//! Measured (`tests/token_lifecycle.rs`): 40 Django sockets with a 300 ms
//! interval made 5 `authtoken_token` and 5 `wsgate_revocations` queries in
//! 1.5 s, where one query per token would have made 200 of each.
//!
//! # Failures
//!
//! A store error or a batch that exceeds its deadline ends the sweep without
//! closing anything; the next sweep tries again. Backend trouble never
//! disconnects clients here: a first-frame authentication is what answers
//! 1013, for new sockets.
//!
//! # Catch-up sweeps
//!
//! Postgres notifications sent while the revocation listener is reconnecting
//! are lost. When the listener is back ([`super::listen`]) it asks for a
//! catch-up sweep ([`Revalidator::catch_up`]), spread over at most
//! [`CATCH_UP_SPREAD`], and this runs even when `auth.revalidate_interval`
//! is `0s`: the composition root starts the sweeper whenever the store is on
//! Postgres or an interval is set. A failed catch-up is retried with backoff
//! until one succeeds.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, sleep, sleep_until};

use super::Forget;
use crate::auth::{Authenticator, StoreError, Token, TokenDigest};
use crate::config::AuthConfig;
use crate::hub::{ConnHandle, Hub};
use crate::protocol::CloseCode;

/// Tokens per [`super::TokenStore::verify_many`] call.
pub const BATCH: usize = crate::auth::sql::MAX_BATCH;
/// Longest spread of a catch-up sweep (after a listener reconnect): missed
/// revocations are found within this, at a bounded pace.
pub const CATCH_UP_SPREAD: Duration = Duration::from_secs(2);
/// Shortest deadline for one batch: a sweep is background work and may take
/// longer than a client-facing check (`auth.timeout`), but never hangs.
const MIN_BATCH_DEADLINE: Duration = Duration::from_secs(30);
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Waits between failed catch-up sweeps.
fn retry_delays() -> backon::ExponentialBackoff {
    crate::retry::delays(RETRY_MIN, RETRY_MAX)
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// Live connections checked.
    pub connections: usize,
    /// Distinct tokens among them.
    pub tokens: usize,
    /// `verify_many` calls.
    pub batches: usize,
    /// Connections asked to close with 4003.
    pub closed: usize,
}

/// Re-checks live connections' tokens against the store.
pub struct Revalidator {
    hub: Arc<Hub>,
    auth: Arc<Authenticator>,
    forget: Forget,
    interval: Duration,
    batch_deadline: Duration,
    catch_up: Notify,
}

impl Revalidator {
    pub fn new(hub: Arc<Hub>, auth: Arc<Authenticator>, config: &AuthConfig) -> Arc<Revalidator> {
        Arc::new(Revalidator {
            forget: Forget::new(auth.clone(), hub.clone()),
            hub,
            auth,
            interval: config.revalidate_interval,
            batch_deadline: config.timeout.max(MIN_BATCH_DEADLINE),
            catch_up: Notify::new(),
        })
    }

    /// Asks for a sweep now (the revocation listener reconnected: notices
    /// may have been lost). Requests made while one is pending coalesce.
    pub fn catch_up(&self) {
        self.catch_up.notify_one();
    }

    /// Runs sweeps until the task is aborted: one per interval (when set)
    /// and one per [`Revalidator::catch_up`].
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.run().await })
    }

    async fn run(&self) {
        let periodic = !self.interval.is_zero();
        let mut next = Instant::now() + self.interval;
        let mut retry = retry_delays();
        loop {
            let catch_up = tokio::select! {
                _ = sleep_until(next), if periodic => false,
                _ = self.catch_up.notified() => true,
            };
            let started = Instant::now();
            let spread = if catch_up {
                if periodic {
                    CATCH_UP_SPREAD.min(self.interval)
                } else {
                    CATCH_UP_SPREAD
                }
            } else {
                self.interval
            };
            let kind = if catch_up { "catch-up" } else { "periodic" };
            match self.sweep(spread).await {
                Ok(sweep) => {
                    retry = retry_delays();
                    if sweep.closed > 0 {
                        tracing::info!(
                            kind,
                            closed = sweep.closed,
                            connections = sweep.connections,
                            tokens = sweep.tokens,
                            batches = sweep.batches,
                            "re-validation closed connections whose token is no longer valid"
                        );
                    } else {
                        tracing::debug!(
                            kind,
                            connections = sweep.connections,
                            tokens = sweep.tokens,
                            batches = sweep.batches,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "re-validation sweep"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        kind,
                        error = %e,
                        "re-validation sweep failed; no connection closed, retrying later"
                    );
                    if catch_up {
                        // Lost notices are only found by a sweep that
                        // completes: try again, backing off.
                        sleep(retry.next().unwrap_or(RETRY_MAX)).await;
                        self.catch_up.notify_one();
                    }
                }
            }
            // The next periodic sweep starts an interval after this one
            // started (or at once, when this one overran the interval).
            next = started + self.interval;
        }
    }

    /// Checks every live connection once, its batches spread evenly over
    /// `spread`. An error ends the sweep; connections already found invalid
    /// stay closed, the others are checked next time.
    pub async fn sweep(&self, spread: Duration) -> Result<Sweep, StoreError> {
        // One entry per distinct token; weak handles, so a sweep spread over
        // minutes does not keep closed connections' queues alive.
        let mut index: HashMap<TokenDigest, usize> = HashMap::new();
        let mut tokens: Vec<Token> = Vec::new();
        let mut holders: Vec<(TokenDigest, Vec<Weak<ConnHandle>>)> = Vec::new();
        let mut connections = 0;
        for conn in self.hub.connections() {
            if conn.close.code().is_some() {
                continue;
            }
            connections += 1;
            let (token, digest) = conn.credential.get();
            let i = *index.entry(digest).or_insert_with(|| {
                tokens.push(token);
                holders.push((digest, Vec::new()));
                holders.len() - 1
            });
            holders[i].1.push(Arc::downgrade(&conn));
        }
        let batches = tokens.len().div_ceil(BATCH);
        let mut sweep = Sweep {
            connections,
            tokens: tokens.len(),
            batches,
            closed: 0,
        };
        let started = Instant::now();
        for (i, (batch, owners)) in tokens.chunks(BATCH).zip(holders.chunks(BATCH)).enumerate() {
            if i > 0 {
                sleep_until(started + spread.mul_f64(i as f64 / batches as f64)).await;
            }
            let answers =
                tokio::time::timeout(self.batch_deadline, self.auth.store().verify_many(batch))
                    .await
                    .map_err(|_| {
                        StoreError::Unavailable("re-validation batch timed out".into())
                    })??;
            for ((digest, conns), answer) in owners.iter().zip(answers) {
                match answer {
                    // Gone for everyone: forgotten in the caches and every
                    // local socket still on it closed, as any revocation.
                    None => sweep.closed += self.forget.everywhere_cached(digest).await,
                    // Valid, but no longer this connection's user.
                    Some(identity) => {
                        for conn in conns.iter().filter_map(Weak::upgrade) {
                            // A refresh may have swapped the token since the
                            // snapshot: only the token that was checked is judged.
                            if identity.user_id != conn.user_id
                                && conn.credential.digest() == *digest
                                && conn.request_close(CloseCode::AuthFailed)
                            {
                                sweep.closed += 1;
                            }
                        }
                    }
                }
            }
        }
        Ok(sweep)
    }
}
