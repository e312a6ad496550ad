//! `groups.authorize`: the application backend decides who subscribes, on
//! real nodes over real sockets, against a real HTTP backend
//! (`common::hook_backend`, which checks wsgate's HMAC signature).
//!
//! - the hook: allow, deny, the cached answers, and every failure (500,
//!   timeout, a bad answer) giving `unavailable`, never an allow;
//!   `groups.allow = ["*"]` does not open an authorized group;
//! - subscription grants (signed JWTs): valid, expired, for someone else,
//!   for another group, and refused once revoked;
//! - `POST /api/v1/unsubscribe`: the unsolicited `unsubscribed`, the end of
//!   delivery, the cached allow gone, on the embedded broker and across two
//!   nodes on Redis;
//! - what each costs: subscribe round trips with a hook call, with a cached
//!   allow and with no authorization, printed (no timed assertion).

mod common;

use std::time::{Duration, Instant};

use common::hook_backend::{HOOK_SECRET, HookBackend, Mode};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use wsgate::config::{Config, StoreKind};

const LOGIN_SECRET: &str = "test-jwt-secret-0123456789abcdef-0123";
const GRANT_SECRET: &str = "grant-secret-0123456789abcdef-0123456789";

fn now() -> u64 {
    wsgate::clock::unix_ms() / 1000
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// A login token for `user`.
fn login(user: &str) -> String {
    hs256(
        &json!({"user_id": user, "exp": now() + 300, "iat": now()}),
        LOGIN_SECRET,
    )
}

/// A subscription grant.
fn grant(user: &str, group: &str, exp: u64, iat: u64) -> String {
    hs256(
        &json!({"sub": user, "group": group, "exp": exp, "iat": iat}),
        GRANT_SECRET,
    )
}

/// JWT logins, `secret.*` authorized by `hook` (and grants), everything
/// else open.
fn authorize_config(dir: &std::path::Path, hook: &HookBackend) -> Config {
    let mut c = test_config(dir);
    c.auth.store = StoreKind::Jwt;
    c.auth.jwt_secret = Some(LOGIN_SECRET.into());
    c.groups.allow = vec!["*".into()];
    c.groups.authorize = vec!["secret.*".into(), "team.{user_id}.*".into()];
    c.authorize.hook_url = Some(hook.url());
    c.authorize.hook_secret = Some(HOOK_SECRET.into());
    c.authorize.hook_timeout = Duration::from_millis(500);
    c.authorize.grant_secret = Some(GRANT_SECRET.into());
    c.authorize.grant_max_lifetime = Duration::from_secs(600);
    c.validate().expect("a valid configuration");
    c
}

async fn subscribe(c: &mut Client, group: &str, token: Option<&str>) -> Value {
    let mut req = json!({"type": "subscribe", "group": group});
    if let Some(t) = token {
        req["token"] = json!(t);
    }
    c.request(req).await
}

fn outcome(node_metrics: &str, outcome: &str) -> f64 {
    metric_value(
        node_metrics,
        &format!("wsgate_subscribe_authorizations_total{{outcome=\"{outcome}\"}}"),
    )
}

#[tokio::test]
async fn the_hook_decides_and_fails_closed() {
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(authorize_config(dir.path(), &hook)).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &login("42")).await;

    // Not authorized by the backend: `groups.allow = ["*"]` is not enough.
    let r = subscribe(&mut c, "secret.a", None).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(hook.calls(), 1);
    // What the backend was told.
    let told = hook.shared.last_body.lock().unwrap().clone().unwrap();
    assert_eq!(told["user_id"], "42");
    assert_eq!(told["group"], "secret.a");
    assert_eq!(told["node"], "test-node");
    assert_eq!(told["ip"], "127.0.0.1");
    assert!(
        told["session"].is_string() && told["conn"].is_u64(),
        "{told}"
    );
    // The deny is cached: no second call.
    hook.allow("42", "secret.a");
    let r = subscribe(&mut c, "secret.a", None).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(hook.calls(), 1);

    // Allowed; then cached (one call for both).
    hook.allow("42", "secret.b");
    let r = subscribe(&mut c, "secret.b", None).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    c.request(json!({"type": "unsubscribe", "group": "secret.b"}))
        .await;
    let r = subscribe(&mut c, "secret.b", None).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    assert_eq!(hook.calls(), 2);
    node.publish("secret.b", json!("hello")).await;
    let m = c.recv_json().await;
    assert_eq!(
        (m["group"].clone(), m["data"].clone()),
        (json!("secret.b"), json!("hello"))
    );

    // A `{user_id}` pattern: team.42.* is the backend's to decide for 42.
    hook.allow("42", "team.42.x");
    assert_eq!(
        subscribe(&mut c, "team.42.x", None).await["type"],
        "subscribed"
    );
    // Open groups never reach the hook.
    let calls = hook.calls();
    assert_eq!(subscribe(&mut c, "open", None).await["type"], "subscribed");
    assert_eq!(hook.calls(), calls);

    // Every failure is `unavailable`, and is not cached.
    for (mode, group) in [
        (Mode::Error500, "secret.e1"),
        (Mode::BadJson, "secret.e2"),
        (Mode::Slow, "secret.e3"),
    ] {
        hook.allow("42", group);
        hook.set_mode(mode);
        let r = subscribe(&mut c, group, None).await;
        assert_eq!(r["code"], "unavailable", "{mode:?}: {r}");
        hook.set_mode(Mode::Answer);
        let r = subscribe(&mut c, group, None).await;
        assert_eq!(r["type"], "subscribed", "{mode:?} then answered: {r}");
    }
    assert_eq!(
        hook.shared
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    let m = node.metrics().await;
    assert_eq!(outcome(&m, "error"), 3.0);
    assert_eq!(outcome(&m, "deny"), 1.0);
    assert_eq!(outcome(&m, "cached_deny"), 1.0);
    assert!(outcome(&m, "cached_allow") >= 1.0);
    assert_eq!(
        metric_value(&m, "wsgate_request_errors_total{code=\"unavailable\"}"),
        3.0
    );

    // The backend is gone altogether: still never an allow.
    drop(hook);
    let r = subscribe(&mut c, "secret.gone", None).await;
    assert_eq!(r["code"], "unavailable", "{r}");
    node.shutdown().await;
}

#[tokio::test]
async fn a_hook_with_a_wrong_secret_is_unavailable() {
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = authorize_config(dir.path(), &hook);
    config.authorize.hook_secret = Some("another-secret-0123456789abcdef-01234".into());
    let node = spawn(config).await;
    hook.allow("42", "secret.a");
    let (mut c, _) = Client::authed(&node.ws_url(), &login("42")).await;
    let r = subscribe(&mut c, "secret.a", None).await;
    assert_eq!(r["code"], "unavailable", "{r}");
    assert_eq!(
        hook.shared
            .bad_signatures
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    node.shutdown().await;
}

#[tokio::test]
async fn grants_subscribe_without_a_hook_call() {
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(authorize_config(dir.path(), &hook)).await;
    let (mut c, _) = Client::authed(&node.ws_url(), &login("42")).await;
    let t = now();
    let good = grant("42", "secret.g", t + 60, t);
    let r = subscribe(&mut c, "secret.g", Some(&good)).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    for (why, bad) in [
        ("another user's", grant("43", "secret.g", t + 60, t)),
        ("another group's", grant("42", "secret.h", t + 60, t)),
        ("expired", grant("42", "secret.g", t - 1, t - 61)),
        ("too long-lived", grant("42", "secret.g", t + 601, t)),
        (
            "signed with the login secret",
            hs256(
                &json!({"sub": "42", "group": "secret.g", "exp": t + 60}),
                LOGIN_SECRET,
            ),
        ),
    ] {
        let r = subscribe(&mut c, "secret.g", Some(&bad)).await;
        // Already subscribed or not, a bad grant is refused.
        assert_eq!(r["code"], "forbidden", "{why}: {r}");
    }
    // A bad grant is not turned into a hook call, even when the hook would allow.
    hook.allow("42", "secret.h");
    let r = subscribe(
        &mut c,
        "secret.h",
        Some(&grant("42", "secret.g", t + 60, t)),
    )
    .await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(hook.calls(), 0);

    // Revoked: the subscription ends and the same grant cannot come back.
    let (status, body) = node
        .api_post(
            "/api/v1/unsubscribe",
            json!({"user_id": 42, "group": "secret.g"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let m = c.recv_json().await;
    assert_eq!(m, json!({"type": "unsubscribed", "group": "secret.g"}));
    let r = subscribe(&mut c, "secret.g", Some(&good)).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    // A grant issued after the revocation works.
    let later = grant("42", "secret.g", now() + 60, now() + 1);
    let r = subscribe(&mut c, "secret.g", Some(&later)).await;
    assert_eq!(r["type"], "subscribed", "{r}");
    let m = node.metrics().await;
    assert_eq!(outcome(&m, "grant"), 2.0);
    assert_eq!(outcome(&m, "grant_invalid"), 7.0);
    node.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_api_ends_a_subscription_and_its_cached_allow() {
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(authorize_config(dir.path(), &hook)).await;
    let (mut a1, _) = Client::authed(&node.ws_url(), &login("42")).await;
    let (mut a2, _) = Client::authed(&node.ws_url(), &login("42")).await;
    let (mut b, _) = Client::authed(&node.ws_url(), &login("7")).await;
    hook.allow("42", "secret.room");
    hook.allow("7", "secret.room");
    for c in [&mut a1, &mut a2, &mut b] {
        assert_eq!(
            subscribe(c, "secret.room", None).await["type"],
            "subscribed"
        );
    }
    assert_eq!(
        hook.calls(),
        2,
        "the second connection of 42 used the cache"
    );

    hook.disallow("42", "secret.room");
    let (status, body) = node
        .api_post(
            "/api/v1/unsubscribe",
            json!({"user_id": "42", "group": "secret.room"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            c.recv_json().await,
            json!({"type": "unsubscribed", "group": "secret.room"})
        );
    }
    node.publish("secret.room", json!(1)).await;
    assert_eq!(b.recv_json().await["data"], 1);
    a1.expect_silence(Duration::from_millis(200)).await;
    // The cached allow is gone: the backend is asked again, and says no.
    let r = subscribe(&mut a1, "secret.room", None).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    assert_eq!(hook.calls(), 3);
    // Presence no longer lists 42.
    let (_, p) = node.api_get("/api/v1/groups/secret.room/presence").await;
    assert_eq!(p["count"], 1, "{p}");

    // Bad bodies.
    for bad in [
        json!({"user_id": "", "group": "g"}),
        json!({"user_id": "42", "group": "no spaces"}),
        json!({"user_id": "42"}),
        json!({"user_id": "42", "group": "g", "extra": 1}),
    ] {
        let (status, body) = node.api_post("/api/v1/unsubscribe", bad.clone()).await;
        assert_eq!(
            (status, body["error"].clone()),
            (400, json!("bad_request")),
            "{bad}"
        );
    }
    node.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_reaches_every_node_on_redis() {
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let node_config = |name: &str| {
        let mut c = authorize_config(dir.path(), &hook);
        c.server.node_id = Some(name.into());
        c.redis.url = Some(SHARED_REDIS.into());
        c.redis.prefix = prefix.as_str().into();
        c.redis.heartbeat = Duration::from_millis(200);
        c.redis.node_ttl = Duration::from_secs(1);
        c
    };
    let a = spawn(node_config("node-a")).await;
    let b = spawn(node_config("node-b")).await;
    hook.allow("42", "secret.x");
    let (mut on_a, _) = Client::authed(&a.ws_url(), &login("42")).await;
    let (mut on_b, _) = Client::authed(&b.ws_url(), &login("42")).await;
    assert_eq!(
        subscribe(&mut on_a, "secret.x", None).await["type"],
        "subscribed"
    );
    let t = now();
    let g = grant("42", "secret.x", t + 60, t);
    assert_eq!(
        subscribe(&mut on_b, "secret.x", Some(&g)).await["type"],
        "subscribed"
    );
    // Each node asked (or checked the grant) on its own: one hook call.
    assert_eq!(hook.calls(), 1);
    a.publish("secret.x", json!("before")).await;
    assert_eq!(on_a.recv_json().await["data"], "before");
    assert_eq!(on_b.recv_json().await["data"], "before");

    // Revoked through node A's API; node B's connection leaves too.
    hook.disallow("42", "secret.x");
    let (status, _) = a
        .api_post(
            "/api/v1/unsubscribe",
            json!({"user_id": "42", "group": "secret.x"}),
        )
        .await;
    assert_eq!(status, 200);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(
            c.recv_json().await,
            json!({"type": "unsubscribed", "group": "secret.x"})
        );
    }
    b.publish("secret.x", json!("after")).await;
    on_a.expect_silence(Duration::from_millis(300)).await;
    on_b.expect_silence(Duration::from_millis(100)).await;
    // Node A asks the backend again (its allow was dropped); node B refuses
    // the grant issued before the revocation.
    assert_eq!(
        subscribe(&mut on_a, "secret.x", None).await["code"],
        "forbidden"
    );
    assert_eq!(hook.calls(), 2);
    assert_eq!(
        subscribe(&mut on_b, "secret.x", Some(&g)).await["code"],
        "forbidden"
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// What an authorized subscribe costs, printed (run with `--nocapture`):
/// a subscribe/unsubscribe round trip pair on an open group, on an
/// authorized group with the allow cached, and with a hook call each time
/// (the cache off), all over loopback to a local backend.
#[tokio::test]
async fn cost_per_subscribe() {
    const N: u32 = 200;
    let hook = HookBackend::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut cached = authorize_config(dir.path(), &hook);
    cached.limits.messages_per_second = 0;
    let node = spawn(cached).await;
    let mut uncached = authorize_config(dir.path(), &hook);
    uncached.limits.messages_per_second = 0;
    uncached.authorize.allow_ttl = Duration::ZERO;
    uncached.authorize.deny_ttl = Duration::ZERO;
    let node_uncached = spawn(uncached).await;
    hook.allow("42", "secret.cost");
    async fn cycles(url: &str, group: &str) -> Duration {
        let (mut c, _) = Client::authed(url, &login("42")).await;
        // Warm up (and fill the cache).
        subscribe(&mut c, group, None).await;
        c.request(json!({"type": "unsubscribe", "group": group}))
            .await;
        let start = Instant::now();
        for _ in 0..N {
            let r = subscribe(&mut c, group, None).await;
            assert_eq!(r["type"], "subscribed", "{r}");
            c.request(json!({"type": "unsubscribe", "group": group}))
                .await;
        }
        start.elapsed() / N
    }
    let open = cycles(&node.ws_url(), "open.cost").await;
    let cached = cycles(&node.ws_url(), "secret.cost").await;
    let calls = hook.calls();
    let hooked = cycles(&node_uncached.ws_url(), "secret.cost").await;
    assert_eq!(
        hook.calls() - calls,
        N as usize + 1,
        "one hook call per subscribe"
    );
    let m = node_uncached.metrics().await;
    let hook_mean = metric_value(&m, "wsgate_subscribe_hook_duration_seconds_sum")
        / metric_value(&m, "wsgate_subscribe_hook_duration_seconds_count");
    println!(
        "subscribe+unsubscribe round trips, mean of {N}: open group {open:?}, \
         authorized with cached allow {cached:?}, with a hook call {hooked:?}; \
         hook round trip alone (histogram mean) {:.1} µs",
        hook_mean * 1e6
    );
    node.shutdown().await;
    node_uncached.shutdown().await;
}
