//! Idempotency keys: "was this publish already made?", remembered for a
//! window across the cluster, so a publisher's retry (or the outbox's
//! re-publication of a row after a node died) is not delivered twice.
//!
//! Why its own small trait beside [`Broker`](super::Broker): the memory of
//! keys must be as wide as delivery. With Redis it is a Redis key
//! (`SET NX PX`), seen by every node; with the in-process broker there is
//! one node, so an in-process bounded TTL cache is enough. Nothing else of
//! the broker is needed, and the broker needs nothing of this.
//!
//! Two ways to use it, for two failure models:
//! - **claim, then publish, then keep** (the HTTP API): the key is taken
//!   *before* publishing, for a short `pending` time, so two concurrent
//!   retries do not both publish; once published it is kept for the whole
//!   window; if publishing failed it is released, so a retry can publish.
//!   A node that dies between the claim and the publish holds the key only
//!   for `pending`, after which a retry publishes.
//! - **check, publish, keep** (the outbox): a partition is worked by one
//!   node at a time (a row lock), so there is no concurrent retry to stop;
//!   what matters is that a row whose key was taken but never published is
//!   never skipped. So the key is only looked at before publishing and set
//!   after: a node that dies between the publish and the set makes the next
//!   node publish again (at least once), never not at all.

use std::time::Duration;

use async_trait::async_trait;

use super::BrokerError;

/// Longest idempotency key a caller may send.
pub const MAX_KEY_LEN: usize = 128;

/// Whether `key` may be an idempotency key: 1 to [`MAX_KEY_LEN`] characters
/// of `A-Z a-z 0-9 . _ : -` (what a UUID, a ULID or `order-42:v3` needs;
/// nothing that could confuse a Redis key or a log line).
pub fn is_valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Remembered idempotency keys. Keys are namespaced by the caller (`api:`,
/// `outbox:`) so a backend's key can never collide with an outbox row's.
#[async_trait]
pub trait Idempotency: Send + Sync + 'static {
    /// Takes each key that is not held, for `ttl`; `true` where this call
    /// took it, `false` where it was already held.
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BrokerError>;
    /// Holds every key for `ttl` from now, held before or not.
    async fn keep(&self, keys: &[String], ttl: Duration) -> Result<(), BrokerError>;
    /// Whether each key is held.
    async fn held(&self, keys: &[String]) -> Result<Vec<bool>, BrokerError>;
    /// Lets the keys go (a publish that failed after its claim).
    async fn release(&self, keys: &[String]) -> Result<(), BrokerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_plain_tokens() {
        assert!(is_valid_key("order-42:v3"));
        assert!(is_valid_key("0b8f5e1c-3d7e-4a51-9c1b-2f7f0a9e6d11"));
        assert!(is_valid_key(&"a".repeat(MAX_KEY_LEN)));
        assert!(!is_valid_key(""));
        assert!(!is_valid_key(&"a".repeat(MAX_KEY_LEN + 1)));
        for bad in ["a b", "a\nb", "a*", "é", "a{b}", "a/b"] {
            assert!(!is_valid_key(bad), "{bad:?}");
        }
    }
}
