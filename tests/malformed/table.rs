//! The table: every class of malformed input, one function per phase.

use super::*;

/// Every row, in the order they run.
pub fn table(addr: SocketAddr, token: &str) -> Vec<Row> {
    let mut rows = upgrade(addr, token);
    rows.extend(first_frame(token));
    rows.extend(after_welcome(token));
    rows
}

/// Before and around the HTTP upgrade.
fn upgrade(addr: SocketAddr, token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::*;
    vec![
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
                send(
                    upgrade_request(addr)
                        .replace("Version: 13", "Version: 8")
                        .into_bytes(),
                ),
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
    ]
}

/// The first frame (protocol section 2).
fn first_frame(token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::*;
    let auth = || send(text(auth_text(token)));
    let auth_required = Close(&[4001]);
    let mut rows = vec![
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
            vec![
                send(text("[".repeat(10_000))),
                expect(auth_required.clone()),
            ],
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
                send(text(format!(
                    r#"{{"type":123456789012345678901234567890,"token":"{token}"}}"#
                ))),
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
                send(text(
                    json!({"type": "auth", "token": "x".repeat(5000)}).to_string(),
                )),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame over limits.max_message_bytes",
            Pending,
            vec![
                send(text(
                    json!({"token": "x".repeat(MAX_MESSAGE + 100)}).to_string(),
                )),
                expect(auth_required.clone()),
            ],
        ),
        row(
            "first frame whose header claims 2^63 bytes",
            Pending,
            vec![
                send(
                    [
                        vec![0x81, 0xff],
                        (1u64 << 63).to_be_bytes().to_vec(),
                        MASK.to_vec(),
                    ]
                    .concat(),
                ),
                expect(auth_required.clone()),
            ],
        ),
        row("first frame over 4 KiB in 1 KiB fragments", Pending, {
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
        }),
        row("auth frame in three fragments (one message)", Pending, {
            let t = auth_text(token).into_bytes();
            let (a, rest) = t.split_at(5);
            let (b, c) = rest.split_at(rest.len() / 2);
            vec![
                send(frame(false, TEXT, a)),
                send(frame(false, CONTINUATION, b)),
                send(frame(true, CONTINUATION, c)),
                expect(Welcome),
            ]
        }),
        row("auth fragments with a ping between them", Pending, {
            let t = auth_text(token).into_bytes();
            let (a, b) = t.split_at(10);
            vec![
                send(frame(false, TEXT, a)),
                send(frame(true, PING, b"mid")),
                send(frame(true, CONTINUATION, b)),
                expect(Pong(b"mid".to_vec())),
                expect(Welcome),
            ]
        }),
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
            vec![
                send(frame(true, PONG, b"nobody asked")),
                auth(),
                expect(Welcome),
            ],
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
            vec![
                send(frame(true, CONTINUATION, auth_text(token))),
                expect(Ends),
            ],
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
            vec![
                send(encode(0x80 | TEXT, auth_text(token).as_bytes(), false)),
                expect(Ends),
            ],
        ),
        row(
            "reserved bit RSV1 set (no extension) before auth",
            Pending,
            vec![
                send(encode(0xC0 | TEXT, auth_text(token).as_bytes(), true)),
                expect(Ends),
            ],
        ),
        row(
            "reserved opcode 0x3 before auth",
            Pending,
            vec![send(frame(true, 0x3, auth_text(token))), expect(Ends)],
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

/// After `welcome` (protocol sections 3 and 4).
fn after_welcome(token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::*;
    vec![
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
    ]
}
