//! Group policy: which groups a user may subscribe to, publish to, and joins
//! automatically (section 3 of the protocol).
//!
//! Patterns use `*` for any run of characters and `{user_id}` for the
//! authenticated user's id. Whatever the configuration, `user.<id>` is
//! private to user `<id>`: it is checked here, before any pattern.
//!
//! `{user_id}` stands for the id literally. So that no character of an id
//! can act as pattern syntax (`*`), extend into the next segment (`.`) or
//! make a group name invalid, a user id must be one group *segment*
//! ([`is_valid_user_id`]); a session refuses any other id at `welcome`
//! (4003), and every check here answers "no" for it, so a store that
//! returns such an id fails closed rather than open.

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

/// Longest user id, in characters: room for it in any group name.
pub const MAX_USER_ID_LEN: usize = 64;

/// Whether `id` can stand for `{user_id}`: 1 to [`MAX_USER_ID_LEN`]
/// characters of `A-Z a-z 0-9 _ : @ -` (a group name's characters, less `.`,
/// which separates segments). Django's integer ids, UUIDs and most OIDC
/// `sub` values pass; an id with `*`, `.`, `|` or spaces does not.
pub fn is_valid_user_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_USER_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'@' | b'-'))
}

/// Why a user's auto-joined groups cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserIdError {
    #[error(
        "user id is not a group segment (1 to 64 of A-Z a-z 0-9 _ : @ -), so {{user_id}} cannot stand for it"
    )]
    NotASegment,
    #[error("auto-joined group {0:?} would not be a valid group name")]
    InvalidGroup(String),
}

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
    /// Also false for an id that is not a group segment. Checked before the
    /// backend is asked about a `groups.authorize` group, too.
    pub fn private_ok(user_id: &str, group: &str) -> bool {
        if !is_valid_user_id(user_id) {
            return false;
        }
        match group.strip_prefix(USER_PREFIX) {
            Some(owner) => owner == user_id,
            None => true,
        }
    }

    /// Callers check [`is_valid_user_id`] first (through `private_ok`):
    /// such an id holds no `*` or `?`, so substituting it is literal.
    fn matches_any(patterns: &[String], user_id: &str, group: &str) -> bool {
        patterns
            .iter()
            .any(|p| WildMatch::new(&p.replace("{user_id}", user_id)).matches(group))
    }

    pub fn can_subscribe(&self, user_id: &str, group: &str) -> bool {
        Self::private_ok(user_id, group)
            && (Self::matches_any(&self.allow, user_id, group)
                || self
                    .auto_join(user_id)
                    .is_ok_and(|groups| groups.iter().any(|g| g == group)))
    }

    /// Client publish needs a `groups.client_publish` match; another user's
    /// private group is never writable by a client.
    pub fn can_publish(&self, user_id: &str, group: &str) -> bool {
        Self::private_ok(user_id, group) && Self::matches_any(&self.client_publish, user_id, group)
    }

    /// The groups joined at `welcome`. An id that cannot stand for
    /// `{user_id}`, or that makes a group name too long, is an error: the
    /// session refuses the user rather than silently leaving out a group.
    pub fn auto_join(&self, user_id: &str) -> Result<Vec<String>, UserIdError> {
        if !is_valid_user_id(user_id) {
            return Err(UserIdError::NotASegment);
        }
        self.auto_join
            .iter()
            .map(|p| {
                let group = p.replace("{user_id}", user_id);
                if crate::protocol::is_valid_group(&group) {
                    Ok(group)
                } else {
                    Err(UserIdError::InvalidGroup(group))
                }
            })
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
            ..GroupsConfig::default()
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
        assert_eq!(open.auto_join("42"), Ok(vec!["user.42".to_string()]));
    }

    /// The review's finding: ids with `*` matched other users' groups, ids
    /// with `.` collided with longer ids, and an id that is no group segment
    /// silently lost its `user.<id>` group.
    #[test]
    fn user_ids_are_literal_or_refused() {
        let p = policy(&["team.{user_id}.*"], &["chat.{user_id}.*"]);
        assert!(!p.can_subscribe("*", "team.c.x"));
        assert!(!p.can_publish("*", "chat.c.room"));
        assert!(!p.can_subscribe("4?", "team.42.x"));
        // "42.x" would otherwise reach into user 42's team.42.x.* groups.
        assert!(!p.can_subscribe("42.x", "team.42.x.y"));
        assert_eq!(p.auto_join("a b"), Err(UserIdError::NotASegment));
        assert_eq!(p.auto_join(""), Err(UserIdError::NotASegment));
        assert!(p.auto_join(&"9".repeat(MAX_USER_ID_LEN)).is_ok());
        assert_eq!(
            p.auto_join(&"9".repeat(MAX_USER_ID_LEN + 1)),
            Err(UserIdError::NotASegment)
        );
        let long = GroupPolicy::new(&GroupsConfig {
            auto_join: vec![format!("{}.{{user_id}}", "x".repeat(100))],
            ..GroupsConfig::default()
        });
        assert!(matches!(
            long.auto_join(&"9".repeat(40)),
            Err(UserIdError::InvalidGroup(_))
        ));
        for id in ["42", "a-b_c:d@e", "550e8400-e29b-41d4-a716-446655440000"] {
            assert!(p.can_subscribe(id, &format!("team.{id}.x")), "{id}");
        }
    }

    proptest::proptest! {
        /// Whatever the id, it reaches only groups spelled with it.
        #[test]
        fn any_id_reaches_only_its_own_groups(
            id in ".{0,12}",
            other in "[a-z0-9]{1,4}",
            tail in "[a-z]{1,4}",
        ) {
            let p = policy(&["team.{user_id}.*", "user.{user_id}"], &["chat.{user_id}"]);
            let valid = is_valid_user_id(&id);
            let theirs = format!("team.{other}.{tail}");
            proptest::prop_assert_eq!(p.can_subscribe(&id, &theirs), valid && other == id);
            proptest::prop_assert_eq!(
                p.can_subscribe(&id, &format!("user.{other}")),
                valid && other == id
            );
            proptest::prop_assert_eq!(
                p.can_publish(&id, &format!("chat.{other}")),
                valid && other == id
            );
            proptest::prop_assert_eq!(p.auto_join(&id).is_ok(), valid);
        }
    }
}
