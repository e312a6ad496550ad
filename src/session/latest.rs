//! `"latest":true` on `subscribe`: the group's latest message first, then
//! the live ones, with no gap and no duplicate between them.
//!
//! The same hold as a history replay (see `requests::subscribe_with_history`):
//! the group's live messages are held back while the session joins and reads
//! the latest; it writes the latest (marked `"snapshot":true`) and the
//! `subscribed` reply; then the held messages follow, minus those at or
//! before the latest. The subscription is in place before the latest is
//! read, so a publication racing the subscribe is either the latest (its
//! live copy is dropped), older than it (dropped: the client must not go
//! back in time), or newer (delivered after it).
//!
//! "At or before" needs an order: a history group's offsets, or the
//! sequence the broker gives each `groups.snapshot` publication as it keeps
//! it (`Publication::seq`), compared by the hub exactly as offsets are.
//!
//! The latest comes before `subscribed`, like a history replay, so a
//! client that adopts the reply's offset and drops messages at or below it
//! (ours does) still shows it.

use serde_json::value::RawValue;

use super::End;
use super::requests::{join_held, refuse_join};
use super::socket::{feed, send};
use crate::broker::Recovery;
use crate::hub::ConnHandle;
use crate::protocol::{CloseCode, Position, Publication, Reply, snapshot_frame};
use crate::state::AppState;
use crate::ws::WebSocket;

/// Subscribes to a `groups.snapshot` group (not a history one) and sends
/// its latest message first. `recovering`: the request had a `since`,
/// which such a group cannot honour (`recovered: false`, as without
/// `latest`). A connection already in the group gets no latest: its
/// messages have been arriving all along.
pub(super) async fn subscribe_with_latest(
    socket: &mut WebSocket,
    state: &AppState,
    conn: &ConnHandle,
    group: &str,
    recovering: bool,
    id: Option<&RawValue>,
) -> Result<(), End> {
    let new_member = match join_held(state, conn, group).await {
        Ok(new_member) => new_member,
        Err(failure) => return refuse_join(socket, state, failure, id).await,
    };
    let latest = if new_member {
        match state.broker.latest(group).await {
            Ok(latest) => latest,
            Err(e) => {
                // The hold goes with the connection.
                tracing::warn!(error = %e, group, "latest read failed");
                return Err(End::Close(CloseCode::TryAgainLater));
            }
        }
    } else {
        None
    };
    if let Some(p) = &latest {
        write_snapshots(socket, state, std::slice::from_ref(p)).await?;
    }
    let reply = Reply::Subscribed {
        group,
        recovered: recovering.then_some(false),
        offset: None,
        epoch: None,
        id,
    }
    .encode();
    send(socket, reply).await?;
    state
        .hub
        .release_after(conn.id, group, latest.and_then(|p| p.seq));
    Ok(())
}

/// Reads of a history group's latest before giving up (see [`history_latest`]).
const HISTORY_LATEST_TRIES: usize = 3;

/// `latest` on a history group: its last kept publication, when the
/// subscriber has nothing newer (no `since`, or one that could not be
/// recovered). Reads what history holds after the offset before the
/// group's current one, so anything published since the first read comes
/// too, in order. If more than `history.size` were published between the
/// two reads, it tries again from the newer position, a few times. Answers
/// the publications and the position they reach, or the recovery unchanged
/// when the group has nothing kept (never published, or expired).
pub(super) async fn history_latest(
    state: &AppState,
    group: &str,
    recovery: Recovery,
) -> Result<Recovery, End> {
    if recovery.recovered == Some(true) {
        return Ok(recovery);
    }
    let mut position = recovery.position.clone();
    for _ in 0..HISTORY_LATEST_TRIES {
        if position.offset == 0 {
            break;
        }
        let before = Position {
            offset: position.offset - 1,
            epoch: position.epoch.clone(),
        };
        let last = match state.broker.history(group, Some(&before)).await {
            Ok(last) => last,
            Err(e) => {
                tracing::warn!(error = %e, group, "history read failed");
                return Err(End::Close(CloseCode::TryAgainLater));
            }
        };
        if last.recovered == Some(true) && !last.publications.is_empty() {
            return Ok(Recovery {
                position: last.position,
                // What the request's `since` was told stands.
                recovered: recovery.recovered,
                publications: last.publications,
            });
        }
        if last.position == position {
            // Nothing kept at the current offset: expired.
            break;
        }
        position = last.position;
    }
    Ok(recovery)
}

/// Writes a group's latest message, marked `"snapshot":true`, and after it
/// any that followed (unmarked); flushed with the reply that comes next.
pub(super) async fn write_snapshots(
    socket: &mut WebSocket,
    state: &AppState,
    publications: &[Publication],
) -> Result<(), End> {
    for (i, p) in publications.iter().enumerate() {
        let frame = if i == 0 {
            snapshot_frame(&p.group, &p.data, p.position.as_ref())
        } else {
            crate::protocol::message_frame(&p.group, &p.data, p.position.as_ref())
        };
        feed(socket, frame).await?;
    }
    state
        .metrics
        .messages_delivered
        .inc_by(publications.len() as u64);
    Ok(())
}
