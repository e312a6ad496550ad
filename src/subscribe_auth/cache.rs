//! The hook's answers, kept per (user, group) for a short while, and the
//! revocations that grants must respect.
//!
//! Allows and denies live in two separate bounded caches with their own
//! TTLs: a client that subscribes to many groups it may not join fills the
//! deny side only, and cannot evict the allows of others. A revocation
//! (`POST /api/v1/unsubscribe`, on every node) drops both answers and
//! bumps a generation counter: a hook call that was in flight across it
//! does not store its (possibly stale) allow.
//!
//! Revocations are also remembered, for `authorize.grant_max_lifetime`
//! (the longest a grant may live), so that a grant issued before the
//! revocation cannot subscribe again; after that every such grant has
//! expired anyway. That memory is per node and bounded like the caches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::sync::Cache;

/// A cached hook answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cached {
    Allow,
    Deny,
}

type Key = (String, String);

pub struct AnswerCache {
    allows: Option<Cache<Key, ()>>,
    denies: Option<Cache<Key, ()>>,
    /// (user, group) → when it was revoked (unix seconds).
    revoked: Cache<Key, u64>,
    generation: AtomicU64,
}

fn cache(size: u64, ttl: Duration) -> Option<Cache<Key, ()>> {
    (!ttl.is_zero()).then(|| {
        Cache::builder()
            .max_capacity(size)
            .time_to_live(ttl)
            .build()
    })
}

impl AnswerCache {
    /// `ttl` 0 turns that side off.
    pub fn new(size: u64, allow_ttl: Duration, deny_ttl: Duration, revoked_for: Duration) -> Self {
        AnswerCache {
            allows: cache(size, allow_ttl),
            denies: cache(size, deny_ttl),
            revoked: Cache::builder()
                .max_capacity(size.max(1))
                .time_to_live(revoked_for)
                .build(),
            generation: AtomicU64::new(0),
        }
    }

    pub fn get(&self, user_id: &str, group: &str) -> Option<Cached> {
        let key = (user_id.to_string(), group.to_string());
        if self.allows.as_ref().is_some_and(|c| c.contains_key(&key)) {
            Some(Cached::Allow)
        } else if self.denies.as_ref().is_some_and(|c| c.contains_key(&key)) {
            Some(Cached::Deny)
        } else {
            None
        }
    }

    /// The generation to hand back to [`AnswerCache::put`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps an answer got while the generation was `seen`, unless a
    /// revocation happened since (then an allow is not kept).
    pub fn put(&self, user_id: &str, group: &str, answer: Cached, seen: u64) {
        let key = (user_id.to_string(), group.to_string());
        match answer {
            Cached::Allow if self.generation() == seen => {
                if let Some(c) = &self.allows {
                    c.insert(key, ());
                }
            }
            Cached::Allow => {}
            Cached::Deny => {
                if let Some(c) = &self.denies {
                    c.insert(key, ());
                }
            }
        }
    }

    /// Forgets the answers for (user, group) and remembers the revocation
    /// at `now` (unix seconds).
    pub fn revoke(&self, user_id: &str, group: &str, now: u64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let key = (user_id.to_string(), group.to_string());
        if let Some(c) = &self.allows {
            c.invalidate(&key);
        }
        if let Some(c) = &self.denies {
            c.invalidate(&key);
        }
        self.revoked.insert(key, now);
    }

    /// When (user, group) was last revoked (unix seconds), if remembered.
    pub fn revoked_at(&self, user_id: &str, group: &str) -> Option<u64> {
        self.revoked.get(&(user_id.to_string(), group.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_revocations_and_stale_allows() {
        let c = AnswerCache::new(
            10,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        assert_eq!(c.get("1", "g"), None);
        let g = c.generation();
        c.put("1", "g", Cached::Allow, g);
        c.put("1", "h", Cached::Deny, g);
        assert_eq!(c.get("1", "g"), Some(Cached::Allow));
        assert_eq!(c.get("1", "h"), Some(Cached::Deny));
        assert_eq!(c.get("2", "g"), None);
        c.revoke("1", "g", 100);
        assert_eq!(c.get("1", "g"), None);
        assert_eq!(c.revoked_at("1", "g"), Some(100));
        // An allow fetched before the revocation is not kept.
        c.put("1", "g", Cached::Allow, g);
        assert_eq!(c.get("1", "g"), None);
        let off = AnswerCache::new(10, Duration::ZERO, Duration::ZERO, Duration::from_secs(1));
        off.put("1", "g", Cached::Allow, off.generation());
        assert_eq!(off.get("1", "g"), None);
    }
}
