//! The transactional outbox from a backend's side: rows inserted in
//! committed or rolled-back transactions, and a subscriber that collects
//! what arrives per group.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use super::Client;

/// Inserts one row per `(group, seq)` (data `{"seq": seq}`), in this order,
/// in one transaction that commits (or rolls back when `commit` is false).
pub async fn insert_rows(pool: &sqlx::PgPool, rows: &[(String, i64)], commit: bool) {
    let groups: Vec<&str> = rows.iter().map(|(g, _)| g.as_str()).collect();
    let seqs: Vec<i64> = rows.iter().map(|(_, s)| *s).collect();
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO wsgate_outbox (\"group\", data) \
         SELECT g, jsonb_build_object('seq', s, 'rolled_back', $3::boolean) \
         FROM unnest($1::text[], $2::bigint[]) WITH ORDINALITY AS t(g, s, n) ORDER BY n",
    )
    .bind(&groups)
    .bind(&seqs)
    .bind(!commit)
    .execute(&mut *tx)
    .await
    .expect("insert outbox rows");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
}

/// Rows still in the table.
pub async fn pending_rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM wsgate_outbox")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// What a subscriber received: per group, the `seq`s in arrival order, and
/// any message from a rolled-back transaction.
#[derive(Default, Debug)]
pub struct Received {
    pub per_group: BTreeMap<String, Vec<i64>>,
    pub rolled_back: usize,
    pub total: usize,
}

impl Received {
    /// Reads messages until `done(self)` holds or `wait` passes (then it
    /// returns what it has; the caller's checks fail with the detail).
    pub async fn collect(
        &mut self,
        client: &mut Client,
        wait: Duration,
        mut done: impl FnMut(&Received) -> bool,
    ) {
        let deadline = Instant::now() + wait;
        while !done(self) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let Ok(Some(Ok(msg))) = tokio::time::timeout(left, client.ws.next()).await else {
                return;
            };
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(&text).expect("JSON frame");
            if v["type"] != "message" {
                continue;
            }
            self.total += 1;
            if v["data"]["rolled_back"] == json!(true) {
                self.rolled_back += 1;
            }
            let group = v["group"].as_str().unwrap_or_default().to_string();
            let seq = v["data"]["seq"].as_i64().unwrap_or(-1);
            self.per_group.entry(group).or_default().push(seq);
        }
    }

    /// Whether every group has each of `0..n` at least once.
    pub fn has_all(&self, groups: &[String], n: i64) -> bool {
        groups.iter().all(|g| {
            let got = self.per_group.get(g).map(Vec::as_slice).unwrap_or(&[]);
            (0..n).all(|s| got.contains(&s))
        })
    }

    /// Checks per-group order modulo redelivered duplicates: a message is
    /// either the next new `seq` or one already received (a batch published
    /// again after a node died), and the new ones come in order `0..n`.
    pub fn assert_in_order(&self, groups: &[String], n: i64) {
        for g in groups {
            let got = self.per_group.get(g).cloned().unwrap_or_default();
            let mut next = 0;
            for &s in &got {
                if s == next {
                    next += 1;
                } else {
                    assert!(
                        s < next,
                        "group {g}: seq {s} arrived before {next} (order broken): {got:?}"
                    );
                }
            }
            assert_eq!(next, n, "group {g}: not every row arrived: {got:?}");
        }
    }
}
