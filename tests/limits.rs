//! Limits and abuse: slow handshakes, per-IP and pending caps, client IPs
//! behind trusted proxies, authentication-failure limiting and request rate
//! limiting, each with its metric.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connects with extra headers; returns the HTTP status of a refusal, or 101.
async fn upgrade_status(url: &str, headers: &[(&'static str, &str)]) -> (u16, Option<Client>) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => (101, Some(Client { ws })),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert!(
                resp.headers().contains_key("retry-after"),
                "Retry-After on {}",
                resp.status()
            );
            (resp.status().as_u16(), None)
        }
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn slow_handshake_is_dropped() {
    let (_d, node) = node_with(|c| c.server.handshake_timeout = Duration::from_millis(300)).await;
    let mut tcp = tokio::net::TcpStream::connect(node.addrs.ws).await.unwrap();
    // Half an upgrade request, then nothing (slowloris).
    tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the server drops the socket")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "got {text:?}");
    println!(
        "slow handshake dropped after {:?} (handshake_timeout 300 ms)",
        start.elapsed()
    );
    assert!(start.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        node.metric("wsgate_connections_rejected_total{reason=\"handshake_timeout\"}")
            .await,
        1.0
    );
    // Normal clients are unaffected.
    let token = node.issue_token("1").await;
    Client::authed(&node.ws_url(), &token).await;
}

#[tokio::test]
async fn per_ip_cap_and_trusted_proxies() {
    let (_d, node) = node_with(|c| {
        c.limits.max_connections_per_ip = 3;
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
    })
    .await;
    let token = node.issue_token("1").await;
    let url = node.ws_url();
    // Behind the (trusted) loopback proxy, each forwarded client has its own cap.
    let mut held = Vec::new();
    for _ in 0..3 {
        let (status, c) = upgrade_status(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
        assert_eq!(status, 101);
        held.push(c.unwrap());
    }
    let (status, _) = upgrade_status(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(status, 429, "fourth socket from one client");
    let (status, _) = upgrade_status(&url, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(status, 101, "another client behind the same proxy");
    // A hop the proxy appended after a spoofed one: the rightmost untrusted wins.
    let (status, _) =
        upgrade_status(&url, &[("x-forwarded-for", "198.51.100.2, 198.51.100.1")]).await;
    assert_eq!(
        status, 429,
        "the client cannot pick its address by sending its own header"
    );
    // Closing one frees a place.
    drop(held.pop());
    let mut ok = false;
    for _ in 0..50 {
        if upgrade_status(&url, &[("x-forwarded-for", "198.51.100.1")])
            .await
            .0
            == 101
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok);
    for c in &mut held {
        c.send_json(json!({"token": token})).await;
        assert_eq!(c.recv_json().await["type"], "welcome");
    }
    assert!(
        node.metric("wsgate_connections_rejected_total{reason=\"ip_limit\"}")
            .await
            >= 2.0
    );

    // Without trust, forwarding headers are ignored: the peer's cap applies.
    let (_d2, strict) = node_with(|c| c.limits.max_connections_per_ip = 2).await;
    let url = strict.ws_url();
    let _a = upgrade_status(&url, &[("x-forwarded-for", "203.0.113.1")]).await;
    let _b = upgrade_status(&url, &[("x-forwarded-for", "203.0.113.2")]).await;
    let (status, _) = upgrade_status(&url, &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_eq!(status, 429);
}

#[tokio::test]
async fn pending_caps_global_and_per_ip() {
    let (_d, node) = node_with(|c| {
        c.limits.max_pending_per_ip = 2;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let token = node.issue_token("1").await;
    let url = node.ws_url();
    let xff = [("x-forwarded-for", "198.51.100.7")];
    let (_, a) = upgrade_status(&url, &xff).await;
    let (_, b) = upgrade_status(&url, &xff).await;
    let (status, _) = upgrade_status(&url, &xff).await;
    assert_eq!(
        status, 429,
        "a third unauthenticated socket from one address"
    );
    // Authenticating one frees a pending place.
    let mut a = a.unwrap();
    a.send_json(json!({"token": token})).await;
    assert_eq!(a.recv_json().await["type"], "welcome");
    let (status, _) = upgrade_status(&url, &xff).await;
    assert_eq!(status, 101);
    drop(b);
    assert!(
        node.metric("wsgate_connections_rejected_total{reason=\"pending_ip_limit\"}")
            .await
            >= 1.0
    );

    let (_d2, small) = node_with(|c| c.limits.max_pending = 2).await;
    let url = small.ws_url();
    let _p1 = upgrade_status(&url, &[]).await;
    let _p2 = upgrade_status(&url, &[]).await;
    let (status, _) = upgrade_status(&url, &[]).await;
    assert_eq!(status, 503, "the node's pending cap");
    assert_eq!(
        small
            .metric("wsgate_connections_rejected_total{reason=\"pending_limit\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn auth_failures_from_one_ip_are_limited_before_the_database() {
    let (_d, node) = node_with(|c| {
        c.limits.auth_failures_per_minute = 3;
        c.server.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let good = node.issue_token("1").await;
    let url = node.ws_url();
    let attacker = [("x-forwarded-for", "198.51.100.66")];
    for _ in 0..4 {
        let (_, c) = upgrade_status(&url, &attacker).await;
        let mut c = c.unwrap();
        c.send_json(json!({"token": "wsg_guess"})).await;
        assert_eq!(code(c.expect_close().await), 4003);
    }
    let lookups = node
        .metric("wsgate_auth_duration_seconds_count{source=\"database\"}")
        .await
        + node
            .metric("wsgate_auth_duration_seconds_count{source=\"local\"}")
            .await;
    // Now even a valid token from that address is refused with 4029, and
    // neither the cache nor the database is asked.
    let (_, c) = upgrade_status(&url, &attacker).await;
    let mut c = c.unwrap();
    c.send_json(json!({"token": good})).await;
    assert_eq!(code(c.expect_close().await), 4029);
    let after = node
        .metric("wsgate_auth_duration_seconds_count{source=\"database\"}")
        .await
        + node
            .metric("wsgate_auth_duration_seconds_count{source=\"local\"}")
            .await;
    assert_eq!(after, lookups, "no token lookup for a blocked address");
    assert_eq!(
        node.metric("wsgate_rate_limited_total{kind=\"auth\"}")
            .await,
        1.0
    );
    // Other addresses are unaffected.
    let (_, c) = upgrade_status(&url, &[("x-forwarded-for", "198.51.100.67")]).await;
    let mut c = c.unwrap();
    c.send_json(json!({"token": good})).await;
    assert_eq!(c.recv_json().await["type"], "welcome");
}

#[tokio::test]
async fn request_rate_limit_then_4029_when_sustained() {
    let (_d, node) = node_with(|c| c.limits.messages_per_second = 5).await;
    let token = node.issue_token("1").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    // A burst of 8: 5 answered, 3 refused with rate_limited (ids echoed).
    for i in 0..8 {
        c.send_json(json!({"type": "ping", "id": i})).await;
    }
    let mut pongs = 0;
    let mut limited = 0;
    for i in 0..8 {
        let r = c.recv_json().await;
        assert_eq!(r["id"], i);
        match r["type"].as_str().unwrap() {
            "pong" => pongs += 1,
            "error" => {
                assert_eq!(r["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((pongs, limited), (5, 3));
    // After a pause the client is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
    // Keeping on at well over twice the rate gets the connection closed.
    let mut closed = None;
    for i in 0..200 {
        if futures_util::SinkExt::send(
            &mut c.ws,
            tokio_tungstenite::tungstenite::Message::text(
                json!({"type": "ping", "id": i}).to_string(),
            ),
        )
        .await
        .is_err()
        {
            break;
        }
    }
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))))) => {
                closed = Some(u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(closed, Some(4029));
    assert!(
        node.metric("wsgate_rate_limited_total{kind=\"messages\"}")
            .await
            >= 3.0
    );
    assert_eq!(
        node.metric("wsgate_rate_limited_total{kind=\"closed\"}")
            .await,
        1.0
    );
}
