//! `auth.store = "jwt"` on real in-process nodes, over real sockets: tokens
//! made by the `jsonwebtoken` crate for every case (valid, expired, not yet
//! valid, wrong signature, wrong `iss`/`aud`, `alg: none`, HS/RS algorithm
//! confusion, unknown `kid` and JWKS rotation against a local JWKS server),
//! tokens made by the real DRF SimpleJWT (the Python virtualenv of
//! `scripts/install-python-tools.sh`), SimpleJWT's blacklist app (its Django
//! migrations run in a throwaway PostgreSQL database), the close at `exp`
//! and the in-band refresh that moves it, and `POST /api/v1/revoke`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::*;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use wsgate::config::{Config, StoreKind};

const SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";

fn now() -> u64 {
    wsgate::clock::unix_ms() / 1000
}

/// Claims of a token for `user` valid for five minutes, with a fresh `jti`.
fn claims(user: Value) -> Value {
    json!({
        "user_id": user,
        "exp": now() + 300,
        "iat": now(),
        "jti": hex::encode(rand::random::<[u8; 8]>()),
        "token_type": "access",
    })
}

fn hs256(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn jwt_config(dir: &Path, f: impl FnOnce(&mut Config)) -> Config {
    let mut c = test_config(dir);
    c.auth.store = StoreKind::Jwt;
    f(&mut c);
    c.validate().expect("a valid configuration");
    c
}

async fn secret_node(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let config = jwt_config(dir.path(), |c| {
        c.auth.jwt_secret = Some(SECRET.into());
        f(c);
    });
    (dir, spawn(config).await)
}

/// The code the node closes a first frame carrying `token` with (0: it
/// answered `welcome` instead).
async fn outcome(node: &TestNode, token: &str) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let mut c = Client::connect(&node.ws_url()).await;
    c.send_json(json!({"type": "auth", "token": token})).await;
    loop {
        let msg = tokio::time::timeout(WAIT, c.ws.next())
            .await
            .expect("an answer to the first frame");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let welcome: Value = serde_json::from_str(&t).unwrap();
                assert_eq!(welcome["type"], "welcome", "{welcome}");
                return 0;
            }
            Some(Ok(Message::Close(Some(frame)))) => return frame.code.into(),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// `alg: none` with the given claims (no signature).
fn unsigned(claims: &Value) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(claims)
    )
}

#[tokio::test]
async fn hs256_claims_and_signature() {
    let (_dir, node) = secret_node(|_| {}).await;
    // Valid, with SimpleJWT's numeric user_id: the user id is its string.
    let (_c, welcome) = Client::authed(
        &node.ws_url(),
        &hs256(&claims(json!(42)), SECRET.as_bytes()),
    )
    .await;
    assert_eq!(welcome["user_id"], "42");
    // A string id works as well.
    assert_eq!(
        outcome(&node, &hs256(&claims(json!("u-7")), SECRET.as_bytes())).await,
        0
    );

    let mut expired = claims(json!(1));
    expired["exp"] = json!(now() - 30);
    assert_eq!(
        outcome(&node, &hs256(&expired, SECRET.as_bytes())).await,
        4003,
        "expired"
    );
    // exp is enforced exactly: the leeway (5 s) is for nbf.
    let mut just_expired = claims(json!(1));
    just_expired["exp"] = json!(now() - 1);
    assert_eq!(
        outcome(&node, &hs256(&just_expired, SECRET.as_bytes())).await,
        4003,
        "just expired"
    );
    let mut future = claims(json!(1));
    future["nbf"] = json!(now() + 120);
    assert_eq!(
        outcome(&node, &hs256(&future, SECRET.as_bytes())).await,
        4003,
        "not yet valid"
    );
    let mut skewed = claims(json!(1));
    skewed["nbf"] = json!(now() + 2);
    assert_eq!(
        outcome(&node, &hs256(&skewed, SECRET.as_bytes())).await,
        0,
        "nbf within leeway"
    );
    let mut no_exp = claims(json!(1));
    no_exp.as_object_mut().unwrap().remove("exp");
    assert_eq!(
        outcome(&node, &hs256(&no_exp, SECRET.as_bytes())).await,
        4003,
        "no exp"
    );

    let other = b"another-secret-of-enough-length-0123456789";
    assert_eq!(
        outcome(&node, &hs256(&claims(json!(1)), other)).await,
        4003,
        "wrong signature"
    );
    assert_eq!(
        outcome(&node, &unsigned(&claims(json!(1)))).await,
        4003,
        "alg none"
    );
    let hs512 = encode(
        &Header::new(Algorithm::HS512),
        &claims(json!(1)),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        outcome(&node, &hs512).await,
        4003,
        "an algorithm not configured"
    );
    // A token with an audience, when none is configured, is not for us.
    let mut aud = claims(json!(1));
    aud["aud"] = json!("someone-else");
    assert_eq!(
        outcome(&node, &hs256(&aud, SECRET.as_bytes())).await,
        4003,
        "unexpected aud"
    );
    let mut no_user = claims(json!(1));
    no_user.as_object_mut().unwrap().remove("user_id");
    assert_eq!(
        outcome(&node, &hs256(&no_user, SECRET.as_bytes())).await,
        4003,
        "no user claim"
    );
    // An id the groups cannot take ({user_id} in a group name).
    assert_eq!(
        outcome(&node, &hs256(&claims(json!("a*b")), SECRET.as_bytes())).await,
        4003,
        "bad id"
    );
    assert_eq!(outcome(&node, "not.a.jwt").await, 4003);
    node.shutdown().await;
}

#[tokio::test]
async fn issuer_audience_and_user_claim() {
    let (_dir, node) = secret_node(|c| {
        c.auth.jwt_issuer = Some("https://issuer.example".into());
        c.auth.jwt_audience = Some("wsgate".into());
        c.auth.jwt_user_claim = "sub".into();
    })
    .await;
    let good = |iss: Value, aud: Value| {
        let mut c = json!({"sub": "alice", "exp": now() + 60});
        if !iss.is_null() {
            c["iss"] = iss;
        }
        if !aud.is_null() {
            c["aud"] = aud;
        }
        hs256(&c, SECRET.as_bytes())
    };
    let ok = good(json!("https://issuer.example"), json!(["wsgate", "other"]));
    let (_c, welcome) = Client::authed(&node.ws_url(), &ok).await;
    assert_eq!(welcome["user_id"], "alice");
    assert_eq!(
        outcome(
            &node,
            &good(json!("https://issuer.example"), json!("wsgate"))
        )
        .await,
        0
    );
    assert_eq!(
        outcome(&node, &good(json!("https://evil.example"), json!("wsgate"))).await,
        4003,
        "wrong iss"
    );
    assert_eq!(
        outcome(&node, &good(json!("https://issuer.example"), json!("api"))).await,
        4003,
        "wrong aud"
    );
    assert_eq!(
        outcome(&node, &good(Value::Null, json!("wsgate"))).await,
        4003,
        "no iss"
    );
    assert_eq!(
        outcome(&node, &good(json!("https://issuer.example"), Value::Null)).await,
        4003,
        "no aud"
    );
    node.shutdown().await;
}

/// An RSA key pair made by `openssl`: (private PKCS#8 PEM, public PEM).
fn rsa_pair(dir: &Path) -> (Vec<u8>, PathBuf) {
    let private = dir.join("rsa.key");
    let public = dir.join("rsa.pub");
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test]
async fn rs256_public_key_and_algorithm_confusion() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = rsa_pair(dir.path());
    let config = jwt_config(dir.path(), |c| {
        c.auth.jwt_public_key_file = Some(public.clone())
    });
    let node = spawn(config).await;
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let rs = |claims: &Value| encode(&Header::new(Algorithm::RS256), claims, &key).unwrap();
    let (_c, welcome) = Client::authed(&node.ws_url(), &rs(&claims(json!(7)))).await;
    assert_eq!(welcome["user_id"], "7");
    let mut expired = claims(json!(7));
    expired["exp"] = json!(now() - 60);
    assert_eq!(outcome(&node, &rs(&expired)).await, 4003);
    // The confusion attack: HS256 "signed" with the public key as the secret.
    let pem = std::fs::read(&public).unwrap();
    assert_eq!(
        outcome(&node, &hs256(&claims(json!(7)), &pem)).await,
        4003,
        "HS256 with the public key"
    );
    assert_eq!(
        outcome(&node, &unsigned(&claims(json!(7)))).await,
        4003,
        "alg none"
    );
    // Another RSA key's signature.
    let other = tempfile::tempdir().unwrap();
    let (other_private, _) = rsa_pair(other.path());
    let forged = encode(
        &Header::new(Algorithm::RS256),
        &claims(json!(7)),
        &EncodingKey::from_rsa_pem(&other_private).unwrap(),
    )
    .unwrap();
    assert_eq!(outcome(&node, &forged).await, 4003, "wrong key");
    node.shutdown().await;

    // Configuration refuses an HMAC algorithm beside a public key, a
    // public-key algorithm beside a secret, two key sources, a short secret.
    let refused = |f: &dyn Fn(&mut Config)| {
        let mut c = test_config(dir.path());
        c.auth.store = StoreKind::Jwt;
        f(&mut c);
        c.validate().expect_err("refused").to_string()
    };
    let e = refused(&|c| {
        c.auth.jwt_public_key_file = Some(public.clone());
        c.auth.jwt_algorithms = vec!["RS256".into(), "HS256".into()];
    });
    assert!(e.contains("auth.jwt_algorithms"), "{e}");
    let e = refused(&|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.jwt_algorithms = vec!["RS256".into()];
    });
    assert!(e.contains("auth.jwt_algorithms"), "{e}");
    let e = refused(&|c| {
        c.auth.jwt_secret = Some(SECRET.into());
        c.auth.jwt_public_key_file = Some(public.clone());
    });
    assert!(e.contains("exactly one"), "{e}");
    assert!(refused(&|c| c.auth.jwt_secret = Some("short".into())).contains("32 bytes"));
    assert!(refused(&|_| {}).contains("exactly one"));
    assert!(
        refused(&|c| {
            c.auth.jwt_secret = Some(SECRET.into());
            c.auth.jwt_blacklist = true;
        })
        .contains("PostgreSQL")
    );
    // `config check` masks the secret.
    let mut c = jwt_config(dir.path(), |c| c.auth.jwt_secret = Some(SECRET.into()));
    c.auth.jwt_audience = Some("wsgate".into());
    assert!(!c.to_masked_toml().contains(SECRET));
}

/// A local JWKS endpoint whose keys the test replaces, counting fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<JwkSet>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(cache_control: &'static str) -> JwksServer {
    let keys = Arc::new(Mutex::new(JwkSet { keys: vec![] }));
    let hits = Arc::new(AtomicUsize::new(0));
    let (k, h) = (keys.clone(), hits.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (k, h) = (k.clone(), h.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let body = serde_json::to_string(&*k.lock().unwrap()).unwrap();
                (
                    [
                        ("cache-control", cache_control),
                        ("content-type", "application/json"),
                    ],
                    body,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer { url, keys, hits }
}

/// A fresh ES256 key: its signing key and its public JWK named `kid`.
fn es256_key(kid: &str) -> (EncodingKey, Jwk) {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(kid.into());
    (key, jwk)
}

fn es256(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn jwks_cache_rotation_and_unknown_kid() {
    let server = jwks_server("public, max-age=600").await;
    let (key1, jwk1) = es256_key("k1");
    let (key2, jwk2) = es256_key("k2");
    server.keys.lock().unwrap().keys = vec![jwk1.clone()];
    let dir = tempfile::tempdir().unwrap();
    let config = jwt_config(dir.path(), |c| {
        c.auth.jwt_jwks_url = Some(server.url.clone());
        c.auth.jwt_algorithms = vec!["ES256".into()];
    });
    let node = spawn(config).await;
    let hits = || server.hits.load(Ordering::SeqCst);

    let (_c, welcome) =
        Client::authed(&node.ws_url(), &es256(&key1, "k1", &claims(json!(1)))).await;
    assert_eq!(welcome["user_id"], "1");
    assert_eq!(hits(), 1, "fetched on first use");
    assert_eq!(
        outcome(&node, &es256(&key1, "k1", &claims(json!(2)))).await,
        0
    );
    assert_eq!(hits(), 1, "kept for its max-age");

    // The provider rotates: a token with the new kid makes the set fetched again.
    server.keys.lock().unwrap().keys = vec![jwk1.clone(), jwk2.clone()];
    assert_eq!(
        outcome(&node, &es256(&key2, "k2", &claims(json!(3)))).await,
        0,
        "rotated key"
    );
    assert_eq!(hits(), 2);
    assert_eq!(
        outcome(&node, &es256(&key1, "k1", &claims(json!(4)))).await,
        0,
        "old key still listed"
    );

    // A kid the set lacks after a fetch: refused; a second one at once does
    // not fetch again (at most one fetch per 5 s for unknown kids).
    let (key3, _) = es256_key("k3");
    assert_eq!(
        outcome(&node, &es256(&key3, "k3", &claims(json!(5)))).await,
        4003,
        "unknown kid"
    );
    let after_unknown = hits();
    assert!(after_unknown <= 3, "{after_unknown}");
    for i in 0..3 {
        assert_eq!(
            outcome(&node, &es256(&key3, "k9", &claims(json!(6 + i)))).await,
            4003
        );
    }
    assert_eq!(hits(), after_unknown, "unknown kids are rate-limited");
    // A token signed by another key under a known kid.
    assert_eq!(
        outcome(&node, &es256(&key3, "k1", &claims(json!(9)))).await,
        4003,
        "wrong key for kid"
    );
    // HS256 signed with the JWK's JSON as a secret: not an accepted algorithm.
    let confused = hs256(
        &claims(json!(1)),
        serde_json::to_string(&jwk1).unwrap().as_bytes(),
    );
    assert_eq!(outcome(&node, &confused).await, 4003);

    // The endpoint goes down: the held set keeps serving.
    server.keys.lock().unwrap().keys = vec![];
    assert_eq!(
        outcome(&node, &es256(&key1, "k1", &claims(json!(10)))).await,
        0
    );
    node.shutdown().await;
}

#[tokio::test]
async fn jwks_unreachable_without_a_set_is_1013() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = jwt_config(dir.path(), |c| {
        c.auth.jwt_jwks_url = Some(format!("http://127.0.0.1:{port}/jwks.json"));
        c.auth.jwt_algorithms = vec!["ES256".into()];
    });
    let node = spawn(config).await;
    let (key, _) = es256_key("k1");
    assert_eq!(
        outcome(&node, &es256(&key, "k1", &claims(json!(1)))).await,
        1013
    );
    node.shutdown().await;
}

#[tokio::test]
async fn closes_at_exp_unless_refreshed() {
    let (_dir, node) = secret_node(|_| {}).await;
    let short = |user: u64, secs: u64| {
        let mut c = claims(json!(user));
        c["exp"] = json!(now() + secs);
        hs256(&c, SECRET.as_bytes())
    };
    // Closed with 4003 when its token expires.
    let (mut c, _) = Client::authed(&node.ws_url(), &short(1, 2)).await;
    let started = std::time::Instant::now();
    assert_eq!(code(c.close_within(Duration::from_secs(5)).await), 4003);
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // A refresh with a longer-lived token moves the close.
    let (mut c, _) = Client::authed(&node.ws_url(), &short(2, 2)).await;
    let reply = c
        .request(json!({"type": "refresh", "token": short(2, 300), "id": 1}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    c.expect_silence(Duration::from_secs(4)).await;
    let reply = c.request(json!({"type": "ping", "id": 2})).await;
    assert_eq!(reply["type"], "pong");

    // A refresh to a shorter-lived token brings it forward.
    let (mut c, _) = Client::authed(&node.ws_url(), &short(3, 300)).await;
    let reply = c
        .request(json!({"type": "refresh", "token": short(3, 2), "id": 1}))
        .await;
    assert_eq!(reply["type"], "refreshed", "{reply}");
    assert_eq!(code(c.close_within(Duration::from_secs(5)).await), 4003);
    node.shutdown().await;
}

#[tokio::test]
async fn native_tokens_with_a_ttl_close_at_expiry_too() {
    let (_dir, node) = node().await;
    let token = issue_token(&node.config, "n1", Some(Duration::from_secs(2))).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(code(c.close_within(Duration::from_secs(5)).await), 4003);
    node.shutdown().await;
}

#[tokio::test]
async fn revoke_api_closes_and_refuses_a_jwt() {
    let (_dir, node) = secret_node(|_| {}).await;
    let token = hs256(&claims(json!(5)), SECRET.as_bytes());
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    let (status, body) = node
        .api_post("/api/v1/revoke", json!({"token": token}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(code(c.expect_close().await), 4003);
    assert_eq!(outcome(&node, &token).await, 4003, "revoked");
    assert_eq!(
        outcome(&node, &hs256(&claims(json!(5)), SECRET.as_bytes())).await,
        0,
        "another token"
    );
    node.shutdown().await;
}

/// The virtualenv's python; panics (never skips) when it is missing.
fn python() -> PathBuf {
    let venv = std::env::var_os("WSGATE_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap()).join(".cache/wsgate-pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv with djangorestframework-simplejwt is missing ({}): \
         run `bash scripts/install-python-tools.sh` first",
        python.display()
    );
    python
}

/// Tokens minted by SimpleJWT (tests/simplejwt/mint.py).
fn simplejwt(pg_name: Option<&str>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/simplejwt/mint.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script).env("JWT_SECRET", SECRET);
    if let Some(name) = pg_name {
        cmd.env("PG_NAME", name);
    }
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "mint.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn simplejwt_tokens_and_blacklist() {
    let tokens = simplejwt(None);
    let (_dir, node) = secret_node(|_| {}).await;
    let (_c, welcome) = Client::authed(&node.ws_url(), tokens["access"].as_str().unwrap()).await;
    assert_eq!(welcome["user_id"], "42");
    node.shutdown().await;

    // The blacklist app's tables, made by its own Django migrations.
    let pg = PgDb::create().await;
    let tokens = simplejwt(Some(&pg.name));
    let (_dir, node) = secret_node(|c| {
        c.database.url = Some(pg.url.clone());
        c.auth.jwt_blacklist = true;
    })
    .await;
    let (_c, welcome) = Client::authed(&node.ws_url(), tokens["kept"].as_str().unwrap()).await;
    assert_eq!(welcome["user_id"], "44");
    assert_eq!(
        outcome(&node, tokens["blacklisted"].as_str().unwrap()).await,
        4003,
        "blacklisted jti"
    );
    // With the blacklist on, a token without a jti cannot be checked: refused.
    let mut no_jti = claims(json!(45));
    no_jti.as_object_mut().unwrap().remove("jti");
    assert_eq!(
        outcome(&node, &hs256(&no_jti, SECRET.as_bytes())).await,
        4003,
        "no jti"
    );
    node.shutdown().await;
}
