//! Idempotency keys on Redis, seen by every node: `<prefix>idem:<key>`,
//! taken with `SET NX PX` (atomic, so of two nodes claiming one key at once
//! exactly one gets it), kept with `SET PX`, looked at with `EXISTS`,
//! released with `DEL`.
//!
//! A claim whose answer does not come (its connection closed, or its
//! timeout passed) may still have been run by Redis, and would then hold
//! the key for the pending time with nothing published: the caller's retry
//! would be answered `duplicate` and the message never sent. So a claim
//! writes a token of its own as the value, and a claim that failed takes
//! its keys back where they still hold its token (compare and delete, one
//! script), before the error is returned. Were Redis to run the lost claim
//! after that (it sat in a connection Redis had not read yet), the key is
//! held for the pending time only, as when a node dies after claiming.
//!
//! A call on several keys sends one command per key at once (one round
//! trip; `super::requests` says why not a pipeline); on Redis Cluster fred
//! routes each command to its key's shard. Every command is bounded by
//! `redis.command_timeout`, fred's own timeout, so one that timed out is
//! never written later (a late claim would turn the caller's retry into a
//! "duplicate" that was never published).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, KeysInterface, LuaInterface, Value};
use fred::types::{Expiration, SetOptions};
use futures_util::future::BoxFuture;

use super::requests;
use crate::broker::BrokerError;
use crate::broker::idempotency::Idempotency;

pub struct RedisIdempotency {
    client: Client,
    prefix: String,
}

impl RedisIdempotency {
    pub fn new(client: Client, prefix: &str) -> RedisIdempotency {
        RedisIdempotency {
            client,
            prefix: format!("{prefix}idem:"),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Sends one command per key, in order, and waits for every reply.
    async fn each<F, Fut>(&self, keys: &[String], command: F) -> Result<Vec<Value>, BrokerError>
    where
        F: Fn(Client, String) -> Fut,
        Fut: Future<Output = Result<Value, fred::error::Error>> + Send + 'static,
    {
        let commands = keys
            .iter()
            .map(|key| Box::pin(command(self.client.clone(), self.key(key))) as BoxFuture<'_, _>)
            .collect();
        requests::in_order(commands)
            .await
            .into_iter()
            .collect::<Result<Vec<Value>, _>>()
            .map_err(|e| BrokerError::Unavailable(format!("idempotency keys: {e}")))
    }
}

/// Deletes `KEYS[1]` if it still holds this claim's token `ARGV[1]`.
const TAKE_BACK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

#[async_trait]
impl Idempotency for RedisIdempotency {
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BrokerError> {
        let token = hex::encode(rand::random::<[u8; 8]>());
        let claimed = self
            .each(keys, |c, k| {
                let token = token.clone();
                async move {
                    c.set::<Value, _, _>(k, token, Some(px(ttl)), Some(SetOptions::NX), false)
                        .await
                }
            })
            .await;
        match claimed {
            // "OK" when set; nil when the key was held.
            Ok(values) => Ok(values.iter().map(|v| !matches!(v, Value::Null)).collect()),
            Err(e) => {
                if let Err(undo) = self
                    .each(keys, |c, k| {
                        let token = token.clone();
                        async move { c.eval::<Value, _, _, _>(TAKE_BACK, k, token).await }
                    })
                    .await
                {
                    tracing::warn!(error = %undo, "a failed idempotency claim not taken back");
                }
                Err(e)
            }
        }
    }

    async fn keep(&self, keys: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.each(keys, |c, k| async move {
            c.set::<Value, _, _>(k, "1", Some(px(ttl)), None, false)
                .await
        })
        .await
        .map(drop)
    }

    async fn held(&self, keys: &[String]) -> Result<Vec<bool>, BrokerError> {
        let values = self
            .each(keys, |c, k| async move { c.exists::<Value, _>(k).await })
            .await?;
        Ok(values
            .iter()
            .map(|v| matches!(v.as_i64(), Some(n) if n > 0))
            .collect())
    }

    async fn release(&self, keys: &[String]) -> Result<(), BrokerError> {
        self.each(keys, |c, k| async move { c.del::<Value, _>(k).await })
            .await
            .map(drop)
    }
}
