//! Control commands from a tool that is not a node.
//!
//! `wsgate token revoke` must close a revoked token's sockets on every node,
//! but a CLI process must not join the cluster to do it: a broker would
//! subscribe, heartbeat and write a registry entry under the host's node id
//! (the same id as a node running beside it). This sends on the control
//! channel and nothing else.

use async_trait::async_trait;
use fred::clients::Client;
use fred::interfaces::{ClientLike, PubsubInterface};

use super::{json, unavailable};
use crate::broker::{BrokerError, ControlSender};
use crate::config::RedisConfig;
use crate::protocol::Control;

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
