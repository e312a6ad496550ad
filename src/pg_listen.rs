//! A PostgreSQL `LISTEN` connection kept for the life of the node: the
//! revocation listener and the outbox's wake-up each hold one.
//!
//! We make the connection again ourselves rather than rely on
//! `PgListener`'s own reconnecting, which retries only on some I/O errors
//! and forwards others (say a reset connection) for ever. The caller
//! decides what a gap means (notices sent meanwhile are lost), so this file
//! only connects: with exponential backoff and jitter ([`crate::retry`]), each
//! attempt bounded by [`CONNECT_TIMEOUT`], however long it takes.

use std::time::Duration;

use sqlx::postgres::PgListener;

/// First wait between reconnect attempts.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest one attempt may take (a database that accepts TCP but does not
/// answer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects and listens on `channel`; a lost connection is then reported
/// by `try_recv` (`Ok(None)` or an error) and left to the caller.
pub async fn connect(url: &str, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.eager_reconnect(false);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Connects again, however long it takes; `what` names the listener in logs.
pub async fn reconnect(url: &str, channel: &str, what: &str) -> PgListener {
    let mut delays = crate::retry::delays(RETRY_MIN, RETRY_MAX);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, connect(url, channel)).await {
            Ok(Ok(listener)) => {
                tracing::info!(attempts, "{what} reconnected to Postgres");
                return listener;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        tracing::debug!(attempts, error = %error, "{what}: reconnect failed");
        tokio::time::sleep(delays.next().unwrap_or(RETRY_MAX)).await;
    }
}
