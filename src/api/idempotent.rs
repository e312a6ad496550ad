//! Idempotent publish: a publish body may carry `idempotency_key`; a second
//! request with the same key within `api.idempotency_window` is answered
//! `{"ok":true,"duplicate":true}` (200, like the first, so a retry loop
//! ends) and delivers nothing. See [`crate::broker::idempotency`] for where
//! keys are kept and why the key is claimed before publishing.

use std::time::Duration;

use super::{ApiError, ApiState, bad};
use crate::broker::idempotency::{MAX_KEY_LEN, is_valid_key};

/// How long a claimed key is held before its publish is known to be done:
/// long enough for any publish (broker calls are bounded by a few seconds),
/// short enough that a node dying between claim and publish does not stop a
/// retry for the whole window.
const PENDING: Duration = Duration::from_secs(30);

/// A claimed key: the publish may go ahead.
pub(super) struct Claim(String);

/// Checks the key and claims it. `Ok(None)`: the key is held (a duplicate).
pub(super) async fn claim(state: &ApiState, key: &str) -> Result<Option<Claim>, ApiError> {
    if !is_valid_key(key) {
        return Err(bad(format!(
            "idempotency_key must be 1 to {MAX_KEY_LEN} characters of A-Z a-z 0-9 . _ : -"
        )));
    }
    // Namespaced, so no caller's key is an outbox row's.
    let key = format!("api:{key}");
    let pending = PENDING.min(state.idempotency_window);
    let taken = state
        .idempotency
        .claim(std::slice::from_ref(&key), pending)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if taken.first() == Some(&true) {
        Ok(Some(Claim(key)))
    } else {
        state.metrics.publish_duplicates.inc();
        Ok(None)
    }
}

impl Claim {
    /// The publish went out: hold the key for the whole window. A failure
    /// here leaves it held for the pending time only; the publish stands.
    pub(super) async fn done(self, state: &ApiState) {
        let keys = [self.0];
        if let Err(e) = state
            .idempotency
            .keep(&keys, state.idempotency_window)
            .await
        {
            tracing::warn!(error = %e, "idempotency key not kept for its window");
        }
    }

    /// The publish failed: let a retry publish.
    pub(super) async fn failed(self, state: &ApiState) {
        if let Err(e) = state.idempotency.release(&[self.0]).await {
            tracing::warn!(error = %e, "idempotency key not released");
        }
    }
}
