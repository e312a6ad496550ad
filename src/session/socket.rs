//! Writing to the socket: queued frames in batches, single frames, and the
//! close handshake, each bounded in time; and reading what a socket error
//! means for the close code.

use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Sleep;

use super::{CLOSE_LINGER, End};
use crate::clock::unix_micros;
use crate::hub::{ConnHandle, Outbound};
use crate::protocol::{CloseCode, Frame};
use crate::state::AppState;
use crate::ws::frame::Violation;
use crate::ws::{self, WebSocket};

/// Writes a batch taken from the outbound queue, then counts it. The write
/// is tried at once and nearly always done then; only what the socket did
/// not take waits, under `bounded_write` (boxed, so that the waiting state
/// is allocated only while a write waits).
pub(super) async fn write_batch(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    limit: Duration,
    batch: &mut Vec<Outbound>,
) -> Result<(), End> {
    let all = socket
        .write_or_queue(batch, |out| out.frame.wire())
        .map_err(|_| End::ClientGone(1006))?;
    if !all {
        let flushed = async { socket.flush().await.map_err(|_| End::ClientGone(1006)) };
        Box::pin(bounded_write(conn, limit, flushed)).await?;
    }
    let metrics = &state.metrics;
    metrics.messages_delivered.inc_by(batch.len() as u64);
    let mut now = None;
    for out in batch.drain(..) {
        if let Some(us) = out.published_us {
            let now = *now.get_or_insert_with(unix_micros);
            metrics
                .delivery_latency
                .observe(now.saturating_sub(us) as f64 / 1e6);
        }
    }
    Ok(())
}

pub(super) async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), End> {
    socket
        .send(frame.into_wire())
        .await
        .map_err(|_| End::ClientGone(1006))
}

/// Queues a frame of a run (snapshots, a history replay), writing as the
/// queue fills.
pub(super) async fn feed(socket: &mut WebSocket, frame: Frame) -> Result<(), End> {
    socket
        .feed(frame.into_wire())
        .await
        .map_err(|_| End::ClientGone(1006))
}

/// Sends a close frame, counts it, and waits briefly for the client's answer.
pub(super) async fn close(socket: &mut WebSocket, state: &AppState, code: CloseCode) {
    tracing::debug!(code = code.code(), "closing");
    state.metrics.closed(code.code());
    // A stalled peer (a slow consumer) takes the frame only when it reads
    // again: give it until the pong timeout, then drop the socket.
    let limit = state.config.server.pong_timeout;
    let sent = tokio::time::timeout(limit, socket.send_close(code.code(), code.reason())).await;
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
/// Cancelling a write is safe: the socket keeps the unwritten frames queued
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

pub(super) fn client_code(status: Option<(u16, String)>) -> u16 {
    status.map(|(code, _)| code).unwrap_or(1005)
}

/// What a read error says about the client's frames: the close code that
/// answers a broken rule (1002, 1007, 1009), or `None` for a dropped link.
pub(super) fn violation(e: &ws::Error) -> Option<CloseCode> {
    match e {
        ws::Error::Violation(Violation::Protocol(_)) => Some(CloseCode::ProtocolError),
        ws::Error::Violation(Violation::Utf8) => Some(CloseCode::InvalidData),
        ws::Error::Violation(Violation::TooBig) => Some(CloseCode::TooBig),
        ws::Error::Io(_) => None,
    }
}
