//! A raw WebSocket client over plain TCP, for tests that must send what a
//! WebSocket library refuses to (invalid UTF-8, unmasked frames, reserved
//! bits, oversized control frames, bad close codes) and look at the server's
//! frames bit by bit.
//!
//! The frame helpers are those of `tests/malformed/` (which keeps its own
//! copies); [`Raw::next`] also checks every server frame against RFC 6455
//! (see [`server_frame_faults`]) and keeps what it found in
//! [`Raw::faults`].

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::WAIT;

pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The masking key of every client frame.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame with the given first byte (FIN, RSV bits, opcode).
pub fn encode(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend((n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend((n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend(MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend(payload);
    }
    out
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: impl AsRef<[u8]>) -> Vec<u8> {
    encode(if fin { 0x80 } else { 0 } | opcode, payload.as_ref(), true)
}

/// A masked, final text frame.
pub fn text(payload: impl AsRef<[u8]>) -> Vec<u8> {
    frame(true, TEXT, payload)
}

/// A masked close frame with a code and a reason.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    frame(true, CLOSE, [&code.to_be_bytes()[..], reason].concat())
}

/// The header (and masking key) of a masked frame whose 64-bit length field
/// says `len`, without its payload.
pub fn header_claiming(first: u8, len: u64) -> Vec<u8> {
    [
        vec![first, 0x80 | 127],
        len.to_be_bytes().to_vec(),
        MASK.to_vec(),
    ]
    .concat()
}

/// A valid upgrade request with the RFC 6455 sample key.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

pub fn auth_text(token: &str) -> String {
    json!({"type": "auth", "token": token}).to_string()
}

/// Close codes an endpoint may put on the wire (RFC 6455 section 7.4 and
/// the IANA registry: 1012-1014 were registered later; 1004-1006 and 1015
/// must never be sent).
pub fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// One server frame, as read off the wire.
#[derive(Debug, Clone)]
pub struct ServerFrame {
    /// FIN, RSV1-3 and the opcode.
    pub first: u8,
    /// The MASK bit of the second byte.
    pub masked: bool,
    /// Unmasked if it was masked.
    pub payload: Vec<u8>,
}

impl ServerFrame {
    pub fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
}

/// What RFC 6455 forbids in this frame from a server: a mask (section 5.1),
/// RSV bits without an extension (5.2), a fragment (wsgate never fragments;
/// control frames never may, 5.5), a control payload over 125 bytes (5.5), a
/// text frame that is not UTF-8 (5.6, 8.1), a close payload of one byte, with
/// a code that may not be sent, or with a reason that is not UTF-8 (5.5.1,
/// 7.4).
pub fn server_frame_faults(f: &ServerFrame) -> Vec<String> {
    let mut faults = Vec::new();
    let op = f.opcode();
    if f.masked {
        faults.push(format!("opcode {op:#x}: masked server frame"));
    }
    if f.first & 0x70 != 0 {
        faults.push(format!(
            "opcode {op:#x}: RSV bits {:#x} set",
            f.first & 0x70
        ));
    }
    if f.first & 0x80 == 0 {
        faults.push(format!("opcode {op:#x}: FIN not set"));
    }
    if !matches!(op, TEXT | BINARY | CLOSE | PING | PONG) {
        faults.push(format!("unexpected opcode {op:#x}"));
    }
    if op >= 0x8 && f.payload.len() > 125 {
        faults.push(format!(
            "control frame {op:#x} with a {}-byte payload",
            f.payload.len()
        ));
    }
    if op == TEXT && std::str::from_utf8(&f.payload).is_err() {
        faults.push("text frame that is not UTF-8".into());
    }
    if op == CLOSE {
        match f.payload.len() {
            0 => {}
            1 => faults.push("close frame with a one-byte payload".into()),
            _ => {
                let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                if !sendable_close_code(code) {
                    faults.push(format!("close frame with the code {code}, never sent"));
                }
                if std::str::from_utf8(&f.payload[2..]).is_err() {
                    faults.push("close frame whose reason is not UTF-8".into());
                }
            }
        }
    }
    faults
}

/// One frame from the start of `buf`, and the bytes it used.
pub fn parse_frame(buf: &[u8]) -> Option<(usize, ServerFrame)> {
    if buf.len() < 2 {
        return None;
    }
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (n as usize, 2),
    };
    let masked = buf[1] & 0x80 != 0;
    let mask: Option<[u8; 4]> = if masked {
        let m = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let end = at.checked_add(len)?;
    let payload = buf.get(at..end)?;
    let payload = match mask {
        Some(m) => payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ m[i % 4])
            .collect(),
        None => payload.to_vec(),
    };
    Some((
        end,
        ServerFrame {
            first: buf[0],
            masked,
            payload,
        },
    ))
}

/// What the server sent next.
#[derive(Debug)]
pub enum In {
    Frame(ServerFrame),
    /// The socket ended (EOF or reset) without a frame.
    Ended(&'static str),
    Timeout,
}

pub fn describe(incoming: &In) -> String {
    match incoming {
        In::Frame(f) => describe_frame(f),
        In::Ended(how) => format!("socket ended ({how})"),
        In::Timeout => format!("nothing within {WAIT:?}"),
    }
}

pub fn describe_frame(f: &ServerFrame) -> String {
    let p = &f.payload;
    match f.opcode() {
        CLOSE if p.len() >= 2 => format!(
            "close {} {:?}",
            u16::from_be_bytes([p[0], p[1]]),
            String::from_utf8_lossy(&p[2..])
        ),
        CLOSE => format!("close with a {}-byte payload", p.len()),
        TEXT => format!("text {}", String::from_utf8_lossy(p)),
        PONG => format!("pong with {} bytes", p.len()),
        op => format!("opcode {op:#x} with {} bytes", p.len()),
    }
}

/// A raw client connection.
pub struct Raw {
    pub tcp: TcpStream,
    pub buf: Vec<u8>,
    /// Server frames read so far.
    pub frames: usize,
    /// What [`server_frame_faults`] found in them.
    pub faults: Vec<String>,
    /// A close frame was written (as the first frame of a write).
    pub sent_close: bool,
}

impl Raw {
    pub async fn tcp(addr: SocketAddr) -> Raw {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        // Small writes go out as written (see `write_bytewise`).
        tcp.set_nodelay(true).expect("TCP_NODELAY");
        Raw {
            tcp,
            buf: Vec::new(),
            frames: 0,
            faults: Vec::new(),
            sent_close: false,
        }
    }

    /// Writes `bytes` in one write.
    pub async fn write(&mut self, bytes: &[u8]) {
        if bytes.first().is_some_and(|b| b & 0x0f == CLOSE) {
            self.sent_close = true;
        }
        // The server may already have closed: what it answered is checked next.
        let _ = self.tcp.write_all(bytes).await;
    }

    /// Writes `bytes` one byte per write, pausing `pause` after each.
    pub async fn write_bytewise(&mut self, bytes: &[u8], pause: Duration) {
        for b in bytes {
            if self.tcp.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads more bytes; `Err` on EOF, reset or the deadline.
    pub async fn fill(&mut self, deadline: Instant) -> Result<(), In> {
        match tokio::time::timeout_at(deadline, self.tcp.read_buf(&mut self.buf)).await {
            Err(_) => Err(In::Timeout),
            Ok(Ok(0)) => Err(In::Ended("EOF")),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(In::Ended("reset")),
        }
    }

    /// The HTTP response head (without the blank line), or how the socket
    /// ended instead.
    pub async fn http_head(&mut self) -> Result<String, In> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return Ok(head);
            }
            self.fill(deadline).await?;
        }
    }

    /// The next frame from the server, checked with [`server_frame_faults`].
    pub async fn next(&mut self) -> In {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((len, f)) = parse_frame(&self.buf) {
                self.buf.drain(..len);
                self.frames += 1;
                self.faults.extend(server_frame_faults(&f));
                return In::Frame(f);
            }
            if let Err(end) = self.fill(deadline).await {
                return end;
            }
        }
    }

    /// The next frame that is not a ping or a pong.
    pub async fn next_data(&mut self) -> In {
        loop {
            match self.next().await {
                In::Frame(f) if matches!(f.opcode(), PING | PONG) => continue,
                other => return other,
            }
        }
    }
}
