//! Requests after `welcome`: subscribe (with history recovery),
//! unsubscribe, publish, ping and refresh, each answered by one frame.

use serde_json::value::RawValue;

use std::net::IpAddr;

use super::auth::refresh;
use super::authorize::authorize;
use super::latest::{history_latest, subscribe_with_latest, write_snapshots};
use super::socket::{feed, send};
use super::{End, JoinFailure, join, unsubscribe_broker};
use crate::broker::Recovery;
use crate::clock::unix_micros;
use crate::hub::ConnHandle;
use crate::protocol::{
    self, ClientFrame, CloseCode, ErrorCode, Frame, Position, Publication, Reply, Request,
    RequestError, message_frame,
};
use crate::state::AppState;
use crate::ws::WebSocket;

/// Serves one request. Refusals are `error` replies; only socket and broker
/// failures end the connection. A `refresh` sets `expires_at` to its token's.
pub(super) async fn handle_request(
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
        Ok(Request::Subscribe {
            group,
            since,
            latest,
            token,
        }) => {
            if let Err(e) = authorize(state, conn, ip, &group, token.as_ref()).await {
                refuse(state, &e, id)
            } else if state.history.applies(&group) {
                let since = since.as_ref();
                return subscribe_with_history(socket, state, conn, &group, since, latest, id)
                    .await;
            } else if latest && state.broker.keeps_latest(&group) {
                let recovering = since.is_some();
                return subscribe_with_latest(socket, state, conn, &group, recovering, id).await;
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
                    seq: None,
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

/// Joins `group` with its live messages held back (see `Hub::hold`), for a
/// subscribe that writes something (a replay, a latest) before them; on a
/// failure nothing stays held.
pub(super) async fn join_held(
    state: &AppState,
    conn: &ConnHandle,
    group: &str,
) -> Result<bool, JoinFailure> {
    state.hub.hold(conn.id, group);
    let joined = join(state, conn, group).await;
    if joined.is_err() {
        state.hub.release(conn.id, group);
    }
    joined
}

/// A failed join: too many groups is refused, the broker gone ends the
/// connection (1013).
pub(super) async fn refuse_join(
    socket: &mut WebSocket,
    state: &AppState,
    failure: JoinFailure,
    id: Option<&RawValue>,
) -> Result<(), End> {
    match failure {
        JoinFailure::TooMany => send(socket, refuse(state, &too_many_groups(), id)).await,
        JoinFailure::Broker => Err(End::Close(CloseCode::TryAgainLater)),
    }
}

/// Subscribes to a group with history: its live messages are held back
/// while the session joins, reads what history holds after `since`, writes
/// that replay and the `subscribed` reply; then the held messages the replay
/// did not cover follow. The subscription is in place before history is
/// read, so every message is in the replay, among the held ones, or both
/// (and then sent once): no gap and no duplicate. With `latest`, a new
/// subscriber without a recovered `since` gets the last kept message first
/// (see `latest`).
pub(super) async fn subscribe_with_history(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    group: &str,
    since: Option<&Position>,
    latest: bool,
    id: Option<&RawValue>,
) -> Result<(), End> {
    let new_member = match join_held(state, conn, group).await {
        Ok(new_member) => new_member,
        Err(failure) => return refuse_join(socket, state, failure, id).await,
    };
    if !new_member {
        // Already subscribed: its messages have been arriving all along.
        state.hub.release_after(conn.id, group, None);
    }
    let read = if new_member { since } else { None };
    let recovery = match state.broker.history(group, read).await {
        Ok(recovery) => recovery,
        Err(e) => {
            tracing::warn!(error = %e, group, "history read failed");
            return Err(End::Close(CloseCode::TryAgainLater));
        }
    };
    let snapshot = latest && new_member && recovery.recovered != Some(true);
    let Recovery {
        position,
        recovered,
        publications,
    } = if snapshot {
        history_latest(state, group, recovery).await?
    } else {
        recovery
    };
    let recovered = if new_member {
        recovered
    } else {
        since.map(|s| s.epoch == position.epoch && s.offset <= position.offset)
    };
    if snapshot && !publications.is_empty() {
        write_snapshots(socket, state, &publications).await?;
    } else if !publications.is_empty() {
        for p in &publications {
            let frame = message_frame(&p.group, &p.data, p.position.as_ref());
            feed(socket, frame).await?;
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

pub(super) fn too_many_groups() -> RequestError {
    RequestError::new(
        ErrorCode::TooManyGroups,
        "too many groups on this connection",
    )
}

/// An `error` reply, counted by its code.
pub(super) fn refuse(state: &AppState, error: &RequestError, id: Option<&RawValue>) -> Frame {
    state.metrics.request_error(error.code);
    Reply::error(error, id)
}

pub(super) fn forbidden() -> RequestError {
    RequestError::new(ErrorCode::Forbidden, "group not allowed")
}
