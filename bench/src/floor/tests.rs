//! End-to-end tests of the floor on loopback: tokio-tungstenite (the client
//! wsgate-bench uses) and a raw TCP client that splits its frames.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

use crate::frame::{self, tests::client_frame};
use crate::hub::Hub;

async fn start() -> (String, Arc<Hub>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let hub = Arc::new(Hub::new(1024));
    tokio::spawn(crate::accept_loop(l, hub.clone(), Arc::from("/ws")));
    (addr, hub)
}

async fn next_text<S>(ws: &mut S) -> String
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = m {
            return t.as_str().to_string();
        }
    }
}

#[tokio::test]
async fn auth_subscribe_publish_close() {
    let (addr, hub) = start().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"auth","token":"anything"}"#))
        .await
        .unwrap();
    assert!(
        next_text(&mut ws)
            .await
            .starts_with(r#"{"type":"welcome","#)
    );
    ws.send(Message::text(r#"{"type":"subscribe","group":"g","id":7}"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"subscribed","group":"g","id":7}"#
    );
    ws.send(Message::text(r#"{"type":"subscribe","group":"h"}"#))
        .await
        .unwrap();
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"subscribed","group":"h"}"#
    );

    let client = reqwest::Client::new();
    let url = format!("http://{addr}/api/v1/publish");
    let r = client
        .post(&url)
        .body(r#"{"group":"g","data":{"seq":1,"ts":2}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    for body in [
        r#"{"group":"g","data":{"seq":1,"ts":2}}"#,
        r#"{"messages":[{"group":"h","data":2},{"group":"nobody","data":0},{"group":"g","data":"three"}]}"#,
    ] {
        let r = client
            .post(&url)
            .header("authorization", "Bearer whatever")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.text().await.unwrap(), r#"{"ok":true}"#);
    }
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"message","group":"g","data":{"seq":1,"ts":2}}"#
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"message","group":"h","data":2}"#
    );
    assert_eq!(
        next_text(&mut ws).await,
        r#"{"type":"message","group":"g","data":"three"}"#
    );

    // WebSocket ping, application ping.
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    ws.send(Message::text(r#"{"type":"ping","id":"p"}"#))
        .await
        .unwrap();
    let mut saw_pong = false;
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                saw_pong = true;
            }
            Message::Text(t) => {
                assert_eq!(t.as_str(), r#"{"type":"pong","id":"p"}"#);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(saw_pong);

    let m = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("wsgate_messages_delivered_total 3\n"), "{m}");
    assert!(
        m.contains("wsgate_connections{state=\"authenticated\"} 1\n"),
        "{m}"
    );
    assert_eq!(
        reqwest::get(format!("http://{addr}/readyz"))
            .await
            .unwrap()
            .status()
            .as_u16(),
        200
    );

    // Close handshake: the server answers and ends the connection.
    ws.send(Message::Close(None)).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(end.is_ok());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hub.group_count(), 0);
}

#[tokio::test]
async fn raw_client_split_frames_and_refusals() {
    let (addr, _hub) = start().await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while !head[..n].ends_with(b"\r\n\r\n") {
        n += s.read(&mut head[n..]).await.unwrap();
    }
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"));
    assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="));
    // The auth frame in three pieces, with pauses between them.
    let auth = client_frame(
        true,
        frame::OP_TEXT,
        br#"{"type":"auth","token":"t"}"#,
        [1, 2, 3, 4],
    );
    for part in [&auth[..1], &auth[1..7], &auth[7..]] {
        s.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert_eq!(buf[0], 0x81, "an unmasked text frame");
    assert!(String::from_utf8_lossy(&buf[2..n]).starts_with(r#"{"type":"welcome""#));
    // A binary frame after welcome: close 1003, then the server ends the TCP stream.
    s.write_all(&client_frame(true, frame::OP_BINARY, b"x", [1, 2, 3, 4]))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    assert_eq!(got[0], 0x88);
    assert_eq!(frame::close_code(&got[2..]), 1003);

    // Before auth, anything but an auth frame: close 4001.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
        .await
        .unwrap();
    ws.send(Message::text(r#"{"type":"subscribe","group":"g"}"#))
        .await
        .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(c)) => assert_eq!(u16::from(c.code), 4001),
        other => panic!("unexpected {other:?}"),
    }
}
