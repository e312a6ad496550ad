//! A command whose reply is lost with its connection is not run twice.
//!
//! fred sends a command again once it has reconnected if the connection
//! closed while the command was in flight (`max_command_attempts`, 3 by
//! default), whether or not Redis ran it. For the broker's writes that is
//! wrong twice over: a `PUBLISH` Redis ran is delivered again, answered
//! 200; an idempotency claim (`SET NX`) Redis ran finds its own key the
//! second time, so the API answers `duplicate` and the message is never
//! published, though nobody published it before.
//!
//! The fault: Redis frozen (SIGSTOP), the command written through the proxy
//! into Redis's socket buffer, the proxy's connections cut and the proxy
//! back, Redis thawed. Redis then runs the command from the closed
//! connection's buffer, and the client, reconnected, would send it again.

use super::proxy::FaultProxy;
use super::*;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use serde_json::value::RawValue;
use wsgate::broker::Broker;
use wsgate::broker::idempotency::Idempotency;
use wsgate::broker::redis::RedisBroker;
use wsgate::broker::redis::idempotency::RedisIdempotency;
use wsgate::config::RedisConfig;
use wsgate::metrics::Metrics;
use wsgate::protocol::Publication;

const PREFIX: &str = "wsgate_t_lost:";

/// A throwaway Redis behind the proxy, and settings that reach it through
/// the proxy with a command timeout longer than the whole fault.
struct Cut {
    redis: RedisProc,
    proxy: FaultProxy,
    cfg: RedisConfig,
    _dir: tempfile::TempDir,
}

impl Cut {
    async fn start() -> Cut {
        let dir = tempfile::tempdir().unwrap();
        let redis = RedisProc::start(dir.path());
        let proxy = FaultProxy::start(redis.port).await;
        let cfg = RedisConfig {
            url: Some(proxy.url()),
            prefix: PREFIX.into(),
            command_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(60),
            node_ttl: Duration::from_secs(180),
            ..RedisConfig::default()
        };
        Cut {
            redis,
            proxy,
            cfg,
            _dir: dir,
        }
    }

    /// Runs `command` through the fault and returns its result once Redis
    /// is back. Not a timed assertion: the pauses only let the command
    /// reach Redis's buffer and the client reconnect before the thaw; a
    /// client that reconnects later still sends it again before its
    /// timeout, which the checks below see the same way.
    async fn across_a_cut<T>(
        &mut self,
        command: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T
    where
        T: Send + 'static,
    {
        self.redis.freeze();
        let running = tokio::spawn(command);
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.proxy.disable().await;
        self.proxy.enable().await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        self.redis.thaw();
        tokio::time::timeout(Duration::from_secs(15), running)
            .await
            .expect("the command ends within its timeout")
            .expect("the command's task")
    }
}

#[tokio::test]
async fn a_claim_whose_reply_is_lost_is_not_taken_for_a_duplicate() {
    bounded(Duration::from_secs(60), async {
        let mut cut = Cut::start().await;
        let client = wsgate::redis_client::client(&cut.cfg).unwrap();
        let _connection = wsgate::redis_client::connect(&client, Duration::from_secs(5))
            .await
            .unwrap();
        let ids = Arc::new(RedisIdempotency::new(client.clone(), PREFIX));
        let claim = {
            let ids = ids.clone();
            async move {
                ids.claim(&["order-42".to_string()], Duration::from_secs(30))
                    .await
            }
        };
        let claimed = cut.across_a_cut(claim).await;
        // Redis ran the claim (from the cut connection's buffer), once.
        let stats = redis_cli(cut.redis.port, &["INFO", "commandstats"]);
        assert_eq!(command_calls(&stats, "set"), 1, "{stats:#?}");
        // Nobody else holds the key: "held" would turn this request into a
        // duplicate that was never published. Unknown is the honest answer,
        // and the claim took its key back, so the caller's retry publishes.
        assert!(
            claimed.is_err(),
            "a claim whose reply was lost answered {claimed:?}"
        );
        let key = format!("{PREFIX}idem:order-42");
        assert_eq!(redis_cli(cut.redis.port, &["EXISTS", &key]), ["0"]);
        client.quit().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_publish_whose_reply_is_lost_is_not_delivered_twice() {
    bounded(Duration::from_secs(60), async {
        let mut cut = Cut::start().await;
        let broker = RedisBroker::connect(&cut.cfg, "a".into(), Arc::new(Metrics::new()))
            .await
            .expect("connect through the proxy");
        // A listener straight on Redis, not through the proxy.
        let listener = fred::prelude::Builder::from_config(
            fred::prelude::Config::from_url(&format!("redis://127.0.0.1:{}", cut.redis.port))
                .unwrap(),
        )
        .build_subscriber_client()
        .unwrap();
        listener.init().await.unwrap();
        let channel = format!("{PREFIX}group:g");
        listener.subscribe(&channel).await.unwrap();
        let mut messages = listener.message_rx();
        let publish = {
            let broker = broker.clone();
            async move {
                let data = RawValue::from_string("1".into()).unwrap();
                broker
                    .publish(vec![Publication {
                        group: "g".into(),
                        data,
                        position: None,
                        ts: None,
                        trace: None,
                        seq: None,
                    }])
                    .await
            }
        };
        let published = cut.across_a_cut(publish).await;
        // fred sends what it sends again before it reports the reconnection,
        // so before the broker is up; then Redis has had time to run it.
        let start = Instant::now();
        while !broker.is_up() {
            assert!(start.elapsed() < Duration::from_secs(20), "link up again");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut received = 0;
        while messages.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(
            received, 1,
            "Redis ran the publish {received} times (answered {published:?})"
        );
        // The reply was lost: the request is not told it went out.
        assert!(published.is_err(), "{published:?}");
        listener.quit().await.unwrap();
        broker.shutdown().await;
    })
    .await;
}
