//! Live revocation from Postgres: every node `LISTEN`s on `wsgate_revoke`;
//! wsgate's migration fires it when a native token is deleted or revoked or a
//! foreign token's digest is recorded, and `deploy/sql/django-revoke-trigger.sql`
//! when a Django token row is deleted or its user deactivated. Each node
//! forgets the digest in its caches and closes the token's local sockets
//! with 4003, so a deleted token loses its sockets within milliseconds.
//!
//! sqlx's `PgListener` reconnects and listens again by itself after a
//! Postgres restart; notifications sent while it was away are lost (the
//! cache TTLs bound how long such a token stays usable on a new socket).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;

use super::{Authenticator, TokenDigest};
use crate::hub::Hub;
use crate::protocol::CloseCode;

pub const CHANNEL: &str = "wsgate_revoke";

/// Listens until the task is aborted. Returns an error only when the first
/// connection cannot be made.
pub async fn listen(
    database_url: &str,
    auth: Arc<Authenticator>,
    hub: Arc<Hub>,
) -> Result<tokio::task::JoinHandle<()>, sqlx::Error> {
    let mut listener = PgListener::connect(database_url).await?;
    listener.listen(CHANNEL).await?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.recv().await {
                Ok(notification) => {
                    let Some(digest) = TokenDigest::from_hex(notification.payload()) else {
                        tracing::debug!("ignoring a malformed revocation notice");
                        continue;
                    };
                    if let Err(e) = auth.forget(&digest).await {
                        tracing::warn!(error = %e, "revocation notice: cache not cleared");
                    }
                    let closed = hub.close_digest(&digest, CloseCode::AuthFailed);
                    tracing::info!(closed, "token revoked in the database");
                }
                Err(e) => {
                    // The listener reconnects on the next call.
                    tracing::warn!(error = %e, "revocation listener lost Postgres; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }))
}
