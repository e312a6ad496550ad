//! `GET /api/v1/groups?pattern=market.*&limit=100`: the occupied groups
//! (feed demand), each with its members across the cluster.
//!
//! A group is listed from its `occupied` event until its `vacated` one, so
//! the listing and the events agree: a feed process reads the listing once
//! at start-up and follows the events from there. A group in its linger is
//! listed with its member count (0). On Redis the counts are the presence
//! hashes' sizes at the time of the call (each member written at its join);
//! a dead node's members count until the sweep notices it (`redis.node_ttl`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, ApiState, Call, bad};
use crate::broker::occupancy::is_valid_pattern;

/// Groups listed when the call names no `limit` ...
const DEFAULT_LIMIT: usize = 1000;
/// ... and at most.
const MAX_LIMIT: usize = 10_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct GroupsQuery {
    pattern: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn list(
    State(state): State<ApiState>,
    query: Result<Query<GroupsQuery>, QueryRejection>,
    call: Call,
) -> Response {
    call.answer(&state, occupied(&state, query)).await
}

async fn occupied(
    state: &ApiState,
    query: Result<Query<GroupsQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| bad(e.body_text()))?;
    let pattern = query.pattern.unwrap_or_else(|| "*".into());
    if !is_valid_pattern(&pattern) {
        return Err(bad(
            "invalid pattern: 1 to 128 characters of A-Z a-z 0-9 . _ : @ - and the wildcards * ?",
        ));
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(bad(format!("limit must be between 1 and {MAX_LIMIT}")));
    }
    if state.broker.occupancy_events().is_none() {
        return Err(ApiError::NotFound);
    }
    let listed = state
        .broker
        .occupied(&pattern, limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(json!({
        "pattern": pattern,
        "groups": listed.groups,
        "truncated": listed.truncated,
    })))
}
