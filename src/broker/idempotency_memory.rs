//! Idempotency keys in this process: the embedded broker's (one node, so
//! the keys need to be seen nowhere else). A bounded moka cache: each key
//! holds its own deadline, and the cache's time-to-live is the longest
//! window, so entries go by themselves. At `capacity` keys the cache evicts
//! (least recently used first), so under a flood of distinct keys the
//! oldest may be forgotten before their window ends: memory stays bounded,
//! and the README says so.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::BrokerError;
use super::idempotency::Idempotency;

pub struct MemoryIdempotency {
    /// Key to the instant it stops being held.
    keys: Cache<String, Instant>,
}

impl MemoryIdempotency {
    /// Holds at most `capacity` keys, none longer than `longest`.
    pub fn new(capacity: u64, longest: Duration) -> MemoryIdempotency {
        MemoryIdempotency {
            keys: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(longest)
                .build(),
        }
    }

    fn is_held(&self, key: &str, now: Instant) -> bool {
        self.keys.get(key).is_some_and(|until| until > now)
    }
}

#[async_trait]
impl Idempotency for MemoryIdempotency {
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BrokerError> {
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|key| {
                // Atomic per key: of two concurrent claims, one takes it.
                let result = self.keys.entry(key.clone()).and_compute_with(|held| {
                    match held.map(|e| e.into_value()) {
                        Some(until) if until > now => Op::Nop,
                        _ => Op::Put(now + ttl),
                    }
                });
                matches!(
                    result,
                    CompResult::Inserted(_) | CompResult::ReplacedWith(_)
                )
            })
            .collect())
    }

    async fn keep(&self, keys: &[String], ttl: Duration) -> Result<(), BrokerError> {
        let until = Instant::now() + ttl;
        for key in keys {
            self.keys.insert(key.clone(), until);
        }
        Ok(())
    }

    async fn held(&self, keys: &[String]) -> Result<Vec<bool>, BrokerError> {
        let now = Instant::now();
        Ok(keys.iter().map(|k| self.is_held(k, now)).collect())
    }

    async fn release(&self, keys: &[String]) -> Result<(), BrokerError> {
        for key in keys {
            self.keys.invalidate(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Vec<String> {
        vec![s.to_string()]
    }

    #[tokio::test]
    async fn claim_keep_release() {
        let ids = MemoryIdempotency::new(100, Duration::from_secs(60));
        let ttl = Duration::from_secs(30);
        assert_eq!(ids.claim(&k("a"), ttl).await.unwrap(), [true]);
        assert_eq!(ids.claim(&k("a"), ttl).await.unwrap(), [false]);
        assert_eq!(ids.held(&k("a")).await.unwrap(), [true]);
        ids.release(&k("a")).await.unwrap();
        assert_eq!(ids.held(&k("a")).await.unwrap(), [false]);
        assert_eq!(ids.claim(&k("a"), ttl).await.unwrap(), [true]);
        ids.keep(&k("b"), ttl).await.unwrap();
        assert_eq!(ids.claim(&k("b"), ttl).await.unwrap(), [false]);
    }

    #[tokio::test]
    async fn a_key_goes_at_its_deadline() {
        let ids = MemoryIdempotency::new(100, Duration::from_secs(60));
        ids.claim(&k("a"), Duration::from_millis(20)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(ids.held(&k("a")).await.unwrap(), [false]);
        assert_eq!(
            ids.claim(&k("a"), Duration::from_secs(1)).await.unwrap(),
            [true]
        );
    }
}
