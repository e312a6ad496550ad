//! The table: the handshake, framing, and requests before and after `welcome`.

use super::*;

pub fn handshake_table(addr: SocketAddr, token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::Http;
    let request = |method: &str, headers: &str| {
        format!("{method} /ws HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n").into_bytes()
    };
    vec![
        row(
            "RFC sample key: 101 with s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
            Http,
            vec![
                send(upgrade_request(addr).into_bytes()),
                expect(Switching(SAMPLE_ACCEPT)),
            ],
        ),
        row(
            "another key: 101 with base64(SHA-1(key + GUID))",
            Http,
            vec![
                send(
                    upgrade_request(addr)
                        .replace(SAMPLE_KEY, OTHER_KEY)
                        .into_bytes(),
                ),
                expect(Switching(OTHER_ACCEPT)),
            ],
        ),
        row(
            "Connection: keep-alive, Upgrade and Upgrade: WebSocket (token list, mixed case)",
            Http,
            vec![
                send(request(
                    "GET",
                    &format!(
                        "Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n\
                         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n"
                    ),
                )),
                expect(Switching(SAMPLE_ACCEPT)),
                // A working connection.
                send(text(auth_text(token))),
                expect(Welcome),
            ],
        ),
        row(
            "no Sec-WebSocket-Key: 4xx",
            Http,
            vec![
                send(request(
                    "GET",
                    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
                )),
                expect(Status4xx),
            ],
        ),
        row(
            "Sec-WebSocket-Version: 8: 426 with Sec-WebSocket-Version: 13",
            Http,
            vec![
                send(
                    upgrade_request(addr)
                        .replace("Version: 13", "Version: 8")
                        .into_bytes(),
                ),
                expect(UpgradeRequired),
            ],
        ),
        row(
            "POST with the upgrade headers: no 101",
            Http,
            vec![
                send(
                    upgrade_request(addr)
                        .replacen("GET", "POST", 1)
                        .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n")
                        .into_bytes(),
                ),
                expect(NotSwitching),
            ],
        ),
    ]
}

/// Rows for the framing cases (control frames, masking, reserved bits and
/// opcodes, fragment sequencing), run both before and after authentication.
/// After it they get the RFC's 1002; before it, wsgate's documented 4001
/// (docs/protocol.md: a first frame that is "not a valid frame" is a
/// malformed first frame), which section 7.4.2 allows: 4000-4999 are the
/// application's codes.
pub fn framing_rows(phase: Phase, token: &str) -> Vec<Row> {
    use Expect::*;
    let when = match phase {
        Phase::Authed => "after auth",
        _ => "before auth",
    };
    // A data frame's payload: a request, or the token before auth.
    let payload = match phase {
        Phase::Authed => ping_json("x").into_bytes(),
        _ => auth_text(token).into_bytes(),
    };
    let protocol_error = || match phase {
        Phase::Authed => expect(Close(&[1002])),
        _ => expect(Close(&[4001])),
    };
    let mut rows = vec![
        row(
            format!("ping with a 125-byte payload: identical pong ({when})"),
            phase,
            [
                vec![
                    send(frame(true, PING, (0..125u8).collect::<Vec<_>>())),
                    expect(Pong((0..125u8).collect())),
                ],
                still_works(phase, token),
            ]
            .concat(),
        ),
        row(
            format!("ping with an empty payload: empty pong ({when})"),
            phase,
            [
                vec![send(frame(true, PING, [])), expect(Pong(vec![]))],
                still_works(phase, token),
            ]
            .concat(),
        ),
        row(
            format!("ping with a 126-byte payload: 1002 ({when})"),
            phase,
            vec![send(frame(true, PING, [b'p'; 126])), protocol_error()],
        ),
        row(
            format!("fragmented ping (FIN=0): 1002 ({when})"),
            phase,
            vec![send(frame(false, PING, b"half")), protocol_error()],
        ),
        row(
            format!("unmasked frame: 1002 ({when})"),
            phase,
            vec![send(encode(0x80 | TEXT, &payload, false)), protocol_error()],
        ),
        row(
            format!("continuation frame with nothing to continue: 1002 ({when})"),
            phase,
            vec![send(frame(true, CONTINUATION, &payload)), protocol_error()],
        ),
        row(
            format!("new text frame inside an unfinished fragmented message: 1002 ({when})"),
            phase,
            vec![
                send(frame(false, TEXT, &payload[..5])),
                send(text(&payload)),
                protocol_error(),
            ],
        ),
    ];
    for (bit, rsv) in [(0x40, "RSV1"), (0x20, "RSV2"), (0x10, "RSV3")] {
        rows.push(row(
            format!("{rsv} set without an extension: 1002 ({when})"),
            phase,
            vec![
                send(encode(0x80 | bit | TEXT, &payload, true)),
                protocol_error(),
            ],
        ));
    }
    for opcode in (0x3..=0x7).chain(0xB..=0xF) {
        // Reserved data opcodes carry the payload, control ones nothing.
        let body: &[u8] = if opcode < 0x8 { &payload } else { b"" };
        rows.push(row(
            format!("reserved opcode {opcode:#x}: 1002 ({when})"),
            phase,
            vec![send(frame(true, opcode, body)), protocol_error()],
        ));
    }
    rows
}

/// Rows after authentication only.
pub fn authed_rows() -> Vec<Row> {
    use Expect::*;
    use Phase::Authed;
    let request = ping_json("frag").into_bytes();
    let mut rows = vec![
        // --- Section 5: the server's own frames.
        row(
            "server frames (welcome, reply, pong, close): unmasked, FIN, RSV 0, UTF-8",
            Authed,
            vec![
                send(ping_request("é 😀")),
                pong_reply("é 😀"),
                send(frame(true, PING, b"control")),
                expect(Pong(b"control".to_vec())),
                send(close_frame(1000, b"")),
                expect(CloseOrEmpty(&[1000])),
            ],
        ),
        // --- Section 5.4: fragmentation.
        row(
            "request in 3 fragments (TEXT, CONT, CONT+FIN): one message",
            Authed,
            vec![
                send(frame(false, TEXT, &request[..7])),
                send(frame(false, CONTINUATION, &request[7..15])),
                send(frame(true, CONTINUATION, &request[15..])),
                pong_reply("frag"),
            ],
        ),
        row(
            "ping between fragments: its pong comes before the message's reply",
            Authed,
            vec![
                send(frame(false, TEXT, &request[..7])),
                send(frame(false, CONTINUATION, &request[7..15])),
                send(frame(true, PING, b"between")),
                send(frame(true, CONTINUATION, &request[15..])),
                expect(Pong(b"between".to_vec())),
                pong_reply("frag"),
            ],
        ),
        row(
            "4-byte UTF-8 character split over three fragment boundaries: echoed intact",
            Authed,
            {
                let req = ping_json("a😀b").into_bytes();
                let at = req.windows(4).position(|w| w == "😀".as_bytes()).unwrap();
                vec![
                    send(frame(false, TEXT, &req[..at + 1])),
                    send(frame(false, CONTINUATION, &req[at + 1..at + 2])),
                    send(frame(false, CONTINUATION, &req[at + 2..at + 3])),
                    send(frame(true, CONTINUATION, &req[at + 3..])),
                    pong_reply("a😀b"),
                ]
            },
        ),
        row(
            "2-byte UTF-8 character split over a fragment boundary: echoed intact",
            Authed,
            {
                let req = ping_json("caf\u{e9}!").into_bytes();
                let at = req.windows(2).position(|w| w == "é".as_bytes()).unwrap();
                vec![
                    send(frame(false, TEXT, &req[..at + 1])),
                    send(frame(true, CONTINUATION, &req[at + 1..])),
                    pong_reply("caf\u{e9}!"),
                ]
            },
        ),
        row(
            "fragments of length 0 (first, middle and last)",
            Authed,
            vec![
                send(frame(false, TEXT, b"")),
                send(frame(false, CONTINUATION, &request)),
                send(frame(false, CONTINUATION, b"")),
                send(frame(true, CONTINUATION, b"")),
                pong_reply("frag"),
            ],
        ),
        // --- Section 5.5.1 and 7: the close handshake.
        row(
            "client close 1000 \"bye\": close 1000, then TCP closed",
            Authed,
            vec![send(close_frame(1000, b"bye")), expect(Close(&[1000]))],
        ),
        row(
            "client close without a payload: empty close or 1000, then TCP closed",
            Authed,
            vec![send(frame(true, CLOSE, b"")), expect(CloseOrEmpty(&[1000]))],
        ),
        row(
            "close with a one-byte payload: 1002",
            Authed,
            vec![send(frame(true, CLOSE, [0x03])), expect(Close(&[1002]))],
        ),
        row(
            "close whose reason is not UTF-8: 1007",
            Authed,
            vec![send(close_frame(1000, b"bye\xff")), expect(Close(&[1007]))],
        ),
        row(
            "request pipelined after the client's close: no reply, only the close",
            Authed,
            vec![
                send([close_frame(1000, b""), ping_request("late")].concat()),
                expect(CloseOrEmpty(&[1000])),
            ],
        ),
        row(
            "request pipelined after a binary frame: 1003 and no reply",
            Authed,
            vec![
                send([frame(true, BINARY, [1, 2, 3]), ping_request("late")].concat()),
                expect(Close(&[1003])),
            ],
        ),
        // --- Section 8.1: UTF-8.
        row(
            "text with the byte 0xff: 1007",
            Authed,
            vec![send(text(ping_around(b"\xff"))), expect(Close(&[1007]))],
        ),
        row(
            "text with the overlong encoding 0xc0 0xaf: 1007",
            Authed,
            vec![send(text(ping_around(b"\xc0\xaf"))), expect(Close(&[1007]))],
        ),
        row(
            "text with the surrogate 0xed 0xa0 0x80: 1007",
            Authed,
            vec![
                send(text(ping_around(b"\xed\xa0\x80"))),
                expect(Close(&[1007])),
            ],
        ),
        row(
            "invalid UTF-8 split over fragments (0xe2 0x82 | 0x28): 1007",
            Authed,
            vec![
                send(frame(false, TEXT, ping_start(b"\xe2\x82"))),
                send(frame(true, CONTINUATION, b"(\"}")),
                expect(Close(&[1007])),
            ],
        ),
        row(
            "truncated 4-byte character at a fragment boundary (0xf0 0x9f | '\"'): 1007",
            Authed,
            vec![
                send(frame(false, TEXT, ping_start(b"a\xf0\x9f"))),
                send(frame(true, CONTINUATION, b"\"}")),
                expect(Close(&[1007])),
            ],
        ),
        // --- Section 10.4: limits.max_message_bytes.
        row(
            "single frame over limits.max_message_bytes: 1009",
            Authed,
            vec![
                send(text(
                    json!({"type": "ping", "id": "big", "pad": "p".repeat(MAX_MESSAGE + 10)})
                        .to_string(),
                )),
                expect(Close(&[1009])),
            ],
        ),
        row(
            "fragments under limits.max_message_bytes in total: one message",
            Authed,
            {
                let mut steps = vec![send(frame(
                    false,
                    TEXT,
                    r#"{"type":"ping","id":"f","pad":""#,
                ))];
                for _ in 0..(MAX_MESSAGE / 1000 - 1) {
                    steps.push(send(frame(false, CONTINUATION, [b'p'; 1000])));
                }
                steps.push(send(frame(true, CONTINUATION, r#""}"#)));
                steps.push(pong_reply("f"));
                steps
            },
        ),
        row(
            "fragments each under limits.max_message_bytes, over it in total: 1009",
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
            "header claiming 2^63 bytes (top bit of the 64-bit length set): 1002 or 1009",
            Authed,
            // 1002: section 5.2 says the top bit MUST be 0; 1009: too big. Either.
            vec![
                send(header_claiming(0x80 | TEXT, 1 << 63)),
                expect(Close(&[1002, 1009])),
            ],
        ),
        row(
            "header claiming 1 GiB, payload never sent: 1009 without waiting for it",
            Authed,
            vec![
                send(header_claiming(0x80 | TEXT, 1 << 30)),
                expect(Close(&[1009])),
            ],
        ),
        // --- wsgate: text only.
        row(
            "binary message: 1003",
            Authed,
            vec![send(frame(true, BINARY, [1, 2, 3])), expect(Close(&[1003]))],
        ),
        // --- Reassembly from the byte stream.
        row(
            "a masked request written one byte per TCP write: reassembled",
            Authed,
            vec![Step::SendBytewise(ping_request("tiny")), pong_reply("tiny")],
        ),
        row(
            "two requests in one TCP write: two replies, in order",
            Authed,
            vec![
                send([ping_request("one"), ping_request("two")].concat()),
                pong_reply("one"),
                pong_reply("two"),
            ],
        ),
    ];
    for code in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
        rows.push(row(
            format!("close with the invalid code {code}: 1002"),
            Authed,
            vec![send(close_frame(code, b"")), expect(Close(&[1002]))],
        ));
    }
    for code in [1001u16, 3000, 4999] {
        rows.push(row(
            format!("close with the valid code {code}: a close, then TCP closed"),
            Authed,
            vec![send(close_frame(code, b"")), expect(AnyClose)],
        ));
    }
    rows
}

/// Rows before authentication only.
pub fn pending_rows(token: &str) -> Vec<Row> {
    use Expect::*;
    use Phase::Pending;
    vec![row(
        "auth frame written one byte per TCP write: reassembled (before auth)",
        Pending,
        vec![Step::SendBytewise(text(auth_text(token))), expect(Welcome)],
    )]
}
