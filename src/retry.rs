//! The waits between retries of background work (a lost `LISTEN`
//! connection, a failed outbox batch or catch-up sweep, a webhook):
//! exponential from `min` to `max`, each with random jitter so nodes
//! retrying at once spread out, never giving up. One builder so every
//! retry loop backs off alike (`backon` does the arithmetic).

use std::time::Duration;

use backon::BackoffBuilder;

/// The waits, in order; endless.
pub fn delays(min: Duration, max: Duration) -> backon::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}
