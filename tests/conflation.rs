//! Conflation for slow consumers (`groups.conflate`): a reader that falls
//! behind on a conflated group gets the latest message of every key instead
//! of a 4009 close.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate::config::ConflateRule;

const SYMBOLS: usize = 20;
const ROUNDS: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_gets_the_latest_price_of_every_symbol() {
    let (_dir, node) = node_with(|config| {
        config.limits.outbound_queue = 64;
        config.limits.conflate_after = 16;
        config.groups.conflate = vec![ConflateRule {
            groups: "market.*".into(),
            key: "symbol".into(),
        }];
    })
    .await;
    let token = node.issue_token("1").await;
    let (mut slow, _) = Client::authed(&node.ws_url(), &token).await;
    slow.subscribe("market.all").await;
    // A non-conflated group on the same node still closes a slow reader.
    let (mut plain, _) = Client::authed(&node.ws_url(), &token).await;
    plain.subscribe("news.all").await;

    // Big enough messages that the socket buffers fill and the queue backs up.
    let pad = "x".repeat(8 * 1024);
    for round in 0..ROUNDS {
        let messages: Vec<Value> = (0..SYMBOLS)
            .map(|s| json!({"group": "market.all", "data": {"symbol": format!("S{s}"), "seq": round, "pad": pad}}))
            .collect();
        let (status, _) = node
            .api_post("/api/v1/publish", json!({"messages": messages}))
            .await;
        assert_eq!(status, 200);
        let news: Vec<Value> = (0..SYMBOLS)
            .map(|s| json!({"group": "news.all", "data": {"n": s, "seq": round, "pad": pad}}))
            .collect();
        let (status, _) = node
            .api_post("/api/v1/publish", json!({"messages": news}))
            .await;
        assert_eq!(status, 200);
    }
    let conflated = node.metric("wsgate_messages_conflated_total").await;
    assert!(conflated > 0.0, "the slow reader's queue conflated");

    // Now read everything: never closed, per symbol never backwards, and the
    // last price of every symbol is the final one.
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut received = 0usize;
    loop {
        let msg = tokio::time::timeout(Duration::from_millis(500), slow.ws.next()).await;
        let Ok(Some(Ok(msg))) = msg else { break };
        match msg {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t).unwrap();
                let sym = v["data"]["symbol"].as_str().unwrap().to_string();
                let seq = v["data"]["seq"].as_u64().unwrap();
                if let Some(prev) = last.get(&sym) {
                    assert!(seq > *prev, "{sym}: {seq} after {prev}");
                }
                last.insert(sym, seq);
                received += 1;
            }
            Message::Close(f) => panic!("the slow reader was closed: {f:?}"),
            _ => {}
        }
    }
    assert_eq!(last.len(), SYMBOLS);
    assert!(
        last.values().all(|seq| *seq == ROUNDS as u64 - 1),
        "{last:?}"
    );
    println!(
        "published {} ticks; the slow reader received {received}, {conflated} were conflated, \
         and it holds the final price of all {SYMBOLS} symbols",
        SYMBOLS * ROUNDS
    );
    // The plain reader's socket holds what was written before its queue
    // overflowed; after that comes the 4009 close.
    let mut close_code = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, plain.ws.next()).await {
        if let Message::Close(f) = msg {
            close_code = f.map(|f| u16::from(f.code));
            break;
        }
    }
    assert_eq!(close_code, Some(4009));
}
