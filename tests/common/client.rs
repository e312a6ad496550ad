//! A WebSocket client for the tests, and how it saw a connection end.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::WAIT;

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    NoCloseFrame,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Client { ws }
    }

    /// Connects and authenticates; returns the client and its `welcome`.
    pub async fn authed(url: &str, token: &str) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        c.send_json(json!({"type": "auth", "token": token})).await;
        let welcome = c.recv_json().await;
        assert_eq!(welcome["type"], "welcome", "got {welcome}");
        (c, welcome)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(v.to_string()).await;
    }

    /// The next text frame as JSON; fails on close or after [`WAIT`].
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("stream open")
                .expect("frame ok");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).expect("JSON frame"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the next frame.
    pub async fn request(&mut self, v: Value) -> Value {
        self.send_json(v).await;
        self.recv_json().await
    }

    pub async fn subscribe(&mut self, group: &str) {
        let reply = self
            .request(json!({"type": "subscribe", "group": group}))
            .await;
        assert_eq!(reply["type"], "subscribed", "got {reply}");
    }

    /// Waits for the server to close; returns its code, failing if a data
    /// frame arrives first.
    pub async fn expect_close(&mut self) -> Closed {
        self.close_within(WAIT).await
    }

    pub async fn close_within(&mut self, wait: Duration) -> Closed {
        loop {
            let msg = tokio::time::timeout(wait, self.ws.next())
                .await
                .expect("the server closes within the wait");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Closed::Code(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => {
                    return Closed::NoCloseFrame;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(other)) => panic!("expected a close, got {other:?}"),
            }
        }
    }

    /// Asserts nothing but control frames arrives for `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// Asserts that a WebSocket upgrade to `url` is refused with HTTP 503 and a
/// `Retry-After` header (a full or draining node).
pub async fn assert_refused_503(url: &str) {
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            assert!(resp.headers().contains_key("retry-after"));
        }
        other => panic!("expected HTTP 503, got {:?}", other.map(|_| ())),
    }
}

/// Just the code of a close, for terse asserts.
pub fn code(c: Closed) -> u16 {
    match c {
        Closed::Code(code, _) => code,
        Closed::NoCloseFrame => 0,
    }
}
