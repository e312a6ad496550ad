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
//! and connects again ([`crate::pg_listen`]: backoff with jitter, each
//! attempt bounded) until it can `LISTEN` again, then keeps serving: the
//! node never restarts and never drops a client for it.
//!
//! Notifications sent while no connection listened are lost. So once it
//! listens again, the task asks the [`Revalidator`] for a catch-up sweep:
//! every live connection's token is checked against the store (batched,
//! spread over a couple of seconds), which closes the sockets of any token
//! deleted or revoked in the gap. This happens whether or not periodic
//! re-validation is on. The listen comes first, the sweep second, so no
//! revocation falls between the two.

use std::sync::Arc;

use sqlx::postgres::{PgListener, PgNotification};

use super::Forget;
use super::revalidate::Revalidator;
use crate::auth::TokenDigest;
use crate::pg_listen;

pub const CHANNEL: &str = "wsgate_revoke";

/// Listens until the task is aborted. Returns an error only when the first
/// connection cannot be made. After a reconnect, `revalidator` (when given)
/// is asked for a catch-up sweep.
pub async fn listen(
    database_url: &str,
    forget: Forget,
    revalidator: Option<Arc<Revalidator>>,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    let listener = pg_listen::connect(database_url, CHANNEL).await?;
    let url = database_url.to_string();
    Ok(tokio::spawn(async move {
        let mut first = Some(listener);
        loop {
            let mut current = match first.take() {
                Some(listener) => listener,
                None => {
                    let listener = pg_listen::reconnect(&url, CHANNEL, "revocation listener").await;
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
