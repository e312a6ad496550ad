//! Idempotency keys on Redis, seen by every node: `<prefix>idem:<key>`,
//! taken with `SET NX PX` (atomic, so of two nodes claiming one key at once
//! exactly one gets it), kept with `SET PX`, looked at with `EXISTS`,
//! released with `DEL`. A call on several keys sends one command per key
//! at once (one round trip; `super::requests` says why not a pipeline); on
//! Redis Cluster fred routes each command to its key's shard. Every command
//! is bounded by `redis.command_timeout`, fred's own timeout, so one that
//! timed out is never written later (a late claim would turn the caller's
//! retry into a "duplicate" that was never published).

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, KeysInterface, Value};
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

fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

#[async_trait]
impl Idempotency for RedisIdempotency {
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BrokerError> {
        let values = self
            .each(keys, |c, k| async move {
                c.set::<Value, _, _>(k, "1", Some(px(ttl)), Some(SetOptions::NX), false)
                    .await
            })
            .await?;
        // "OK" when set; nil when the key was held.
        Ok(values.iter().map(|v| !matches!(v, Value::Null)).collect())
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
