//! The security review's findings, one test (or more) per row, each against
//! a real node over real sockets. Every test here failed before its fix.

mod common;

use common::{Client, code, issue_token, spawn, test_config};

/// H1: a user id is literal in `{user_id}`; an id that cannot be a group
/// segment is refused at `welcome` (4003), never let through with its
/// groups silently missing or its pattern characters live.
#[tokio::test]
async fn h1_user_ids_that_are_not_group_segments_are_refused_at_welcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.groups.allow = vec!["team.{user_id}.*".into()];
    config.groups.client_publish = vec!["chat.{user_id}.*".into()];
    let node = spawn(config.clone()).await;
    for id in ["*", "42.x", "a b", "4?"] {
        let token = issue_token(&config, id, None).await;
        let mut c = Client::connect(&node.ws_url()).await;
        c.send_json(serde_json::json!({"type": "auth", "token": token}))
            .await;
        assert_eq!(code(c.expect_close().await), 4003, "user id {id:?}");
    }
    let metrics = reqwest::get(node.metrics_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_value(
            &metrics,
            "wsgate_auth_failures_total{reason=\"invalid_user_id\"}"
        ),
        4.0
    );
    // A plain id still gets its own groups, and only those.
    let token = issue_token(&config, "c", None).await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["groups"], serde_json::json!(["user.c"]));
    c.subscribe("team.c.x").await;
    let reply = c
        .request(serde_json::json!({"type": "subscribe", "group": "team.d.x"}))
        .await;
    assert_eq!(reply["code"], "forbidden", "got {reply}");
}
