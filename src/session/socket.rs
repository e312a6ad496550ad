//! Writing to the socket: queued frames in batches, single frames, and the
//! close handshake, each bounded in time; and reading what a socket error
//! means for the close code.

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::time::Sleep;

use super::{CLOSE_LINGER, End, MAX_BATCH};
use crate::clock::unix_micros;
use crate::hub::{ConnHandle, Outbound};
use crate::protocol::{CloseCode, Frame};
use crate::state::AppState;

/// Writes queued frames with one flush, then counts them.
pub(super) async fn write_batch(
    socket: &mut WebSocket,
    state: &AppState,
    batch: &mut Vec<Outbound>,
) -> Result<(), End> {
    let n = batch.len() as u64;
    // Publish times, kept here rather than in a new `Vec` per write (a
    // batch holds at most `MAX_BATCH` frames).
    let mut published = [0u64; MAX_BATCH];
    let mut timed = 0;
    for out in batch.drain(..) {
        if let Some(us) = out.published_us
            && timed < MAX_BATCH
        {
            published[timed] = us;
            timed += 1;
        }
        if socket.feed(text_message(out.frame)).await.is_err() {
            return Err(End::ClientGone(1006));
        }
    }
    if socket.flush().await.is_err() {
        return Err(End::ClientGone(1006));
    }
    let metrics = &state.metrics;
    metrics.messages_delivered.inc_by(n);
    if timed > 0 {
        let now = unix_micros();
        for us in &published[..timed] {
            metrics
                .delivery_latency
                .observe(now.saturating_sub(*us) as f64 / 1e6);
        }
    }
    Ok(())
}

pub(super) fn text_message(frame: Frame) -> Message {
    // Frames are built from `String`, so the UTF-8 check cannot fail.
    Message::Text(Utf8Bytes::try_from(frame.into_bytes()).unwrap_or_default())
}

pub(super) async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), End> {
    socket
        .send(text_message(frame))
        .await
        .map_err(|_| End::ClientGone(1006))
}

/// Sends a close frame, counts it, and waits briefly for the client's answer.
pub(super) async fn close(socket: &mut WebSocket, state: &AppState, code: CloseCode) {
    tracing::debug!(code = code.code(), "closing");
    state.metrics.closed(code.code());
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from_static(code.reason()),
    };
    // A stalled peer (a slow consumer) takes the frame only when it reads
    // again: give it until the pong timeout, then drop the socket.
    let limit = state.config.server.pong_timeout;
    let sent = tokio::time::timeout(limit, socket.send(Message::Close(Some(frame)))).await;
    if let Ok(Ok(())) = sent {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = socket.recv().await {}
        })
        .await;
    }
}

/// Runs a write to the socket, giving up when a close is requested meanwhile
/// (say the queue overflowed while the peer stalled) or when the peer takes
/// nothing for `limit`: a socket that does not drain is a slow consumer.
/// Cancelling a write is safe: the library keeps the unwritten bytes buffered
/// ahead of the close frame that follows.
///
/// The write is tried first, and the timer made only if it has to wait:
/// nearly every write completes at once, and then costs no timer at all.
pub(super) async fn bounded_write(
    conn: &ConnHandle,
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), End>>,
) -> Result<(), End> {
    let mut write = pin!(write);
    let mut timer = pin!(None::<Sleep>);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(written) = write.as_mut().poll(cx) {
            return Poll::Ready(written);
        }
        if let Poll::Ready(code) = conn.close.poll_requested(cx) {
            return Poll::Ready(Err(End::Close(code)));
        }
        if timer.is_none() {
            timer.set(Some(tokio::time::sleep(limit)));
        }
        match timer.as_mut().as_pin_mut().map(|t| t.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err(End::Close(CloseCode::SlowConsumer))),
            _ => Poll::Pending,
        }
    })
    .await
}

pub(super) fn client_code(frame: Option<CloseFrame>) -> u16 {
    frame.map(|f| f.code).unwrap_or(1005)
}

/// The socket library reports frames over `limits.max_message_bytes` as a
/// capacity error.
pub(super) fn is_too_big(e: &axum::Error) -> bool {
    matches!(socket_error(e), Some(tungstenite::Error::Capacity(_)))
}

/// What a socket error says about the client's frames, when it says
/// anything: invalid UTF-8 in a text frame (1007), or a frame that breaks
/// RFC 6455 (1002). Either is answered with a close frame, not a silent drop.
pub(super) fn bad_frames(e: &axum::Error) -> Option<CloseCode> {
    match socket_error(e)? {
        tungstenite::Error::Utf8(_) => Some(CloseCode::InvalidData),
        tungstenite::Error::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

pub(super) fn socket_error(e: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<tungstenite::Error>() {
            return Some(ws);
        }
        source = err.source();
    }
    None
}
