//! Every class of malformed input, before and after authentication, against
//! one real node (issue "Hardening", section "Bad input").
//!
//! The table below is run row by row on one node. Each row opens a raw
//! connection (plain TCP, frames encoded by hand, so the test can send what
//! a WebSocket library refuses to: invalid UTF-8, unmasked frames, reserved
//! bits, oversized control frames, bad close codes, garbage before the
//! upgrade), sends its input and checks the answer:
//! - where the protocol (docs/protocol.md sections 2-4) gives one, that
//!   answer (`Close`, `Error`, ...);
//! - where it is silent (WebSocket-level protocol errors), only that the
//!   server ends the connection promptly (`Ends`); the code it used is
//!   printed in the summary at the end (`cargo test --test malformed --
//!   --nocapture`).
//!
//! After every row a well-behaved client authenticates, subscribes and
//! receives a publish, so one bad connection never hurts the others. Rows
//! that fail are collected and reported together at the end.

// The shared helpers live beside the test files, not in this directory.
#[path = "../common/mod.rs"]
mod common;
mod table;

use table::table;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

/// `limits.max_message_bytes` of the node under test.
const MAX_MESSAGE: usize = 16 * 1024;

// Frames, encoded by hand (RFC 6455 section 5.2), come from
// tests/common/raw_ws.rs, shared with tests/ws_conformance/.
// A raw connection and its reads (`Raw`, `In`) too.
use common::raw_ws::{
    BINARY, CLOSE, CONTINUATION, In, MASK, PING, PONG, Raw, TEXT, auth_text, close_frame, describe,
    encode, frame, text, upgrade_request,
};

// ---------------------------------------------------------------------------
// What a row is (the rows are in table.rs).

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Plain TCP: the row sends its own HTTP.
    Http,
    /// Upgraded, first frame not yet sent.
    Pending,
    /// Upgraded and authenticated (`welcome` received).
    Authed,
}

#[derive(Clone, Debug)]
enum Expect {
    /// A close frame with one of these codes (the documented answer).
    Close(&'static [u16]),
    /// The protocol is silent: the server ends the connection promptly,
    /// with a close frame or by closing the socket. What it did is noted.
    Ends,
    /// The next text frame, as JSON.
    Json(Value),
    /// The next text frame, byte for byte.
    Text(String),
    /// An `error` frame with this code and this `id` (`Null`: none).
    Error(&'static str, Value),
    Welcome,
    /// A pong control frame with this payload.
    Pong(Vec<u8>),
    /// An HTTP response whose status line starts with this.
    Status(&'static str),
    /// No upgrade: a 4xx response or a closed socket.
    Refused,
}

#[derive(Clone, Debug)]
enum Step {
    Send(Vec<u8>),
    Expect(Expect),
    /// A well-behaved client is served while this connection is open.
    Served,
}

struct Row {
    name: String,
    phase: Phase,
    steps: Vec<Step>,
}

fn row(name: impl Into<String>, phase: Phase, steps: Vec<Step>) -> Row {
    Row {
        name: name.into(),
        phase,
        steps,
    }
}

fn send(bytes: Vec<u8>) -> Step {
    Step::Send(bytes)
}

fn expect(e: Expect) -> Step {
    Step::Expect(e)
}

/// A request after `welcome` and the `error` it gets.
fn refused(request: impl Into<String>, code: &'static str, id: Value) -> [Step; 2] {
    [send(text(request.into())), expect(Expect::Error(code, id))]
}

/// The connection still answers a `ping` request.
fn alive() -> [Step; 2] {
    [
        send(text(r#"{"type":"ping","id":"alive"}"#)),
        expect(Expect::Json(json!({"type": "pong", "id": "alive"}))),
    ]
}

fn deep(n: usize) -> String {
    "[".repeat(n) + &"]".repeat(n)
}

// ---------------------------------------------------------------------------
// Running it.

/// Checks one expectation; returns a note of what the server did, or why
/// the row failed.
async fn check(raw: &mut Raw, e: &Expect) -> Result<String, String> {
    let got = match e {
        Expect::Status(prefix) => {
            return match raw.http_head().await {
                Ok(head) if head.starts_with(prefix) => Ok(String::new()),
                Ok(head) => Err(format!("expected {prefix}, got {head:?}")),
                Err(end) => Err(format!("expected {prefix}, got {}", describe(&end))),
            };
        }
        Expect::Refused => {
            return match raw.http_head().await {
                Ok(head) if head.starts_with("HTTP/1.1 4") => {
                    Ok(head.lines().next().unwrap_or("").into())
                }
                Ok(head) => Err(format!("expected a refusal, got {head:?}")),
                Err(In::Ended(how)) => Ok(format!("socket closed ({how})")),
                Err(other) => Err(format!("expected a refusal, got {}", describe(&other))),
            };
        }
        Expect::Pong(_) => raw.next().await,
        _ => raw.next_data().await,
    };
    let seen = describe(&got);
    match (e, got) {
        (Expect::Close(codes), In::Frame(f)) if f.opcode() == CLOSE && f.payload.len() >= 2 => {
            let p = f.payload;
            let code = u16::from_be_bytes([p[0], p[1]]);
            // Answer the close so the server need not linger.
            raw.write(&close_frame(code.clamp(1000, 4999), b"")).await;
            if codes.contains(&code) {
                Ok(seen)
            } else {
                Err(format!("expected close {codes:?}, got {seen}"))
            }
        }
        (Expect::Ends, In::Frame(f)) if f.opcode() == CLOSE => Ok(seen),
        (Expect::Ends, In::Ended(_)) => Ok(seen),
        (Expect::Json(want), In::Frame(f)) if f.opcode() == TEXT => {
            match serde_json::from_slice::<Value>(&f.payload) {
                Ok(v) if v == *want => Ok(String::new()),
                _ => Err(format!("expected {want}, got {seen}")),
            }
        }
        (Expect::Text(want), In::Frame(f))
            if f.opcode() == TEXT && f.payload == want.as_bytes() =>
        {
            Ok(String::new())
        }
        (Expect::Error(code, id), In::Frame(f)) if f.opcode() == TEXT => {
            let v: Value = serde_json::from_slice(&f.payload).unwrap_or_default();
            let mut want = json!({"type": "error", "code": code});
            if !id.is_null() {
                want["id"] = id.clone();
            }
            let same = v.get("message").is_some_and(Value::is_string)
                && v.as_object().map(|o| o.len()) == Some(want.as_object().unwrap().len() + 1)
                && want
                    .as_object()
                    .unwrap()
                    .iter()
                    .all(|(k, w)| v.get(k) == Some(w));
            if same {
                Ok(String::new())
            } else {
                Err(format!("expected error {code} with id {id}, got {seen}"))
            }
        }
        (Expect::Welcome, In::Frame(f)) if f.opcode() == TEXT => {
            let v: Value = serde_json::from_slice(&f.payload).unwrap_or_default();
            if v["type"] == "welcome" && v["user_id"] == "bad" {
                Ok(String::new())
            } else {
                Err(format!("expected welcome, got {seen}"))
            }
        }
        (Expect::Pong(want), In::Frame(f)) if f.opcode() == PONG && f.payload == *want => {
            Ok(String::new())
        }
        (e, _) => Err(format!("expected {e:?}, got {seen}")),
    }
}

/// A well-behaved client: authenticates, subscribes, receives a publish.
async fn served(node: &TestNode, token: &str, n: usize) {
    let (mut c, _) = Client::authed(&node.ws_url(), token).await;
    let group = format!("check.{n}");
    c.subscribe(&group).await;
    node.publish(&group, json!({"n": n})).await;
    let m = c.recv_json().await;
    assert_eq!(m["data"]["n"], n, "well-behaved client after row {n}: {m}");
}

async fn run_row(
    node: &TestNode,
    bad_token: &str,
    good_token: &str,
    row: &Row,
) -> Result<String, String> {
    let addr = node.addrs.ws;
    let mut raw = Raw::tcp(addr).await;
    if row.phase != Phase::Http {
        raw.write(upgrade_request(addr).as_bytes()).await;
        check(&mut raw, &Expect::Status("HTTP/1.1 101")).await?;
    }
    if row.phase == Phase::Authed {
        raw.write(&text(auth_text(bad_token))).await;
        check(&mut raw, &Expect::Welcome).await?;
    }
    let mut notes = Vec::new();
    for step in &row.steps {
        match step {
            Step::Send(bytes) => raw.write(bytes).await,
            Step::Expect(e) => {
                let note = check(&mut raw, e).await?;
                if matches!(e, Expect::Ends | Expect::Close(_) | Expect::Refused) {
                    notes.push(note);
                }
            }
            Step::Served => served(node, good_token, 0).await,
        }
    }
    Ok(notes.join("; "))
}

#[tokio::test]
async fn malformed_input_table() {
    let (_dir, node) = node_with(|config| {
        config.limits.max_message_bytes = MAX_MESSAGE;
        config.groups.client_publish = vec!["chat.*".into()];
        config.server.handshake_timeout = Duration::from_millis(500);
        // Every row comes from 127.0.0.1: keep the per-IP limits out of the way.
        config.limits.auth_failures_per_minute = 0;
        config.limits.messages_per_second = 0;
    })
    .await;
    let bad_token = node.issue_token("bad").await;
    let good_token = node.issue_token("good").await;
    let rows = table(node.addrs.ws, &bad_token);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let outcome = tokio::time::timeout(
            Duration::from_secs(15),
            run_row(&node, &bad_token, &good_token, row),
        )
        .await
        .unwrap_or_else(|_| Err("the row did not finish in 15 s".into()));
        match outcome {
            Ok(note) if note.is_empty() => {
                summary.push(format!("ok    {:?} {}", row.phase, row.name))
            }
            Ok(note) => summary.push(format!("ok    {:?} {} -> {note}", row.phase, row.name)),
            Err(why) => {
                summary.push(format!("FAIL  {:?} {} -> {why}", row.phase, row.name));
                failures.push(format!("{}: {why}", row.name));
            }
        }
        // The node still serves a well-behaved client.
        served(&node, &good_token, i + 1).await;
    }
    println!(
        "{} rows in {:?}:\n{}",
        rows.len(),
        started.elapsed(),
        summary.join("\n")
    );
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}
