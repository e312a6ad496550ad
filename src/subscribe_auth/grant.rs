//! Subscription grants: a JWT the backend signs for one user and one group,
//! which the client sends with `subscribe` (`"token"`), so no hook call is
//! needed.
//!
//! HS256 with `authorize.grant_secret` only: a secret of its own, not the
//! login token's keys, so no token made for one purpose is ever accepted for
//! the other. Claims: `sub` (the connection's user id, string or integer),
//! `group` (the exact group), `exp` (required, at most
//! `authorize.grant_max_lifetime` ahead, so no grant outlives the memory of
//! a revocation), optional `nbf` and `iat`. No leeway.
//!
//! A grant is checked when it is presented, at `subscribe`; its `exp` does
//! not end the subscription (the backend ends one with
//! `POST /api/v1/unsubscribe`).

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// Largest grant we look at.
pub const MAX_GRANT_BYTES: usize = 4096;

/// A grant whose signature and times are good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user_id: String,
    pub group: String,
    pub exp: u64,
    pub iat: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Sub {
    Text(String),
    Number(i64),
}

#[derive(Deserialize)]
struct Claims {
    sub: Sub,
    group: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

pub struct GrantVerifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime_s: u64,
}

impl GrantVerifier {
    pub fn new(secret: &str, max_lifetime: std::time::Duration) -> Result<GrantVerifier, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        // `sub` is required by `Claims` (a string or an integer there).
        validation.set_required_spec_claims(&["exp"]);
        Ok(GrantVerifier {
            key: DecodingKey::from_secret(secret.as_bytes()).map_err(|e| e.to_string())?,
            validation,
            max_lifetime_s: max_lifetime.as_secs(),
        })
    }

    /// The grant, if `token` is one of ours, unexpired and not too long-lived.
    pub fn verify(&self, token: &str, now_s: u64) -> Option<Grant> {
        if token.len() > MAX_GRANT_BYTES {
            return None;
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .ok()?
            .claims;
        if claims.exp <= now_s || claims.exp - now_s > self.max_lifetime_s {
            return None;
        }
        let user_id = match claims.sub {
            Sub::Text(s) => s,
            Sub::Number(n) => n.to_string(),
        };
        Some(Grant {
            user_id,
            group: claims.group,
            exp: claims.exp,
            iat: claims.iat,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;
    use std::time::Duration;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn token(claims: serde_json::Value, alg: Algorithm, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn grants_are_checked() {
        let v = GrantVerifier::new(SECRET, Duration::from_secs(600)).unwrap();
        let now = crate::clock::unix_ms() / 1000;
        let good = token(
            json!({"sub": 42, "group": "g", "exp": now + 60, "iat": now}),
            Algorithm::HS256,
            SECRET,
        );
        let g = v.verify(&good, now).unwrap();
        assert_eq!(
            (g.user_id.as_str(), g.group.as_str(), g.iat),
            ("42", "g", Some(now))
        );
        for bad in [
            // Expired, too long-lived, no exp, wrong key, other algorithm, no group.
            token(
                json!({"sub": "42", "group": "g", "exp": now - 1}),
                Algorithm::HS256,
                SECRET,
            ),
            token(
                json!({"sub": "42", "group": "g", "exp": now + 601}),
                Algorithm::HS256,
                SECRET,
            ),
            token(json!({"sub": "42", "group": "g"}), Algorithm::HS256, SECRET),
            token(
                json!({"sub": "42", "group": "g", "exp": now + 60}),
                Algorithm::HS256,
                &SECRET.replace('0', "1"),
            ),
            token(
                json!({"sub": "42", "group": "g", "exp": now + 60}),
                Algorithm::HS512,
                SECRET,
            ),
            token(
                json!({"sub": "42", "exp": now + 60}),
                Algorithm::HS256,
                SECRET,
            ),
            "not.a.jwt".to_string(),
            "x".repeat(MAX_GRANT_BYTES + 1),
        ] {
            assert_eq!(v.verify(&bad, now), None, "{bad}");
        }
    }
}
