//! Live revocation from Postgres: every node `LISTEN`s on `wsgate_revoke`;
//! wsgate's migration fires it when a native token is deleted or revoked or a
//! foreign token's digest is recorded, and `deploy/sql/django-revoke-trigger.sql`
//! when a Django token row is deleted or its user deactivated. Each node
//! forgets the digest in its caches and closes the token's local sockets
//! with 4003, so a deleted token loses its sockets within milliseconds.
//!
//! # Reconnecting
//!
//! The listener keeps one dedicated connection. When it is lost (Postgres
//! restarted, crashed, or the connection was terminated), the task drops it
//! and connects again with backoff ([`RETRY_MIN`] doubling to [`RETRY_MAX`],
//! each attempt bounded by [`CONNECT_TIMEOUT`]) until it can `LISTEN` again,
//! then keeps serving: the node never restarts and never drops a client for
//! it. We do the reconnecting ourselves rather than rely on `PgListener`'s,
//! which retries only on some I/O errors and forwards others (say a reset
//! connection) for ever.
//!
//! Notifications sent while no connection listened are lost. So once it
//! listens again, the task asks the [`Revalidator`] for a catch-up sweep:
//! every live connection's token is checked against the store (batched,
//! spread over a couple of seconds), which closes the sockets of any token
//! deleted or revoked in the gap. This happens whether or not periodic
//! re-validation is on. The listen comes first, the sweep second, so no
//! revocation falls between the two.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification};

use super::Forget;
use super::revalidate::Revalidator;
use crate::auth::TokenDigest;

pub const CHANNEL: &str = "wsgate_revoke";

/// First wait between reconnect attempts.
pub const RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between reconnect attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(2);
/// Longest one reconnect attempt may take (a database that accepts TCP but
/// does not answer).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Listens until the task is aborted. Returns an error only when the first
/// connection cannot be made. After a reconnect, `revalidator` (when given)
/// is asked for a catch-up sweep.
pub async fn listen(
    database_url: &str,
    forget: Forget,
    revalidator: Option<Arc<Revalidator>>,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    let listener = connect(database_url).await?;
    let url = database_url.to_string();
    Ok(tokio::spawn(async move {
        let mut first = Some(listener);
        loop {
            let mut current = match first.take() {
                Some(listener) => listener,
                None => {
                    let listener = reconnect(&url).await;
                    // Notices may have been lost while nobody listened.
                    if let Some(revalidator) = &revalidator {
                        revalidator.catch_up();
                    }
                    listener
                }
            };
            let error = serve(&mut current, &forget).await;
            tracing::warn!(error = %error, "revocation listener lost Postgres; reconnecting");
            drop(current);
        }
    }))
}

async fn connect(url: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect(url).await?;
    // A lost connection is reported (`Ok(None)`) and left to us.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Connects again, however long it takes.
async fn reconnect(url: &str) -> PgListener {
    let mut wait = RETRY_MIN;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, connect(url)).await {
            Ok(Ok(listener)) => {
                tracing::info!(attempts, "revocation listener reconnected to Postgres");
                return listener;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        tracing::debug!(attempts, error = %error, "revocation listener: reconnect failed");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Handles notices until the connection fails; returns why it did.
async fn serve(listener: &mut PgListener, forget: &Forget) -> String {
    loop {
        match listener.try_recv().await {
            Ok(Some(notification)) => on_notice(&notification, forget).await,
            Ok(None) => return "connection lost".to_string(),
            Err(e) => return e.to_string(),
        }
    }
}

async fn on_notice(notification: &PgNotification, forget: &Forget) {
    let Some(digest) = TokenDigest::from_hex(notification.payload()) else {
        tracing::debug!("ignoring a malformed revocation notice");
        return;
    };
    let closed = forget.everywhere_cached(&digest).await;
    tracing::info!(closed, "token revoked in the database");
}
