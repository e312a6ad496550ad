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

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

/// `limits.max_message_bytes` of the node under test.
const MAX_MESSAGE: usize = 16 * 1024;

// Frames, encoded by hand (RFC 6455 section 5.2), come from
// tests/common/raw_ws.rs, shared with tests/ws_conformance.rs.
// A raw connection and its reads (`Raw`, `In`) too.
use common::raw_ws::{
    BINARY, CLOSE, CONTINUATION, In, MASK, PING, PONG, Raw, TEXT, auth_text, close_frame, describe,
    encode, frame, text, upgrade_request,
};

// ---------------------------------------------------------------------------
// The table.

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

fn table(addr: SocketAddr, token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::*;
    let auth = || send(text(auth_text(token)));
    let auth_required = Close(&[4001]);
    let mut rows = vec![
        // --- Before and around the HTTP upgrade.
        row(
            "garbage before the HTTP upgrade",
            Http,
            vec![
                send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec()),
                expect(Refused),
            ],
        ),
        row(
            "a garbage line, then a valid upgrade on the same socket",
            Http,
            vec![
                send([b"HELLO\r\n".as_slice(), upgrade_request(addr).as_bytes()].concat()),
                expect(Refused),
            ],
        ),
        row(
            "upgrade without Sec-WebSocket-Key",
            Http,
            vec![
                send(
                    format!(
                        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
                         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n"
                    )
                    .into_bytes(),
                ),
                expect(Refused),
            ],
        ),
        row(
            "upgrade with Sec-WebSocket-Version 8",
            Http,
            vec![
                send(upgrade_request(addr).replace("Version: 13", "Version: 8").into_bytes()),
                expect(Refused),
            ],
        ),
        row(
            "half-finished upgrade (dropped after server.handshake_timeout)",
            Http,
            vec![
                send(format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: webso").into_bytes()),
                Step::Served,
                expect(Refused),
            ],
        ),
        row(
            "auth frame pipelined with the upgrade request",
            Http,
            vec![
                send([upgrade_request(addr).into_bytes(), text(auth_text(token))].concat()),
                expect(Status("HTTP/1.1 101")),
                expect(Welcome),
            ],
        ),
        // --- The first frame (section 2).
        row(
            "invalid UTF-8 in the first text frame",
            Pending,
            // "not JSON" gets 4001; RFC 6455 section 8.1 would give 1007.
            vec![
                send(text(b"{\"type\":\"auth\",\"token\":\"\xff\xfe\"}")),
                expect(Close(&[4001, 1007])),
            ],
        ),
        row(
            "invalid UTF-8 split across the fragments of the first frame",
            Pending,
            vec![
                send(frame(false, TEXT, b"{\"token\":\"\xe2\x82")),
                send(frame(true, CONTINUATION, b"\"}")),
                expect(Close(&[4001, 1007])),
            ],
        ),
        row(
            "10,000 '[' as the first frame",
            Pending,
            vec![send(text("[".repeat(10_000))), expect(auth_required.clone())],
        ),
        row(
            "10,000 nested arrays as the first frame",
            Pending,
            vec![send(text(deep(10_000))), expect(auth_required.clone())],
        ),
        row(
            "deep nesting beside a valid token (an object with a string token)",
            Pending,
            vec![
                send(text(format!(r#"{{"token":"{token}","x":{}}}"#, deep(1800)))),
                expect(Welcome),
            ],
        ),
        row(
            "huge number as the token",
            Pending,
            vec![
                send(text(r#"{"type":"auth","token":1e400}"#)),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "huge number as the type",
            Pending,
            vec![
                send(text(format!(r#"{{"type":123456789012345678901234567890,"token":"{token}"}}"#))),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "unknown type in the first frame",
            Pending,
            vec![
                send(text(format!(r#"{{"type":"hello","token":"{token}"}}"#))),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "empty first frame",
            Pending,
            vec![send(text("")), expect(auth_required.clone())],
        ),
        row(
            "binary first frame",
            Pending,
            vec![
                send(frame(true, BINARY, auth_text(token))),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame over 4 KiB (5,000 bytes)",
            Pending,
            vec![
                send(text(json!({"type": "auth", "token": "x".repeat(5000)}).to_string())),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame over limits.max_message_bytes",
            Pending,
            vec![
                send(text(json!({"token": "x".repeat(MAX_MESSAGE + 100)}).to_string())),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame whose header claims 2^63 bytes",
            Pending,
            vec![
                send([vec![0x81, 0xff], (1u64 << 63).to_be_bytes().to_vec(), MASK.to_vec()].concat()),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame over 4 KiB in 1 KiB fragments",
            Pending,
            {
                let big = json!({"token": "y".repeat(5000)}).to_string().into_bytes();
                let mut steps: Vec<Step> = big
                    .chunks(1024)
                    .enumerate()
                    .map(|(i, chunk)| {
                        let last = (i + 1) * 1024 >= big.len();
                        send(frame(last, if i == 0 { TEXT } else { CONTINUATION }, chunk))
                    })
                    .collect();
                steps.push(expect(auth_required.clone()));
                steps
            },
        ),
        row(
            "auth frame in three fragments (one message)",
            Pending,
            {
                let t = auth_text(token).into_bytes();
                let (a, rest) = t.split_at(5);
                let (b, c) = rest.split_at(rest.len() / 2);
                vec![
                    send(frame(false, TEXT, a)),
                    send(frame(false, CONTINUATION, b)),
                    send(frame(true, CONTINUATION, c)),
                    expect(Welcome),
                ]
            },
        ),
        row(
            "auth fragments with a ping between them",
            Pending,
            {
                let t = auth_text(token).into_bytes();
                let (a, b) = t.split_at(10);
                vec![
                    send(frame(false, TEXT, a)),
                    send(frame(true, PING, b"mid")),
                    send(frame(true, CONTINUATION, b)),
                    expect(Pong(b"mid".to_vec())),
                    expect(Welcome),
                ]
            },
        ),
        row(
            "ping before auth",
            Pending,
            vec![
                send(frame(true, PING, b"early")),
                expect(Pong(b"early".to_vec())),
                auth(),
                expect(Welcome),
            ],
        ),
        row(
            "unsolicited pong before auth",
            Pending,
            vec![send(frame(true, PONG, b"nobody asked")), auth(), expect(Welcome)],
        ),
        row(
            "ping with a 126-byte payload before auth",
            Pending,
            vec![send(frame(true, PING, [b'p'; 126])), expect(Ends)],
        ),
        row(
            "fragmented ping before auth",
            Pending,
            vec![send(frame(false, PING, b"half")), expect(Ends)],
        ),
        row(
            "close with the invalid code 999 before auth",
            Pending,
            vec![send(close_frame(999, b"")), expect(Ends)],
        ),
        row(
            "close with the reserved code 1005 on the wire before auth",
            Pending,
            vec![send(close_frame(1005, b"")), expect(Ends)],
        ),
        row(
            "close with a one-byte payload before auth",
            Pending,
            vec![send(frame(true, CLOSE, [3u8])), expect(Ends)],
        ),
        row(
            "close whose reason is invalid UTF-8 before auth",
            Pending,
            vec![send(close_frame(1000, b"\xff")), expect(Ends)],
        ),
        row(
            "continuation frame with nothing to continue before auth",
            Pending,
            vec![send(frame(true, CONTINUATION, auth_text(token))), expect(Ends)],
        ),
        row(
            "new text frame inside an unfinished fragmented one before auth",
            Pending,
            vec![
                send(frame(false, TEXT, b"{\"tok")),
                send(text(auth_text(token))),
                expect(Ends),
            ],
        ),
        row(
            "unmasked frame from the client before auth",
            Pending,
            vec![send(encode(0x80 | TEXT, auth_text(token).as_bytes(), false)), expect(Ends)],
        ),
        row(
            "reserved bit RSV1 set (no extension) before auth",
            Pending,
            vec![send(encode(0xC0 | TEXT, auth_text(token).as_bytes(), true)), expect(Ends)],
        ),
        row(
            "reserved opcode 0x3 before auth",
            Pending,
            vec![send(frame(true, 0x3, auth_text(token))), expect(Ends)],
        ),
        // --- After welcome (sections 3 and 4).
        row(
            "invalid UTF-8 in a text frame after auth",
            Authed,
            vec![send(text(b"{\"type\":\"ping\",\"id\":\"\xc3\x28\"}")), expect(Ends)],
        ),
        row(
            "10,000 '[' after auth",
            Authed,
            [
                refused("[".repeat(10_000), "bad_request", Value::Null).to_vec(),
                refused(deep(7000), "bad_request", Value::Null).to_vec(),
                alive().to_vec(),
            ]
            .concat(),
        ),
        row(
            "7,000 nested arrays as published data (any JSON: accepted)",
            Authed,
            [
                vec![
                    send(text(format!(
                        r#"{{"type":"publish","group":"chat.deep","data":{},"id":1}}"#,
                        deep(7000)
                    ))),
                    expect(Json(json!({"type": "published", "group": "chat.deep", "id": 1}))),
                ],
                alive().to_vec(),
            ]
            .concat(),
        ),
        row(
            "huge numbers as ids are echoed as written",
            Authed,
            vec![
                send(text(r#"{"type":"ping","id":1e400}"#)),
                expect(Text(r#"{"type":"pong","id":1e400}"#.into())),
                send(text(r#"{"type":"ping","id":-123456789012345678901234567890.5e-7}"#)),
                expect(Text(
                    r#"{"type":"pong","id":-123456789012345678901234567890.5e-7}"#.into(),
                )),
            ],
        ),
        row(
            "huge numbers as since offsets",
            Authed,
            [
                refused(
                    r#"{"type":"subscribe","group":"g","since":{"offset":18446744073709551616,"epoch":"e"},"id":2}"#,
                    "bad_request",
                    json!(2),
                ),
                refused(
                    r#"{"type":"subscribe","group":"g","since":{"offset":1e400,"epoch":"e"},"id":3}"#,
                    "bad_request",
                    json!(3),
                ),
            ]
            .concat(),
        ),
        row(
            "wrong types for type",
            Authed,
            [r#"5"#, r#"null"#, r#"true"#, r#"[]"#, r#"{}"#, r#"1e400"#]
                .iter()
                .flat_map(|t| {
                    refused(
                        format!(r#"{{"type":{t},"group":"g","id":"t"}}"#),
                        "bad_request",
                        json!("t"),
                    )
                })
                .chain(alive())
                .collect(),
        ),
        row(
            "wrong types for id",
            Authed,
            [r#"[]"#, r#"{}"#, r#"true"#, r#"[1]"#]
                .iter()
                .flat_map(|id| {
                    refused(
                        format!(r#"{{"type":"ping","id":{id}}}"#),
                        "bad_request",
                        Value::Null,
                    )
                })
                .chain(alive())
                .collect(),
        ),
        row(
            "wrong types and values for group",
            Authed,
            [
                r#"5"#,
                r#"null"#,
                r#"true"#,
                r#"["g"]"#,
                r#"{"g":1}"#,
                r#""""#,
                r#""a b""#,
                r#""a\u0000b""#,
                r#""é""#,
            ]
            .iter()
            .flat_map(|g| {
                ["subscribe", "unsubscribe", "publish"]
                    .into_iter()
                    .flat_map(move |kind| {
                        refused(
                            format!(r#"{{"type":"{kind}","group":{g},"data":1,"id":"g"}}"#),
                            "bad_request",
                            json!("g"),
                        )
                    })
            })
            .chain(alive())
            .collect(),
        ),
        row(
            "wrong types for since",
            Authed,
            [
                r#""x""#,
                r#"5"#,
                r#"[]"#,
                r#"{"offset":"1","epoch":"e"}"#,
                r#"{"offset":1,"epoch":5}"#,
                r#"{"offset":-1,"epoch":"e"}"#,
                r#"{"offset":1.5,"epoch":"e"}"#,
                r#"{"offset":1}"#,
                r#"{"offset":1,"epoch":"e","x":1}"#,
            ]
            .iter()
            .flat_map(|s| {
                refused(
                    format!(r#"{{"type":"subscribe","group":"g","since":{s},"id":"s"}}"#),
                    "bad_request",
                    json!("s"),
                )
            })
            .chain(alive())
            .collect(),
        ),
        row(
            "publish without data",
            Authed,
            [
                refused(
                    r#"{"type":"publish","group":"chat.x","id":4}"#,
                    "bad_request",
                    json!(4),
                )
                .to_vec(),
                // `null` is data like any other JSON.
                vec![
                    send(text(r#"{"type":"publish","group":"chat.x","data":null,"id":5}"#)),
                    expect(Json(json!({"type": "published", "group": "chat.x", "id": 5}))),
                ],
            ]
            .concat(),
        ),
        row(
            "unknown types",
            Authed,
            [r#""dance""#, r#""""#, r#""SUBSCRIBE""#, r#""ping ""#]
                .iter()
                .flat_map(|t| {
                    refused(
                        format!(r#"{{"type":{t},"id":9}}"#),
                        "unknown_type",
                        json!(9),
                    )
                })
                .chain(refused(auth_text(token), "bad_request", Value::Null))
                .chain(alive())
                .collect(),
        ),
        row(
            "frames that are not one JSON object",
            Authed,
            [
                "",
                "not json",
                "\u{feff}{\"type\":\"ping\"}",
                "{\"type\":\"ping\"} x",
                "{\"type\":\"ping\"}{\"type\":\"ping\"}",
                "{\"type\":\"ping\",\"type\":\"subscribe\"}",
                "{\"type\":\"ping\"",
                "\"ping\"",
                "null",
            ]
            .iter()
            .flat_map(|t| refused(*t, "bad_request", Value::Null))
            .chain(alive())
            .collect(),
        ),
        row(
            "frame over 4 KiB and under limits.max_message_bytes after auth",
            Authed,
            vec![
                send(text(
                    json!({"type": "ping", "id": 1, "pad": "p".repeat(MAX_MESSAGE - 200)})
                        .to_string(),
                )),
                expect(Json(json!({"type": "pong", "id": 1}))),
            ],
        ),
        row(
            "frame over limits.max_message_bytes after auth",
            Authed,
            vec![
                send(text(
                    json!({"type": "ping", "pad": "p".repeat(MAX_MESSAGE + 10)}).to_string(),
                )),
                expect(Close(&[1009])),
            ],
        ),
        row(
            "fragments over limits.max_message_bytes in total after auth",
            Authed,
            {
                let mut steps = vec![send(frame(false, TEXT, r#"{"type":"ping","pad":""#))];
                for _ in 0..=(MAX_MESSAGE / 1000) {
                    steps.push(send(frame(false, CONTINUATION, [b'p'; 1000])));
                }
                steps.push(send(frame(true, CONTINUATION, r#""}"#)));
                steps.push(expect(Close(&[1009])));
                steps
            },
        ),
        row(
            "fragmented request after auth (one message)",
            Authed,
            vec![
                send(frame(false, TEXT, r#"{"type":"pi"#)),
                send(frame(false, CONTINUATION, r#"ng","id""#)),
                send(frame(true, PING, b"between")),
                send(frame(true, CONTINUATION, r#":"frag"}"#)),
                expect(Pong(b"between".to_vec())),
                expect(Json(json!({"type": "pong", "id": "frag"}))),
            ],
        ),
        row(
            "ping and unsolicited pong control frames after auth",
            Authed,
            [
                vec![
                    send(frame(true, PING, [7u8; 125])),
                    expect(Pong(vec![7u8; 125])),
                    send(frame(true, PONG, b"unasked")),
                ],
                alive().to_vec(),
            ]
            .concat(),
        ),
        row(
            "ping with a 126-byte payload after auth",
            Authed,
            vec![send(frame(true, PING, [b'p'; 126])), expect(Ends)],
        ),
        row(
            "close with the invalid code 5000 after auth",
            Authed,
            vec![send(close_frame(5000, b"")), expect(Ends)],
        ),
        row(
            "close with the reserved code 1006 on the wire after auth",
            Authed,
            vec![send(close_frame(1006, b"")), expect(Ends)],
        ),
        row(
            "binary frame after auth",
            Authed,
            vec![send(frame(true, BINARY, [1, 2, 3])), expect(Close(&[1003]))],
        ),
        row(
            "empty fragmented binary message after auth",
            Authed,
            vec![
                send(frame(false, BINARY, [])),
                send(frame(true, CONTINUATION, [])),
                expect(Close(&[1003])),
            ],
        ),
        row(
            "continuation frame with nothing to continue after auth",
            Authed,
            vec![send(frame(true, CONTINUATION, r#"{"type":"ping"}"#)), expect(Ends)],
        ),
        row(
            "new text frame inside an unfinished fragmented one after auth",
            Authed,
            vec![
                send(frame(false, TEXT, r#"{"type""#)),
                send(text(r#"{"type":"ping"}"#)),
                expect(Ends),
            ],
        ),
        row(
            "unmasked frame from the client after auth",
            Authed,
            vec![send(encode(0x80 | TEXT, br#"{"type":"ping"}"#, false)), expect(Ends)],
        ),
        row(
            "reserved bits RSV2 and RSV3 set after auth",
            Authed,
            vec![send(encode(0xB0 | TEXT, br#"{"type":"ping"}"#, true)), expect(Ends)],
        ),
        row(
            "reserved control opcode 0xB after auth",
            Authed,
            vec![send(frame(true, 0xB, b"")), expect(Ends)],
        ),
    ];
    // Every wrong type for the token, and first frames that are not objects.
    for (what, frame_text) in [
        ("a number", r#"{"type":"auth","token":42}"#.to_string()),
        ("null", r#"{"type":"auth","token":null}"#.to_string()),
        ("a boolean", r#"{"type":"auth","token":true}"#.to_string()),
        (
            "an array",
            format!(r#"{{"type":"auth","token":["{token}"]}}"#),
        ),
        (
            "an object",
            format!(r#"{{"type":"auth","token":{{"t":"{token}"}}}}"#),
        ),
        ("empty", r#"{"type":"auth","token":""}"#.to_string()),
        ("missing", r#"{"type":"auth"}"#.to_string()),
        ("inside a JSON string", json!(auth_text(token)).to_string()),
        ("inside an array", format!("[{}]", auth_text(token))),
        ("after a BOM", format!("\u{feff}{}", auth_text(token))),
        ("followed by garbage", format!("{} x", auth_text(token))),
        (
            "a duplicate key",
            format!(r#"{{"token":"{token}","token":"{token}"}}"#),
        ),
    ] {
        rows.push(row(
            format!("first frame with the token {what}"),
            Pending,
            vec![send(text(frame_text)), expect(auth_required.clone())],
        ));
    }
    for kind in ["5", "true", "[]", "{}", r#""subscribe""#, r#""AUTH""#] {
        rows.push(row(
            format!("first frame with type {kind}"),
            Pending,
            vec![
                send(text(format!(r#"{{"type":{kind},"token":"{token}"}}"#))),
                expect(auth_required.clone()),
            ],
        ));
    }
    rows
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
