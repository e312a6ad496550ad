//! Graceful drain (section 8): on SIGTERM the node stops taking clients at
//! once, waits `drain.grace`, then closes its connections with 1012 spread
//! over `drain.spread`, so they do not all reconnect at the same instant.
//!
//! axum does not wait for upgraded sockets, so sessions are counted in
//! `AppState` and the drain waits for that count to reach zero.

use std::time::Duration;

use tokio::time::{Instant, sleep, sleep_until};

use crate::protocol::CloseCode;
use crate::state::AppState;

/// Longest wait for sessions to finish after their close was requested.
const FINISH_WAIT: Duration = Duration::from_secs(5);

pub async fn drain(state: &AppState) {
    let config = &state.config.drain;
    state.start_draining();
    tracing::info!(
        grace_ms = config.grace.as_millis() as u64,
        spread_ms = config.spread.as_millis() as u64,
        connections = state.open_sessions(),
        "draining"
    );
    sleep(config.grace).await;
    // Sessions still authenticating are closed first: they hold nothing.
    state.close_pending();
    let mut conns = state.hub.connections();
    // Shuffle so the order of closes does not follow connection age.
    {
        use rand::seq::SliceRandom;
        conns.shuffle(&mut rand::rng());
    }
    let n = conns.len().max(1) as u32;
    let step = config.spread / n;
    let start = Instant::now();
    for (i, conn) in conns.iter().enumerate() {
        // Evenly spaced, each jittered within its own slot.
        let jitter = step.mul_f64(rand::random::<f64>());
        sleep_until(start + step * i as u32 + jitter).await;
        conn.request_close(CloseCode::Draining);
    }
    let deadline = Instant::now() + FINISH_WAIT;
    while state.open_sessions() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(remaining = state.open_sessions(), "drain finished");
}
