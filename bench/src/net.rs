//! Sockets: opening a WebSocket from a chosen loopback source address,
//! authenticating, subscribing, reading message frames; and the HTTP
//! publisher.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

pub type Ws = WebSocketStream<TcpStream>;

/// Longest wait for any one reply during setup (welcome, subscribed).
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A WebSocket URL and the loopback address it points at.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub addr: SocketAddr,
}

impl Endpoint {
    /// Parses `ws://IP:PORT/path`. Only loopback addresses are accepted: this
    /// tool never sends load anywhere else.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| format!("{url}: only ws:// URLs are supported"))?;
        let host_port = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = host_port
            .parse()
            .map_err(|_| format!("{url}: host must be IP:PORT (e.g. 127.0.0.1:8080)"))?;
        if !addr.ip().is_loopback() {
            return Err(format!("{url}: only loopback addresses may be loaded"));
        }
        Ok(Endpoint {
            url: url.to_string(),
            addr,
        })
    }
}

/// The source address of socket `i` when spreading over `n` addresses
/// 127.0.0.2, 127.0.0.3, ... (each has its own ~28k ephemeral ports).
/// `n == 0` lets the kernel choose (127.0.0.1).
pub fn source_addr(i: usize, n: usize) -> Option<IpAddr> {
    if n == 0 {
        return None;
    }
    let k = (i % n.min(250)) as u8;
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
}

/// Small buffers: the generator holds tens of thousands of sockets.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Why a socket could not be opened or authenticated.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// TCP connect (or bind) failed.
    Connect(String),
    /// The upgrade was refused (HTTP status) or broke.
    Handshake(String),
    /// The server closed the WebSocket with this code.
    Closed(u16),
    /// The connection dropped without a close frame.
    Dropped,
    /// Something unexpected arrived, or no reply in time.
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Handshake(e) => write!(f, "handshake: {e}"),
            Failure::Closed(code) => write!(f, "close {code}"),
            Failure::Dropped => write!(f, "dropped"),
            Failure::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

fn short_io(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => format!("{:?} (os error {code})", e.kind()),
        None => format!("{:?}", e.kind()),
    }
}

/// Opens a WebSocket to `ep` from `src`.
pub async fn open(ep: &Endpoint, src: Option<IpAddr>) -> Result<Ws, Failure> {
    let sock = TcpSocket::new_v4().map_err(|e| Failure::Connect(short_io(&e)))?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| Failure::Connect(format!("bind {ip}: {}", short_io(&e))))?;
    }
    let stream = sock
        .connect(ep.addr)
        .await
        .map_err(|e| Failure::Connect(short_io(&e)))?;
    let _ = stream.set_nodelay(true);
    let (ws, _response) =
        tokio_tungstenite::client_async_with_config(ep.url.as_str(), stream, Some(ws_config()))
            .await
            .map_err(|e| match e {
                tungstenite::Error::Http(resp) => {
                    Failure::Handshake(format!("HTTP {}", resp.status().as_u16()))
                }
                tungstenite::Error::Io(e) => Failure::Handshake(short_io(&e)),
                other => Failure::Handshake(other.to_string()),
            })?;
    Ok(ws)
}

/// Reads the next text frame, skipping control frames.
async fn next_text(ws: &mut Ws) -> Result<String, Failure> {
    loop {
        let next = tokio::time::timeout(REPLY_TIMEOUT, ws.next())
            .await
            .map_err(|_| Failure::Protocol("no reply in time".into()))?;
        match next {
            Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_string()),
            Some(Ok(Message::Close(frame))) => {
                return Err(Failure::Closed(
                    frame.map(|f| f.code.into()).unwrap_or(1005),
                ));
            }
            Some(Ok(Message::Binary(_))) => return Err(Failure::Protocol("binary frame".into())),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Err(Failure::Dropped),
        }
    }
}

/// The `type` of a server frame (tolerates spaces, as Python's json.dumps writes).
pub fn frame_type(text: &str) -> Option<&str> {
    string_after_key(text, "\"type\"")
}

/// Sends the first frame and waits for `welcome`.
pub async fn authenticate(ws: &mut Ws, token: &str) -> Result<(), Failure> {
    let frame = serde_json::json!({"type": "auth", "token": token}).to_string();
    ws.send(Message::text(frame))
        .await
        .map_err(|_| Failure::Dropped)?;
    let text = next_text(ws).await?;
    match frame_type(&text) {
        Some("welcome") => Ok(()),
        other => Err(Failure::Protocol(format!(
            "expected welcome, got {}",
            other.unwrap_or("?")
        ))),
    }
}

/// Subscribes to every group (requests pipelined) and waits for all replies.
pub async fn subscribe(ws: &mut Ws, groups: &[String]) -> Result<(), Failure> {
    for g in groups {
        let frame = serde_json::json!({"type": "subscribe", "group": g}).to_string();
        ws.feed(Message::text(frame))
            .await
            .map_err(|_| Failure::Dropped)?;
    }
    ws.flush().await.map_err(|_| Failure::Dropped)?;
    let mut pending = groups.len();
    while pending > 0 {
        let text = next_text(ws).await?;
        match frame_type(&text) {
            Some("subscribed") => pending -= 1,
            Some("message") => {}
            Some("error") => {
                let code = string_after_key(&text, "\"code\"").unwrap_or("?");
                return Err(Failure::Protocol(format!("subscribe refused: {code}")));
            }
            other => {
                return Err(Failure::Protocol(format!(
                    "unexpected {} while subscribing",
                    other.unwrap_or("?")
                )));
            }
        }
    }
    Ok(())
}

/// Closes politely: sends a close frame and waits (briefly) for the server
/// to end the TCP connection, so TIME_WAIT stays on the server side.
pub async fn close(mut ws: Ws) {
    let _ = ws.send(Message::Close(None)).await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn skip_colon(s: &str) -> &str {
    s.trim_start().strip_prefix(':').unwrap_or(s).trim_start()
}

/// The JSON string value after `key` (a quoted key), without unescaping.
fn string_after_key<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let at = text.find(key)? + key.len();
    let rest = skip_colon(&text[at..]).strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// The unsigned integer after `key` (a quoted key).
fn u64_after_key(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let rest = skip_colon(&text[at..]);
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// A group message sent by this tool: its group, sequence number and send
/// time (unix microseconds), read without a full JSON parse.
pub struct Tick<'a> {
    pub group: &'a str,
    pub seq: u64,
    /// Which sequential publisher sent it (0 when absent).
    pub lane: u64,
    pub ts_us: u64,
}

pub fn parse_tick(text: &str) -> Option<Tick<'_>> {
    if frame_type(text)? != "message" {
        return None;
    }
    let group = string_after_key(text, "\"group\"")?;
    let data = &text[text.find("\"data\"")?..];
    Some(Tick {
        group,
        seq: u64_after_key(data, "\"seq\"")?,
        lane: u64_after_key(data, "\"lane\"").unwrap_or(0),
        ts_us: u64_after_key(data, "\"ts\"")?,
    })
}

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Publishing through the HTTP API.

pub struct Publisher {
    client: reqwest::Client,
    urls: Vec<String>,
    auth: String,
    pad: String,
}

impl Publisher {
    /// `bases` are API base URLs (`http://127.0.0.1:8081`); requests go to
    /// `/api/v1/publish`, round-robin.
    pub fn new(bases: &[String], api_key: &str, payload: usize) -> Result<Publisher, String> {
        let mut urls = Vec::new();
        for b in bases {
            let rest = b
                .strip_prefix("http://")
                .ok_or_else(|| format!("{b}: only http:// API URLs are supported"))?;
            let host: SocketAddr = rest
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| format!("{b}: host must be IP:PORT"))?;
            if !host.ip().is_loopback() {
                return Err(format!("{b}: only loopback addresses may be loaded"));
            }
            urls.push(format!("{}/api/v1/publish", b.trim_end_matches('/')));
        }
        let client = reqwest::Client::builder()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(15))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Publisher {
            client,
            urls,
            auth: format!("Bearer {api_key}"),
            pad: "x".repeat(payload),
        })
    }

    /// One message's JSON
    /// (`{"group":..,"data":{"seq":..,"lane":..,"ts":..,"pad":..}}`).
    /// `lane` names the sequential publisher that sends it.
    pub fn message(&self, out: &mut String, group: &str, seq: u64, lane: usize, ts_us: u64) {
        use std::fmt::Write;
        let _ = write!(
            out,
            r#"{{"group":"{group}","data":{{"seq":{seq},"lane":{lane},"ts":{ts_us},"pad":"{}"}}}}"#,
            self.pad
        );
    }

    /// A request body: one message, or `{"messages":[..]}` for several.
    pub fn body(&self, items: &[(&str, u64)], lane: usize) -> String {
        let ts = unix_micros();
        let mut out = String::with_capacity(items.len() * (self.pad.len() + 90) + 16);
        if items.len() == 1 {
            self.message(&mut out, items[0].0, items[0].1, lane, ts);
        } else {
            out.push_str(r#"{"messages":["#);
            for (i, (g, seq)) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                self.message(&mut out, g, *seq, lane, ts);
            }
            out.push_str("]}");
        }
        out
    }

    /// Sends one request; `Err` holds a short reason (status or error kind).
    pub async fn send(&self, n: u64, body: String) -> Result<(), String> {
        let url = &self.urls[n as usize % self.urls.len()];
        let resp = self
            .client
            .post(url)
            .header("authorization", &self.auth)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout".to_string()
                } else if e.is_connect() {
                    "connect".to_string()
                } else {
                    "request".to_string()
                }
            })?;
        let status = resp.status();
        let _ = resp.bytes().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ticks_from_both_servers() {
        let rust = r#"{"type":"message","group":"g.1","data":{"seq":17,"lane":2,"ts":1700000000000001,"pad":"xx"}}"#;
        let t = parse_tick(rust).unwrap();
        assert_eq!(
            (t.group, t.seq, t.lane, t.ts_us),
            ("g.1", 17, 2, 1700000000000001)
        );
        let py = r#"{"type": "message", "group": "g.1", "data": {"seq": 3, "ts": 9, "pad": ""}}"#;
        let t = parse_tick(py).unwrap();
        assert_eq!((t.group, t.seq, t.ts_us), ("g.1", 3, 9));
        assert!(parse_tick(r#"{"type":"pong"}"#).is_none());
        assert_eq!(frame_type(r#"{"type": "welcome"}"#), Some("welcome"));
    }

    #[test]
    fn only_loopback() {
        assert!(Endpoint::parse("ws://127.0.0.1:8080/ws").is_ok());
        assert!(Endpoint::parse("ws://10.0.0.1:8080/ws").is_err());
        assert_eq!(
            source_addr(3, 2),
            Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        );
    }
}
