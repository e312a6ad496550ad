//! The control channel: cluster-wide commands (disconnect a user, revoke a
//! token), on a connection of their own.
//!
//! - [`ControlLink`]: each node receives commands on its own subscriber
//!   connection, not the one that carries group traffic. A burst of group
//!   messages can outrun the dispatcher and overflow fred's buffer; what
//!   overflows is lost (and counted), and a revocation must never be among
//!   it.
//! - [`RedisControl`]: a tool that is not a node sends commands. `wsgate
//!   token revoke` must close a revoked token's sockets on every node, but a
//!   CLI process must not join the cluster to do it: a broker would
//!   subscribe, heartbeat and write a registry entry under the host's node
//!   id (the same id as a node running beside it).

use std::sync::Arc;

use async_trait::async_trait;
use fred::clients::{Client, SubscriberClient};
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::ConnectHandle;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::Inner;
use super::link::channels_refused;
use super::{json, unavailable};
use crate::broker::{BrokerError, ControlSender};
use crate::config::RedisConfig;
use crate::protocol::Control;
use crate::redis_client::{Subscription, subscribe_confirmed};

/// Commands buffered for the dispatcher: they are few and small.
const CONTROL_BUFFER: usize = 1024;

/// The channel every node listens on for control commands.
pub(super) fn control_channel(prefix: &str) -> String {
    format!("{prefix}control")
}

pub struct RedisControl {
    client: Client,
    channel: String,
}

impl RedisControl {
    pub async fn connect(config: &RedisConfig) -> Result<RedisControl, BrokerError> {
        let client = crate::redis_client::client(config)
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        crate::redis_client::connect(&client, config.command_timeout * 3)
            .await
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
        Ok(RedisControl {
            client,
            channel: control_channel(&config.prefix),
        })
    }

    /// Closes the connection (bounded).
    pub async fn close(&self) {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.client.quit()).await;
    }
}

#[async_trait]
impl ControlSender for RedisControl {
    async fn control(&self, control: Control) -> Result<(), BrokerError> {
        let _: i64 = self
            .client
            .publish(&self.channel, json(&control))
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}

/// A node's receiving end of the control channel.
pub(super) struct ControlLink {
    pub(super) subscriber: SubscriberClient,
    pub(super) tasks: Vec<JoinHandle<()>>,
}

impl ControlLink {
    /// Connects, subscribes, and starts delivering commands to `inner`'s
    /// handler; resubscribes after every reconnection.
    pub(super) async fn start(
        cfg: &RedisConfig,
        inner: Arc<Inner>,
        within: std::time::Duration,
    ) -> Result<(ControlLink, ConnectHandle), BrokerError> {
        let setup =
            |e: crate::redis_client::RedisSetupError| BrokerError::Unavailable(e.to_string());
        let subscriber = crate::redis_client::subscriber(cfg, CONTROL_BUFFER).map_err(setup)?;
        let messages = subscriber.message_rx();
        let connection = crate::redis_client::connect(&subscriber, within)
            .await
            .map_err(setup)?;
        // fred answers a SUBSCRIBE when it writes it: unconfirmed, Redis's
        // refusal would leave the node deaf to revocations.
        let channel = control_channel(&cfg.prefix);
        let refused = match subscribe_confirmed(&subscriber, subscriber.subscribe(channel)).await {
            Ok(Subscription::Held) => None,
            Ok(Subscription::Refused(why)) => Some(channels_refused(&cfg.prefix, &why)),
            Err(e) => Some(unavailable(e)),
        };
        if let Some(e) = refused {
            let _ = subscriber.quit().await;
            return Err(e);
        }
        let manage = tokio::spawn(resubscribe_on_reconnect(
            subscriber.clone(),
            subscriber.reconnect_rx(),
            control_channel(&cfg.prefix),
            inner.clone(),
        ));
        let dispatch = tokio::spawn(async move {
            let mut messages = messages;
            loop {
                match messages.recv().await {
                    Ok(message) => inner.on_message(message),
                    Err(RecvError::Lagged(n)) => {
                        // Not expected at this volume; said loudly if it happens.
                        inner.count_lost(n);
                        tracing::error!(
                            lost = n,
                            "control commands lost: the dispatcher fell behind"
                        );
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Ok((
            ControlLink {
                subscriber,
                tasks: vec![manage, dispatch],
            },
            connection,
        ))
    }
}

/// After each reconnection of the control connection: marks the control
/// channel down, subscribes it again (retrying while Redis refuses), then
/// marks it up. Unlike fred's `manage_subscriptions`, the node knows when
/// the channel is back, and is not up before (see `Inner::control_up`).
async fn resubscribe_on_reconnect(
    subscriber: SubscriberClient,
    mut reconnects: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
    channel: String,
    inner: Arc<Inner>,
) {
    // A lagged receiver missed reconnections: resubscribing once covers them.
    while let Ok(_) | Err(RecvError::Lagged(_)) = reconnects.recv().await {
        inner
            .control_up
            .store(false, std::sync::atomic::Ordering::Release);
        loop {
            match subscribe_confirmed(&subscriber, subscriber.subscribe(channel.clone())).await {
                Ok(Subscription::Held) => break,
                Ok(Subscription::Refused(why)) => {
                    tracing::warn!(why, "Redis refused the control channel; retrying");
                }
                Err(e) => {
                    tracing::debug!(error = %e, "control channel resubscription failed; retrying");
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        inner
            .control_up
            .store(true, std::sync::atomic::Ordering::Release);
        tracing::info!("Redis control channel resubscribed");
    }
}
