//! Concurrent store lookups gathered into one query (`auth::batch`),
//! against real Postgres: every caller gets its own token's answer, a busy
//! store gets one query for many lookups, a failed or hung query fails its
//! callers and frees its slot, and stores that cannot batch are not wrapped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::pg_server::PgServer;
use common::*;
use tokio::sync::Semaphore;
use wsgate::auth::batch::Batched;
use wsgate::auth::sql::{Db, NativeStore, QueryStore};
use wsgate::auth::{Identity, StoreError, Token, TokenDigest, TokenStore};
use wsgate::config::Config;

/// The real store, with a record of the batches it was asked and a gate
/// that holds each batch until the test gives it a permit.
struct Recorded {
    store: NativeStore,
    batches: Mutex<Vec<usize>>,
    gate: Semaphore,
}

impl Recorded {
    fn new(store: NativeStore) -> Arc<Recorded> {
        Arc::new(Recorded {
            store,
            batches: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        })
    }

    fn batches(&self) -> Vec<usize> {
        self.batches.lock().unwrap().clone()
    }
}

#[async_trait]
impl TokenStore for Recorded {
    async fn verify(&self, _: &Token) -> Result<Option<Identity>, StoreError> {
        panic!("the gatherer asks verify_many only");
    }
    async fn verify_many(&self, tokens: &[Token]) -> Result<Vec<Option<Identity>>, StoreError> {
        self.batches.lock().unwrap().push(tokens.len());
        self.gate.acquire().await.expect("gate").forget();
        self.store.verify_many(tokens).await
    }
    fn batches(&self) -> bool {
        true
    }
    async fn revoke(&self, digest: &TokenDigest) -> Result<(), StoreError> {
        self.store.revoke(digest).await
    }
    fn name(&self) -> &'static str {
        "recorded"
    }
}

async fn native_on(url: &str) -> NativeStore {
    let mut config = Config::default();
    config.database.url = Some(url.to_string());
    let db = Db::connect(&config).await.expect("db");
    db.migrate().await.expect("migrate");
    NativeStore::new(db)
}

/// Valid, revoked and unknown tokens, and what the store says of each.
async fn tokens(store: &NativeStore) -> (Vec<Token>, Vec<Option<String>>) {
    let mut tokens = Vec::new();
    for i in 0..40 {
        tokens.push(store.issue(&format!("user-{i}"), None).await.unwrap());
    }
    for t in tokens.iter().step_by(7) {
        store.revoke(&t.digest()).await.unwrap();
    }
    tokens.insert(3, Token::generate());
    tokens.insert(20, Token::generate());
    let mut expected = Vec::new();
    for t in &tokens {
        expected.push(store.verify(t).await.unwrap().map(|i| i.user_id));
    }
    (tokens, expected)
}

/// Waits (bounded) until `n` lookups are queued behind the busy slot.
async fn until_waiting(batched: &Batched, n: usize) {
    for _ in 0..1000 {
        if batched.waiting() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} lookups waiting, expected {n}", batched.waiting());
}

/// A lone lookup goes out at once, alone. While the one query slot is
/// busy, the lookups behind it wait and then share one query, and each
/// caller gets the answer for its own token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_behind_a_busy_query_share_the_next_one() {
    let pg = PgDb::create().await;
    let native = native_on(&pg.url).await;
    let (tokens, expected) = tokens(&native).await;
    let recorded = Recorded::new(native);
    let batched = Arc::new(Batched::new(recorded.clone(), 1, Duration::from_secs(30)));

    // Alone: a batch of one.
    recorded.gate.add_permits(1);
    let alone = batched.verify(&tokens[1]).await.unwrap();
    assert_eq!(alone.map(|i| i.user_id), expected[1]);
    assert_eq!(recorded.batches(), vec![1]);

    // The first lookup holds the slot (its query is gated); the rest queue.
    let spawn = |token: Token| {
        let batched = batched.clone();
        tokio::spawn(async move { batched.verify(&token).await })
    };
    let first = spawn(tokens[0].clone());
    for _ in 0..1000 {
        if recorded.batches().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(recorded.batches(), vec![1, 1], "the first lookup's query");
    let rest: Vec<_> = tokens[1..].iter().cloned().map(spawn).collect();
    until_waiting(&batched, tokens.len() - 1).await;
    recorded.gate.add_permits(2);

    let mut answers = vec![first.await.unwrap().unwrap().map(|i| i.user_id)];
    for handle in rest {
        answers.push(handle.await.unwrap().unwrap().map(|i| i.user_id));
    }
    assert_eq!(
        answers, expected,
        "every caller gets its own token's answer"
    );
    assert_eq!(
        recorded.batches(),
        vec![1, 1, tokens.len() - 1],
        "{} lookups queued behind one query went out as one",
        tokens.len() - 1
    );
    assert!(expected.iter().any(Option::is_none) && expected.iter().any(Option::is_some));
}

/// A query on a database that does not answer is given up after the
/// timeout: its callers get `Unavailable` (close 1013 at the edge) and
/// its slot is free again, so lookups answer once the database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_query_fails_its_callers_and_frees_its_slot() {
    let mut server = PgServer::start();
    let native = native_on(&server.url("postgres")).await;
    let valid = native.issue("someone", None).await.unwrap();
    let batched = Arc::new(Batched::new(
        Arc::new(native),
        1,
        Duration::from_millis(500),
    ));
    assert!(batched.verify(&valid).await.unwrap().is_some());

    server.freeze();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let (batched, token) = (batched.clone(), valid.clone());
            tokio::spawn(async move { batched.verify(&token).await })
        })
        .collect();
    for caller in callers {
        match caller.await.unwrap() {
            Err(StoreError::Unavailable(message)) => {
                assert!(message.contains("did not answer"), "{message}");
                assert!(!message.contains(valid.expose()), "no token in errors");
            }
            other => panic!("expected Unavailable from a frozen database, got {other:?}"),
        }
    }

    server.thaw();
    let mut answered = None;
    for _ in 0..20 {
        match batched.verify(&valid).await {
            Ok(answer) => {
                answered = Some(answer);
                break;
            }
            // The connection the hung query held may be dropped first.
            Err(StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        answered.expect("answers after the thaw").map(|i| i.user_id),
        Some("someone".to_string())
    );
}

/// Only stores whose batches are one query are wrapped: an arbitrary
/// `auth.query` runs once per token, so gathering would serialize it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_stores_that_batch_in_one_query_are_wrapped() {
    let pg = PgDb::create().await;
    let native = native_on(&pg.url).await;
    let db = {
        let mut config = Config::default();
        config.database.url = Some(pg.url.clone());
        Db::connect(&config).await.unwrap()
    };
    let timeout = Duration::from_secs(5);
    let query: Arc<dyn TokenStore> = Arc::new(QueryStore::new(db.clone(), "SELECT $1".into()));
    assert!(Arc::ptr_eq(
        &Batched::wrap(query.clone(), 2, timeout),
        &query
    ));
    let django: Arc<dyn TokenStore> = Arc::new(QueryStore::django(db));
    assert!(!Arc::ptr_eq(
        &Batched::wrap(django.clone(), 2, timeout),
        &django
    ));
    let native: Arc<dyn TokenStore> = Arc::new(native);
    let wrapped = Batched::wrap(native.clone(), 2, timeout);
    assert!(!Arc::ptr_eq(&wrapped, &native));
    assert_eq!(wrapped.name(), native.name());
}
