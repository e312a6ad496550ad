//! The `jwt` store: signed tokens (DRF SimpleJWT, djoser's JWT flavour, any
//! OIDC provider) verified with a key, without a token table.
//!
//! The `jsonwebtoken` crate checks the signature and the claims; this file
//! only decides which key and which algorithms it may use:
//! - only `auth.jwt_algorithms` are accepted (`alg: none` never is: it is no
//!   algorithm the crate knows);
//! - a key is used only with algorithms of its own family (an HMAC secret
//!   for HS*, a public key for the rest), so an HS256 token can never be
//!   checked with a public key taken as an HMAC secret;
//! - `exp` is required and enforced exactly (the session closes at it, the
//!   caches never keep the answer past it); `nbf` with `auth.jwt_leeway`;
//!   `iss` and `aud` when configured (then required), and a token with an
//!   `aud` is refused when no audience is configured.
//!
//! Revocation: `wsgate_revocations` (`POST /api/v1/revoke`), and with
//! `auth.jwt_blacklist` SimpleJWT's blacklist app, in one query per
//! verification the caches do not answer.

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::jwks::{Jwks, Lookup};
use super::sql::{Db, classify};
use super::{Identity, StoreError, Token, TokenDigest, TokenStore};
use crate::config::{AuthConfig, ConfigError};

/// Where the verification keys come from.
enum Keys {
    /// `auth.jwt_secret` or `auth.jwt_public_key_file`: one key.
    Static(DecodingKey),
    /// `auth.jwt_jwks_url`.
    Jwks(Box<Jwks>),
}

pub struct JwtStore {
    db: Db,
    keys: Keys,
    algorithms: Vec<Algorithm>,
    user_claim: String,
    issuer: Option<String>,
    audience: Option<String>,
    leeway: u64,
    blacklist: bool,
}

impl JwtStore {
    /// The store `config` asks for; reads the PEM file. Errors name the key.
    pub fn new(config: &AuthConfig, db: Db) -> Result<JwtStore, ConfigError> {
        let invalid = |key: &str, e: &dyn std::fmt::Display| {
            ConfigError::invalid(&format!("auth.{key}"), e.to_string())
        };
        let algorithms = config
            .jwt_algorithms()
            .iter()
            .map(|a| {
                a.parse::<Algorithm>()
                    .map_err(|e| invalid("jwt_algorithms", &e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let keys = if let Some(secret) = &config.jwt_secret {
            let key = DecodingKey::from_secret(secret.as_bytes())
                .map_err(|e| invalid("jwt_secret", &e))?;
            Keys::Static(key)
        } else if let Some(path) = &config.jwt_public_key_file {
            let pem = std::fs::read(path)
                .map_err(|e| invalid("jwt_public_key_file", &format!("{}: {e}", path.display())))?;
            Keys::Static(public_key(&pem).ok_or_else(|| {
                invalid(
                    "jwt_public_key_file",
                    &format!(
                        "{}: not a PEM RSA, EC or Ed25519 public key",
                        path.display()
                    ),
                )
            })?)
        } else if let Some(url) = &config.jwt_jwks_url {
            Keys::Jwks(Box::new(
                Jwks::new(url.clone()).map_err(|e| invalid("jwt_jwks_url", &e))?,
            ))
        } else {
            return Err(invalid("jwt_secret", &"no key configured"));
        };
        if let Keys::Static(key) = &keys
            && !algorithms.iter().all(|a| a.family() == key.family())
        {
            return Err(invalid(
                "jwt_algorithms",
                &"every algorithm must be of the key's family",
            ));
        }
        Ok(JwtStore {
            db,
            keys,
            algorithms,
            user_claim: config.jwt_user_claim.clone(),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
            leeway: config.jwt_leeway.as_secs(),
            blacklist: config.jwt_blacklist,
        })
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.validate_aud = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        if let Some(aud) = &self.audience {
            v.set_audience(&[aud]);
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        v
    }

    /// The claims of a token whose signature and claims hold, or `None`.
    async fn claims(&self, token: &str) -> Result<Option<Map<String, Value>>, StoreError> {
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return Ok(None);
        };
        if !self.algorithms.contains(&header.alg) {
            return Ok(None);
        }
        let candidates = match &self.keys {
            Keys::Static(key) => vec![(key.clone(), None)],
            Keys::Jwks(jwks) => match jwks.lookup(header.kid.as_deref()).await? {
                Lookup::Found(keys) => keys.into_iter().map(|k| (k.key, k.alg)).collect(),
                Lookup::Unknown => return Ok(None),
            },
        };
        let validation = self.validation(header.alg);
        for (key, key_alg) in candidates {
            // A key serves only its own family, and its own `alg` if it names one.
            if key.family() != header.alg.family()
                || key_alg.is_some_and(|a| a != format!("{:?}", header.alg))
            {
                continue;
            }
            if let Ok(data) = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &validation) {
                return Ok(Some(data.claims));
            }
        }
        Ok(None)
    }

    /// Whether the token was revoked through wsgate, or (with
    /// `auth.jwt_blacklist`) its `jti` is on SimpleJWT's blacklist: one query.
    async fn refused(&self, token: &Token, jti: Option<&str>) -> Result<bool, StoreError> {
        let digest = token.digest().to_hex();
        let row = if self.blacklist {
            sqlx::query(
                "SELECT 1 FROM wsgate_revocations WHERE digest = $1 \
                 UNION ALL \
                 SELECT 1 FROM token_blacklist_blacklistedtoken b \
                 JOIN token_blacklist_outstandingtoken o ON o.id = b.token_id \
                 WHERE o.jti = $2 LIMIT 1",
            )
            .bind(digest)
            .bind(jti.unwrap_or_default().to_string())
            .fetch_optional(&self.db.pool)
            .await
        } else {
            sqlx::query("SELECT 1 FROM wsgate_revocations WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&self.db.pool)
                .await
        };
        Ok(row.map_err(classify)?.is_some())
    }
}

/// A PEM public key of any supported family.
fn public_key(pem: &[u8]) -> Option<DecodingKey> {
    DecodingKey::from_rsa_pem(pem)
        .or_else(|_| DecodingKey::from_ec_pem(pem))
        .or_else(|_| DecodingKey::from_ed_pem(pem))
        .ok()
        .filter(|k| k.family() != AlgorithmFamily::Hmac)
}

/// The user id claim as a string: a string, or an integer (SimpleJWT's
/// `user_id` is the primary key, a number by default).
fn user_id(claim: Option<&Value>) -> Option<String> {
    match claim? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl TokenStore for JwtStore {
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError> {
        let Some(claims) = self.claims(token.expose()).await? else {
            return Ok(None);
        };
        // `exp` is required by the validation; enforced exactly here (the
        // leeway is for clock skew at `nbf`): the connection is closed at it.
        let Some(exp_ms) = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map(|s| s.saturating_mul(1000))
        else {
            return Ok(None);
        };
        if exp_ms <= crate::clock::unix_ms() {
            return Ok(None);
        }
        let Some(user_id) = user_id(claims.get(&self.user_claim)) else {
            return Ok(None);
        };
        let jti = claims.get("jti").and_then(Value::as_str);
        if self.blacklist && jti.is_none() {
            // The blacklist cannot be consulted: fail closed.
            return Ok(None);
        }
        if self.refused(token, jti).await? {
            return Ok(None);
        }
        Ok(Some(Identity {
            user_id,
            expires_at: Some(exp_ms),
        }))
    }

    /// Records the token's digest in `wsgate_revocations` (the token itself
    /// stays valid for anything else that accepts it).
    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.db.record_revocation(digest).await
    }

    fn name(&self) -> &'static str {
        "jwt"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn user_ids() {
        assert_eq!(user_id(Some(&json!(42))), Some("42".into()));
        assert_eq!(user_id(Some(&json!("abc"))), Some("abc".into()));
        assert_eq!(user_id(Some(&json!(""))), None);
        assert_eq!(user_id(Some(&json!(1.5))), None);
        assert_eq!(user_id(Some(&json!(null))), None);
        assert_eq!(user_id(None), None);
    }
}
