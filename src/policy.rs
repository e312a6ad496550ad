//! Group policy: which groups a user may subscribe to, publish to, and joins
//! automatically (section 3 of the protocol).
//!
//! Patterns use `*` for any run of characters and `{user_id}` for the
//! authenticated user's id. Whatever the configuration, `user.<id>` is
//! private to user `<id>`: it is checked here, before any pattern.

use wildmatch::WildMatch;

use crate::config::GroupsConfig;

#[derive(Debug, Clone)]
pub struct GroupPolicy {
    allow: Vec<String>,
    auto_join: Vec<String>,
    client_publish: Vec<String>,
}

/// The prefix of per-user groups.
const USER_PREFIX: &str = "user.";

impl GroupPolicy {
    pub fn new(config: &GroupsConfig) -> GroupPolicy {
        GroupPolicy {
            allow: config.allow.clone(),
            auto_join: config.auto_join.clone(),
            client_publish: config.client_publish.clone(),
        }
    }

    /// `user.<id>` groups belong to user `<id>` alone. Everything after the
    /// prefix is the id, so `user.42.x` is the group of user "42.x", not of "42".
    fn private_ok(user_id: &str, group: &str) -> bool {
        match group.strip_prefix(USER_PREFIX) {
            Some(owner) => owner == user_id,
            None => true,
        }
    }

    fn matches_any(patterns: &[String], user_id: &str, group: &str) -> bool {
        patterns
            .iter()
            .any(|p| WildMatch::new(&p.replace("{user_id}", user_id)).matches(group))
    }

    pub fn can_subscribe(&self, user_id: &str, group: &str) -> bool {
        Self::private_ok(user_id, group)
            && (Self::matches_any(&self.allow, user_id, group)
                || self.auto_join(user_id).iter().any(|g| g == group))
    }

    /// Client publish needs a `groups.client_publish` match; another user's
    /// private group is never writable by a client.
    pub fn can_publish(&self, user_id: &str, group: &str) -> bool {
        Self::private_ok(user_id, group) && Self::matches_any(&self.client_publish, user_id, group)
    }

    /// The groups joined at `welcome`, skipping any that would not be a valid
    /// group name for this user id.
    pub fn auto_join(&self, user_id: &str) -> Vec<String> {
        self.auto_join
            .iter()
            .map(|p| p.replace("{user_id}", user_id))
            .filter(|g| crate::protocol::is_valid_group(g))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow: &[&str], publish: &[&str]) -> GroupPolicy {
        GroupPolicy::new(&GroupsConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
            auto_join: vec!["user.{user_id}".into()],
            client_publish: publish.iter().map(|s| s.to_string()).collect(),
            conflate: Vec::new(),
        })
    }

    #[test]
    fn patterns_and_private_groups() {
        let p = policy(&["market.*", "team.{user_id}.*"], &["chat.*"]);
        assert!(p.can_subscribe("42", "market.AAPL"));
        assert!(!p.can_subscribe("42", "news.x"));
        assert!(p.can_subscribe("42", "team.42.a"));
        assert!(!p.can_subscribe("42", "team.43.a"));
        // Own user group comes from auto_join even when `allow` does not list it.
        assert!(p.can_subscribe("42", "user.42"));
        assert!(!p.can_subscribe("42", "user.43"));
        assert!(!p.can_subscribe("42", "user.42.x"));
        assert!(p.can_publish("42", "chat.room"));
        assert!(!p.can_publish("42", "market.AAPL"));
        let open = policy(&["*"], &["*"]);
        assert!(!open.can_subscribe("42", "user.43"));
        assert!(!open.can_publish("42", "user.43"));
        assert!(open.can_publish("42", "user.42"));
        assert_eq!(open.auto_join("42"), vec!["user.42"]);
    }
}
