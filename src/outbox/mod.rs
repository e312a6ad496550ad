//! The transactional outbox (`outbox.enabled`, PostgreSQL only): a backend
//! inserts `("group", data)` into `wsgate_outbox` in the same transaction as
//! its business write, and the nodes publish what committed.
//!
//! Why: a backend that writes its database and then calls the publish API
//! can commit and crash before the call (a change nobody hears of), or
//! publish and then roll back (news of a change that never happened). With
//! the outbox the publication is part of the transaction: a rolled-back
//! transaction leaves no row, so it publishes nothing; a committed row is
//! published at least once, whichever node dies when.
//!
//! How (the schema is in `migrations/postgres/*_outbox.sql`):
//! - every row falls in one of 64 partitions by a hash of its group
//!   (`hashtext("group") & 63`), computed by PostgreSQL, so every node and
//!   every writer agree (a number in the schema, not in the configuration:
//!   two nodes with different counts would break the order);
//! - a node works one partition per transaction ([`batch`]): it locks the
//!   partition's row in `wsgate_outbox_partitions` with `FOR UPDATE SKIP
//!   LOCKED` (nodes share the partitions, none waits for another), reads up
//!   to `outbox.batch` of its rows in id order, publishes them in that
//!   order, deletes them and commits. One partition is worked by one node
//!   at a time, and a batch is published only after the previous one
//!   committed, so a group's rows are published in id order;
//! - a node that dies mid-batch (or a batch past `outbox.batch_timeout`)
//!   rolls back: the lock goes, the rows stay, and the next node publishes
//!   them again. Each row's publication is remembered under the idempotency
//!   key `outbox:<id>` for `api.idempotency_window` (see
//!   [`crate::broker::idempotency`]), so a row already published is
//!   skipped rather than delivered twice; only a node that dies between a
//!   publish and the recording of its keys causes duplicates;
//! - the insert trigger's `NOTIFY wsgate_outbox` (sent on commit) wakes the
//!   nodes ([`wake`]); without a notice (lost while the listener
//!   reconnected) a node looks every `outbox.poll_interval` anyway.
//!
//! Order across groups is not kept (partitions are worked in parallel), nor
//! between two transactions that insert into one group concurrently: their
//! rows go out in id order as each becomes visible (ids are taken at insert,
//! visibility comes at commit), so a writer that needs an order between its
//! transactions commits one before starting the next.

mod batch;
mod wake;

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::broker::idempotency::Idempotency;
use crate::config::Config;
use crate::metrics::Metrics;

/// Longest wait after a failed batch (the database or the broker is down),
/// doubled from [`RETRY_MIN`].
const RETRY_MAX: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Broker(#[from] crate::broker::BrokerError),
    #[error("batch not done within outbox.batch_timeout ({0:?})")]
    Timeout(Duration),
}

/// What a publishing node needs.
pub struct Outbox {
    pool: PgPool,
    broker: Arc<dyn Broker>,
    idempotency: Arc<dyn Idempotency>,
    metrics: Arc<Metrics>,
    batch: i64,
    batch_timeout: Duration,
    poll_interval: Duration,
    window: Duration,
}

/// The running outbox: its publisher and its listener, stopped on drop.
pub struct OutboxTasks {
    tasks: Vec<JoinHandle<()>>,
}

impl OutboxTasks {
    /// Stops publishing. A batch cut short is rolled back by PostgreSQL and
    /// published by another node.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for OutboxTasks {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Outbox {
    /// Connects (two connections: one for batches, one spare for the
    /// start-up check) and checks the table is there, so a node whose
    /// migrations were not applied fails at start with a clear error.
    pub async fn connect(
        config: &Config,
        database_url: &str,
        broker: Arc<dyn Broker>,
        idempotency: Arc<dyn Idempotency>,
        metrics: Arc<Metrics>,
    ) -> Result<Outbox, OutboxError> {
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(config.database.connect_timeout)
            .connect(database_url)
            .await?;
        sqlx::query("SELECT 1 FROM wsgate_outbox_partitions LIMIT 1")
            .execute(&pool)
            .await?;
        Ok(Outbox {
            pool,
            broker,
            idempotency,
            metrics,
            batch: i64::from(config.outbox.batch),
            batch_timeout: config.outbox.batch_timeout,
            poll_interval: config.outbox.poll_interval,
            window: config.api.idempotency_window,
        })
    }

    /// Starts the listener and the publisher.
    pub async fn start(self, database_url: &str) -> Result<OutboxTasks, OutboxError> {
        let wake = Arc::new(Notify::new());
        let listener = wake::listen(database_url, wake.clone()).await?;
        let publisher = tokio::spawn(self.run(wake));
        Ok(OutboxTasks {
            tasks: vec![listener, publisher],
        })
    }

    /// Publishes until aborted: every partition with rows, then waits for a
    /// notice or `outbox.poll_interval`.
    async fn run(self, wake: Arc<Notify>) {
        let backoff = || crate::retry::delays(RETRY_MIN, RETRY_MAX);
        let mut retry = backoff();
        loop {
            match self.drain().await {
                Ok(()) => retry = backoff(),
                Err(e) => {
                    tracing::warn!(error = %e, "outbox batch failed; retrying");
                    self.metrics.outbox_errors.inc();
                    tokio::time::sleep(retry.next().unwrap_or(RETRY_MAX)).await;
                    continue;
                }
            }
            let _ = tokio::time::timeout(self.poll_interval, wake.notified()).await;
        }
    }

    /// Works batches until no partition has rows left (or every one that
    /// has is being worked by another node).
    async fn drain(&self) -> Result<(), OutboxError> {
        loop {
            let work = batch::one(self);
            let done = tokio::time::timeout(self.batch_timeout, work)
                .await
                .map_err(|_| OutboxError::Timeout(self.batch_timeout))??;
            if done.is_none() {
                return Ok(());
            }
        }
    }
}
