//! One WebSocket connection, from upgrade to close.
//!
//! Two phases, in one task:
//! 1. **Pending**: wait for the first frame (deadline `auth.timeout`), verify
//!    the token. The connection is in no group and nothing is sent to it but
//!    a close frame.
//! 2. **Authenticated**: register with the hub, join the auto-join groups,
//!    send `welcome`, then serve requests and forward queued frames until
//!    either side closes. Frames the hub queues before `welcome` is written
//!    wait in the queue, so nothing overtakes it.
//!
//! One task per connection (not a reader and a writer) keeps the per-socket
//! cost small; queued frames are written in batches with one flush.
//!
//! This file is the connection's life; `auth` holds the token checks (first
//! frame and `refresh`), `requests` the requests after `welcome`, `latest`
//! a subscribe's `"latest":true`, and `socket` the bounded writes and the
//! close handshake.

use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::ws::{self, Message, WebSocket};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::auth::{Credential, Identity, Token};

use crate::hub::{CloseSignal, ConnHandle, Member, Outbound, OutboundQueue};
use crate::limits::{MessageLimiter, RateVerdict, SessionSlot};
use crate::metrics::RateLimit;
use crate::protocol::{self, CloseCode, ErrorCode, Reply, RequestError};
use crate::state::AppState;

mod auth;
mod authorize;
mod latest;
mod requests;
mod socket;

use auth::authenticate;
use requests::{handle_request, refuse};
use socket::{bounded_write, client_code, close, send, violation, write_batch};

/// Most queued frames written per flush.
const MAX_BATCH: usize = 64;
/// Batches written in a row before the socket is read again while frames
/// keep coming: a client's requests and pongs wait at most this many
/// writes, and a busy socket is not polled for input on every wake-up.
const READ_EVERY: u32 = 8;
/// How long we wait for the client's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Runs a connection to the end. `slot` holds its place in `max_connections`.
/// Every log line of the connection carries its `conn` id, and `session` and
/// `user_id` once authenticated.
///
/// Not an `async fn`, so that the socket is boxed before any future holds
/// it: each `async fn` level keeps its own copy of a by-value argument for
/// its whole life, and this future is the socket's task for as long as the
/// socket lives (see docs/performance.md, "Memory per idle socket").
pub fn run(
    socket: WebSocket,
    state: AppState,
    slot: SessionSlot,
) -> impl Future<Output = ()> + Send + 'static {
    let conn_id = state.next_conn_id();
    let span = tracing::info_span!(
        "connection",
        conn = conn_id,
        session = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    run_connection(Box::new(socket), state, slot, conn_id).instrument(span)
}

/// An `async` block rather than an `async fn`, as `serve`: an `async fn`
/// keeps a second copy of each argument it takes by value in its future, and
/// this future is the socket's task for its whole life.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn run_connection(
    mut socket: Box<WebSocket>,
    state: AppState,
    mut slot: SessionSlot,
    conn_id: u64,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let ip = slot.ip();
        // Revocations from here on must reach this connection (checked
        // again once it is in the hub).
        let auth_started = std::time::Instant::now();
        // Boxed, like the other big one-off steps below: the task of an idle
        // socket then keeps only the serve loop's state, not the largest
        // future it ever awaited (measured: most of an idle socket's memory).
        let Some((identity, token)) = Box::pin(pending(&mut socket, &state, ip)).await else {
            return;
        };
        slot.authenticated();
        let metrics = &state.metrics;
        metrics.auth_success.inc();
        metrics.connections_authenticated.inc();
        serve(socket, &state, conn_id, identity, token, ip, auth_started).await;
    }
}

/// Phase 1: the first frame and its token. Answers the identity, or `None`
/// once the connection is closed.
async fn pending(
    socket: &mut WebSocket,
    state: &AppState,
    ip: IpAddr,
) -> Option<(Identity, Token)> {
    let metrics = &state.metrics;
    metrics.connections_opened.inc();
    metrics.connections_pending.inc();
    let outcome = if state.auth_failures.is_blocked(ip) {
        // Too many failures from this address: refuse before the cache or
        // the database sees anything.
        metrics.rate_limited(RateLimit::Auth);
        Err(End::Close(CloseCode::RateLimited))
    } else {
        Box::pin(authenticate(socket, state)).await
    };
    metrics.connections_pending.dec();
    if let Err(End::Close(CloseCode::AuthFailed | CloseCode::AuthRequired)) = &outcome
        && state.auth_failures.record_failure(ip)
    {
        tracing::info!(%ip, "authentication failures over the limit; address blocked for a while");
    }
    match outcome {
        Ok((identity, token)) => Some((identity, token)),
        Err(End::Close(code)) => {
            Box::pin(close(socket, state, code)).await;
            None
        }
        Err(End::ClientGone(code)) => {
            tracing::debug!(code, "client left before authenticating");
            metrics.closed(code);
            // The answer to its close frame, if it sent one.
            Box::pin(socket.finish(CLOSE_LINGER)).await;
            None
        }
    }
}

/// How a phase ended: we close with a code, or the client already went
/// away (with the code it sent, 1005 without one, 1006 on a dropped link).
enum End {
    Close(CloseCode),
    ClientGone(u16),
}

/// Phase 2: an authenticated connection.
#[allow(clippy::manual_async_fn)] // an `async` block on purpose: see `run_connection`
fn serve(
    mut socket: Box<WebSocket>,
    state: &AppState,
    conn_id: u64,
    identity: Identity,
    token: Token,
    ip: IpAddr,
    auth_started: std::time::Instant,
) -> impl Future<Output = ()> + Send + '_ {
    async move {
        let limits = &state.config.limits;
        let expires_at = identity.expires_at;
        // The token stays with the connection (redacted): re-validation asks the
        // `query` and `django` stores about the token itself.
        let conn = Arc::new(ConnHandle {
            id: conn_id,
            user_id: identity.user_id,
            session: new_session_id(),
            credential: Credential::new(token),
            queue: OutboundQueue::new(limits.outbound_queue, limits.conflate_after),
            close: CloseSignal::default(),
        });
        let span = tracing::Span::current();
        span.record("session", conn.session.as_str());
        span.record("user_id", conn.user_id.as_str());
        state.hub.register(conn.clone());
        // A revocation that landed after the token check but before the line
        // above found nothing to close: it recorded the digest, so look now.
        let revoked = state
            .auth
            .forgotten_since(&conn.credential.digest(), auth_started);
        let end = if revoked {
            End::Close(CloseCode::AuthFailed)
        } else {
            match Box::pin(welcome(&mut socket, state, &conn)).await {
                Ok(()) => {
                    tracing::debug!("authenticated");
                    serve_loop(&mut socket, state, &conn, ip, expires_at).await
                }
                Err(end) => end,
            }
        };
        conn.queue.close();
        for group in state.hub.unregister(conn.id) {
            unsubscribe_broker(state, &group, &conn.session).await;
        }
        // It no longer serves, even while its close frame waits for a stalled peer.
        state.metrics.connections_authenticated.dec();
        match end {
            End::Close(code) => Box::pin(close(&mut socket, state, code)).await,
            End::ClientGone(code) => {
                state.metrics.closed(code);
                // The answer to its close frame, if it sent one.
                Box::pin(socket.finish(CLOSE_LINGER)).await;
            }
        }
    }
}

/// Joins the auto-join groups and writes `welcome`.
async fn welcome(socket: &mut WebSocket, state: &AppState, conn: &ConnHandle) -> Result<(), End> {
    // Checked at authentication: an id that got this far has its groups.
    let groups = state
        .policy
        .auto_join(&conn.user_id)
        .map_err(|_| End::Close(CloseCode::AuthFailed))?;
    let mut joined = Vec::with_capacity(groups.len());
    for group in groups {
        match join(state, conn, &group).await {
            Ok(_) => joined.push(group),
            Err(JoinFailure::TooMany) => break,
            Err(JoinFailure::Broker) => return Err(End::Close(CloseCode::TryAgainLater)),
        }
    }
    let frame = Reply::Welcome {
        user_id: &conn.user_id,
        session: &conn.session,
        node: &state.node_id,
        groups: &joined,
    }
    .encode();
    send(socket, frame).await
}

enum JoinFailure {
    TooMany,
    Broker,
}

/// Joins a group locally and makes sure the broker delivers it here before
/// returning. Answers whether the connection is new in the group.
async fn join(state: &AppState, conn: &ConnHandle, group: &str) -> Result<bool, JoinFailure> {
    let joined = state
        .hub
        .join(conn.id, group)
        .map_err(|_| JoinFailure::TooMany)?;
    if !joined.new_member {
        return Ok(false);
    }
    let member = Member {
        user_id: conn.user_id.clone(),
        session: conn.session.clone(),
        node: state.node_id.clone(),
    };
    if let Err(e) = state.broker.subscribe(group, &member).await {
        tracing::warn!(error = %e, group, "broker subscribe failed");
        state.hub.leave(conn.id, group);
        return Err(JoinFailure::Broker);
    }
    if !state.hub.is_member(conn.id, group) {
        // Taken out (`POST /api/v1/unsubscribe`) while the broker
        // subscribed: its unsubscribe may have run before this subscribe
        // and found nothing, so undo this one (a second one is a no-op).
        unsubscribe_broker(state, group, &conn.session).await;
    }
    Ok(true)
}

async fn unsubscribe_broker(state: &AppState, group: &str, session: &str) {
    if let Err(e) = state.broker.unsubscribe(group, session).await {
        tracing::warn!(error = %e, group, "broker unsubscribe failed");
    }
}

/// When the server pings next, or by when the client must have answered.
enum KeepAlive {
    PingAt(Instant),
    PongBy(Instant),
}

/// When a token that expires at `at` (unix ms) does, on the runtime's clock.
fn expiry_instant(at: u64) -> Instant {
    Instant::now() + Duration::from_millis(at.saturating_sub(crate::clock::unix_ms()))
}

/// `expires_at`: when the connection's token expires (unix ms): the
/// connection is closed with 4003 then, unless a `refresh` brought a token
/// that lasts longer.
async fn serve_loop(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    ip: IpAddr,
    mut expires_at: Option<u64>,
) -> End {
    let ping_interval = state.config.server.ping_interval;
    let pong_timeout = state.config.server.pong_timeout;
    let mut keepalive = KeepAlive::PingAt(Instant::now() + ping_interval);
    // Made at the first request, and boxed: an idle socket holds no limiter
    // (two of them are a fair part of this loop's state), and a new one
    // allows a full burst whether it was made now or at the first request.
    let per_second = state.config.limits.messages_per_second;
    let mut limiter: Option<Box<MessageLimiter>> = None;
    let mut batch: Vec<Outbound> = Vec::new();
    let write_delay = state.config.server.write_delay;
    // When the token expires, on the runtime's clock.
    let mut expiry = expires_at.map(expiry_instant);
    // One timer for the connection, for the keep-alive and the token's
    // expiry, whichever is first (a timer is a tenth of an idle socket's
    // state); moved rather than re-registered on every wake-up.
    let timer = sleep_until(Instant::now() + ping_interval);
    tokio::pin!(timer);
    // Batches written since the socket was last read (see `READ_EVERY`).
    let mut writes_unread = 0;
    loop {
        let keepalive_at = match keepalive {
            KeepAlive::PingAt(t) | KeepAlive::PongBy(t) => t,
        };
        let deadline = expiry.map_or(keepalive_at, |e| e.min(keepalive_at));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // One hand-written wait rather than `select!`, for the order: a
        // close request first (a slow consumer is closed rather than fed
        // further), then queued frames, and the socket and the timers only
        // when nothing is queued or every `READ_EVERY` batches. Polling the
        // socket on every wake-up for a frame was a tenth of the CPU of a
        // fan-out; what is not polled keeps its waker and wakes us later.
        //
        // A close request wakes the queue's consumer (`request_close`), and
        // every `Pending` below has registered on the queue, so the code is
        // only read here: first, and again after registering, for a request
        // that came in between.
        let wake = std::future::poll_fn(|cx| {
            if let Some(code) = conn.close.code() {
                return Poll::Ready(Wake::Close(code));
            }
            let queue_first = writes_unread < READ_EVERY;
            if queue_first && let Poll::Ready(open) = conn.queue.poll_pop(cx, &mut batch, MAX_BATCH)
            {
                writes_unread += 1;
                return Poll::Ready(Wake::Queued(open));
            }
            writes_unread = 0;
            if let Poll::Ready(incoming) = socket.poll_recv(cx) {
                return Poll::Ready(Wake::Incoming(incoming));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            if !queue_first
                && let Poll::Ready(open) = conn.queue.poll_pop(cx, &mut batch, MAX_BATCH)
            {
                writes_unread = 1;
                return Poll::Ready(Wake::Queued(open));
            }
            match conn.close.code() {
                Some(code) => Poll::Ready(Wake::Close(code)),
                None => Poll::Pending,
            }
        })
        .await;
        match wake {
            Wake::Close(code) => return End::Close(code),
            Wake::Incoming(incoming) => {
                // Any frame shows the peer is alive.
                keepalive = KeepAlive::PingAt(Instant::now() + ping_interval);
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if limiter.is_none() {
                            limiter = MessageLimiter::new(per_second).map(Box::new);
                        }
                        let verdict = limiter.as_ref().map_or(RateVerdict::Allow, |l| l.check());
                        let before = expires_at;
                        let expiring = &mut expires_at;
                        // Boxed, as every write below: the state of a write in
                        // flight is allocated only while it is.
                        let handled = Box::pin(bounded_write(conn, pong_timeout, async {
                            match verdict {
                                RateVerdict::Allow => {
                                    Box::pin(handle_request(
                                        socket, state, conn, ip, &text, expiring,
                                    ))
                                    .await
                                }
                                RateVerdict::Refuse => {
                                    state.metrics.rate_limited(RateLimit::Messages);
                                    let id = protocol::parse_request(&text).id;
                                    let error = RequestError::new(
                                        ErrorCode::RateLimited,
                                        "too many requests",
                                    );
                                    send(socket, refuse(state, &error, id.as_deref())).await
                                }
                                RateVerdict::Close => {
                                    state.metrics.rate_limited(RateLimit::Closed);
                                    Err(End::Close(CloseCode::RateLimited))
                                }
                            }
                        }))
                        .await;
                        if let Err(end) = handled {
                            return end;
                        }
                        if expires_at != before {
                            // A refresh: the new token's expiry applies.
                            expiry = expires_at.map(expiry_instant);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return End::Close(CloseCode::Unsupported),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => return End::ClientGone(client_code(frame)),
                    Some(Err(e)) if let Some(code) = violation(&e) => return End::Close(code),
                    Some(Err(_)) | None => return End::ClientGone(1006),
                }
            }
            Wake::Queued(open) => {
                if !open {
                    return End::Close(CloseCode::InternalError);
                }
                if !write_delay.is_zero() && batch.len() < MAX_BATCH {
                    // Coalescing (opt-in): let more frames gather for one
                    // write. Boxed, so an idle socket's task does not hold
                    // the timer.
                    if let Some(code) = Box::pin(gather(conn, write_delay)).await {
                        return End::Close(code);
                    }
                    let room = MAX_BATCH - batch.len();
                    conn.queue.take_ready(&mut batch, room);
                }
                if let Err(end) = write_batch(socket, state, conn, pong_timeout, &mut batch).await {
                    return end;
                }
            }
            Wake::Timer if expiry.is_some_and(|e| e <= Instant::now()) => {
                tracing::debug!("token expired");
                return End::Close(CloseCode::AuthFailed);
            }
            // The expiry's deadline moved later (a refresh): nothing is due.
            Wake::Timer if Instant::now() < keepalive_at => {}
            Wake::Timer => match keepalive {
                KeepAlive::PingAt(_) => {
                    let ping = async {
                        socket
                            .send(ws::frame::encode(ws::frame::OP_PING, &[]))
                            .await
                            .map_err(|_| End::ClientGone(1006))
                    };
                    if let Err(end) = Box::pin(bounded_write(conn, pong_timeout, ping)).await {
                        return end;
                    }
                    keepalive = KeepAlive::PongBy(Instant::now() + pong_timeout);
                }
                KeepAlive::PongBy(_) => {
                    tracing::debug!("pong timeout");
                    // The peer is gone or stuck; it should reconnect.
                    return End::Close(CloseCode::InternalError);
                }
            },
        }
    }
}

/// What woke the serve loop.
enum Wake {
    Close(CloseCode),
    Incoming(Option<Result<Message, ws::Error>>),
    /// Frames were taken from the queue (false: it is closed).
    Queued(bool),
    Timer,
}

/// Waits `delay` for more frames to queue (`server.write_delay`); a close
/// request ends the wait and is returned.
async fn gather(conn: &ConnHandle, delay: Duration) -> Option<CloseCode> {
    tokio::select! {
        biased;
        code = conn.close.requested() => Some(code),
        _ = tokio::time::sleep(delay) => None,
    }
}

fn new_session_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}

#[cfg(test)]
mod sizes {
    //! Where an idle socket's bytes go, as far as types tell: printed, not
    //! asserted (the memory target is measured by `wsgate-bench idle`; see
    //! docs/performance.md). `cargo test --lib session::sizes -- --nocapture`.

    use std::future::Future;
    use std::mem::size_of;
    use std::sync::Arc;

    use super::run;
    use crate::hub::{CloseSignal, ConnHandle, ConnId, OutboundQueue};
    use crate::limits::SessionSlot;
    use crate::state::AppState;
    use crate::token::Credential;
    use crate::ws::WebSocket;

    /// The size of the future a function of three owned arguments returns,
    /// without making one.
    fn future_size<A, B, C, F: Future>(_: fn(A, B, C) -> F) -> usize {
        size_of::<F>()
    }

    /// The same for two borrowed arguments (taken as `'static` here).
    fn future_size2<A, B, F: Future>(_: fn(A, B) -> F) -> usize {
        size_of::<F>()
    }

    #[test]
    fn print_sizes() {
        use crate::auth::{Authenticator, Token};
        let rows = [
            ("session future (run), the task's state", future_size(run)),
            (
                "token check (Authenticator::authenticate)",
                future_size2::<&'static Authenticator, &'static Token, _>(
                    Authenticator::authenticate,
                ),
            ),
            ("  + the socket, boxed by run", size_of::<WebSocket>()),
            ("ConnHandle (one Arc allocation)", size_of::<ConnHandle>()),
            ("  OutboundQueue", size_of::<OutboundQueue>()),
            ("  Credential (token + digest)", size_of::<Credential>()),
            ("  CloseSignal", size_of::<CloseSignal>()),
            (
                "hub entry (id, handle, group list)",
                size_of::<(ConnId, Arc<ConnHandle>, Vec<String>)>(),
            ),
            ("SessionSlot", size_of::<SessionSlot>()),
            (
                "MessageLimiter (made at the first request)",
                size_of::<crate::limits::MessageLimiter>(),
            ),
            ("AppState", size_of::<AppState>()),
            ("tokio Sleep", size_of::<tokio::time::Sleep>()),
        ];
        for (what, bytes) in rows {
            println!("{what:<45} {bytes:>6} B");
        }
    }
}
