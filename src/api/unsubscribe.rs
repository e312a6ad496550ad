//! `POST /api/v1/unsubscribe`: the backend takes a user out of a group on
//! every node (a grant or a hook allow it revoked mid-session).
//!
//! One control command through the broker, as `disconnect` and `revoke`
//! are: each node forgets its cached allow for the pair, refuses grants for
//! it issued until then (for `authorize.grant_max_lifetime`), and sends each
//! of the user's connections in the group an unsolicited `unsubscribed`.

use axum::extract::State;
use axum::response::Response;
use serde::Deserialize;

use super::{ApiError, ApiState, Call, UserId, bad, check_group, ok, parse_body};
use crate::protocol::Control;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsubscribeBody {
    user_id: UserId,
    group: String,
}

pub(super) async fn unsubscribe(State(state): State<ApiState>, call: Call) -> Response {
    call.answer(&state, unsubscribe_user(&state, &call.body))
        .await
}

async fn unsubscribe_user(state: &ApiState, body: &[u8]) -> Result<Response, ApiError> {
    let body: UnsubscribeBody = parse_body(body)?;
    let user_id = body
        .user_id
        .into_string()
        .ok_or_else(|| bad("user_id must not be empty"))?;
    check_group(&body.group)?;
    state
        .broker
        .control(Control::Unsubscribe {
            user_id,
            group: body.group,
        })
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(ok())
}
