//! Per-group authorization by the application backend (`groups.authorize`).
//!
//! For a group matching `groups.authorize`, `groups.allow` is not enough:
//! a subscribe needs either a valid subscription grant (`grant`) sent with
//! it, or the backend's allow through the subscribe hook (`hook`), whose
//! answers are cached briefly (`cache`). Fail closed: no hook and no
//! grant, a bad grant, or a hook that does not answer properly is never an
//! allow; a hook failure is told apart (`unavailable`) so the client can
//! retry, where a deny is final (`forbidden`).
//!
//! When a grant is sent, it alone decides (no hook call on a bad grant): a
//! client cannot turn an expired grant into a hook call per subscribe.
//!
//! Revocation ([`SubscribeAuth::revoke`]) runs on every node, from the
//! broker's control channel: it drops the cached answers and refuses grants
//! issued before it, while the session side removes the user's
//! subscriptions.

mod cache;
mod grant;
mod hook;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use wildmatch::WildMatch;

use crate::config::{AuthorizeConfig, GroupsConfig};
use crate::metrics::{AuthorizeOutcome, Metrics};

use cache::{AnswerCache, Cached};
use grant::GrantVerifier;
use hook::Hook;
pub use hook::{HookRequest, sign};

/// The answer to a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The backend (or the grant) says no: `forbidden`.
    Deny,
    /// The backend did not answer properly: `unavailable`.
    Unavailable,
}

/// Who is subscribing, as the hook is told.
pub struct Subscriber<'a> {
    pub user_id: &'a str,
    pub session: &'a str,
    pub conn: u64,
    pub ip: IpAddr,
}

pub struct SubscribeAuth {
    /// `groups.authorize`, kept as written (`{user_id}` is substituted per
    /// check); those without it compiled once.
    patterns: Vec<Pattern>,
    hook: Option<Hook>,
    grants: Option<GrantVerifier>,
    cache: AnswerCache,
    metrics: Arc<Metrics>,
    node: String,
}

enum Pattern {
    Fixed(WildMatch),
    PerUser(String),
}

impl SubscribeAuth {
    pub fn new(
        groups: &GroupsConfig,
        config: &AuthorizeConfig,
        node: String,
        metrics: Arc<Metrics>,
    ) -> Result<SubscribeAuth, String> {
        let hook = match &config.hook_url {
            Some(url) => Some(
                Hook::new(
                    url,
                    config.hook_secret.as_deref(),
                    config.hook_api_key.as_deref(),
                    config.hook_timeout,
                )
                .map_err(|e| format!("authorize.hook_url: {e}"))?,
            ),
            None => None,
        };
        let patterns = groups
            .authorize
            .iter()
            .map(|p| {
                if p.contains("{user_id}") {
                    Pattern::PerUser(p.clone())
                } else {
                    Pattern::Fixed(WildMatch::new(p))
                }
            })
            .collect();
        let grants = match &config.grant_secret {
            Some(s) => Some(
                GrantVerifier::new(s, config.grant_max_lifetime)
                    .map_err(|e| format!("authorize.grant_secret: {e}"))?,
            ),
            None => None,
        };
        Ok(SubscribeAuth {
            patterns,
            hook,
            grants,
            cache: AnswerCache::new(
                config.cache_size,
                config.allow_ttl,
                config.deny_ttl,
                config.grant_max_lifetime,
            ),
            metrics,
            node,
        })
    }

    /// Whether the backend decides who may subscribe to `group`. The caller
    /// has checked the user id is a group segment (so substituting it is
    /// literal, as in `policy`).
    pub fn applies(&self, user_id: &str, group: &str) -> bool {
        self.patterns.iter().any(|p| match p {
            Pattern::Fixed(w) => w.matches(group),
            Pattern::PerUser(p) => WildMatch::new(&p.replace("{user_id}", user_id)).matches(group),
        })
    }

    /// Decides a subscribe to a group that [`SubscribeAuth::applies`] to.
    pub async fn authorize(
        &self,
        who: &Subscriber<'_>,
        group: &str,
        grant: Option<&str>,
    ) -> Decision {
        if let Some(grant) = grant {
            let ok = self.grant_allows(who.user_id, group, grant);
            self.count(if ok {
                AuthorizeOutcome::Grant
            } else {
                AuthorizeOutcome::GrantInvalid
            });
            return if ok { Decision::Allow } else { Decision::Deny };
        }
        let Some(hook) = &self.hook else {
            self.count(AuthorizeOutcome::Deny);
            return Decision::Deny;
        };
        match self.cache.get(who.user_id, group) {
            Some(Cached::Allow) => {
                self.count(AuthorizeOutcome::CachedAllow);
                return Decision::Allow;
            }
            Some(Cached::Deny) => {
                self.count(AuthorizeOutcome::CachedDeny);
                return Decision::Deny;
            }
            None => {}
        }
        let generation = self.cache.generation();
        let request = HookRequest {
            user_id: who.user_id,
            group,
            node: &self.node,
            session: who.session,
            conn: who.conn,
            ip: who.ip,
        };
        let started = Instant::now();
        let answer = hook.ask(&request).await;
        self.metrics
            .authorize_hook_duration
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(allow) => {
                let (cached, outcome, decision) = if allow {
                    (Cached::Allow, AuthorizeOutcome::Allow, Decision::Allow)
                } else {
                    (Cached::Deny, AuthorizeOutcome::Deny, Decision::Deny)
                };
                self.cache.put(who.user_id, group, cached, generation);
                self.count(outcome);
                decision
            }
            Err(e) => {
                tracing::warn!(error = %e, group, "subscribe hook failed");
                self.count(AuthorizeOutcome::Error);
                Decision::Unavailable
            }
        }
    }

    fn grant_allows(&self, user_id: &str, group: &str, token: &str) -> bool {
        let Some(verifier) = &self.grants else {
            return false;
        };
        let now = crate::clock::unix_ms() / 1000;
        let Some(grant) = verifier.verify(token, now) else {
            return false;
        };
        if grant.user_id != user_id || grant.group != group {
            return false;
        }
        // A revocation refuses the grants issued before it (and those
        // that do not say when they were issued).
        match self.cache.revoked_at(user_id, group) {
            Some(revoked) => grant.iat.is_some_and(|iat| iat > revoked),
            None => true,
        }
    }

    /// Forgets what this node knows of (user, group) and refuses grants for
    /// it issued until now. Every node runs it for `POST /api/v1/unsubscribe`.
    pub fn revoke(&self, user_id: &str, group: &str) {
        self.cache
            .revoke(user_id, group, crate::clock::unix_ms() / 1000);
    }

    fn count(&self, outcome: AuthorizeOutcome) {
        self.metrics.authorize(outcome);
    }
}
