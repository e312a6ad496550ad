//! The dispatcher: what the broker delivers to this node, handed to the hub.
//!
//! Sits between [`crate::broker`] and [`crate::hub`], which know nothing of
//! each other: publications become deliveries to local sockets, control
//! commands close them (a revoked digest through [`crate::revocation`]'s one
//! path) or take a user out of a group (forgetting the backend's cached
//! allow first), and the broker asks it for this node's presence and
//! registry entry.

use std::sync::{Arc, Weak};

use crate::broker::{Broker, BrokerHandler, NodeInfo};
use crate::hub::{Hub, Member};
use crate::protocol::{CloseCode, Control, Publication};
use crate::revocation::Forget;
use crate::subscribe_auth::SubscribeAuth;
use crate::token::TokenDigest;

pub struct Dispatcher {
    hub: Arc<Hub>,
    forget: Forget,
    subscribe_auth: Arc<SubscribeAuth>,
    /// To tell the broker that the sessions a control command took out of a
    /// group left it. Weak: the broker holds this dispatcher.
    broker: Weak<dyn Broker>,
}

impl Dispatcher {
    pub fn new(
        hub: Arc<Hub>,
        forget: Forget,
        subscribe_auth: Arc<SubscribeAuth>,
        broker: Weak<dyn Broker>,
    ) -> Dispatcher {
        Dispatcher {
            hub,
            forget,
            subscribe_auth,
            broker,
        }
    }

    /// Takes a user out of a group here. The cached allow goes first, so a
    /// subscribe racing this asks the backend again.
    fn unsubscribe(&self, user_id: &str, group: &str) -> usize {
        self.subscribe_auth.revoke(user_id, group);
        let sessions = self.hub.remove_user(user_id, group);
        let n = sessions.len();
        if n > 0
            && let Some(broker) = self.broker.upgrade()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let group = group.to_string();
            runtime.spawn(async move {
                for session in sessions {
                    if let Err(e) = broker.unsubscribe(&group, &session).await {
                        tracing::warn!(error = %e, group, "broker unsubscribe failed");
                    }
                }
            });
        }
        n
    }
}

impl BrokerHandler for Dispatcher {
    fn on_publication(&self, publication: Publication) {
        let span = tracing::info_span!(
            "deliver",
            group = %publication.group,
            recipients = tracing::field::Empty,
        );
        if let Some(tp) = &publication.trace {
            crate::telemetry::set_parent_from_traceparent(&span, tp);
        }
        let _enter = span.enter();
        let n = self.hub.deliver(&publication);
        span.record("recipients", n);
    }

    fn in_burst(&self, deliver: &mut dyn FnMut()) {
        crate::hub::deferring_wakes(deliver)
    }

    fn on_control(&self, control: Control) {
        let closed = match &control {
            Control::DisconnectUser { user_id } => {
                self.hub.close_user(user_id, CloseCode::AuthFailed)
            }
            // The sender wrote the shared tombstone before broadcasting.
            Control::RevokeDigest { digest } => match TokenDigest::from_hex(digest) {
                Some(d) => self.forget.here(&d),
                None => 0,
            },
            Control::Unsubscribe { user_id, group } => self.unsubscribe(user_id, group),
        };
        if closed > 0 {
            tracing::info!(closed, op = control_name(&control), "closing connections");
        }
    }

    fn local_presence(&self, group: &str) -> Vec<Member> {
        self.hub.presence(group)
    }

    fn local_node(&self) -> NodeInfo {
        NodeInfo {
            node: self.hub.node().to_string(),
            connections: self.hub.connection_count() as u64,
            last_seen_ms: crate::clock::unix_ms(),
        }
    }
}

fn control_name(c: &Control) -> &'static str {
    match c {
        Control::DisconnectUser { .. } => "disconnect",
        Control::RevokeDigest { .. } => "revoke",
        Control::Unsubscribe { .. } => "unsubscribe",
    }
}
