//! Idempotency keys on Redis, seen by every node: `<prefix>idem:<key>`,
//! taken with `SET NX PX` (atomic, so of two nodes claiming one key at once
//! exactly one gets it), kept with `SET PX`, looked at with `EXISTS`,
//! released with `DEL`. A call on several keys is one pipeline (one round
//! trip); on Redis Cluster fred routes each command to its key's shard.
//! Every call is bounded by `redis.command_timeout`.

use std::time::Duration;

use async_trait::async_trait;
use fred::prelude::{Client, KeysInterface, Value};
use fred::types::{Expiration, SetOptions};

use crate::broker::BrokerError;
use crate::broker::idempotency::Idempotency;

pub struct RedisIdempotency {
    client: Client,
    prefix: String,
    command_timeout: Duration,
}

impl RedisIdempotency {
    pub fn new(client: Client, prefix: &str, command_timeout: Duration) -> RedisIdempotency {
        RedisIdempotency {
            client,
            prefix: format!("{prefix}idem:"),
            command_timeout,
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Queues one command per key on a pipeline and runs it, bounded.
    async fn each<F, Fut>(&self, keys: &[String], queue: F) -> Result<Vec<Value>, BrokerError>
    where
        F: Fn(fred::clients::Pipeline<Client>, String) -> Fut,
        Fut: Future<Output = Result<(), fred::error::Error>>,
    {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let run = async {
            let pipeline = self.client.pipeline();
            for key in keys {
                queue(pipeline.clone(), self.key(key)).await?;
            }
            // One result per command, whatever their number.
            pipeline
                .try_all::<Value>()
                .await
                .into_iter()
                .collect::<Result<Vec<Value>, _>>()
        };
        match tokio::time::timeout(self.command_timeout, run).await {
            Ok(Ok(values)) if values.len() == keys.len() => Ok(values),
            Ok(Ok(_)) => Err(BrokerError::Unavailable("unexpected Redis reply".into())),
            Ok(Err(e)) => Err(BrokerError::Unavailable(e.to_string())),
            Err(_) => Err(BrokerError::Unavailable(format!(
                "idempotency keys: no Redis answer within {:?}",
                self.command_timeout
            ))),
        }
    }
}

fn px(ttl: Duration) -> Expiration {
    Expiration::PX(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1))
}

#[async_trait]
impl Idempotency for RedisIdempotency {
    async fn claim(&self, keys: &[String], ttl: Duration) -> Result<Vec<bool>, BrokerError> {
        let values = self
            .each(keys, |p, k| async move {
                p.set::<(), _, _>(k, "1", Some(px(ttl)), Some(SetOptions::NX), false)
                    .await
            })
            .await?;
        // "OK" when set; nil when the key was held.
        Ok(values.iter().map(|v| !matches!(v, Value::Null)).collect())
    }

    async fn keep(&self, keys: &[String], ttl: Duration) -> Result<(), BrokerError> {
        self.each(keys, |p, k| async move {
            p.set::<(), _, _>(k, "1", Some(px(ttl)), None, false).await
        })
        .await
        .map(drop)
    }

    async fn held(&self, keys: &[String]) -> Result<Vec<bool>, BrokerError> {
        let values = self
            .each(keys, |p, k| async move { p.exists::<(), _>(k).await })
            .await?;
        Ok(values
            .iter()
            .map(|v| matches!(v.as_i64(), Some(n) if n > 0))
            .collect())
    }

    async fn release(&self, keys: &[String]) -> Result<(), BrokerError> {
        self.each(keys, |p, k| async move { p.del::<(), _>(k).await })
            .await
            .map(drop)
    }
}
