//! Section 2 of the protocol: the first frame. One test per row of the table,
//! with a real client against a real node.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

/// A node with a short first-frame deadline.
async fn node() -> (tempfile::TempDir, TestNode) {
    node_with(|c| c.auth.timeout = Duration::from_millis(400)).await
}

#[tokio::test]
async fn valid_token_gets_welcome() {
    let (_dir, node) = node().await;
    let token = node.issue_token("42").await;
    let (_c, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["user_id"], json!("42"), "user id is a string");
    assert_eq!(welcome["node"], "test-node");
    assert_eq!(welcome["groups"], json!(["user.42"]));
    assert!(welcome["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(node.metric("wsgate_auth_success_total").await, 1.0);
    assert_eq!(
        node.metric("wsgate_connections{state=\"authenticated\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn token_without_type_is_accepted() {
    let (_dir, node) = node().await;
    let token = node.issue_token("7").await;
    let mut c = Client::connect(&node.ws_url()).await;
    c.send_json(json!({"token": token})).await;
    let welcome = c.recv_json().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user_id"], "7");
}

#[tokio::test]
async fn silent_socket_closed_with_4008() {
    let (_dir, node) = node().await;
    let mut c = Client::connect(&node.ws_url()).await;
    let closed = c.close_within(Duration::from_secs(3)).await;
    assert_eq!(closed, Closed::Code(4008, "auth timeout".into()));
    assert_eq!(
        node.metric("wsgate_auth_failures_total{reason=\"timeout\"}")
            .await,
        1.0
    );
    assert_eq!(
        node.metric("wsgate_connections_closed_total{code=\"4008\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn malformed_first_frames_closed_with_4001() {
    let (_dir, node) = node().await;
    let big = json!({"type": "auth", "token": "x".repeat(5000)}).to_string();
    let cases: Vec<Message> = vec![
        Message::binary(b"{\"token\":\"abc\"}".to_vec()),
        Message::text("not json"),
        Message::text("[\"token\"]"),
        Message::text("\"token\""),
        Message::text("{}"),
        Message::text("{\"type\":\"auth\",\"token\":42}"),
        Message::text("{\"type\":\"auth\",\"token\":null}"),
        Message::text("{\"type\":\"subscribe\",\"group\":\"g\"}"),
        Message::text(big),
    ];
    let n = cases.len();
    for msg in cases {
        let shown = format!("{msg:?}").chars().take(60).collect::<String>();
        let mut c = Client::connect(&node.ws_url()).await;
        futures_util::SinkExt::send(&mut c.ws, msg).await.unwrap();
        assert_eq!(
            c.expect_close().await,
            Closed::Code(4001, "auth required".into()),
            "{shown}"
        );
    }
    assert_eq!(
        node.metric("wsgate_auth_failures_total{reason=\"malformed\"}")
            .await,
        n as f64
    );
}

#[tokio::test]
async fn bad_tokens_closed_with_4003_and_one_text() {
    let (_dir, node) = node().await;
    let expired = issue_token(&node.config, "1", Some(Duration::from_millis(1))).await;
    let revoked = node.issue_token("2").await;
    let (status, _) = node
        .api_post("/api/v1/revoke", json!({"token": revoked}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(10)).await;
    for token in ["wsg_unknown", expired.as_str(), revoked.as_str()] {
        let mut c = Client::connect(&node.ws_url()).await;
        c.send_json(json!({"type": "auth", "token": token})).await;
        assert_eq!(
            c.expect_close().await,
            Closed::Code(4003, "authentication failed".into())
        );
    }
    assert_eq!(
        node.metric("wsgate_auth_failures_total{reason=\"invalid_token\"}")
            .await,
        3.0
    );
}

#[tokio::test]
async fn backend_unavailable_closes_1013() {
    let pg = PgDb::create().await;
    let (_dir, node) = node_with(|config| {
        config.database.url = Some(pg.url.clone());
        config.database.connect_timeout = Duration::from_millis(500);
    })
    .await;
    let token = node.issue_token("5").await;
    let name = pg.name.clone();
    pg.drop_db().await;
    let mut c = Client::connect(&node.ws_url()).await;
    c.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(
        c.expect_close().await,
        Closed::Code(1013, "try again later".into()),
        "database {name} dropped"
    );
    assert_eq!(
        node.metric("wsgate_auth_failures_total{reason=\"backend_unavailable\"}")
            .await,
        1.0
    );
}

/// Nothing reaches a socket before `welcome`: a pending socket is in no
/// group, not even its own user group, and sees no broadcast.
#[tokio::test]
async fn nothing_before_welcome() {
    let (_dir, node) = node().await;
    let token = node.issue_token("42").await;
    let mut pending = Client::connect(&node.ws_url()).await;
    // Let the upgrade complete, then broadcast to every group it could be in.
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.publish("user.42", json!("private")).await;
    node.publish("market.AAPL", json!("public")).await;
    let (_, presence) = node.api_get("/api/v1/groups/user.42/presence").await;
    assert_eq!(presence["count"], 0);
    pending.expect_silence(Duration::from_millis(150)).await;
    // Authenticating now gets welcome first and none of the earlier messages.
    pending
        .send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(pending.recv_json().await["type"], "welcome");
    pending.expect_silence(Duration::from_millis(150)).await;
    // A socket that never authenticates never gets a broadcast either.
    let mut never = Client::connect(&node.ws_url()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    node.publish("user.42", json!("again")).await;
    assert_eq!(pending.recv_json().await["data"], "again");
    assert_eq!(
        never.expect_close().await,
        Closed::Code(4008, "auth timeout".into())
    );
}

/// The token is never read from the URL.
#[tokio::test]
async fn query_string_token_is_ignored() {
    let (_dir, node) = node().await;
    let token = node.issue_token("42").await;
    let mut c = Client::connect(&format!("{}?token={token}&user_id=42", node.ws_url())).await;
    assert_eq!(
        c.expect_close().await,
        Closed::Code(4008, "auth timeout".into())
    );
}

/// Ping/pong control frames before auth are fine; the first data frame counts.
#[tokio::test]
async fn control_frames_before_auth_are_ignored() {
    let (_dir, node) = node().await;
    let token = node.issue_token("9").await;
    let mut c = Client::connect(&node.ws_url()).await;
    futures_util::SinkExt::send(&mut c.ws, Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    c.send_json(json!({"type": "auth", "token": token})).await;
    assert_eq!(c.recv_json().await["type"], "welcome");
}
