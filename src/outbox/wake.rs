//! Wakes the publisher when an outbox row commits: one connection
//! `LISTEN`s on `wsgate_outbox` (the insert trigger's `NOTIFY`, sent on
//! commit) and pokes a [`Notify`]. A lost connection is made again
//! ([`crate::pg_listen`]); notices sent meanwhile are lost, which only costs latency: the
//! publisher also looks every `outbox.poll_interval`, and it is poked once
//! more after every reconnect.

use std::sync::Arc;

use tokio::sync::Notify;

use crate::pg_listen;

pub const CHANNEL: &str = "wsgate_outbox";

/// Listens until aborted. Fails only when the first connection cannot be made.
pub(super) async fn listen(
    url: &str,
    wake: Arc<Notify>,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    let first = pg_listen::connect(url, CHANNEL).await?;
    let url = url.to_string();
    Ok(tokio::spawn(async move {
        let mut current = Some(first);
        loop {
            let mut listener = match current.take() {
                Some(listener) => listener,
                None => pg_listen::reconnect(&url, CHANNEL, "outbox listener").await,
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
