//! RFC 6455 conformance of the server side, Autobahn-style: a raw TCP
//! client (frames encoded by hand, `common::raw_ws`) against one real node
//! per table, each row on a connection of its own.
//!
//! - `handshake`: the opening handshake (RFC 6455 section 4.2).
//! - `frames`: framing, fragmentation, control frames, the close handshake,
//!   masking, reserved bits and opcodes, UTF-8, size limits, binary frames,
//!   byte-by-byte and pipelined writes, after `welcome` and, for the framing
//!   rows, before authentication.
//!
//! Every frame the server sends is also checked (section 5): unmasked, FIN
//! set, RSV bits clear, text frames and close reasons UTF-8, close codes ones
//! an endpoint may send. Every close the server sends must be followed by the
//! end of the TCP connection, with no frame in between.
//!
//! Failing rows are collected and reported together; `cargo test --test
//! ws_conformance -- --nocapture` prints every row and what the server did.

// The shared helpers live beside the test files, not in this directory.
#[path = "../common/mod.rs"]
mod common;
mod table;

use table::{authed_rows, framing_rows, handshake_table, pending_rows};

use std::net::SocketAddr;
use std::time::Duration;

use common::raw_ws::*;
use common::*;
use serde_json::{Value, json};
use tokio::time::Instant;

/// `limits.max_message_bytes` of the node under test.
const MAX_MESSAGE: usize = 16 * 1024;

/// The user of the tokens the rows authenticate with.
const USER: &str = "conformance";

/// Sec-WebSocket-Accept = base64(SHA-1(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")).
/// The RFC's own example (section 1.3): key `dGhlIHNhbXBsZSBub25jZQ==`.
/// (The GUID ends in `C5AB0DC85B11`; with `...C5AB0DC11B08` the sample key
/// gives `/q07Ngsu/xr2c2Izb/vk2qbWQ9M=`, which no client accepts.)
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// A second key, so that a server cannot pass with the sample's answer
/// built in (accept computed with `openssl dgst -sha1 -binary | base64`).
const OTHER_KEY: &str = "x3JJHMbDL1EzLkh9GBhXDw==";
const OTHER_ACCEPT: &str = "HSmrc0sMlYUkAGmm5OPpG2HaGWk=";

// ---------------------------------------------------------------------------
// What a row is (the rows are in table.rs).

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Plain TCP: the row sends its own HTTP.
    Http,
    /// Upgraded, no frame sent yet.
    Pending,
    /// Upgraded and authenticated (`welcome` received).
    Authed,
}

#[derive(Clone, Debug)]
enum Expect {
    /// HTTP 101 with `Upgrade: websocket`, `Connection: upgrade` and this
    /// `Sec-WebSocket-Accept`.
    Switching(&'static str),
    /// An HTTP response with a 4xx status.
    Status4xx,
    /// Anything but 101: another status, or the socket closed.
    NotSwitching,
    /// 426 naming the version the server speaks (section 4.2.2).
    UpgradeRequired,
    /// A `welcome` text frame.
    Welcome,
    /// The next text frame, as JSON (server pings and pongs skipped).
    Json(Value),
    /// The next frame is a pong with exactly this payload.
    Pong(Vec<u8>),
    /// A close frame with one of these codes, then the end of the TCP
    /// connection and nothing in between.
    Close(&'static [u16]),
    /// Like `Close`, and a close frame without a payload also does.
    CloseOrEmpty(&'static [u16]),
    /// Like `Close`, whatever the code.
    AnyClose,
}

#[derive(Clone, Debug)]
enum Step {
    /// One write.
    Send(Vec<u8>),
    /// One byte per write, with a short pause after each.
    SendBytewise(Vec<u8>),
    Expect(Expect),
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

/// `{"type":"ping","id":id}` as JSON text.
fn ping_json(id: &str) -> String {
    json!({"type": "ping", "id": id}).to_string()
}

/// A `ping` request in one text frame.
fn ping_request(id: &str) -> Vec<u8> {
    text(ping_json(id))
}

/// The reply to [`ping_request`].
fn pong_reply(id: &str) -> Step {
    expect(Expect::Json(json!({"type": "pong", "id": id})))
}

/// `{"type":"ping","id":"` + `raw`: the start of a ping request.
fn ping_start(raw: &[u8]) -> Vec<u8> {
    [br#"{"type":"ping","id":""#.as_slice(), raw].concat()
}

/// `{"type":"ping","id":"` + `raw` + `"}`: a ping request around raw bytes.
fn ping_around(raw: &[u8]) -> Vec<u8> {
    [ping_start(raw).as_slice(), br#""}"#].concat()
}

/// The connection still works: after auth a request gets its reply,
/// before auth the token gets `welcome`.
fn still_works(phase: Phase, token: &str) -> Vec<Step> {
    match phase {
        Phase::Authed => vec![send(ping_request("alive")), pong_reply("alive")],
        _ => vec![send(text(auth_text(token))), expect(Expect::Welcome)],
    }
}

// ---------------------------------------------------------------------------
// Running it.

/// The status code of an HTTP response head.
fn status_of(head: &str) -> Option<u16> {
    head.lines().next()?.split(' ').nth(1)?.parse().ok()
}

/// The value of header `name` (case-insensitive) in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A 101 with the headers RFC 6455 section 4.2.2 requires, and no
/// extension or subprotocol the client did not ask for.
fn check_switching(head: &str, accept: &str) -> Result<(), String> {
    let mut wrong = Vec::new();
    if status_of(head) != Some(101) {
        return Err(format!("expected 101, got {head:?}"));
    }
    if !header(head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        wrong.push("Upgrade is not websocket");
    }
    let connection_upgrade = header(head, "connection").is_some_and(|v| {
        v.split(',')
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    });
    if !connection_upgrade {
        wrong.push("Connection does not have upgrade");
    }
    if header(head, "sec-websocket-accept") != Some(accept) {
        wrong.push("wrong Sec-WebSocket-Accept");
    }
    if header(head, "sec-websocket-extensions").is_some() {
        wrong.push("an extension nobody asked for");
    }
    if header(head, "sec-websocket-protocol").is_some() {
        wrong.push("a subprotocol nobody asked for");
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} (want accept {accept}); got {head:?}",
            wrong.join(", ")
        ))
    }
}

/// After the server's close frame: answer it (unless the client closed
/// first) and wait for the end of the TCP connection; any frame meanwhile
/// is an error.
async fn close_then_eof(raw: &mut Raw, code: Option<u16>) -> Result<String, String> {
    if !raw.sent_close {
        let echo = code.filter(|c| sendable_close_code(*c)).unwrap_or(1000);
        raw.write(&close_frame(echo, b"")).await;
    }
    match raw.next().await {
        In::Frame(f) => Err(format!("sent {} after its close frame", describe_frame(&f))),
        In::Ended(how) => Ok(format!("then TCP {how}")),
        In::Timeout => Err(format!(
            "the TCP connection was still open {WAIT:?} after the close frame"
        )),
    }
}

/// Checks one expectation; returns a note of what the server did, or why
/// the row failed.
async fn check(raw: &mut Raw, e: &Expect) -> Result<String, String> {
    match e {
        Expect::Switching(accept) => {
            let head = raw.http_head().await.map_err(|end| describe(&end))?;
            return check_switching(&head, accept).map(|()| String::new());
        }
        Expect::UpgradeRequired => {
            let head = raw.http_head().await.map_err(|end| describe(&end))?;
            let names_13 = head
                .lines()
                .any(|l| l.to_ascii_lowercase().replace(' ', "") == "sec-websocket-version:13");
            return if status_of(&head) == Some(426) && names_13 {
                Ok("426 naming version 13".into())
            } else {
                Err(format!(
                    "expected 426 with Sec-WebSocket-Version: 13, got {head:?}"
                ))
            };
        }
        Expect::Status4xx | Expect::NotSwitching => {
            let head = match raw.http_head().await {
                Ok(head) => head,
                Err(In::Ended(how)) if matches!(e, Expect::NotSwitching) => {
                    return Ok(format!("socket closed ({how})"));
                }
                Err(end) => return Err(format!("expected {e:?}, got {}", describe(&end))),
            };
            let status = status_of(&head);
            let ok = match e {
                Expect::Status4xx => status.is_some_and(|s| (400..500).contains(&s)),
                _ => status.is_some_and(|s| s != 101),
            };
            let first_line = head.lines().next().unwrap_or("").to_string();
            return if ok {
                Ok(first_line)
            } else {
                Err(format!("expected {e:?}, got {first_line:?}"))
            };
        }
        _ => {}
    }
    let got = match e {
        Expect::Pong(_) => loop {
            // Only a server ping may come before the pong.
            match raw.next().await {
                In::Frame(f) if f.opcode() == PING => continue,
                other => break other,
            }
        },
        _ => raw.next_data().await,
    };
    let seen = describe(&got);
    let f = match got {
        In::Frame(f) => f,
        _ => return Err(format!("expected {e:?}, got {seen}")),
    };
    match e {
        Expect::Close(_) | Expect::CloseOrEmpty(_) | Expect::AnyClose if f.opcode() == CLOSE => {
            let code =
                (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]));
            let ok = match (e, code) {
                (Expect::AnyClose, _) => true,
                (Expect::CloseOrEmpty(_), None) => f.payload.is_empty(),
                (Expect::Close(codes) | Expect::CloseOrEmpty(codes), Some(c)) => codes.contains(&c),
                _ => false,
            };
            if !ok {
                // Still answer it, so the server need not linger.
                let _ = close_then_eof(raw, code).await;
                return Err(format!("expected {e:?}, got {seen}"));
            }
            let end = close_then_eof(raw, code).await?;
            Ok(format!("{seen}, {end}"))
        }
        Expect::Json(want) if f.opcode() == TEXT => {
            match serde_json::from_slice::<Value>(&f.payload) {
                Ok(v) if v == *want => Ok(String::new()),
                _ => Err(format!("expected {want}, got {seen}")),
            }
        }
        Expect::Welcome if f.opcode() == TEXT => {
            let v: Value = serde_json::from_slice(&f.payload).unwrap_or_default();
            if v["type"] == "welcome" && v["user_id"] == USER {
                Ok(String::new())
            } else {
                Err(format!("expected welcome, got {seen}"))
            }
        }
        Expect::Pong(want) if f.opcode() == PONG && f.payload == *want => Ok(String::new()),
        _ => Err(format!("expected {e:?}, got {seen}")),
    }
}

async fn run_row(addr: SocketAddr, token: &str, row: &Row) -> Result<String, String> {
    let mut raw = Raw::tcp(addr).await;
    if row.phase != Phase::Http {
        raw.write(upgrade_request(addr).as_bytes()).await;
        check(&mut raw, &Expect::Switching(SAMPLE_ACCEPT)).await?;
    }
    if row.phase == Phase::Authed {
        raw.write(&text(auth_text(token))).await;
        check(&mut raw, &Expect::Welcome).await?;
    }
    let mut notes = Vec::new();
    for step in &row.steps {
        match step {
            Step::Send(bytes) => raw.write(bytes).await,
            Step::SendBytewise(bytes) => raw.write_bytewise(bytes, Duration::from_millis(3)).await,
            Step::Expect(e) => {
                let note = check(&mut raw, e).await?;
                if !note.is_empty() {
                    notes.push(note);
                }
            }
        }
    }
    if !raw.faults.is_empty() {
        return Err(format!(
            "server frames break RFC 6455 section 5: {}",
            raw.faults.join("; ")
        ));
    }
    Ok(notes.join("; "))
}

/// Runs every row on a connection of its own; prints a summary and fails
/// with every failing row.
async fn run_table(node: &TestNode, token: &str, rows: &[Row]) {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    for row in rows {
        let outcome =
            tokio::time::timeout(Duration::from_secs(15), run_row(node.addrs.ws, token, row))
                .await
                .unwrap_or_else(|_| Err("the row did not finish in 15 s".into()));
        match outcome {
            Ok(note) if note.is_empty() => summary.push(format!("ok    {}", row.name)),
            Ok(note) => summary.push(format!("ok    {} -> {note}", row.name)),
            Err(why) => {
                summary.push(format!("FAIL  {} -> {why}", row.name));
                failures.push(format!("{}: {why}", row.name));
            }
        }
    }
    // The node still serves after every row.
    let (mut c, _) = Client::authed(&node.ws_url(), token).await;
    let reply = c.request(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(reply, json!({"type": "pong", "id": "end"}));
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

async fn conformance_node() -> (tempfile::TempDir, TestNode, String) {
    let (dir, node) = node_with(|config| {
        config.limits.max_message_bytes = MAX_MESSAGE;
        // Every row comes from 127.0.0.1 and many fail before auth: keep
        // the per-IP limits out of the way.
        config.limits.auth_failures_per_minute = 0;
        config.limits.messages_per_second = 0;
    })
    .await;
    let token = node.issue_token(USER).await;
    (dir, node, token)
}

#[tokio::test]
async fn handshake() {
    let (_dir, node, token) = conformance_node().await;
    let rows = handshake_table(node.addrs.ws, &token);
    run_table(&node, &token, &rows).await;
}

#[tokio::test]
async fn frames() {
    let (_dir, node, token) = conformance_node().await;
    let rows: Vec<Row> = [
        authed_rows(),
        framing_rows(Phase::Authed, &token),
        framing_rows(Phase::Pending, &token),
        pending_rows(&token),
    ]
    .into_iter()
    .flatten()
    .collect();
    run_table(&node, &token, &rows).await;
}

/// The checks on server frames catch what they are meant to (no server).
#[test]
fn server_frame_checks_catch_faults() {
    let faults = |bytes: Vec<u8>| {
        let (used, f) = parse_frame(&bytes).expect("a whole frame");
        assert_eq!(used, bytes.len());
        server_frame_faults(&f)
    };
    assert!(faults(encode(0x81, b"{}", false)).is_empty());
    assert!(faults(encode(0x88, &1000u16.to_be_bytes(), false)).is_empty());
    assert!(faults(encode(0x8A, &[7; 125], false)).is_empty());
    for (bytes, what) in [
        (encode(0x81, b"{}", true), "masked"),
        (encode(0xC1, b"{}", false), "RSV"),
        (encode(0x01, b"{}", false), "FIN"),
        (encode(0x83, b"", false), "opcode"),
        (encode(0x81, b"\xc0\xaf", false), "UTF-8"),
        (encode(0x8A, &[7; 126], false), "126-byte"),
        (encode(0x88, &[3], false), "one-byte"),
        (encode(0x88, &1005u16.to_be_bytes(), false), "1005"),
        (
            encode(0x88, &[&1000u16.to_be_bytes()[..], b"\xff"].concat(), false),
            "reason",
        ),
    ] {
        let found = faults(bytes);
        assert!(
            found.iter().any(|f| f.contains(what)),
            "{what}: found {found:?}"
        );
    }
    // A length with the top bit set is not a frame this client can hold.
    assert!(parse_frame(&header_claiming(0x81, 1 << 63)).is_none());
}
