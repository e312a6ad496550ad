mod common;
use common::*;
use serde_json::json;

#[tokio::test]
async fn quick_start_flow() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(test_config(dir.path())).await;
    let token = node.issue_token("42").await;
    let (mut c, welcome) = Client::authed(&node.ws_url(), &token).await;
    assert_eq!(welcome["user_id"], "42");
    assert_eq!(welcome["groups"], json!(["user.42"]));
    c.subscribe("market.AAPL").await;
    node.publish("market.AAPL", json!({"p": 1})).await;
    let m = c.recv_json().await;
    assert_eq!(
        m,
        json!({"type":"message","group":"market.AAPL","data":{"p":1}})
    );
    node.shutdown().await;
}
