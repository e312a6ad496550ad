//! Store lookups of concurrent authentications, gathered into one query.
//!
//! Every authentication the caches cannot answer is a store query, and with
//! sqlx each query is two round trips (the query, then the pool's ping when
//! the connection is returned) and several wake-ups on both sides. A burst
//! of new users (a deploy, a reconnect storm after a node loss) is many such
//! queries at once, all the same shape. [`Batched`] sends them as one
//! [`TokenStore::verify_many`] (`digest IN (...)`) instead.
//!
//! It adds no delay: a lookup goes out at once while fewer than
//! `in_flight` queries are running. Only while they are all busy do new
//! lookups wait, and the next query takes every one that waited (up to
//! [`MAX_GATHER`]). So batches stay at one token while the database keeps
//! up, and grow with the load when it does not, which is when the saved
//! round trips matter.
//!
//! Only stores whose `verify_many` is one query per batch are wrapped
//! ([`TokenStore::batches`]); for an arbitrary `auth.query` it would run the
//! tokens one after another and lose the parallelism of the pool.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Identity, StoreError, Token, TokenDigest, TokenStore};

/// Most lookups one query carries.
pub const MAX_GATHER: usize = 64;
/// Queries running at once: one runs while the next batch gathers. More
/// would split the batches a busy database needs, fewer would make every
/// lookup wait for the one query in flight. Measured in
/// `docs/performance.md` (round five).
pub const IN_FLIGHT: usize = 2;
/// Most lookups waiting for a query; callers beyond it wait for room
/// (each is bounded by `auth.timeout`).
const QUEUE: usize = 4096;

type Answer = Result<Option<Identity>, StoreError>;

struct Lookup {
    token: Token,
    reply: oneshot::Sender<Answer>,
}

/// A [`TokenStore`] whose single-token lookups are gathered into batches.
pub struct Batched {
    inner: Arc<dyn TokenStore>,
    lookups: mpsc::Sender<Lookup>,
}

impl Batched {
    /// `store` behind a gatherer that keeps at most `in_flight` queries
    /// running, each given up after `timeout` (`auth.timeout`: its callers
    /// have given up by then, and a query hung on a dead connection must
    /// not hold a slot forever), or `store` itself when its batches are not
    /// one query.
    pub fn wrap(
        store: Arc<dyn TokenStore>,
        in_flight: usize,
        timeout: Duration,
    ) -> Arc<dyn TokenStore> {
        if store.batches() {
            Arc::new(Batched::new(store, in_flight, timeout))
        } else {
            store
        }
    }

    /// `store` behind a gatherer, whatever it is. Needs a Tokio runtime
    /// (it spawns the gatherer, which ends when this value is dropped).
    pub fn new(store: Arc<dyn TokenStore>, in_flight: usize, timeout: Duration) -> Batched {
        let (lookups, queue) = mpsc::channel(QUEUE);
        tokio::spawn(gather(store.clone(), queue, in_flight.max(1), timeout));
        Batched {
            inner: store,
            lookups,
        }
    }

    /// Lookups waiting for a query slot.
    pub fn waiting(&self) -> usize {
        self.lookups.max_capacity() - self.lookups.capacity()
    }
}

/// The gatherer: waits for a free query slot, then for a lookup, then takes
/// every lookup already queued behind it. Ends when the [`Batched`] is
/// dropped (its sender closes the queue).
async fn gather(
    store: Arc<dyn TokenStore>,
    mut queue: mpsc::Receiver<Lookup>,
    in_flight: usize,
    timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = queue.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_GATHER {
            match queue.try_recv() {
                Ok(lookup) => batch.push(lookup),
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            let (tokens, replies): (Vec<Token>, Vec<_>) =
                batch.into_iter().map(|l| (l.token, l.reply)).unzip();
            let answered = tokio::time::timeout(timeout, store.verify_many(&tokens))
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Unavailable(format!(
                        "the token store did not answer within {timeout:?}"
                    )))
                });
            match answered {
                Ok(answers) if answers.len() == replies.len() => {
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        // The caller may have given up (auth timeout): fine.
                        let _ = reply.send(Ok(answer));
                    }
                }
                Ok(answers) => {
                    let error = format!(
                        "the store answered {} of {} tokens",
                        answers.len(),
                        replies.len()
                    );
                    for reply in replies {
                        let _ = reply.send(Err(StoreError::Query(error.clone())));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
            drop(slot);
        });
    }
}

#[async_trait]
impl TokenStore for Batched {
    async fn verify(&self, token: &Token) -> Result<Option<Identity>, StoreError> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the token store's gatherer stopped".into());
        self.lookups
            .send(Lookup {
                token: token.clone(),
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// Already a batch: straight to the store.
    async fn verify_many(&self, tokens: &[Token]) -> Result<Vec<Option<Identity>>, StoreError> {
        self.inner.verify_many(tokens).await
    }

    fn batches(&self) -> bool {
        true
    }

    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.inner.revoke(digest).await
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}
