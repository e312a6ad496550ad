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

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::auth::{Credential, Identity, Token};
use serde_json::value::RawValue;

use crate::broker::Recovery;
use crate::clock::unix_micros;
use crate::hub::{CloseSignal, ConnHandle, Member, Outbound, OutboundQueue};
use crate::limits::{MessageLimiter, RateVerdict, SessionSlot};
use crate::metrics::{AuthFailure, RateLimit};
use crate::protocol::{
    self, ClientFrame, CloseCode, ErrorCode, Frame, Position, Publication, Reply, Request,
    RequestError, message_frame,
};
use crate::state::AppState;

/// Most queued frames written per flush.
const MAX_BATCH: usize = 64;
/// How long we wait for the client's answer to our close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Runs a connection to the end. `slot` holds its place in `max_connections`.
/// Every log line of the connection carries its `conn` id, and `session` and
/// `user_id` once authenticated.
pub async fn run(socket: WebSocket, state: AppState, slot: SessionSlot) {
    let conn_id = state.next_conn_id();
    let span = tracing::info_span!(
        "connection",
        conn = conn_id,
        session = tracing::field::Empty,
        user_id = tracing::field::Empty,
    );
    run_connection(socket, state, slot, conn_id)
        .instrument(span)
        .await
}

async fn run_connection(socket: WebSocket, state: AppState, slot: SessionSlot, conn_id: u64) {
    let mut slot = slot;
    let ip = slot.ip();
    let metrics = state.metrics.clone();
    metrics.connections_opened.inc();
    metrics.connections_pending.inc();
    let mut socket = socket;
    // Revocations from here on must reach this connection (checked again
    // once it is in the hub).
    let auth_started = std::time::Instant::now();
    let outcome = if state.auth_failures.is_blocked(ip) {
        // Too many failures from this address: refuse before the cache or
        // the database sees anything.
        metrics.rate_limited(RateLimit::Auth);
        Err(End::Close(CloseCode::RateLimited))
    } else {
        // Boxed, like the other big one-off steps below: the task of an idle
        // socket then keeps only the serve loop's state, not the largest
        // future it ever awaited (measured: most of an idle socket's memory).
        Box::pin(authenticate(&mut socket, &state)).await
    };
    metrics.connections_pending.dec();
    if let Err(End::Close(CloseCode::AuthFailed | CloseCode::AuthRequired)) = &outcome
        && state.auth_failures.record_failure(ip)
    {
        tracing::info!(%ip, "authentication failures over the limit; address blocked for a while");
    }
    let identity = match outcome {
        Ok((identity, token)) => Some((identity, token)),
        Err(End::Close(code)) => {
            close(&mut socket, &state, code).await;
            None
        }
        Err(End::ClientGone(code)) => {
            tracing::debug!(code, "client left before authenticating");
            metrics.closed(code);
            None
        }
    };
    if let Some((identity, token)) = identity {
        slot.authenticated();
        metrics.auth_success.inc();
        metrics.connections_authenticated.inc();
        serve(socket, &state, conn_id, identity, token, ip, auth_started).await;
    }
}

/// How a phase ended: we close with a code, or the client already went
/// away (with the code it sent, 1005 without one, 1006 on a dropped link).
enum End {
    Close(CloseCode),
    ClientGone(u16),
}

/// Phase 1: the first frame and the token check.
async fn authenticate(socket: &mut WebSocket, state: &AppState) -> Result<(Identity, Token), End> {
    let metrics = &state.metrics;
    let mut closing = state.closing();
    let first = tokio::select! {
        first = tokio::time::timeout(state.config.auth.timeout, first_frame(socket)) => first,
        _ = closing.wait_for(|c| *c) => return Err(End::Close(CloseCode::Draining)),
    };
    let text = match first {
        Err(_elapsed) => {
            metrics.auth_failed(AuthFailure::Timeout);
            return Err(End::Close(CloseCode::AuthTimeout));
        }
        Ok(FirstFrame::Text(text)) => text,
        Ok(FirstFrame::Malformed) => {
            metrics.auth_failed(AuthFailure::Malformed);
            return Err(End::Close(CloseCode::AuthRequired));
        }
        Ok(FirstFrame::Gone(code)) => return Err(End::ClientGone(code)),
    };
    let token = match protocol::parse_auth_frame(&text) {
        Ok(token) => Token::new(token),
        Err(e) => {
            tracing::debug!(error = %e, "first frame refused");
            metrics.auth_failed(AuthFailure::Malformed);
            return Err(End::Close(CloseCode::AuthRequired));
        }
    };
    drop(text);
    // The store gets its own deadline so a hung database cannot hold a
    // socket open forever: answering "try again later" is the honest reply.
    let span = tracing::info_span!(
        "authenticate",
        auth.source = tracing::field::Empty,
        auth.result = tracing::field::Empty,
    );
    let (result, verdict) = match check_token(state, &token, &span).await {
        Checked::Valid(identity) => match state.policy.auto_join(&identity.user_id) {
            Ok(_) => ("ok", Ok((identity, token))),
            // The store's answer cannot be used safely as `{user_id}`: fail
            // closed (the client's token is fine, the id is the backend's).
            Err(e) => {
                span.in_scope(
                    || tracing::warn!(user_id = ?identity.user_id, error = %e, "user refused"),
                );
                metrics.auth_failed(AuthFailure::InvalidUserId);
                ("invalid_user_id", Err(End::Close(CloseCode::AuthFailed)))
            }
        },
        Checked::Invalid => {
            metrics.auth_failed(AuthFailure::InvalidToken);
            ("invalid_token", Err(End::Close(CloseCode::AuthFailed)))
        }
        Checked::Unavailable => {
            metrics.auth_failed(AuthFailure::BackendUnavailable);
            (
                "backend_unavailable",
                Err(End::Close(CloseCode::TryAgainLater)),
            )
        }
    };
    span.record("auth.result", result);
    verdict
}

/// What the caches and the store say of a token.
enum Checked {
    Valid(Identity),
    /// Unknown, expired, revoked, or its user inactive.
    Invalid,
    /// No layer could answer within `auth.timeout`.
    Unavailable,
}

/// Checks a token as every authentication does: caches, then the store,
/// within `auth.timeout` (so a hung database cannot hold a socket open
/// forever), recording its source on `span` and its duration.
async fn check_token(state: &AppState, token: &Token, span: &tracing::Span) -> Checked {
    let answer = tokio::time::timeout(state.config.auth.timeout, state.auth.authenticate(token))
        .instrument(span.clone())
        .await;
    let store = state.auth.store_name();
    match answer {
        Ok(Ok(answer)) => {
            span.record("auth.source", answer.source.as_str());
            state
                .metrics
                .auth_duration(answer.source, answer.elapsed.as_secs_f64());
            answer.identity.map_or(Checked::Invalid, Checked::Valid)
        }
        Ok(Err(e)) => {
            span.in_scope(|| tracing::warn!(error = %e, store, "token check failed"));
            Checked::Unavailable
        }
        Err(_elapsed) => {
            span.in_scope(|| tracing::warn!(store, "token check timed out"));
            Checked::Unavailable
        }
    }
}

enum FirstFrame {
    Text(Utf8Bytes),
    Malformed,
    Gone(u16),
}

async fn first_frame(socket: &mut WebSocket) -> FirstFrame {
    loop {
        match socket.recv().await {
            Some(Ok(Message::Text(text))) => return FirstFrame::Text(text),
            Some(Ok(Message::Binary(_))) => return FirstFrame::Malformed,
            // Control frames are answered by the library; keep waiting.
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(frame))) => return FirstFrame::Gone(client_code(frame)),
            // A first frame too big, not UTF-8 or not a valid frame at
            // all is a malformed first frame (4001).
            Some(Err(e)) if is_too_big(&e) || bad_frames(&e).is_some() => {
                return FirstFrame::Malformed;
            }
            Some(Err(_)) | None => return FirstFrame::Gone(1006),
        }
    }
}

/// Phase 2: an authenticated connection.
async fn serve(
    mut socket: WebSocket,
    state: &AppState,
    conn_id: u64,
    identity: Identity,
    token: Token,
    ip: IpAddr,
    auth_started: std::time::Instant,
) {
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
        End::Close(code) => close(&mut socket, state, code).await,
        End::ClientGone(code) => state.metrics.closed(code),
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
    let limiter = MessageLimiter::new(state.config.limits.messages_per_second);
    let mut batch: Vec<Outbound> = Vec::new();
    // One timer for the connection, moved rather than re-registered on
    // every wake-up.
    let timer = sleep_until(Instant::now() + ping_interval);
    tokio::pin!(timer);
    // Far in the future when the token does not expire (the branch is off then).
    let no_expiry = Instant::now() + Duration::from_secs(10 * 365 * 86_400);
    let expiry = sleep_until(expires_at.map_or(no_expiry, expiry_instant));
    tokio::pin!(expiry);
    loop {
        let deadline = match keepalive {
            KeepAlive::PingAt(t) | KeepAlive::PongBy(t) => t,
        };
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            // A close request wins over queued frames: a slow consumer is
            // closed rather than fed further.
            biased;
            code = conn.close.requested() => return End::Close(code),
            _ = &mut expiry, if expires_at.is_some() => {
                tracing::debug!("token expired");
                return End::Close(CloseCode::AuthFailed);
            }
            incoming = socket.recv() => {
                // Any frame shows the peer is alive.
                keepalive = KeepAlive::PingAt(Instant::now() + ping_interval);
                match incoming {
                    Some(Ok(Message::Text(text))) => {
                        let verdict = limiter.as_ref().map_or(RateVerdict::Allow, |l| l.check());
                        let before = expires_at;
                        let expiring = &mut expires_at;
                        let handled = bounded_write(conn, pong_timeout, async {
                            match verdict {
                                RateVerdict::Allow => {
                                    Box::pin(handle_request(socket, state, conn, ip, &text, expiring)).await
                                }
                                RateVerdict::Refuse => {
                                    state.metrics.rate_limited(RateLimit::Messages);
                                    let id = protocol::parse_request(&text).id;
                                    let error = RequestError::new(ErrorCode::RateLimited, "too many requests");
                                    send(socket, refuse(state, &error, id.as_deref())).await
                                }
                                RateVerdict::Close => {
                                    state.metrics.rate_limited(RateLimit::Closed);
                                    Err(End::Close(CloseCode::RateLimited))
                                }
                            }
                        })
                        .await;
                        if let Err(end) = handled {
                            return end;
                        }
                        if expires_at != before {
                            // A refresh: the new token's expiry applies.
                            expiry.as_mut().reset(expires_at.map_or(no_expiry, expiry_instant));
                        }
                    }
                    Some(Ok(Message::Binary(_))) => return End::Close(CloseCode::Unsupported),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(frame))) => return End::ClientGone(client_code(frame)),
                    Some(Err(e)) if is_too_big(&e) => return End::Close(CloseCode::TooBig),
                    Some(Err(e)) if let Some(code) = bad_frames(&e) => return End::Close(code),
                    Some(Err(_)) | None => return End::ClientGone(1006),
                }
            }
            open = conn.queue.pop_batch(&mut batch, MAX_BATCH) => {
                if !open {
                    return End::Close(CloseCode::InternalError);
                }
                let written = write_batch(socket, state, &mut batch);
                if let Err(end) = bounded_write(conn, pong_timeout, written).await {
                    return end;
                }
            }
            _ = &mut timer => match keepalive {
                KeepAlive::PingAt(_) => {
                    let ping = async {
                        socket
                            .send(Message::Ping(Default::default()))
                            .await
                            .map_err(|_| End::ClientGone(1006))
                    };
                    if let Err(end) = bounded_write(conn, pong_timeout, ping).await {
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

/// Writes queued frames with one flush, then counts them.
async fn write_batch(
    socket: &mut WebSocket,
    state: &AppState,
    batch: &mut Vec<Outbound>,
) -> Result<(), End> {
    let n = batch.len() as u64;
    let mut published = Vec::new();
    for out in batch.drain(..) {
        if let Some(us) = out.published_us {
            published.push(us);
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
    if !published.is_empty() {
        let now = unix_micros();
        for us in published {
            metrics
                .delivery_latency
                .observe(now.saturating_sub(us) as f64 / 1e6);
        }
    }
    Ok(())
}

fn text_message(frame: Frame) -> Message {
    // Frames are built from `String`, so the UTF-8 check cannot fail.
    Message::Text(Utf8Bytes::try_from(frame.into_bytes()).unwrap_or_default())
}

async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), End> {
    socket
        .send(text_message(frame))
        .await
        .map_err(|_| End::ClientGone(1006))
}

/// Serves one request. Refusals are `error` replies; only socket and broker
/// failures end the connection. A `refresh` sets `expires_at` to its token's.
async fn handle_request(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    ip: IpAddr,
    text: &str,
    expires_at: &mut Option<u64>,
) -> Result<(), End> {
    let ClientFrame { id, request } = protocol::parse_request(text);
    let id = id.as_deref();
    let reply = match request {
        Err(e) => refuse(state, &e, id),
        Ok(Request::Ping) => Reply::Pong { id }.encode(),
        Ok(Request::Refresh { token }) => {
            *expires_at = refresh(state, conn, ip, token).await?;
            Reply::Refreshed { id }.encode()
        }
        Ok(Request::Subscribe { group, since }) => {
            if !state.policy.can_subscribe(&conn.user_id, &group) {
                refuse(state, &forbidden(), id)
            } else if state.history.applies(&group) {
                return subscribe_with_history(socket, state, conn, &group, since.as_ref(), id)
                    .await;
            } else {
                match join(state, conn, &group).await {
                    Ok(_) => Reply::Subscribed {
                        group: &group,
                        // No history here: a client asking to recover is
                        // told it cannot, so it reloads its state.
                        recovered: since.map(|_| false),
                        offset: None,
                        epoch: None,
                        id,
                    }
                    .encode(),
                    Err(JoinFailure::TooMany) => refuse(state, &too_many_groups(), id),
                    Err(JoinFailure::Broker) => return Err(End::Close(CloseCode::TryAgainLater)),
                }
            }
        }
        Ok(Request::Unsubscribe { group }) => {
            let (was_member, _) = state.hub.leave(conn.id, &group);
            if was_member {
                unsubscribe_broker(state, &group, &conn.session).await;
            }
            Reply::Unsubscribed { group: &group, id }.encode()
        }
        Ok(Request::Publish { group, data }) => {
            if !state.policy.can_publish(&conn.user_id, &group) {
                refuse(state, &forbidden(), id)
            } else {
                let publication = Publication {
                    group: group.clone(),
                    data,
                    position: None,
                    ts: Some(unix_micros()),
                    trace: None,
                };
                if let Err(e) = state.broker.publish(vec![publication]).await {
                    tracing::warn!(error = %e, "client publish failed");
                    return Err(End::Close(CloseCode::TryAgainLater));
                }
                state.metrics.messages_published.inc();
                Reply::Published { group: &group, id }.encode()
            }
        }
    };
    send(socket, reply).await
}

/// An in-band token refresh: checks `token` as the first frame's token is
/// checked (caches, `auth.timeout`, the per-IP failure limiter, the same
/// metrics) and, when it is valid and of the same user, makes it the
/// connection's token and answers its expiry. Any refusal ends the connection: 4003 for a token that
/// is not valid or belongs to someone else, 4029 for an address over its
/// failure limit, 1013 when no layer can answer.
async fn refresh(
    state: &AppState,
    conn: &ConnHandle,
    ip: IpAddr,
    token: Token,
) -> Result<Option<u64>, End> {
    let metrics = &state.metrics;
    if state.auth_failures.is_blocked(ip) {
        metrics.rate_limited(RateLimit::Auth);
        return Err(End::Close(CloseCode::RateLimited));
    }
    let span = tracing::info_span!(
        "refresh",
        auth.source = tracing::field::Empty,
        auth.result = tracing::field::Empty,
    );
    let (result, verdict) = match check_token(state, &token, &span).await {
        Checked::Valid(identity) if identity.user_id == conn.user_id => {
            ("ok", Ok(identity.expires_at))
        }
        // Unknown, expired, revoked, inactive, or another user's.
        Checked::Valid(_) | Checked::Invalid => ("invalid_token", Err(AuthFailure::InvalidToken)),
        Checked::Unavailable => ("backend_unavailable", Err(AuthFailure::BackendUnavailable)),
    };
    span.record("auth.result", result);
    match verdict {
        Ok(expires_at) => {
            conn.credential.replace(token);
            metrics.auth_success.inc();
            tracing::debug!("token refreshed");
            Ok(expires_at)
        }
        Err(reason) => {
            metrics.auth_failed(reason);
            if reason == AuthFailure::BackendUnavailable {
                return Err(End::Close(CloseCode::TryAgainLater));
            }
            if state.auth_failures.record_failure(ip) {
                tracing::info!(%ip, "authentication failures over the limit; address blocked for a while");
            }
            Err(End::Close(CloseCode::AuthFailed))
        }
    }
}

/// Subscribes to a group with history: its live messages are held back
/// while the session joins, reads what history holds after `since`, writes
/// that replay and the `subscribed` reply; then the held messages the replay
/// did not cover follow. The subscription is in place before history is
/// read, so every message is in the replay, among the held ones, or both
/// (and then sent once): no gap and no duplicate.
async fn subscribe_with_history(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    group: &str,
    since: Option<&Position>,
    id: Option<&RawValue>,
) -> Result<(), End> {
    state.hub.hold(conn.id, group);
    let new_member = match join(state, conn, group).await {
        Ok(new_member) => new_member,
        Err(failure) => {
            state.hub.release(conn.id, group);
            return match failure {
                JoinFailure::TooMany => send(socket, refuse(state, &too_many_groups(), id)).await,
                JoinFailure::Broker => Err(End::Close(CloseCode::TryAgainLater)),
            };
        }
    };
    if !new_member {
        // Already subscribed: its messages have been arriving all along.
        state.hub.release_after(conn.id, group, None);
    }
    let read = if new_member { since } else { None };
    let Recovery {
        position,
        recovered,
        publications,
    } = match state.broker.history(group, read).await {
        Ok(recovery) => recovery,
        Err(e) => {
            tracing::warn!(error = %e, group, "history read failed");
            return Err(End::Close(CloseCode::TryAgainLater));
        }
    };
    let recovered = if new_member {
        recovered
    } else {
        since.map(|s| s.epoch == position.epoch && s.offset <= position.offset)
    };
    if !publications.is_empty() {
        for p in &publications {
            let frame = message_frame(&p.group, &p.data, p.position.as_ref());
            if socket.feed(text_message(frame)).await.is_err() {
                return Err(End::ClientGone(1006));
            }
        }
        state
            .metrics
            .messages_delivered
            .inc_by(publications.len() as u64);
    }
    let reply = Reply::Subscribed {
        group,
        recovered,
        offset: Some(position.offset),
        epoch: Some(&position.epoch),
        id,
    }
    .encode();
    // The replay is written with the reply, before any held message.
    send(socket, reply).await?;
    state.hub.release_after(conn.id, group, Some(position));
    Ok(())
}

fn too_many_groups() -> RequestError {
    RequestError::new(
        ErrorCode::TooManyGroups,
        "too many groups on this connection",
    )
}

/// An `error` reply, counted by its code.
fn refuse(state: &AppState, error: &RequestError, id: Option<&RawValue>) -> Frame {
    state.metrics.request_error(error.code);
    Reply::error(error, id)
}

fn forbidden() -> RequestError {
    RequestError::new(ErrorCode::Forbidden, "group not allowed")
}

/// Sends a close frame, counts it, and waits briefly for the client's answer.
async fn close(socket: &mut WebSocket, state: &AppState, code: CloseCode) {
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
async fn bounded_write(
    conn: &ConnHandle,
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), End>>,
) -> Result<(), End> {
    tokio::select! {
        biased;
        code = conn.close.requested() => Err(End::Close(code)),
        written = tokio::time::timeout(limit, write) => {
            written.unwrap_or(Err(End::Close(CloseCode::SlowConsumer)))
        }
    }
}

fn client_code(frame: Option<CloseFrame>) -> u16 {
    frame.map(|f| f.code).unwrap_or(1005)
}

/// The socket library reports frames over `limits.max_message_bytes` as a
/// capacity error.
fn is_too_big(e: &axum::Error) -> bool {
    matches!(socket_error(e), Some(tungstenite::Error::Capacity(_)))
}

/// What a socket error says about the client's frames, when it says
/// anything: invalid UTF-8 in a text frame (1007), or a frame that breaks
/// RFC 6455 (1002). Either is answered with a close frame, not a silent drop.
fn bad_frames(e: &axum::Error) -> Option<CloseCode> {
    match socket_error(e)? {
        tungstenite::Error::Utf8(_) => Some(CloseCode::InvalidData),
        tungstenite::Error::Protocol(_) => Some(CloseCode::ProtocolError),
        _ => None,
    }
}

fn socket_error(e: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(ws) = err.downcast_ref::<tungstenite::Error>() {
            return Some(ws);
        }
        source = err.source();
    }
    None
}

fn new_session_id() -> String {
    let bytes: [u8; 12] = rand::random();
    hex::encode(bytes)
}
