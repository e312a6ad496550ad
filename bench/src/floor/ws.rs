//! One WebSocket session of the floor: a reader (this task) and a writer
//! task per socket.
//!
//! The reader decodes client frames from a small buffer and answers the
//! subset of wsgate's protocol wsgate-bench uses: the first frame must be
//! `{"type":"auth","token":<non-empty string>}` (the token is not checked:
//! the floor has no token store), answered `welcome`; then `subscribe` /
//! `unsubscribe` (answered with the `id` echoed) and `ping` (`pong`).
//! Anything else gets an `error` frame. WebSocket pings are answered with
//! pongs, a close with a close; binary frames and fragmented messages are
//! refused with close 1003 (wsgate-bench sends neither).
//!
//! The writer waits for its queue (`hub.rs`), takes everything queued at
//! that wake-up and writes it with one vectored write (replies, message
//! frames and close frames all go through the queue, so they stay in order).
//! After a close frame it shuts the socket's write side and ends.
//!
//! An idle socket holds no read buffer (the reader waits for readiness,
//! then reads). The floor sends no pings and has no idle timeout: a peer that vanishes
//! without a FIN holds its socket until the kernel notices.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;

use crate::frame::{self, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Refusal};
use crate::http::json_str;
use crate::hub::{Conn, Hub};

/// Largest client frame (auth and subscribe frames are small).
const MAX_FRAME: usize = 64 * 1024;
/// Most frames handed to one `writev` (Linux's IOV_MAX is 1024).
const MAX_IOV: usize = 512;

#[derive(Deserialize)]
struct ClientFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

/// Writes every frame of `frames` with as few `writev` calls as the kernel allows.
async fn write_frames(w: &mut OwnedWriteHalf, frames: &VecDeque<Bytes>) -> std::io::Result<()> {
    if frames.len() == 1 {
        return w.write_all(&frames[0]).await;
    }
    let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len().min(MAX_IOV));
    let mut it = frames.iter().peekable();
    while it.peek().is_some() {
        slices.clear();
        slices.extend(it.by_ref().take(MAX_IOV).map(|b| IoSlice::new(b)));
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            let n = w.write_vectored(rest).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

async fn writer(mut w: OwnedWriteHalf, conn: Arc<Conn>) {
    let mut out = VecDeque::new();
    while conn.take(&mut out).await {
        if write_frames(&mut w, &out).await.is_err() {
            conn.shut();
            return;
        }
        out.clear();
    }
    let _ = w.shutdown().await;
}

fn reply(kind: &str, group: Option<&str>, id: Option<&RawValue>) -> Bytes {
    let mut s = format!(r#"{{"type":"{kind}""#);
    if let Some(g) = group {
        s.push_str(r#","group":"#);
        s.push_str(&json_str(g));
    }
    if let Some(id) = id {
        s.push_str(r#","id":"#);
        s.push_str(id.get());
    }
    s.push('}');
    frame::text(s.as_bytes())
}

/// What the reader does after a frame.
enum Next {
    Go,
    /// Stop reading (a close was queued or answered).
    Stop,
}

struct Session {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    authed: bool,
    groups: Vec<String>,
}

impl Session {
    fn refuse(&self, code: u16, reason: &str) -> Next {
        self.conn.close(code, reason);
        Next::Stop
    }

    fn on_frame(&mut self, f: frame::Frame) -> Next {
        match f.opcode {
            OP_PING => {
                self.conn.push(frame::encode(OP_PONG, &f.payload));
                Next::Go
            }
            OP_PONG => Next::Go,
            OP_CLOSE => {
                let code = frame::close_code(&f.payload);
                // Echo the code (none given: an empty close payload).
                if code == 1005 {
                    self.conn.push(frame::encode(OP_CLOSE, &[]));
                    self.conn.shut();
                } else {
                    self.conn.close(code, "");
                }
                Next::Stop
            }
            OP_BINARY if self.authed => self.refuse(1003, "binary frames are not supported"),
            OP_TEXT | OP_CONT if !f.fin || f.opcode == OP_CONT => {
                if self.authed {
                    self.refuse(1003, "fragmented messages are not supported")
                } else {
                    self.refuse(4001, "auth required")
                }
            }
            OP_TEXT => self.on_text(&f.payload),
            _ => self.refuse(4001, "auth required"),
        }
    }

    fn on_text(&mut self, payload: &[u8]) -> Next {
        let parsed = std::str::from_utf8(payload)
            .ok()
            .and_then(|t| serde_json::from_str::<ClientFrame>(t).ok());
        if !self.authed {
            let ok = parsed.as_ref().is_some_and(|m| {
                m.kind == "auth" && m.token.as_deref().is_some_and(|t| !t.is_empty())
            });
            if !ok || payload.len() > 4096 {
                return self.refuse(4001, "auth required");
            }
            self.authed = true;
            self.hub.stats.authenticated.fetch_add(1, Ordering::Relaxed);
            let welcome = format!(
                r#"{{"type":"welcome","user_id":"floor","session":"{:016x}","node":"floor","groups":[]}}"#,
                self.conn.id
            );
            self.conn.push(frame::text(welcome.as_bytes()));
            return Next::Go;
        }
        let Some(m) = parsed else {
            if std::str::from_utf8(payload).is_err() {
                return self.refuse(1007, "invalid UTF-8");
            }
            self.conn.push(frame::text(
                br#"{"type":"error","code":"bad_request","message":"not a JSON object with a type"}"#,
            ));
            return Next::Go;
        };
        match (m.kind.as_str(), m.group.as_deref()) {
            ("subscribe", Some(g)) if !g.is_empty() => {
                if !self.groups.iter().any(|x| x == g) {
                    self.hub.subscribe(g, &self.conn);
                    self.groups.push(g.to_string());
                }
                self.conn.push(reply("subscribed", Some(g), m.id));
            }
            ("unsubscribe", Some(g)) => {
                if let Some(i) = self.groups.iter().position(|x| x == g) {
                    self.hub.unsubscribe(g, self.conn.id);
                    self.groups.swap_remove(i);
                }
                self.conn.push(reply("unsubscribed", Some(g), m.id));
            }
            ("ping", _) => {
                self.conn.push(reply("pong", None, m.id));
            }
            _ => {
                let mut s = String::from(
                    r#"{"type":"error","code":"bad_request","message":"not supported by the floor""#,
                );
                if let Some(id) = m.id {
                    s.push_str(r#","id":"#);
                    s.push_str(id.get());
                }
                s.push('}');
                self.conn.push(frame::text(s.as_bytes()));
            }
        }
        Next::Go
    }
}

/// Runs a session on an upgraded socket; `buf` holds any bytes read past
/// the request head.
pub async fn session(s: TcpStream, mut buf: BytesMut, hub: Arc<Hub>) {
    let conn = hub.new_conn();
    hub.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (mut r, w) = s.into_split();
    let writer = tokio::spawn(writer(w, conn.clone()));
    let mut sess = Session {
        hub: hub.clone(),
        conn: conn.clone(),
        authed: false,
        groups: Vec::new(),
    };
    'read: loop {
        loop {
            match frame::decode(&mut buf, MAX_FRAME) {
                Ok(Some(f)) => {
                    if let Next::Stop = sess.on_frame(f) {
                        break 'read;
                    }
                }
                Ok(None) => break,
                Err(Refusal(code, reason)) => {
                    let code = if sess.authed { code } else { 4001 };
                    sess.refuse(code, reason);
                    break 'read;
                }
            }
        }
        // An idle socket holds no read buffer: wait for readiness first,
        // and let the buffer go once every byte in it is consumed.
        if buf.is_empty() && buf.capacity() > 0 {
            buf = BytesMut::new();
        }
        if r.readable().await.is_err() {
            conn.shut();
            break;
        }
        if buf.capacity() - buf.len() < 256 {
            buf.reserve(1024);
        }
        match r.try_read_buf(&mut buf) {
            Ok(0) => {
                conn.shut();
                break;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                conn.shut();
                break;
            }
        }
    }
    for g in &sess.groups {
        hub.unsubscribe(g, conn.id);
    }
    if sess.authed {
        hub.stats.authenticated.fetch_sub(1, Ordering::Relaxed);
    }
    // Once the close is written, wait (briefly) for the client's own close
    // or FIN, so the client sees an orderly end; then drop the socket.
    let _ = writer.await;
    let mut sink = [0u8; 256];
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
        while let Ok(n) = r.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    hub.stats.connections.fetch_sub(1, Ordering::Relaxed);
}
