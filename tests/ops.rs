//! Sections 1 and 8: handshake checks, health, metrics, drain, and logs that
//! never hold a token.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const METRICS: &[&str] = &[
    "wsgate_connections{state=\"pending\"}",
    "wsgate_connections{state=\"authenticated\"}",
    "wsgate_connections_opened_total",
    "wsgate_connections_closed_total{code=\"1000\"}",
    "wsgate_connections_closed_total{code=\"4003\"}",
    "wsgate_auth_success_total",
    "wsgate_auth_failures_total{reason=\"invalid_token\"}",
    "wsgate_auth_failures_total{reason=\"timeout\"}",
    "wsgate_auth_failures_total{reason=\"malformed\"}",
    "wsgate_auth_failures_total{reason=\"backend_unavailable\"}",
    "wsgate_auth_duration_seconds_count{source=\"local\"}",
    "wsgate_auth_duration_seconds_count{source=\"redis\"}",
    "wsgate_auth_duration_seconds_count{source=\"database\"}",
    "wsgate_auth_cache_requests_total{result=\"hit\"}",
    "wsgate_auth_cache_requests_total{result=\"miss\"}",
    "wsgate_auth_cache_requests_total{result=\"negative_hit\"}",
    "wsgate_messages_published_total",
    "wsgate_messages_delivered_total",
    "wsgate_messages_dropped_total{reason=\"slow_consumer\"}",
    "wsgate_delivery_latency_seconds_count",
    "wsgate_groups",
    "wsgate_redis_up",
    "wsgate_draining",
    "wsgate_auth_cache_errors_total",
    "wsgate_connections_rejected_total{reason=\"ip_limit\"}",
    "wsgate_connections_rejected_total{reason=\"origin\"}",
    "wsgate_rate_limited_total{kind=\"auth\"}",
    "wsgate_rate_limited_total{kind=\"messages\"}",
];

#[tokio::test]
async fn every_metric_exposed_at_start_and_counted() {
    let (_dir, node) = node().await;
    let text = node.metrics().await;
    for m in METRICS {
        let v = metric_value(&text, m);
        let expected = if *m == "wsgate_redis_up" { 1.0 } else { 0.0 };
        assert_eq!(v, expected, "{m}");
    }
    assert!(text.contains("# HELP wsgate_delivery_latency_seconds"));
    // A scripted scenario, then exact values.
    let token = node.issue_token("1").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("g").await;
    let mut bad = Client::connect(&node.ws_url()).await;
    bad.send_json(json!({"token": "nope"})).await;
    assert_eq!(code(bad.expect_close().await), 4003);
    for i in 0..3 {
        node.publish("g", json!(i)).await;
        c.recv_json().await;
    }
    let text = node.metrics().await;
    for (m, v) in [
        ("wsgate_connections_opened_total", 2.0),
        ("wsgate_connections{state=\"authenticated\"}", 1.0),
        ("wsgate_connections{state=\"pending\"}", 0.0),
        ("wsgate_auth_success_total", 1.0),
        ("wsgate_auth_failures_total{reason=\"invalid_token\"}", 1.0),
        (
            "wsgate_auth_duration_seconds_count{source=\"database\"}",
            2.0,
        ),
        ("wsgate_connections_closed_total{code=\"4003\"}", 1.0),
        ("wsgate_messages_published_total", 3.0),
        ("wsgate_messages_delivered_total", 3.0),
        ("wsgate_delivery_latency_seconds_count", 3.0),
        ("wsgate_groups", 2.0), // g and user.1
    ] {
        assert_eq!(metric_value(&text, m), v, "{m}");
    }
}

#[tokio::test]
async fn health_on_metrics_and_public_ports() {
    let (_dir, node) = node().await;
    for base in [node.addrs.metrics, node.addrs.ws] {
        for path in ["/healthz", "/readyz"] {
            let r = reqwest::get(format!("http://{base}{path}")).await.unwrap();
            assert_eq!(r.status(), 200, "{base}{path}");
        }
    }
}

#[tokio::test]
async fn api_and_metrics_may_share_the_public_port() {
    let (_dir, node) = node_with(|config| {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        config.server.listen = addr;
        config.api.listen = addr;
        config.metrics.listen = addr;
    })
    .await;
    assert_eq!(node.addrs.api, node.addrs.ws);
    let token = node.issue_token("1").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("g").await;
    node.publish("g", json!("same port")).await;
    assert_eq!(c.recv_json().await["data"], "same port");
    assert!(
        node.metrics()
            .await
            .contains("wsgate_connections_opened_total 1")
    );
}

#[tokio::test]
async fn full_node_refuses_with_503_and_retry_after() {
    let (_dir, node) = node_with(|config| {
        config.limits.max_connections = 1;
    })
    .await;
    let _first = Client::connect(&node.ws_url()).await;
    assert_refused_503(&node.ws_url()).await;
}

#[tokio::test]
async fn origin_allow_list() {
    let (_dir, node) = node_with(|config| {
        config.server.allowed_origins =
            vec!["https://app.example.com".into(), "*.example.org".into()];
    })
    .await;
    let with_origin = |origin: &str| {
        let mut req = node.ws_url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        req
    };
    for ok in ["https://app.example.com", "https://shop.example.org"] {
        tokio_tungstenite::connect_async(with_origin(ok))
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
    }
    for evil in [
        "https://evil.com",
        "https://app.example.com.evil.com",
        "null",
        "http://app.example.com",
    ] {
        match tokio_tungstenite::connect_async(with_origin(evil)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{evil}")
            }
            other => panic!("{evil}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    // Non-browser clients send no Origin and are allowed.
    Client::connect(&node.ws_url()).await;
}

#[tokio::test]
async fn drain_refuses_new_clients_and_closes_with_1012() {
    let (_dir, mut node) = node_with(|config| {
        config.drain.grace = Duration::from_millis(400);
        config.drain.spread = Duration::from_millis(300);
    })
    .await;
    let token = node.issue_token("1").await;
    let mut clients = Vec::new();
    for _ in 0..10 {
        clients.push(Client::authed(&node.ws_url(), &token).await.0);
    }
    let mut pending = Client::connect(&node.ws_url()).await;
    let metrics_url = node.metrics_url("/readyz");
    let ws_url = node.ws_url();
    node.start_shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(reqwest::get(&metrics_url).await.unwrap().status(), 503);
    assert_refused_503(&ws_url).await;
    for c in &mut clients {
        assert_eq!(code(c.expect_close().await), 1012);
    }
    assert_eq!(code(pending.expect_close().await), 1012);
    node.shutdown().await;
}

/// Runs the real binary with trace logging through every auth path and
/// checks that no token appears anywhere in its output.
#[tokio::test]
async fn no_token_in_logs() {
    let dir = tempfile::tempdir().unwrap();
    let good = run_bin(dir.path(), &["token", "issue", "--user", "42"], &[])
        .trim()
        .to_string();
    let revoked = run_bin(dir.path(), &["token", "issue", "--user", "43"], &[])
        .trim()
        .to_string();
    let mut node = BinNode::start(
        dir.path(),
        &[
            ("WSGATE__LOG__LEVEL", "trace"),
            ("WSGATE__DRAIN__GRACE", "0s"),
            ("WSGATE__DRAIN__SPREAD", "100ms"),
        ],
    );
    let url = node.ws_url();
    // Good token, with it also in the query string (which must be ignored).
    let (mut c, _) = Client::authed(&format!("{url}?token={good}"), &good).await;
    c.subscribe("g").await;
    // Bad, malformed and revoked tokens.
    let secret_bad = "wsg_this-is-a-secret-unknown-token";
    for frame in [
        json!({"type": "auth", "token": secret_bad}).to_string(),
        format!("{{\"token\": \"{secret_bad}\""),
        json!({"type": "nope", "token": secret_bad}).to_string(),
    ] {
        let mut b = Client::connect(&url).await;
        b.send_text(frame).await;
        b.expect_close().await;
    }
    let http = reqwest::Client::new();
    let r = http
        .post(format!("http://{}/api/v1/revoke", node.api))
        .bearer_auth(API_KEY)
        .json(&json!({"token": revoked}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut r2 = Client::connect(&url).await;
    r2.send_json(json!({"token": revoked})).await;
    assert_eq!(code(r2.expect_close().await), 4003);
    // A wrong API key is not logged either.
    let r = http
        .post(format!("http://{}/api/v1/publish", node.api))
        .bearer_auth("wrong-secret-api-key-123")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    c.ws.close(None).await.unwrap();
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("TERM");
    let status = node.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    let all = node.drain_log().join("\n");
    assert!(all.contains("draining"), "the log was captured:\n{all}");
    for secret in [
        good.as_str(),
        revoked.as_str(),
        secret_bad,
        API_KEY,
        "wrong-secret-api-key-123",
    ] {
        assert!(
            !all.contains(secret),
            "a secret leaked into the log:\n{all}"
        );
    }
}
