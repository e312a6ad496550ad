//! Whether a subscribe may go ahead: the group policy, and for a
//! `groups.authorize` group the backend's say (a grant or the hook), which
//! replaces `groups.allow` there: an allow pattern never opens such a group.

use std::net::IpAddr;

use crate::hub::ConnHandle;
use crate::policy::GroupPolicy;
use crate::protocol::{ErrorCode, RequestError};
use crate::state::AppState;
use crate::subscribe_auth::{Decision, Subscriber};
use crate::token::Token;

use super::requests::forbidden;

/// `Ok` when `conn` may join `group`; else the `error` reply to send.
pub(super) async fn authorize(
    state: &AppState,
    conn: &ConnHandle,
    ip: IpAddr,
    group: &str,
    grant: Option<&Token>,
) -> Result<(), RequestError> {
    let auth = &state.subscribe_auth;
    if !GroupPolicy::private_ok(&conn.user_id, group) {
        return Err(forbidden());
    }
    if !auth.applies(&conn.user_id, group) {
        return if state.policy.can_subscribe(&conn.user_id, group) {
            Ok(())
        } else {
            Err(forbidden())
        };
    }
    let who = Subscriber {
        user_id: &conn.user_id,
        session: &conn.session,
        conn: conn.id,
        ip,
    };
    match auth.authorize(&who, group, grant.map(Token::expose)).await {
        Decision::Allow => Ok(()),
        Decision::Deny => Err(forbidden()),
        Decision::Unavailable => Err(RequestError::new(
            ErrorCode::Unavailable,
            "the backend did not answer; try again",
        )),
    }
}
