//! HTTP/1.1 by hand, just enough for wsgate-bench and bench.sh: keep-alive
//! requests with a `Content-Length` body (no chunked bodies), and the routes
//!
//! - `GET /ws` with `Upgrade: websocket`: the WebSocket session (`ws.rs`);
//! - `POST /api/v1/publish`: `{"group","data"}` or `{"messages":[...]}`,
//!   any `Authorization: Bearer <key>` accepted (the floor checks no key),
//!   answered `{"ok":true}` after the frames are queued;
//! - `GET /readyz`, `GET /healthz`: `ok`;
//! - `GET /metrics`: the counters wsgate-bench reads, under wsgate's names.
//!
//! Every listener serves every route; the flags only choose the ports.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::BytesMut;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::hub::Hub;
use crate::{frame, ws};

/// Largest request head, and largest request body.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A parsed request head.
#[derive(Debug, Default)]
pub struct Head {
    pub method: String,
    pub path: String,
    pub http10: bool,
    pub content_length: Option<usize>,
    pub chunked: bool,
    pub close: bool,
    pub upgrade_ws: bool,
    pub ws_key: Option<String>,
    pub ws_version: Option<String>,
    pub bearer: Option<String>,
}

/// Parses a request head (up to and including the blank line).
pub fn parse_head(raw: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let mut h = Head {
        method: first.next()?.to_string(),
        path: first.next()?.to_string(),
        ..Default::default()
    };
    h.http10 = first.next()? == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => h.content_length = Some(value.parse().ok()?),
            "transfer-encoding" => h.chunked = value.to_ascii_lowercase().contains("chunked"),
            "connection" => {
                let v = value.to_ascii_lowercase();
                h.close = v.contains("close");
            }
            "upgrade" => h.upgrade_ws = value.eq_ignore_ascii_case("websocket"),
            "sec-websocket-key" => h.ws_key = Some(value.to_string()),
            "sec-websocket-version" => h.ws_version = Some(value.to_string()),
            "authorization" => {
                h.bearer = value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
            }
            _ => {}
        }
    }
    Some(h)
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn respond(
    s: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &[u8],
    close: bool,
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{}\r\n",
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    let mut out = Vec::with_capacity(head.len() + body.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body);
    s.write_all(&out).await
}

/// Serves one accepted connection: HTTP requests until it closes, or a
/// WebSocket session if it asks for one on `ws_path`.
pub async fn serve(mut s: TcpStream, hub: Arc<Hub>, ws_path: Arc<str>) {
    let _ = s.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        // The head.
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                let _ = respond(
                    &mut s,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"",
                    true,
                )
                .await;
                return;
            }
            buf.reserve(1024);
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let raw = buf.split_to(end);
        let head = parse_head(&raw);
        // The head's bytes share the read buffer's allocation: let them go
        // (a WebSocket session frees that buffer while it idles).
        drop(raw);
        let Some(head) = head else {
            let _ = respond(
                &mut s,
                "400 Bad Request",
                "text/plain",
                b"bad request\n",
                true,
            )
            .await;
            return;
        };
        let path = head.path.split('?').next().unwrap_or("");
        if head.method == "GET" && path == &*ws_path {
            upgrade(s, head, buf, hub).await;
            return;
        }
        // The body.
        if head.chunked {
            let _ = respond(&mut s, "411 Length Required", "text/plain", b"", true).await;
            return;
        }
        let len = head.content_length.unwrap_or(0);
        if len > MAX_BODY {
            let _ = respond(&mut s, "413 Payload Too Large", "text/plain", b"", true).await;
            return;
        }
        while buf.len() < len {
            buf.reserve(len - buf.len());
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
        let body = buf.split_to(len);
        let close = head.close || head.http10;
        let r = match (head.method.as_str(), path) {
            ("POST", "/api/v1/publish") if head.bearer.is_none() => {
                let body = br#"{"error":"unauthorized"}"#;
                respond(&mut s, "401 Unauthorized", "application/json", body, close).await
            }
            ("POST", "/api/v1/publish") => match publish(&hub, &body) {
                Ok(()) => {
                    respond(
                        &mut s,
                        "200 OK",
                        "application/json",
                        br#"{"ok":true}"#,
                        close,
                    )
                    .await
                }
                Err(e) => {
                    let body = format!(r#"{{"error":"bad_request","message":{}}}"#, json_str(e));
                    respond(
                        &mut s,
                        "400 Bad Request",
                        "application/json",
                        body.as_bytes(),
                        close,
                    )
                    .await
                }
            },
            ("GET", "/readyz" | "/healthz") => {
                respond(&mut s, "200 OK", "text/plain", b"ok\n", close).await
            }
            ("GET", "/metrics") => {
                let text = hub.metrics_text();
                respond(
                    &mut s,
                    "200 OK",
                    "text/plain; version=0.0.4",
                    text.as_bytes(),
                    close,
                )
                .await
            }
            _ => respond(&mut s, "404 Not Found", "text/plain", b"not found\n", close).await,
        };
        if r.is_err() || close {
            return;
        }
    }
}

pub fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

async fn upgrade(mut s: TcpStream, head: Head, rest: BytesMut, hub: Arc<Hub>) {
    let key = match (&head.ws_key, head.upgrade_ws, head.ws_version.as_deref()) {
        (Some(k), true, Some("13")) => k,
        _ => {
            let _ = respond(
                &mut s,
                "400 Bad Request",
                "text/plain",
                b"websocket upgrade expected\n",
                true,
            )
            .await;
            return;
        }
    };
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\n\r\n",
        frame::accept_key(key)
    );
    if s.write_all(resp.as_bytes()).await.is_err() {
        return;
    }
    ws::session(s, rest, hub).await;
}

#[derive(Deserialize)]
struct Msg<'a> {
    #[serde(borrow)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    group: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<Vec<Msg<'a>>>,
}

/// wsgate's message frame, `{"type":"message","group":..,"data":..}`, the
/// data copied as it came (it is valid JSON: serde_json checked it).
pub fn message_frame(group: &str, data: &RawValue) -> bytes::Bytes {
    let mut s = String::with_capacity(40 + group.len() + data.get().len());
    s.push_str(r#"{"type":"message","group":"#);
    s.push_str(&json_str(group));
    s.push_str(r#","data":"#);
    s.push_str(data.get());
    s.push('}');
    frame::text(s.as_bytes())
}

/// Parses a publish body and queues its messages in order, each encoded once.
pub fn publish(hub: &Hub, body: &[u8]) -> Result<(), &'static str> {
    let b: Body = serde_json::from_slice(body).map_err(|_| "body is not a publish request")?;
    let one = |g: &str, d: &RawValue| -> Result<(), &'static str> {
        if g.is_empty() {
            return Err("empty group");
        }
        hub.publish(g, &message_frame(g, d));
        Ok(())
    };
    match (b.messages, b.group, b.data) {
        (Some(list), None, None) => {
            if list.iter().any(|m| m.group.is_empty()) {
                return Err("empty group");
            }
            for m in &list {
                one(&m.group, m.data)?;
            }
            Ok(())
        }
        (None, Some(g), Some(d)) => one(&g, d),
        _ => Err("give group and data, or messages"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let h = parse_head(raw).unwrap();
        assert_eq!((h.method.as_str(), h.path.as_str()), ("GET", "/ws"));
        assert!(h.upgrade_ws && !h.close && !h.http10);
        assert_eq!(h.ws_key.as_deref(), Some("dGhlIHNhbXBsZSBub25jZQ=="));
        let raw = b"POST /api/v1/publish HTTP/1.1\r\nauthorization: Bearer k1\r\ncontent-length: 12\r\n\r\n";
        let h = parse_head(raw).unwrap();
        assert_eq!(
            (h.content_length, h.bearer.as_deref()),
            (Some(12), Some("k1"))
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nxx"), Some(18));
    }

    #[test]
    fn publish_bodies_and_the_message_frame() {
        let hub = Hub::new(8);
        let c = hub.new_conn();
        hub.subscribe("g.1", &c);
        publish(&hub, br#"{"group":"g.1","data":{"seq":1,"ts":5}}"#).unwrap();
        publish(
            &hub,
            br#"{"messages":[{"group":"g.1","data":2},{"group":"g.2","data":3}]}"#,
        )
        .unwrap();
        assert!(publish(&hub, br#"{"group":"g.1"}"#).is_err());
        assert!(publish(&hub, br#"{"group":"","data":1}"#).is_err());
        let f = message_frame("g.1", &RawValue::from_string("{\"seq\":1}".into()).unwrap());
        assert_eq!(
            &f[2..],
            br#"{"type":"message","group":"g.1","data":{"seq":1}}"#
        );
        assert_eq!(
            hub.stats
                .delivered
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
        assert_eq!(
            hub.stats
                .published
                .load(std::sync::atomic::Ordering::Relaxed),
            3
        );
    }
}
