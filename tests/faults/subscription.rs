//! A join's `subscribed` when the subscriber connection is backed up.
//!
//! `subscribed` tells a client that Redis holds the group's subscription
//! (docs/protocol.md), so a join returns only once Redis has run its
//! `SUBSCRIBE`. fred answers a `SUBSCRIBE` as soon as it writes it, so a
//! join used to be confirmed by whatever it awaited next on another
//! connection (the presence write on the command client). On one
//! unhindered loopback connection that reaches Redis after the
//! `SUBSCRIBE`; when the subscriber connection is slower than the command
//! connection (a large publish ahead of the `SUBSCRIBE`, a congested or
//! retransmitting link, a proxy) it does not, and a client could be told
//! `subscribed` while Redis did not yet deliver the group to the node.
//!
//! Here the proxy limits every connection's bandwidth towards Redis and a
//! 2 MB publication is queued on the subscriber connection (the node
//! publishes there) just before a first join: the join's commands wait
//! behind it, the command client's small commands do not.

use super::proxy::FaultProxy;
use super::*;
use serde_json::value::RawValue;
use wsgate::broker::Broker;
use wsgate::broker::occupancy::OccupancySettings;
use wsgate::broker::redis::RedisBroker;
use wsgate::config::RedisConfig;
use wsgate::hub::Member;
use wsgate::metrics::Metrics;
use wsgate::protocol::Publication;

/// Bytes of the publication ahead of the join: it fits in the sockets'
/// buffers, so fred writes the join's commands behind it at once (7.5 MB
/// kept them in fred's queue, where they timed out unsent). noxious passes
/// at most 32 KB a chunk, under its 100 KB-a-chunk limit at 1,000 KB/s and
/// its 40 KB one at 400 KB/s.
const BACKLOG: usize = 2_000_000;
const PREFIX: &str = "wsgate_t_order:";

/// Node `a` on a throwaway Redis behind the proxy, every connection
/// limited to `rate` KB/s towards Redis from its first byte (noxious does
/// not slow an open connection with a bandwidth toxic added to it).
struct Slowed {
    broker: Arc<RedisBroker>,
    redis: RedisProc,
    _proxy: FaultProxy,
    _dir: tempfile::TempDir,
}

impl Slowed {
    async fn start(rate: u64, command_timeout: Duration, occupancy: bool) -> Slowed {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisProc::start(dir.path());
        let mut proxy = FaultProxy::start(redis.port).await;
        proxy
            .restart_with(vec![Toxic {
                kind: ToxicKind::Bandwidth { rate },
                name: "slow-up".into(),
                toxicity: 1.0,
                direction: StreamDirection::Upstream,
            }])
            .await;
        let cfg = RedisConfig {
            url: Some(proxy.url()),
            prefix: PREFIX.into(),
            command_timeout,
            // No heartbeat within a test: nothing repairs presence.
            heartbeat: Duration::from_secs(60),
            node_ttl: Duration::from_secs(180),
            ..RedisConfig::default()
        };
        let broker = RedisBroker::connect(&cfg, "a".into(), Arc::new(Metrics::new()))
            .await
            .expect("connect through the proxy");
        if occupancy {
            broker.start_occupancy(OccupancySettings {
                linger: Duration::from_secs(120),
                stream: None,
                stream_maxlen: 1000,
                queue: 16,
            });
            // The sweep's first tick, at start, out of the way.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Slowed {
            broker,
            redis,
            _proxy: proxy,
            _dir: dir,
        }
    }

    /// Queues a [`BACKLOG`]-byte publication on the subscriber connection
    /// and returns once what comes next goes behind it.
    async fn backlog(
        &self,
    ) -> JoinHandle<Result<Vec<Option<wsgate::protocol::Position>>, wsgate::broker::BrokerError>>
    {
        let big = Publication {
            group: "big".into(),
            data: RawValue::from_string(format!("\"{}\"", "x".repeat(BACKLOG))).unwrap(),
            position: None,
            ts: None,
            trace: None,
            seq: None,
        };
        let broker = self.broker.clone();
        let publish = tokio::spawn(async move { broker.publish(vec![big]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        publish
    }

    /// User `u1` joins `ticks`; returns the result and how long it took.
    async fn join(&self) -> (Result<(), wsgate::broker::BrokerError>, Duration) {
        let member = Member {
            user_id: "u1".into(),
            session: "s1".into(),
            node: "a".into(),
        };
        let started = Instant::now();
        let result = self.broker.subscribe("ticks", &member).await;
        (result, started.elapsed())
    }

    fn cli(&self, args: &[&str]) -> String {
        redis_cli(self.redis.port, args).join(" ")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_returns_only_once_redis_has_run_its_subscribe_behind_a_backlog() {
    bounded(Duration::from_secs(60), async {
        // Occupancy off: the presence write rides behind the SUBSCRIBE.
        join_behind_a_backlog(false).await;
        // Occupancy on: the first join's script does.
        join_behind_a_backlog(true).await;
    })
    .await;
}

/// At 1,000 KB/s the backlog takes about 2 s; nothing times out.
async fn join_behind_a_backlog(occupancy: bool) {
    let node = Slowed::start(1_000, Duration::from_secs(20), occupancy).await;
    let publish = node.backlog().await;
    let (joined, after) = node.join().await;
    joined.expect("join");
    let held = node.cli(&["pubsub", "numsub", &format!("{PREFIX}group:ticks")]);
    eprintln!(
        "occupancy {occupancy}: join returned after {after:?}; the publication ahead had {}reached Redis",
        if publish.is_finished() { "" } else { "not " }
    );
    assert_eq!(
        held,
        format!("{PREFIX}group:ticks 1"),
        "occupancy {occupancy}: the join returned ({after:?}) before Redis ran its SUBSCRIBE"
    );
    publish.await.unwrap().expect("the large publication");
    node.broker.shutdown().await;
}

/// A first join Redis does not confirm within `redis.command_timeout` is
/// refused, and what it wrote (presence, and occupancy where it is on) is
/// taken back. Its commands may still be on their way: here they wait
/// behind a backlog that reaches Redis after the join was refused (the
/// command timeout is 2 s; the join's first command times out at 2 s and
/// the `PING` behind it at 4 s, 2 MB at 400 KB/s pass at about 5 s, and
/// fred would drop the connection as unresponsive at 6 s). The take-back
/// must run after them: on the command connection it ran first, and the
/// join's late write then left a presence entry until `node_ttl` (with
/// occupancy on, the sweep repairs occupancy and presence sooner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_join_leaves_nothing_behind_when_its_commands_arrive_late() {
    bounded(Duration::from_secs(90), async {
        refused_join_behind_a_backlog(true).await;
        refused_join_behind_a_backlog(false).await;
    })
    .await;
}

async fn refused_join_behind_a_backlog(occupancy: bool) {
    let node = Slowed::start(400, Duration::from_secs(2), occupancy).await;
    let publish = node.backlog().await;
    let (refused, after) = node.join().await;
    eprintln!("occupancy {occupancy}: join answered after {after:?}: {refused:?}");
    assert!(
        refused.is_err(),
        "occupancy {occupancy}: the join was confirmed"
    );
    let _ = publish.await;

    // The backlog passes, the join's SUBSCRIBE runs, then what followed it;
    // the node unsubscribes the group it did not keep, after all of them.
    eventually(
        Duration::from_secs(30),
        "the node's UNSUBSCRIBE",
        || async {
            let stats = redis_cli(node.redis.port, &["info", "commandstats"]);
            command_calls(&stats, "unsubscribe") >= 1
        },
    )
    .await;
    let presence = node.cli(&["exists", &format!("{PREFIX}presence:ticks:a")]);
    let counted = node.cli(&["hexists", &format!("{PREFIX}{{occ}}:g:ticks"), "a"]);
    assert_eq!(
        (presence.as_str(), counted.as_str()),
        ("0", "0"),
        "occupancy {occupancy}: a refused join left its presence hash and occupancy behind"
    );
    node.broker.shutdown().await;
}
