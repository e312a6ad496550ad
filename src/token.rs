//! Tokens and their digests: the one secret wsgate handles.
//!
//! Tokens are secrets: they live in [`Token`], whose `Debug` prints nothing,
//! and everything that is stored, cached or sent between nodes uses the
//! SHA-256 [`TokenDigest`] instead. A leaf module (the wire protocol, the hub
//! and the stores all name these types), so it depends on nothing of ours.

use std::fmt;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// A client's token. Never printed: `Debug` and `Display` are redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(token: String) -> Token {
        Token(token)
    }
    /// The secret itself, for the one place that needs it: a store whose
    /// SQL compares the token (the `query` and `django` stores).
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn digest(&self) -> TokenDigest {
        TokenDigest(Sha256::digest(self.0.as_bytes()).into())
    }
    /// A new random token for the native store: `wsg_` and 43 base64url characters.
    pub fn generate() -> Token {
        use base64::Engine;
        let bytes: [u8; 32] = rand::random();
        Token(format!(
            "wsg_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// SHA-256 of a token: what we store, cache and log instead of the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenDigest(pub [u8; 32]);

impl TokenDigest {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    pub fn from_hex(s: &str) -> Option<TokenDigest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).ok()?;
        Some(TokenDigest(out))
    }
}

impl fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenDigest({}…)", &self.to_hex()[..12])
    }
}

/// The token a live connection holds, and its digest: replaced by an in-band
/// `refresh`, read by revocation (which matches the digest) and by
/// re-validation (which needs the token itself for the `query` and `django`
/// stores). One lock for both, so they never disagree.
pub struct Credential(Mutex<(Token, TokenDigest)>);

impl Credential {
    pub fn new(token: Token) -> Credential {
        let digest = token.digest();
        Credential(Mutex::new((token, digest)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Token, TokenDigest)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn digest(&self) -> TokenDigest {
        self.lock().1
    }

    /// The token and its digest, as of now.
    pub fn get(&self) -> (Token, TokenDigest) {
        self.lock().clone()
    }

    /// Swaps in `token`; returns the digest it replaced.
    pub fn replace(&self, token: Token) -> TokenDigest {
        let digest = token.digest();
        std::mem::replace(&mut *self.lock(), (token, digest)).1
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({:?})", self.digest())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_redacted() {
        let t = Token::new("super-secret".into());
        assert!(!format!("{t:?}").contains("super-secret"));
        assert!(!format!("{:?}", t.digest()).contains("super-secret"));
    }

    #[test]
    fn digest_is_sha256_hex() {
        let d = Token::new("abc".into()).digest();
        assert_eq!(
            d.to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(TokenDigest::from_hex(&d.to_hex()), Some(d));
    }

    #[test]
    fn credential_swaps_token_and_digest_together() {
        let old = Token::new("old-secret".into());
        let new = Token::new("new-secret".into());
        let c = Credential::new(old.clone());
        assert_eq!(c.digest(), old.digest());
        assert_eq!(c.replace(new.clone()), old.digest());
        assert_eq!(c.get(), (new.clone(), new.digest()));
        assert!(!format!("{c:?}").contains("secret"));
    }

    #[test]
    fn generated_tokens_differ() {
        let a = Token::generate();
        assert!(a.expose().starts_with("wsg_"));
        assert_eq!(a.expose().len(), 47);
        assert_ne!(a, Token::generate());
    }
}
