//! A reconnect storm: clients drained off one node reconnect at once to
//! another.

use super::*;

const STORM_CLIENTS: usize = 5_000;
const STORM_TOKENS: usize = 500;

enum StormEvent {
    Connected,
    Reconnected {
        closed_at: Instant,
        code: u16,
        welcome_at: Instant,
        retries: u32,
    },
}

async fn storm_client(
    i: usize,
    a_url: String,
    b_url: String,
    connect_slots: Arc<tokio::sync::Semaphore>,
    events: mpsc::UnboundedSender<StormEvent>,
    mut done: tokio::sync::watch::Receiver<bool>,
) {
    let token = format!("storm-token-{}", i % STORM_TOKENS);
    let mut client = {
        let _slot = connect_slots.acquire().await.unwrap();
        let (c, _) = Client::authed(&a_url, &token).await;
        c
    };
    let _ = events.send(StormEvent::Connected);
    let closed = client.close_within(Duration::from_secs(60)).await;
    let closed_at = Instant::now();
    let code = common::code(closed);
    // Straight back, to the other node, as a load balancer would send it.
    let mut retries = 0;
    let mut client = loop {
        let attempt = async {
            let (mut c, _) = tokio_tungstenite::connect_async(b_url.as_str())
                .await
                .ok()?;
            c.send(Message::text(
                json!({"type": "auth", "token": token}).to_string(),
            ))
            .await
            .ok()?;
            match c.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => Some(c),
                _ => None,
            }
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Some(c)) => break c,
            _ => {
                retries += 1;
                assert!(retries < 20, "client {i} could not reconnect");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let _ = events.send(StormEvent::Reconnected {
        closed_at,
        code,
        welcome_at: Instant::now(),
        retries,
    });
    let _ = done.wait_for(|d| *d).await;
    let _ = client.close(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_storm_after_drain_5000_clients() {
    bounded(Duration::from_secs(110), async {
    let test_start = Instant::now();
    let nofile = raise_nofile_limit();
    assert!(
        nofile >= 8_000,
        "open-file limit {nofile} too low for the storm"
    );
    let pg = PgDb::create().await;
    let pool = pg.pool().await;
    for sql in [
        "CREATE TABLE lookups (n integer NOT NULL)",
        "INSERT INTO lookups VALUES (0)",
        "CREATE TABLE storm_tokens (token text PRIMARY KEY, user_id text NOT NULL)",
        "INSERT INTO storm_tokens SELECT 'storm-token-' || g, (g % 100)::text FROM generate_series(0, 499) g",
        "CREATE FUNCTION lookup_token(t text) RETURNS TABLE(user_id text) LANGUAGE plpgsql VOLATILE AS $$ \
         BEGIN UPDATE lookups SET n = n + 1; \
         RETURN QUERY SELECT s.user_id FROM storm_tokens s WHERE s.token = t; END $$",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .unwrap();
    }
    let lookups = async || {
        sqlx::query_scalar::<_, i32>("SELECT n FROM lookups")
            .fetch_one(&pool)
            .await
            .unwrap() as usize
    };
    let dir = tempfile::tempdir().unwrap();
    let prefix = RedisPrefix::random();
    let node = |name: &str| {
        BinNode::start(
            dir.path(),
            &[
                ("WSGATE__SERVER__NODE_ID", name),
                ("WSGATE__REDIS__URL", SHARED_REDIS),
                ("WSGATE__REDIS__PREFIX", &prefix),
                ("WSGATE__DATABASE__URL", &pg.url),
                ("WSGATE__AUTH__STORE", "query"),
                (
                    "WSGATE__AUTH__QUERY",
                    "SELECT user_id FROM lookup_token($1)",
                ),
                ("WSGATE__LIMITS__MAX_CONNECTIONS_PER_IP", "0"),
                ("WSGATE__LIMITS__MAX_PENDING", "10000"),
                ("WSGATE__LIMITS__MAX_PENDING_PER_IP", "10000"),
                ("WSGATE__DRAIN__GRACE", "0s"),
                ("WSGATE__DRAIN__SPREAD", "200ms"),
            ],
        )
    };
    let mut a = node("node-a");
    let mut b = node("node-b");

    // 5,000 clients on node-a, 500 distinct tokens.
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(200));
    let started = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..STORM_CLIENTS)
        .map(|i| {
            tokio::spawn(storm_client(
                i,
                a.ws_url(),
                b.ws_url(),
                slots.clone(),
                events_tx.clone(),
                done_rx.clone(),
            ))
        })
        .collect();
    drop(events_tx);
    let mut connected = 0;
    while connected < STORM_CLIENTS {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(StormEvent::Connected)) => connected += 1,
            other => panic!(
                "only {connected} clients connected to node-a ({})",
                if other.is_err() {
                    "timeout"
                } else {
                    "a client failed"
                }
            ),
        }
    }
    let connect_time = started.elapsed();
    let initial_lookups = lookups().await;
    println!(
        "storm: {STORM_CLIENTS} clients ({STORM_TOKENS} tokens) authenticated on node-a in {connect_time:?} \
         ({:.0} auth/s), {initial_lookups} database lookups",
        STORM_CLIENTS as f64 / connect_time.as_secs_f64()
    );
    assert!(
        initial_lookups <= STORM_TOKENS,
        "{initial_lookups} lookups for {STORM_TOKENS} distinct tokens"
    );

    // Half of the tokens leave the Redis cache (under this test's prefix):
    // node-b has never seen any of them, so exactly those 250 are uncached.
    let uncached = STORM_TOKENS / 2;
    let keys: Vec<String> = (0..uncached)
        .map(|t| {
            let token = wsgate::auth::Token::new(format!("storm-token-{t}"));
            format!("{prefix}auth:{}", token.digest().to_hex())
        })
        .collect();
    for chunk in keys.chunks(100) {
        let mut args = vec!["del"];
        args.extend(chunk.iter().map(String::as_str));
        let deleted: usize = redis_cli(6379, &args)[0].parse().unwrap();
        assert_eq!(
            deleted,
            chunk.len(),
            "auth cache entries present before the storm"
        );
    }

    // Drain node-a: every client is closed with 1012 within drain.spread
    // and reconnects to node-b at once.
    let before_storm = lookups().await;
    let term_at = Instant::now();
    a.signal("TERM");
    let mut first_close: Option<Instant> = None;
    let mut last_welcome = term_at;
    let mut codes = std::collections::BTreeMap::new();
    let mut retries = 0;
    for _ in 0..STORM_CLIENTS {
        match tokio::time::timeout(Duration::from_secs(40), events.recv()).await {
            Ok(Some(StormEvent::Reconnected {
                closed_at,
                code,
                welcome_at,
                retries: r,
            })) => {
                first_close = Some(first_close.map_or(closed_at, |f| f.min(closed_at)));
                last_welcome = last_welcome.max(welcome_at);
                *codes.entry(code).or_insert(0) += 1;
                retries += r;
            }
            other => panic!(
                "a client did not reconnect ({})",
                if other.is_err() {
                    "timeout"
                } else {
                    "it failed"
                }
            ),
        }
    }
    let storm_lookups = lookups().await - before_storm;
    let first_close = first_close.unwrap();
    let wall = last_welcome - first_close;
    println!(
        "storm: drain closed {codes:?} (code: clients); all {STORM_CLIENTS} re-authenticated on node-b \
         {wall:?} after the first close ({:?} after SIGTERM), {:.0} auth/s, {retries} retried connects; \
         {storm_lookups} database lookups for {uncached} uncached tokens",
        last_welcome - term_at,
        STORM_CLIENTS as f64 / wall.as_secs_f64(),
    );
    assert_eq!(
        codes.get(&1012),
        Some(&STORM_CLIENTS),
        "every client closed with 1012"
    );
    assert!(
        storm_lookups <= uncached,
        "{storm_lookups} database lookups for {uncached} uncached tokens"
    );
    let status = a.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "drained node exits 0: {status}");
    assert_eq!(
        bin_metric(&b, "wsgate_connections{state=\"authenticated\"}").await,
        STORM_CLIENTS as f64
    );
    assert_eq!(
        bin_metric(&b, "wsgate_auth_success_total").await,
        STORM_CLIENTS as f64
    );
    assert_alive_without_panic(&mut b, "node-b");
    assert_alive_or_exited_cleanly(&mut a, "node-a");

    let _ = done_tx.send(true);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    drop(b);
    pool.close().await;
    drop(pg);
    println!("storm test took {:?}", test_start.elapsed());
    })
    .await;
}
