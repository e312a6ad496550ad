//! Section 5 of the protocol: the backend API on one node.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn api_key_required() {
    let (_d, node) = node().await;
    let http = reqwest::Client::new();
    for auth in [
        None,
        Some("Bearer wrong-key-0123456789"),
        Some("Basic abc"),
        Some("Bearer "),
    ] {
        let mut req = http
            .post(node.api_url("/api/v1/publish"))
            .body(r#"{"group":"g","data":1}"#);
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        assert!(body["message"].is_string());
    }
    for path in ["/api/v1/cluster", "/api/v1/groups/g/presence"] {
        let resp = http.get(node.api_url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{path}");
    }
    // A wrong method gets the same JSON error shape.
    let resp = http
        .get(node.api_url("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"],
        "method_not_allowed"
    );
}

/// Every answer, refusals included, carries the caller's `X-Request-Id` when
/// it is a short plain token, and a fresh one otherwise.
#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let (_d, node) = node().await;
    let http = reqwest::Client::new();
    let id_of = |resp: &reqwest::Response| {
        resp.headers()
            .get("x-request-id")
            .map(|v| v.to_str().unwrap().to_string())
    };
    let fresh = |id: &str| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let publish = || {
        http.post(node.api_url("/api/v1/publish"))
            .body(r#"{"group":"g","data":1}"#)
    };
    // Accepted, refused for the key, and an unknown path: the given id back.
    for (req, status) in [
        (publish().bearer_auth(API_KEY), 200),
        (publish(), 401),
        (http.get(node.api_url("/api/v1/nothing")), 404),
        (
            http.get(node.api_url("/api/v1/publish"))
                .bearer_auth(API_KEY),
            405,
        ),
    ] {
        let resp = req.header("X-Request-Id", "job-42_a").send().await.unwrap();
        assert_eq!(resp.status(), status);
        assert_eq!(id_of(&resp).as_deref(), Some("job-42_a"), "{status}");
    }
    // Without one, or with one that is not a plain token: a fresh id each time.
    let mut seen = Vec::new();
    for given in [
        None,
        Some("two words"),
        Some("x".repeat(65).as_str()),
        Some(""),
    ]
    .map(|g| g.map(str::to_string))
    {
        let mut req = publish().bearer_auth(API_KEY);
        if let Some(given) = &given {
            req = req.header("X-Request-Id", given);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let id = id_of(&resp).expect("an id");
        assert!(fresh(&id), "{given:?} answered {id:?}");
        assert!(!seen.contains(&id));
        seen.push(id);
    }
}

#[tokio::test]
async fn publish_single_and_batch_in_order() {
    let (_d, node) = node().await;
    let token = node.issue_token("1").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("a").await;
    c.subscribe("b").await;
    // curl -d sends a form content type: the API must not care.
    let resp = reqwest::Client::new()
        .post(node.api_url("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(r#"{"group":"a","data":{"p":1}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"ok": true}));
    assert_eq!(c.recv_json().await["data"], json!({"p": 1}));
    let messages: Vec<Value> = (0..50)
        .map(|i| json!({"group": if i % 2 == 0 { "a" } else { "b" }, "data": i}))
        .collect();
    let (status, body) = node
        .api_post("/api/v1/publish", json!({"messages": messages}))
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    for i in 0..50 {
        let m = c.recv_json().await;
        assert_eq!(m["data"], i);
        assert_eq!(m["group"], if i % 2 == 0 { "a" } else { "b" });
    }
    assert_eq!(node.metric("wsgate_messages_published_total").await, 51.0);
    assert_eq!(node.metric("wsgate_messages_delivered_total").await, 51.0);
}

#[tokio::test]
async fn bad_requests_get_400_with_json_body() {
    let (_d, node) = node().await;
    let http = reqwest::Client::new();
    for body in [
        "not json",
        "{}",
        r#"{"group":"g"}"#,
        r#"{"data":1}"#,
        r#"{"group":"bad group","data":1}"#,
        r#"{"group":"","data":1}"#,
        r#"{"messages":[]}"#,
        r#"{"messages":[{"group":"g"}]}"#,
        r#"{"messages":[{"group":"ok","data":1},{"group":"no way","data":2}]}"#,
        r#"{"group":"g","data":1,"messages":[{"group":"g","data":1}]}"#,
        r#"{"group":5,"data":1}"#,
    ] {
        let resp = http
            .post(node.api_url("/api/v1/publish"))
            .bearer_auth(API_KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"], "bad_request", "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    for (path, body) in [
        ("/api/v1/disconnect", "{}"),
        ("/api/v1/disconnect", r#"{"user_id":""}"#),
        ("/api/v1/revoke", r#"{"token":""}"#),
        ("/api/v1/revoke", "[]"),
    ] {
        let resp = http
            .post(node.api_url(path))
            .bearer_auth(API_KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path} {body}");
    }
    let (status, body) = node.api_get("/api/v1/groups/bad%20group/presence").await;
    assert_eq!((status, body["error"].clone()), (400, json!("bad_request")));
    // Nothing published through any of that.
    assert_eq!(node.metric("wsgate_messages_published_total").await, 0.0);
}

#[tokio::test]
async fn body_over_1_mib_gets_413() {
    let (_d, node) = node().await;
    let big = json!({"group": "g", "data": "x".repeat(1024 * 1024 + 10)}).to_string();
    let resp = reqwest::Client::new()
        .post(node.api_url("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"], "payload_too_large");
    assert_eq!(
        node.metric("wsgate_api_errors_total{error=\"payload_too_large\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user() {
    let (_d, node) = node().await;
    let t1 = node.issue_token("42").await;
    let t2 = node.issue_token("42").await;
    let (mut a, _) = Client::authed(&node.ws_url(), &t1).await;
    let (mut b, _) = Client::authed(&node.ws_url(), &t2).await;
    let (mut other, _) = Client::authed(&node.ws_url(), &node.issue_token("43").await).await;
    let (status, _) = node
        .api_post("/api/v1/disconnect", json!({"user_id": "42"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(a.expect_close().await), 4003);
    assert_eq!(code(b.expect_close().await), 4003);
    assert_eq!(other.request(json!({"type": "ping"})).await["type"], "pong");
    // The user may come back: disconnect is not revoke.
    let (_c, w) = Client::authed(&node.ws_url(), &t1).await;
    assert_eq!(w["user_id"], "42");
    // A numeric id works too.
    let (status, _) = node
        .api_post("/api/v1/disconnect", json!({"user_id": 43}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(code(other.expect_close().await), 4003);
}

#[tokio::test]
async fn revoke_closes_sockets_of_that_token_and_refuses_it() {
    let (_d, node) = node().await;
    let revoked = node.issue_token("42").await;
    let kept = node.issue_token("42").await;
    let (mut a, _) = Client::authed(&node.ws_url(), &revoked).await;
    let (mut b, _) = Client::authed(&node.ws_url(), &kept).await;
    let (status, body) = node
        .api_post("/api/v1/revoke", json!({"token": revoked}))
        .await;
    assert_eq!((status, body), (200, json!({"ok": true})));
    assert_eq!(code(a.expect_close().await), 4003);
    assert_eq!(b.request(json!({"type": "ping"})).await["type"], "pong");
    let mut again = Client::connect(&node.ws_url()).await;
    again
        .send_json(json!({"type": "auth", "token": revoked}))
        .await;
    assert_eq!(code(again.expect_close().await), 4003);
}

#[tokio::test]
async fn presence_and_cluster_listing() {
    let (_d, node) = node().await;
    let (mut a, wa) = Client::authed(&node.ws_url(), &node.issue_token("1").await).await;
    let (mut b, wb) = Client::authed(&node.ws_url(), &node.issue_token("2").await).await;
    a.subscribe("room").await;
    b.subscribe("room").await;
    let (status, p) = node.api_get("/api/v1/groups/room/presence").await;
    assert_eq!(status, 200);
    assert_eq!(p["group"], "room");
    assert_eq!(p["count"], 2);
    let mut sessions: Vec<(String, String, String)> = p["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().to_string(),
                m["session"].as_str().unwrap().to_string(),
                m["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sessions.sort();
    let expected = vec![
        (
            "1".to_string(),
            wa["session"].as_str().unwrap().to_string(),
            "test-node".to_string(),
        ),
        (
            "2".to_string(),
            wb["session"].as_str().unwrap().to_string(),
            "test-node".to_string(),
        ),
    ];
    assert_eq!(sessions, expected);
    b.request(json!({"type": "unsubscribe", "group": "room"}))
        .await;
    let (_, p) = node.api_get("/api/v1/groups/room/presence").await;
    assert_eq!(p["count"], 1);
    drop(a);
    let (status, cluster) = node.api_get("/api/v1/cluster").await;
    assert_eq!(status, 200);
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["node"], "test-node");
    assert!(nodes[0]["last_seen_ms"].as_u64().unwrap() > 1_700_000_000_000);
    // `a` was dropped without a close: give the node a moment to notice.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let (_, cluster) = node.api_get("/api/v1/cluster").await;
        if cluster["nodes"][0]["connections"] == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "connections: {cluster}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
