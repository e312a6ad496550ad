//! OpenTelemetry spans, checked with the SDK's in-memory exporter: handshake,
//! authenticate (with the layer that answered), publish (parented on the
//! caller's `traceparent`) and deliver (same trace), and no token anywhere.

mod common;

use common::*;
use opentelemetry::trace::TraceId;
use opentelemetry_sdk::trace::{InMemorySpanExporterBuilder, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().to_string())
}

#[tokio::test]
async fn spans_for_handshake_auth_publish_and_delivery() {
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = wsgate::telemetry::provider_with(exporter.clone(), false);
    tracing_subscriber::registry()
        .with(wsgate::telemetry::otel_layer(&provider))
        .init();

    let dir = tempfile::tempdir().unwrap();
    let node = spawn(test_config(dir.path())).await;
    let token = node.issue_token("42").await;
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("market.AAPL").await;
    let mut bad = Client::connect(&node.ws_url()).await;
    bad.send_json(json!({"token": "wsg_secret-bad-token"}))
        .await;
    assert_eq!(code(bad.expect_close().await), 4003);

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = reqwest::Client::new()
        .post(node.api_url("/api/v1/publish"))
        .bearer_auth(API_KEY)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&json!({"group": "market.AAPL", "data": {"p": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(c.recv_json().await["data"]["p"], 1);
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let named = |name: &str| spans.iter().filter(|s| s.name == name).collect::<Vec<_>>();

    let handshakes = named("handshake");
    assert!(handshakes.len() >= 2, "a handshake span per upgrade");
    assert!(
        handshakes
            .iter()
            .all(|s| attr(s, "outcome").as_deref() == Some("upgraded"))
    );

    let auths = named("authenticate");
    let results: Vec<_> = auths.iter().map(|s| attr(s, "auth.result")).collect();
    assert!(results.contains(&Some("ok".into())), "{results:?}");
    assert!(
        results.contains(&Some("invalid_token".into())),
        "{results:?}"
    );
    assert!(
        auths
            .iter()
            .all(|s| attr(s, "auth.source").as_deref() == Some("database")),
        "the layer that answered is an attribute"
    );

    let expected = TraceId::from_hex(trace_id).unwrap();
    let publishes = named("publish");
    assert_eq!(publishes.len(), 1);
    assert_eq!(
        publishes[0].span_context.trace_id(),
        expected,
        "parented on traceparent"
    );
    assert_eq!(attr(publishes[0], "messages").as_deref(), Some("1"));
    let delivers = named("deliver");
    assert!(
        delivers
            .iter()
            .any(|s| s.span_context.trace_id() == expected),
        "the delivery span continues the publisher's trace"
    );

    // No token in any span name, attribute or event.
    let dump = format!("{spans:?}");
    for secret in [token.as_str(), "wsg_secret-bad-token", API_KEY] {
        assert!(!dump.contains(secret), "a secret is in the spans");
    }
}

/// The real binary exports over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set: a receiver in the test gets protobuf trace batches (flushed at
/// shutdown at the latest) naming our spans, and never a token.
#[tokio::test]
async fn binary_exports_otlp_to_a_real_receiver() {
    use axum::body::Bytes;
    use std::sync::{Arc, Mutex};
    let received: Arc<Mutex<Vec<(String, Bytes)>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                sink.lock().unwrap().push((ct, body));
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let token = run_bin(dir.path(), &["token", "issue", "--user", "1"], &[])
        .trim()
        .to_string();
    let mut node = BinNode::start(
        dir.path(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("WSGATE__DRAIN__GRACE", "0s"),
            ("WSGATE__DRAIN__SPREAD", "50ms"),
        ],
    );
    let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
    c.subscribe("g").await;
    let resp = reqwest::Client::new()
        .post(format!("http://{}/api/v1/publish", node.api))
        .bearer_auth(API_KEY)
        .json(&json!({"group": "g", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    c.recv_json().await;
    node.signal("TERM");
    let status =
        tokio::task::spawn_blocking(move || node.wait_exit(std::time::Duration::from_secs(20)))
            .await
            .unwrap();
    assert!(status.success());
    let batches = received.lock().unwrap().clone();
    assert!(!batches.is_empty(), "the receiver got trace batches");
    let mut all = Vec::new();
    for (ct, body) in &batches {
        assert_eq!(ct, "application/x-protobuf");
        all.extend_from_slice(body);
    }
    let text = String::from_utf8_lossy(&all);
    for name in ["handshake", "authenticate", "publish", "deliver", "wsgate"] {
        assert!(text.contains(name), "span {name} exported");
    }
    assert!(!text.contains(&token), "no token in the export");
}
