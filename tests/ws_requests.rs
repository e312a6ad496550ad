//! Sections 3 and 4 of the protocol: requests after `welcome`, group policy,
//! limits and the close codes that apply to one node.

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

async fn authed(node: &TestNode, user: &str) -> Client {
    let token = node.issue_token(user).await;
    Client::authed(&node.ws_url(), &token).await.0
}

fn error_code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "expected an error, got {v}");
    v["code"].as_str().unwrap()
}

#[tokio::test]
async fn subscribe_unsubscribe_with_id_echo() {
    let (_d, node) = node_with(|_| {}).await;
    let mut c = authed(&node, "1").await;
    let r = c
        .request(json!({"type": "subscribe", "group": "market.AAPL", "id": 5}))
        .await;
    assert_eq!(
        r,
        json!({"type": "subscribed", "group": "market.AAPL", "id": 5})
    );
    node.publish("market.AAPL", json!({"p": 1})).await;
    assert_eq!(
        c.recv_json().await,
        json!({"type": "message", "group": "market.AAPL", "data": {"p": 1}})
    );
    let r = c
        .request(json!({"type": "unsubscribe", "group": "market.AAPL", "id": "u1"}))
        .await;
    assert_eq!(
        r,
        json!({"type": "unsubscribed", "group": "market.AAPL", "id": "u1"})
    );
    node.publish("market.AAPL", json!({"p": 2})).await;
    c.expect_silence(Duration::from_millis(150)).await;
    // Unsubscribing from a group one is not in is not an error.
    let r = c
        .request(json!({"type": "unsubscribe", "group": "other"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
}

#[tokio::test]
async fn subscribe_since_without_history_is_not_recovered() {
    let (_d, node) = node_with(|_| {}).await;
    let mut c = authed(&node, "1").await;
    let r = c
        .request(
            json!({"type": "subscribe", "group": "g", "since": {"offset": 120, "epoch": "e1"}}),
        )
        .await;
    assert_eq!(
        r,
        json!({"type": "subscribed", "group": "g", "recovered": false})
    );
    for bad in [
        json!({"offset": "x", "epoch": "e"}),
        json!({"offset": 1}),
        json!(5),
    ] {
        let r = c
            .request(json!({"type": "subscribe", "group": "g2", "since": bad, "id": 1}))
            .await;
        assert_eq!(error_code(&r), "bad_request");
        assert_eq!(r["id"], 1);
    }
}

#[tokio::test]
async fn ping_pong() {
    let (_d, node) = node_with(|_| {}).await;
    let mut c = authed(&node, "1").await;
    assert_eq!(
        c.request(json!({"type": "ping"})).await,
        json!({"type": "pong"})
    );
    assert_eq!(
        c.request(json!({"type": "ping", "id": "abc"})).await,
        json!({"type": "pong", "id": "abc"})
    );
}

#[tokio::test]
async fn client_publish_only_where_allowed() {
    let (_d, node) = node_with(|c| c.groups.client_publish = vec!["chat.*".into()]).await;
    let mut a = authed(&node, "1").await;
    let mut b = authed(&node, "2").await;
    b.subscribe("chat.room").await;
    let r = a
        .request(json!({"type": "publish", "group": "chat.room", "data": {"t": "hi"}, "id": 3}))
        .await;
    assert_eq!(
        r,
        json!({"type": "published", "group": "chat.room", "id": 3})
    );
    assert_eq!(
        b.recv_json().await,
        json!({"type": "message", "group": "chat.room", "data": {"t": "hi"}})
    );
    let r = a
        .request(json!({"type": "publish", "group": "market.AAPL", "data": 1, "id": 4}))
        .await;
    assert_eq!(error_code(&r), "forbidden");
    assert_eq!(r["id"], 4);
    assert_eq!(node.metric("wsgate_messages_published_total").await, 1.0);
}

#[tokio::test]
async fn errors_for_bad_requests() {
    let (_d, node) = node_with(|_| {}).await;
    let mut c = authed(&node, "1").await;
    c.send_text("not json").await;
    assert_eq!(error_code(&c.recv_json().await), "bad_request");
    c.send_text("[1,2]").await;
    assert_eq!(error_code(&c.recv_json().await), "bad_request");
    let r = c.request(json!({"type": "dance", "id": 9})).await;
    assert_eq!(error_code(&r), "unknown_type");
    assert_eq!(r["id"], 9);
    let r = c.request(json!({"group": "g", "id": 10})).await;
    assert_eq!(error_code(&r), "bad_request");
    for group in [
        json!("bad group"),
        json!(""),
        json!("x".repeat(129)),
        json!(5),
        json!("a/b"),
    ] {
        let r = c
            .request(json!({"type": "subscribe", "group": group, "id": 11}))
            .await;
        assert_eq!(error_code(&r), "bad_request", "group {group}");
        assert_eq!(r["id"], 11);
    }
    let r = c.request(json!({"type": "publish", "group": "g"})).await;
    assert_eq!(error_code(&r), "bad_request");
    // The connection still serves after every refusal.
    assert_eq!(c.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn group_policy_patterns_and_private_user_groups() {
    let (_d, node) = node_with(|c| {
        c.groups.allow = vec!["market.*".into(), "team.{user_id}.*".into()];
    })
    .await;
    let mut c = authed(&node, "42").await;
    c.subscribe("market.AAPL").await;
    c.subscribe("team.42.news").await;
    for group in ["news.x", "team.43.news", "user.43"] {
        let r = c
            .request(json!({"type": "subscribe", "group": group}))
            .await;
        assert_eq!(error_code(&r), "forbidden", "{group}");
    }
    // Even with allow = ["*"], another user's group stays private.
    let (_d2, open) = node_with(|_| {}).await;
    let mut c = authed(&open, "42").await;
    let r = c
        .request(json!({"type": "subscribe", "group": "user.43"}))
        .await;
    assert_eq!(error_code(&r), "forbidden");
    c.subscribe("user.42").await;
}

#[tokio::test]
async fn auto_join_reaches_every_connection_of_the_user() {
    let (_d, node) = node_with(|c| {
        c.groups.auto_join = vec!["user.{user_id}".into(), "broadcast".into()];
    })
    .await;
    let token = node.issue_token("42").await;
    let (mut a, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["groups"], json!(["user.42", "broadcast"]));
    let (mut b, _) = Client::authed(&node.ws_url(), &token).await;
    let mut other = authed(&node, "43").await;
    node.publish("user.42", json!({"n": 1})).await;
    for c in [&mut a, &mut b] {
        assert_eq!(c.recv_json().await["data"], json!({"n": 1}));
    }
    other.expect_silence(Duration::from_millis(100)).await;
    node.publish("broadcast", json!("all")).await;
    for c in [&mut a, &mut b, &mut other] {
        assert_eq!(c.recv_json().await["data"], "all");
    }
}

#[tokio::test]
async fn too_many_groups() {
    let (_d, node) = node_with(|c| c.limits.max_groups_per_connection = 3).await;
    let mut c = authed(&node, "1").await; // user.1 counts as one
    c.subscribe("a").await;
    c.subscribe("b").await;
    let r = c
        .request(json!({"type": "subscribe", "group": "c", "id": 1}))
        .await;
    assert_eq!(error_code(&r), "too_many_groups");
    assert_eq!(
        node.metric("wsgate_request_errors_total{code=\"too_many_groups\"}")
            .await,
        1.0
    );
    // Subscribing again to a group already joined is fine.
    c.subscribe("a").await;
    let r = c
        .request(json!({"type": "unsubscribe", "group": "a"}))
        .await;
    assert_eq!(r["type"], "unsubscribed");
    c.subscribe("c").await;
}

#[tokio::test]
async fn binary_after_auth_closes_1003() {
    let (_d, node) = node_with(|_| {}).await;
    let mut c = authed(&node, "1").await;
    c.ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(code(c.expect_close().await), 1003);
}

#[tokio::test]
async fn oversize_frame_closes_1009_and_node_keeps_serving() {
    let (_d, node) = node_with(|c| c.limits.max_message_bytes = 8192).await;
    let mut c = authed(&node, "1").await;
    let mut ok = authed(&node, "2").await;
    ok.subscribe("g").await;
    let big = json!({"type": "publish", "group": "g", "data": "x".repeat(9000)});
    c.send_json(big).await;
    assert_eq!(code(c.expect_close().await), 1009);
    node.publish("g", json!(1)).await;
    assert_eq!(ok.recv_json().await["data"], 1);
    assert_eq!(
        node.metric("wsgate_connections_closed_total{code=\"1009\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn slow_consumer_closed_4009_others_unaffected() {
    let (_d, node) = node_with(|c| c.limits.outbound_queue = 16).await;
    let slow_token = node.issue_token("slow").await;
    // A raw TCP client that upgrades, authenticates, subscribes and then never reads.
    let (mut slow, _) = Client::authed(&node.ws_url(), &slow_token).await;
    slow.subscribe("ticks").await;
    let mut fast = authed(&node, "fast").await;
    fast.subscribe("ticks").await;
    // Enough to fill the queue and both kernels' socket buffers.
    let payload = "y".repeat(16 * 1024);
    let n = 2000;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < n {
            let m = fast.recv_json().await;
            assert_eq!(m["type"], "message");
            got += 1;
        }
        got
    });
    for batch in 0..n / 10 {
        let msgs: Vec<Value> = (0..10)
            .map(|i| json!({"group": "ticks", "data": {"i": batch * 10 + i, "pad": payload}}))
            .collect();
        let (status, _) = node
            .api_post("/api/v1/publish", json!({"messages": msgs}))
            .await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        reader.await.unwrap(),
        n,
        "the reading client got every message"
    );
    // The slow one is told why when it finally reads.
    let mut saw_close = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(
            Duration::from_secs(5),
            futures_util::StreamExt::next(&mut slow.ws),
        )
        .await
        {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                saw_close = Some(u16::from(f.code));
                break;
            }
            Ok(Some(Ok(_))) => continue,
            _ => break,
        }
    }
    assert_eq!(saw_close, Some(4009));
    assert!(
        node.metric("wsgate_messages_dropped_total{reason=\"slow_consumer\"}")
            .await
            >= 1.0
    );
    assert_eq!(
        node.metric("wsgate_connections_closed_total{code=\"4009\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn server_pings_and_closes_on_pong_timeout() {
    let (_d, node) = node_with(|c| {
        c.server.ping_interval = Duration::from_millis(150);
        c.server.pong_timeout = Duration::from_millis(150);
    })
    .await;
    // A reading client sees pings and answers them (the library does), so it stays.
    let mut live = authed(&node, "1").await;
    let got_ping = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match futures_util::StreamExt::next(&mut live.ws).await {
                Some(Ok(Message::Ping(_))) => return true,
                Some(Ok(_)) => continue,
                _ => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(got_ping);
    // A client that reads nothing for a while never answers the pings: it
    // finds a 1011 close when it reads again. Meanwhile the live one keeps
    // reading (so the library answers its pings) and is still served.
    let mut dead = authed(&node, "2").await;
    let keep_live = async {
        for _ in 0..9 {
            assert_eq!(live.request(json!({"type": "ping"})).await["type"], "pong");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::join!(keep_live, tokio::time::sleep(Duration::from_millis(900)));
    assert_eq!(code(dead.expect_close().await), 1011);
    assert_eq!(live.request(json!({"type": "ping"})).await["type"], "pong");
}

/// `server.write_delay` (opt-in coalescing) holds frames back for a moment
/// to write them together: every message still arrives, in order, requests
/// are still answered, and a disconnect still wins over waiting frames.
#[tokio::test]
async fn write_delay_coalesces_without_loss_or_reorder() {
    let (_d, node) = node_with(|c| c.server.write_delay = Duration::from_millis(20)).await;
    let mut c = authed(&node, "u1").await;
    c.subscribe("ticks").await;
    let n = 300;
    for batch in 0..n / 30 {
        let msgs: Vec<Value> = (0..30)
            .map(|i| json!({"group": "ticks", "data": {"i": batch * 30 + i}}))
            .collect();
        let (status, _) = node
            .api_post("/api/v1/publish", json!({"messages": msgs}))
            .await;
        assert_eq!(status, 200);
    }
    for i in 0..n {
        let m = c.recv_json().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["data"]["i"], i, "in publish order");
    }
    let pong = c.request(json!({"type": "ping", "id": 7})).await;
    assert_eq!(pong["type"], "pong");
    assert_eq!(pong["id"], 7);
    node.publish("ticks", json!({"last": true})).await;
    let (status, _) = node
        .api_post("/api/v1/disconnect", json!({"user_id": "u1"}))
        .await;
    assert_eq!(status, 200);
    // The last message may or may not be written before the close; the
    // close comes either way.
    let closed = loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws)).await {
            Ok(Some(Ok(Message::Close(f)))) => break f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(Message::Text(t)))) => assert!(t.contains("last"), "{t}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no close: {other:?}"),
        }
    };
    assert!(closed.is_some(), "a close frame with a code");
}

#[test]
fn write_delay_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.server.write_delay = Duration::from_millis(1000);
    c.validate().expect("1s is the most");
    c.server.write_delay = Duration::from_millis(1001);
    let err = c.validate().unwrap_err().to_string();
    assert!(err.contains("server.write_delay"), "{err}");
}
