//! Wakes the publisher when an outbox row commits: one connection
//! `LISTEN`s on `wsgate_outbox` (the insert trigger's `NOTIFY`, sent on
//! commit) and pokes a [`Notify`]. A lost connection is made again with
//! backoff; notices sent meanwhile are lost, which only costs latency: the
//! publisher also looks every `outbox.poll_interval`, and it is poked once
//! more after every reconnect.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;

pub const CHANNEL: &str = "wsgate_outbox";

const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest one connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens until aborted. Fails only when the first connection cannot be made.
pub(super) async fn listen(
    url: &str,
    wake: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    let first = connect(url).await?;
    let url = url.to_string();
    Ok(tokio::spawn(async move {
        let mut current = Some(first);
        loop {
            let mut listener = match current.take() {
                Some(listener) => listener,
                None => reconnect(&url).await,
            };
            // Whatever was notified while nobody listened.
            wake.notify_one();
            loop {
                match listener.try_recv().await {
                    Ok(Some(_)) => wake.notify_one(),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox listener lost Postgres; reconnecting");
                        break;
                    }
                }
            }
        }
    }))
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

async fn reconnect(url: &str) -> PgListener {
    let mut wait = RETRY_MIN;
    loop {
        if let Ok(Ok(listener)) = tokio::time::timeout(CONNECT_TIMEOUT, connect(url)).await {
            return listener;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}
