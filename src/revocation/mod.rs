//! Revocation: a token stops being trusted everywhere, and the sockets that
//! hold it close.
//!
//! Four things can revoke a token: the backend API (`POST /api/v1/revoke`),
//! the CLI (`wsgate token revoke`), the database (the trigger's `NOTIFY`,
//! [`listen`]) and a re-validation sweep that finds a token gone
//! ([`revalidate`]). They all end in the same two steps, written once here:
//!
//! - [`revoke_everywhere`]: the cluster-wide path (API, CLI). The store
//!   refuses the token, the shared cache holds a tombstone, and a
//!   `RevokeDigest` control reaches every node.
//! - [`Forget`]: what one node does for a digest, whatever told it:
//!   forget it in the caches (the shared tombstone too, unless a control
//!   message said so and the sender wrote it already), then close this
//!   node's sockets that hold it with 4003.
//!
//! Above [`crate::auth`] (which verifies and caches tokens) and
//! [`crate::hub`] (which holds the sockets), so neither needs the other.

pub mod listen;
pub mod revalidate;

use std::sync::Arc;

use crate::auth::{Authenticator, StoreError, TokenDigest};
use crate::broker::ControlSender;
use crate::hub::Hub;
use crate::protocol::{CloseCode, Control};

/// One node's reaction to a revoked digest.
#[derive(Clone)]
pub struct Forget {
    auth: Arc<Authenticator>,
    hub: Arc<Hub>,
}

impl Forget {
    pub fn new(auth: Arc<Authenticator>, hub: Arc<Hub>) -> Forget {
        Forget { auth, hub }
    }

    /// Forgets `digest` in this node's in-process cache and closes its local
    /// sockets with 4003; returns how many were asked to close. Synchronous:
    /// the broker's dispatcher calls it for a `RevokeDigest`, whose sender
    /// already wrote the shared tombstone. The cache goes first, so a
    /// reconnect cannot be let in by this node's in-process layer.
    pub fn here(&self, digest: &TokenDigest) -> usize {
        self.auth.forget_local(digest);
        self.hub.close_digest(digest, CloseCode::AuthFailed)
    }

    /// Writes the shared tombstone, then [`Forget::here`]. A cache that
    /// cannot be reached is logged, never a reason to leave sockets open.
    pub async fn everywhere_cached(&self, digest: &TokenDigest) -> usize {
        if let Err(e) = self.auth.forget(digest).await {
            tracing::warn!(error = %e, "revocation: the token cache could not forget the token");
        }
        self.here(digest)
    }
}

/// Revokes a token across the cluster: the store refuses it from now on,
/// the caches hold a tombstone, and every node (this one included) closes
/// its sockets. The API (through its broker) and the CLI (through a
/// [`ControlSender`] that does not join the cluster) both call this.
pub async fn revoke_everywhere(
    auth: &Authenticator,
    nodes: &dyn ControlSender,
    digest: &TokenDigest,
) -> Result<(), RevokeError> {
    auth.revoke(digest).await.map_err(RevokeError::Store)?;
    nodes
        .control(Control::RevokeDigest {
            digest: digest.to_hex(),
        })
        .await
        .map_err(|e| RevokeError::Broker(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The store (or the cache) did not take the revocation.
    #[error("{0}")]
    Store(StoreError),
    /// Revoked, but the nodes could not be told: live sockets stay open
    /// until re-validation or their next refresh.
    #[error("broker unavailable: {0}")]
    Broker(String),
}
