//! One batch: claim a partition, publish its oldest rows in id order,
//! delete them, commit; all in one transaction, so a node that dies anywhere
//! in it leaves the partition and its rows as they were (PostgreSQL rolls
//! back a transaction whose connection is gone).

use serde_json::value::RawValue;
use sqlx::Row;

use super::{Outbox, OutboxError};
use crate::clock::unix_micros;
use crate::protocol::{Publication, is_valid_group};

/// The idempotency key of an outbox row.
fn row_key(id: i64) -> String {
    format!("outbox:{id}")
}

/// Works one batch. `None`: no partition had rows that no other node holds.
pub(super) async fn one(outbox: &Outbox) -> Result<Option<usize>, OutboxError> {
    let mut tx = outbox.pool.begin().await?;
    // A random partition among those with rows, so the nodes spread over
    // them and a busy partition does not starve the others.
    let part: Option<i16> = sqlx::query_scalar(
        "SELECT p.part FROM wsgate_outbox_partitions p \
         WHERE EXISTS (SELECT 1 FROM wsgate_outbox o WHERE o.part = p.part) \
         ORDER BY random() LIMIT 1 FOR UPDATE OF p SKIP LOCKED",
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(part) = part else {
        tx.rollback().await?;
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT id, \"group\", data::text FROM wsgate_outbox \
         WHERE part = $1 ORDER BY id LIMIT $2",
    )
    .bind(part)
    .bind(outbox.batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut ids = Vec::with_capacity(rows.len());
    let mut publications = Vec::with_capacity(rows.len());
    let ts = unix_micros();
    for row in &rows {
        let id: i64 = row.try_get(0)?;
        let group: String = row.try_get(1)?;
        let data: String = row.try_get(2)?;
        ids.push(id);
        // The table's CHECK keeps both valid; a row from before it (or a
        // changed constraint) is dropped, never published half-checked.
        let data = match RawValue::from_string(data) {
            Ok(data) if is_valid_group(&group) => data,
            _ => {
                tracing::warn!(id, "outbox row with an invalid group or data; dropped");
                outbox.metrics.outbox_errors.inc();
                publications.push(None);
                continue;
            }
        };
        publications.push(Some(Publication {
            group,
            data,
            position: None,
            ts: Some(ts),
            trace: None,
            seq: None,
        }));
    }
    publish(outbox, &ids, publications).await?;
    sqlx::query("DELETE FROM wsgate_outbox WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(ids.len()))
}

/// Publishes the rows not already published within the window, in order,
/// then records their keys.
async fn publish(
    outbox: &Outbox,
    ids: &[i64],
    publications: Vec<Option<Publication>>,
) -> Result<(), OutboxError> {
    let keys: Vec<String> = ids.iter().map(|&id| row_key(id)).collect();
    let held = outbox.idempotency.held(&keys).await?;
    let mut fresh_keys = Vec::new();
    let mut fresh = Vec::new();
    let mut skipped = 0u64;
    for ((key, publication), held) in keys.into_iter().zip(publications).zip(held) {
        let Some(publication) = publication else {
            continue;
        };
        if held {
            skipped += 1;
            continue;
        }
        fresh_keys.push(key);
        fresh.push(publication);
    }
    if !fresh.is_empty() {
        let n = fresh.len() as u64;
        outbox.broker.publish(fresh).await?;
        outbox.metrics.messages_published.inc_by(n);
        outbox.metrics.outbox_published.inc_by(n);
        outbox.idempotency.keep(&fresh_keys, outbox.window).await?;
    }
    if skipped > 0 {
        outbox.metrics.publish_duplicates.inc_by(skipped);
    }
    Ok(())
}
