//! Which groups keep their latest publication (`groups.snapshot`), so a
//! subscriber asking for `latest` gets the current value at once instead of
//! waiting for the next one (a market price, a status).
//!
//! Like offsets, the latest is kept by the broker, in the same step as the
//! publish: it is then never older than what the channel carried, and each
//! kept publication gets the next sequence of its group (an offset and an
//! epoch, [`crate::protocol::Publication::seq`]), so a subscriber's hold can
//! drop the live copy of the snapshot it was just sent, exactly as a history
//! replay drops the live copies it covered.

use std::time::Duration;

use wildmatch::WildMatch;

use crate::config::GroupsConfig;

/// Bytes of kept publications (group name and data) the in-process broker
/// holds at most; past it, moka evicts the least used groups' snapshots.
/// Redis keeps every one until `groups.snapshot_ttl`.
pub const MAX_MEMORY_SNAPSHOT_BYTES: u64 = 64 * 1024 * 1024;

/// `groups.snapshot` and `groups.snapshot_ttl`, patterns compiled once.
#[derive(Debug, Clone)]
pub struct SnapshotPolicy {
    patterns: Vec<WildMatch>,
    pub ttl: Duration,
}

impl SnapshotPolicy {
    pub fn new(cfg: &GroupsConfig) -> SnapshotPolicy {
        SnapshotPolicy {
            patterns: cfg.snapshot.iter().map(|p| WildMatch::new(p)).collect(),
            ttl: cfg.snapshot_ttl,
        }
    }

    /// No group keeps its latest publication.
    pub fn off() -> SnapshotPolicy {
        SnapshotPolicy::new(&GroupsConfig::default())
    }

    pub fn applies(&self, group: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(group))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_matches_patterns() {
        let policy = SnapshotPolicy::new(&GroupsConfig {
            snapshot: vec!["market.*".into()],
            ..GroupsConfig::default()
        });
        assert!(policy.applies("market.AAPL"));
        assert!(!policy.applies("news"));
        assert!(!SnapshotPolicy::off().applies("market.AAPL"));
    }
}
