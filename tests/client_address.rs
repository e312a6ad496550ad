//! Who the client is, for the per-IP limits (security review M4 and L1):
//! `Forwarded` against `X-Forwarded-For` behind a trusted proxy, IPv6
//! clients keyed by their prefix.

mod common;

use common::*;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsgate::config::Config;

async fn node_with(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    f(&mut config);
    (dir, spawn(config).await)
}

/// Upgrades with extra headers; the HTTP status (101 when upgraded) and the
/// client, kept open by the caller so it holds its place.
async fn upgrade(url: &str, headers: &[(&'static str, &str)]) -> (u16, Option<Client>) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => (101, Some(Client { ws })),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// A node behind a trusted proxy on loopback, one socket per client address.
async fn behind_loopback_proxy(f: impl FnOnce(&mut Config)) -> (tempfile::TempDir, TestNode) {
    node_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.limits.max_connections_per_ip = 1;
        f(c);
    })
    .await
}

// ---------------------------------------------------------------------------
// L1: `Forwarded` and `X-Forwarded-For`.

/// A trusted proxy that writes only `Forwarded` (HAProxy's `option
/// forwarded`, for one): a client that adds its own `X-Forwarded-For` must
/// not get a budget of its own per made-up address. Before the fix
/// `X-Forwarded-For` won, so each spoofed address got a fresh budget.
#[tokio::test]
async fn client_sent_x_forwarded_for_does_not_escape_a_forwarded_proxy() {
    let (_d, node) = behind_loopback_proxy(|_| {}).await;
    let url = node.ws_url();
    let (status, _held) = upgrade(
        &url,
        &[
            ("forwarded", "for=198.51.100.7;proto=https"),
            ("x-forwarded-for", "6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(status, 101);
    let (status, _) = upgrade(
        &url,
        &[
            ("forwarded", "for=198.51.100.7;proto=https"),
            ("x-forwarded-for", "6.6.6.7"),
        ],
    )
    .await;
    assert_eq!(
        status, 429,
        "a second made-up X-Forwarded-For must not buy a second budget"
    );
}

/// The mirror case, and the reason there is no blanket "`Forwarded` first":
/// behind a proxy that writes only `X-Forwarded-For` (ingress-nginx, ALB,
/// Envoy), which passes a client's `Forwarded` through untouched, the
/// client must not pick its address with `Forwarded` either.
#[tokio::test]
async fn client_sent_forwarded_does_not_escape_an_x_forwarded_for_proxy() {
    let (_d, node) = behind_loopback_proxy(|_| {}).await;
    let url = node.ws_url();
    let (status, _held) = upgrade(
        &url,
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=6.6.6.6"),
        ],
    )
    .await;
    assert_eq!(status, 101);
    let (status, _) = upgrade(
        &url,
        &[
            ("x-forwarded-for", "198.51.100.7"),
            ("forwarded", "for=6.6.6.7"),
        ],
    )
    .await;
    assert_eq!(
        status, 429,
        "a made-up Forwarded must not buy a second budget"
    );
}

/// One header alone names the client, read from the right; the two
/// together must agree, else the proxy's own address is the client's (fail
/// closed: the sender of a contradiction shares the proxy's budget with
/// other senders of contradictions, and honest clients keep their own).
#[tokio::test]
async fn forwarded_alone_names_the_client_and_contradictions_fall_back_to_the_proxy() {
    let (_d, node) = behind_loopback_proxy(|_| {}).await;
    let url = node.ws_url();
    let mut held = Vec::new();
    // Forwarded alone: the rightmost untrusted `for=`.
    for forwarded in [
        "for=198.51.100.1",
        "for=6.6.6.6, for=\"198.51.100.2:4711\"",
        "for=\"[2001:db8:cafe::17]:443\";proto=https",
    ] {
        let (status, c) = upgrade(&url, &[("forwarded", forwarded)]).await;
        assert_eq!(status, 101, "{forwarded}");
        held.push(c);
    }
    let (status, _) = upgrade(&url, &[("forwarded", "for=6.6.6.7, for=198.51.100.2")]).await;
    assert_eq!(status, 429, "198.51.100.2 already holds its one socket");
    // Both headers, agreeing (a proxy that writes both): that client.
    let (status, c) = upgrade(
        &url,
        &[
            ("forwarded", "for=198.51.100.3"),
            ("x-forwarded-for", "198.51.100.3"),
        ],
    )
    .await;
    assert_eq!(status, 101);
    held.push(c);
    // Both, contradicting: the proxy's address (127.0.0.1), once.
    let (status, c) = upgrade(
        &url,
        &[
            ("forwarded", "for=198.51.100.4"),
            ("x-forwarded-for", "198.51.100.5"),
        ],
    )
    .await;
    assert_eq!(status, 101);
    held.push(c);
    let (status, _) = upgrade(
        &url,
        &[
            ("forwarded", "for=198.51.100.6"),
            ("x-forwarded-for", "198.51.100.8"),
        ],
    )
    .await;
    assert_eq!(status, 429, "contradictions share the proxy's budget");
    // ... which is not the budget of the addresses they named.
    let (status, c) = upgrade(&url, &[("forwarded", "for=198.51.100.4")]).await;
    assert_eq!(status, 101);
    held.push(c);
    // The proxy could not name the client (`unknown`): the proxy's address,
    // never the client-written hop to its left.
    let (status, _) = upgrade(&url, &[("forwarded", "for=198.51.100.9, for=unknown")]).await;
    assert_eq!(status, 429, "unknown falls back to the proxy's address");
}

// ---------------------------------------------------------------------------
// L1: IPv6 clients keyed by prefix.

/// Two addresses in one /64 are one client for the per-IP limits (default
/// `limits.ipv6_prefix = 64`); the next /64 is another. Before the fix each
/// address had its own budget, so one /64 was unlimited.
#[tokio::test]
async fn ipv6_addresses_in_one_prefix_share_one_budget() {
    let (_d, node) = behind_loopback_proxy(|_| {}).await;
    let url = node.ws_url();
    let (status, _held) = upgrade(&url, &[("x-forwarded-for", "2001:db8:1:2::1")]).await;
    assert_eq!(status, 101);
    let (status, _) = upgrade(&url, &[("x-forwarded-for", "2001:db8:1:2:ffff::9")]).await;
    assert_eq!(status, 429, "same /64, same budget");
    let (status, _other) = upgrade(&url, &[("x-forwarded-for", "2001:db8:1:3::1")]).await;
    assert_eq!(status, 101, "the next /64 is another client");
    // IPv4 is keyed on the whole address.
    let (status, _a) = upgrade(&url, &[("x-forwarded-for", "198.51.100.1")]).await;
    assert_eq!(status, 101);
    let (status, _b) = upgrade(&url, &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(status, 101);
}

// ---------------------------------------------------------------------------
// M4: PROXY protocol on the public listener.

/// A PROXY protocol v1 line for a TCP client at `source`.
fn proxy_v1(source: std::net::SocketAddr) -> Vec<u8> {
    let (family, dest) = if source.is_ipv4() {
        ("TCP4", "10.0.0.2")
    } else {
        ("TCP6", "2001:db8::2")
    };
    format!(
        "PROXY {family} {} {dest} {} 8080\r\n",
        source.ip(),
        source.port()
    )
    .into_bytes()
}

/// A PROXY protocol v2 header: PROXY command for `source`, or LOCAL.
fn proxy_v2(source: Option<std::net::SocketAddr>) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    match source {
        None => h.extend([0x20, 0x00, 0, 0]),
        Some(std::net::SocketAddr::V4(s)) => {
            h.extend([0x21, 0x11, 0, 12]);
            h.extend(s.ip().octets());
            h.extend([10, 0, 0, 2]);
            h.extend(s.port().to_be_bytes());
            h.extend(8080u16.to_be_bytes());
        }
        Some(std::net::SocketAddr::V6(s)) => {
            h.extend([0x21, 0x21, 0, 36]);
            h.extend(s.ip().octets());
            h.extend(
                "2001:db8::2"
                    .parse::<std::net::Ipv6Addr>()
                    .unwrap()
                    .octets(),
            );
            h.extend(s.port().to_be_bytes());
            h.extend(8080u16.to_be_bytes());
        }
    }
    // A TLV the balancers add (here a NOOP), which must be skipped.
    h.extend([0x04, 0, 2, 0xAB, 0xCD]);
    let len = (h.len() - 16) as u16;
    h[14..16].copy_from_slice(&len.to_be_bytes());
    h
}

/// Writes `header` on a new TCP connection, then upgrades over it; the
/// HTTP status (101 when upgraded) and the client.
async fn upgrade_after(node: &TestNode, header: &[u8]) -> (u16, Option<Client>) {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(node.addrs.ws).await.unwrap();
    tcp.write_all(header).await.unwrap();
    match tokio_tungstenite::client_async(
        node.ws_url(),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    {
        Ok((ws, _)) => (101, Some(Client { ws })),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        // The node closed the socket without an HTTP answer.
        Err(_) => (0, None),
    }
}

fn sock(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

/// With `server.proxy_protocol`, the header's source address is the
/// client's for the per-IP limits: v1 and v2, IPv4 and IPv6; a v2 LOCAL
/// header (the balancer's health check) keeps the TCP peer; and the
/// connection then authenticates and works as any other.
#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_client() {
    let (_d, node) = node_with(|c| {
        c.server.proxy_protocol = true;
        c.limits.max_connections_per_ip = 1;
    })
    .await;
    let token = node.issue_token("1").await;
    let mut held = Vec::new();
    for header in [
        proxy_v1(sock("203.0.113.1:50000")),
        proxy_v2(Some(sock("203.0.113.2:50001"))),
        proxy_v1(sock("[2001:db8:1:1::1]:50002")),
        proxy_v2(Some(sock("[2001:db8:1:2::1]:50003"))),
        proxy_v2(None),
    ] {
        let (status, c) = upgrade_after(&node, &header).await;
        assert_eq!(status, 101, "{header:?}");
        held.push(c.unwrap());
    }
    assert_eq!(node.metric("wsgate_client_addresses").await, 5.0);
    // The same addresses again, in the other version: over their budget.
    for header in [
        proxy_v2(Some(sock("203.0.113.1:40000"))),
        proxy_v1(sock("203.0.113.2:40001")),
        proxy_v2(Some(sock("[2001:db8:1:1::99]:40002"))),
        proxy_v1(sock("[2001:db8:1:2:ffff::1]:40003")),
        // LOCAL: the TCP peer, 127.0.0.1, which already holds its socket.
        proxy_v2(None),
    ] {
        let (status, _) = upgrade_after(&node, &header).await;
        assert_eq!(status, 429, "{header:?}");
    }
    for c in &mut held {
        c.send_json(serde_json::json!({"type": "auth", "token": token}))
            .await;
        assert_eq!(c.recv_json().await["type"], "welcome");
    }
    assert_eq!(
        node.metric("wsgate_connections_rejected_total{reason=\"ip_limit\"}")
            .await,
        5.0
    );
}

/// The header and the upgrade request in one write (the bytes past the
/// header are the request's), read as raw HTTP.
#[tokio::test]
async fn proxy_header_and_request_in_one_segment() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, node) = node_with(|c| c.server.proxy_protocol = true).await;
    for header in [
        proxy_v1(sock("198.51.100.1:1234")),
        proxy_v2(Some(sock("198.51.100.2:1234"))),
    ] {
        let mut tcp = tokio::net::TcpStream::connect(node.addrs.ws).await.unwrap();
        let mut bytes = header.clone();
        bytes.extend(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        );
        tcp.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 512];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 101"), "got {text:?}");
    }
}

/// Fail closed: with `server.proxy_protocol` on, a connection that does
/// not start with a PROXY header is dropped before HTTP (no answer at all),
/// and counted; one that sends nothing is dropped at the handshake deadline.
#[tokio::test]
async fn without_a_proxy_header_the_connection_is_dropped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_d, node) = node_with(|c| {
        c.server.proxy_protocol = true;
        c.server.handshake_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    // A plain WebSocket client.
    let Err(err) = tokio_tungstenite::connect_async(node.ws_url()).await else {
        panic!("no upgrade without the header");
    };
    assert!(
        !matches!(err, tokio_tungstenite::tungstenite::Error::Http(_)),
        "no HTTP answer either: {err}"
    );
    // Raw HTTP, and a header that is almost one.
    for bytes in [
        &b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    ] {
        let mut tcp = tokio::net::TcpStream::connect(node.addrs.ws).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .expect("the node drops the socket")
            .unwrap_or(0);
        assert_eq!(n, 0, "got {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(
        node.metric("wsgate_connections_rejected_total{reason=\"proxy_protocol\"}")
            .await,
        3.0
    );
    // Silence: dropped at server.handshake_timeout.
    let mut tcp = tokio::net::TcpStream::connect(node.addrs.ws).await.unwrap();
    let start = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("the node drops the silent socket")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(start.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(
        node.metric("wsgate_connections_rejected_total{reason=\"handshake_timeout\"}")
            .await,
        1.0
    );
    // The API and metrics listeners do not expect the header.
    let (status, _) = node.api_get("/api/v1/cluster").await;
    assert_eq!(status, 200);
    assert!(node.metrics().await.contains("wsgate_client_addresses"));
    // With the header, the same node upgrades.
    let (status, _c) = upgrade_after(&node, &proxy_v1(sock("198.51.100.1:1"))).await;
    assert_eq!(status, 101);
}

/// With `server.proxy_protocol` off (the default), a PROXY header is not
/// believed: it is a malformed HTTP request (400 or closed), never an address.
#[tokio::test]
async fn without_proxy_protocol_a_proxy_header_is_garbage() {
    let (_d, node) = node_with(|c| c.limits.max_connections_per_ip = 1).await;
    for header in [
        proxy_v1(sock("203.0.113.1:1")),
        proxy_v2(Some(sock("203.0.113.2:1"))),
    ] {
        let (status, c) = upgrade_after(&node, &header).await;
        assert!(status == 400 || status == 0, "got {status}");
        assert!(c.is_none());
    }
    // Plain clients are unaffected (and not counted against 203.0.113.x).
    Client::connect(&node.ws_url()).await;
}

/// The API or metrics listener cannot share the public listener's address
/// when it expects PROXY headers: their callers send none.
#[test]
fn proxy_protocol_refuses_a_shared_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.server.proxy_protocol = true;
    c.server.listen = "127.0.0.1:18080".parse().unwrap();
    assert!(c.validate().is_ok());
    for shared in ["api", "metrics"] {
        let mut c = c.clone();
        if shared == "api" {
            c.api.listen = c.server.listen;
        } else {
            c.metrics.listen = c.server.listen;
        }
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.proxy_protocol"), "{err}");
    }
    // IPv6 prefixes are bits of an address.
    for bad in [0u8, 129] {
        let mut c = c.clone();
        c.limits.ipv6_prefix = bad;
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("limits.ipv6_prefix"), "{err}");
    }
}

// ---------------------------------------------------------------------------
// M4: every connection from a few addresses.

/// 50 open connections from one address (an undeclared proxy, as seen by
/// the node): `wsgate_client_addresses` says 1, and the node logs one WARN
/// naming the settings that fix it. Run on the real binary, whose log is
/// read as an operator would.
#[tokio::test]
async fn few_client_addresses_are_measured_and_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = BinNode::start(dir.path(), &[]);
    let url = node.ws_url();
    let gauge = |text: &str| metric_value(text, "wsgate_client_addresses");
    let metrics_url = format!("http://{}/metrics", node.metrics);
    let scrape = || async {
        reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let mut held = Vec::new();
    for _ in 0..49 {
        held.push(Client::connect(&url).await);
    }
    assert_eq!(gauge(&scrape().await), 1.0);
    let warned = |log: &[String]| {
        log.iter()
            .filter(|l| l.contains("\"WARN\"") && l.contains("client address"))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert!(warned(node.drain_log()).is_empty(), "not below 50");
    // The 50th, then more: one warning.
    for _ in 0..5 {
        held.push(Client::connect(&url).await);
    }
    let deadline = std::time::Instant::now() + WAIT;
    let lines = loop {
        let lines = warned(node.drain_log());
        if !lines.is_empty() || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 1, "one warning: {lines:?}");
    println!("{}", lines[0]);
    for name in ["server.trusted_proxies", "server.proxy_protocol"] {
        assert!(lines[0].contains(name), "{name} named: {}", lines[0]);
    }
    drop(held);
    let deadline = std::time::Instant::now() + WAIT;
    while gauge(&scrape().await) != 0.0 {
        assert!(std::time::Instant::now() < deadline, "gauge back to 0");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
