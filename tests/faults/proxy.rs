//! The in-process fault proxy the Redis fault tests put between nodes and
//! a throwaway `redis-server`.

use super::*;

/// A TCP proxy from a local port to `upstream`, run in-process by the
/// `noxious` library (a Rust port of Shopify's Toxiproxy, same toxic model;
/// noxious 1.0.4, last released in 2021). What each fault really does, as
/// measured against noxious itself:
/// - `disable`/`enable`: the proxy stops (every connection closed, new ones
///   refused) and starts again on the same port. noxious has no
///   `reset_peer` toxic, so this is the "connections reset" cut.
/// - `blackhole`: `timeout` toxics (timeout 0) both ways: bytes are
///   swallowed, connections stay open, new connections are accepted and
///   swallowed too. After `clear`, new connections pass but the ones that
///   were open stay dead: noxious does not give a live connection its
///   toxic-free link back. They are half-open connections from then on, as
///   after a middlebox lost their state.
/// - `restart_with(latency)`: noxious adds a toxic to live connections but
///   never removes one from them, so latency is applied and taken away by
///   restarting the proxy with (or without) the toxic: each change closes
///   the proxied connections, and the nodes reconnect through the new link.
///   noxious delays chunks one after the other (`Stream::then`), so a
///   connection gets at most one chunk per `latency` through and the delay
///   grows when more arrive than that.
/// - A `bandwidth` toxic added to open connections did not slow them
///   (`subscription`'s test, before it used `restart_with`).
/// - `RemoveAllToxics` clears only the upstream direction (the event stops
///   at the first list it applies to), so toxics are removed by name.
pub(crate) struct FaultProxy {
    listen: String,
    upstream: String,
    running: Option<ProxyRun>,
    toxics: Vec<String>,
}

struct ProxyRun {
    stopper: Stopper,
    closed: Close,
    events: bmrng::RequestSender<ToxicEvent, Result<(), ToxicUpdateError>>,
    task: JoinHandle<std::io::Result<()>>,
}

const PROXY_NAME: &str = "redis";

impl FaultProxy {
    pub(crate) async fn start(upstream_port: u16) -> FaultProxy {
        let mut proxy = FaultProxy {
            listen: format!("127.0.0.1:{}", free_port()),
            upstream: format!("127.0.0.1:{upstream_port}"),
            running: None,
            toxics: Vec::new(),
        };
        proxy.enable().await;
        proxy
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://{}", self.listen)
    }

    /// Starts forwarding (again) on the same port.
    pub(crate) async fn enable(&mut self) {
        self.enable_with(Toxics::empty()).await;
    }

    /// Restarts the proxy with `toxics` from the first byte of every
    /// connection (open connections are closed by the restart).
    pub(crate) async fn restart_with(&mut self, toxics: Vec<Toxic>) {
        self.disable().await;
        let (upstream, downstream) = toxics
            .into_iter()
            .partition(|t| t.direction == StreamDirection::Upstream);
        self.enable_with(Toxics {
            upstream,
            downstream,
        })
        .await;
    }

    async fn enable_with(&mut self, toxics: Toxics) {
        assert!(self.running.is_none(), "proxy already running");
        let config = ProxyConfig {
            name: PROXY_NAME.into(),
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            enabled: true,
            rand_seed: None,
        };
        let (listener, info) =
            ProxyRunner::initialize_proxy::<noxious::socket::TcpListener>(config, toxics)
                .await
                .expect("proxy binds its port");
        let (stop, stopper) = Stop::new();
        let (closed, closer) = Close::new();
        let (events, receiver) = bmrng::channel(4);
        let task = tokio::spawn(ProxyRunner::run_proxy(
            listener, info, receiver, stop, closer,
        ));
        self.running = Some(ProxyRun {
            stopper,
            closed,
            events,
            task,
        });
        self.toxics.clear();
    }

    /// Stops the proxy: every proxied connection is closed and new ones are
    /// refused until [`FaultProxy::enable`].
    pub(crate) async fn disable(&mut self) {
        let run = self.running.take().expect("proxy running");
        run.stopper.stop();
        let _ = tokio::time::timeout(Duration::from_secs(5), run.closed.recv()).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), run.task).await;
        let start = Instant::now();
        while TcpStream::connect(&self.listen).await.is_ok() {
            assert!(start.elapsed() < Duration::from_secs(5), "proxy still open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn event(&self, kind: ToxicEventKind) {
        let run = self.running.as_ref().expect("proxy running");
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            run.events.send_receive(ToxicEvent {
                proxy_name: PROXY_NAME.into(),
                kind,
            }),
        )
        .await
        .expect("proxy answers a toxic update");
        assert!(
            matches!(answer, Ok(Ok(()))),
            "toxic update refused: {answer:?}"
        );
    }

    pub(crate) async fn add(&mut self, name: &str, kind: ToxicKind, direction: StreamDirection) {
        self.event(ToxicEventKind::AddToxic(Toxic {
            kind,
            name: name.into(),
            toxicity: 1.0,
            direction,
        }))
        .await;
        self.toxics.push(name.into());
    }

    /// Swallows every byte both ways, on open and new connections.
    pub(crate) async fn blackhole(&mut self) {
        let kind = ToxicKind::Timeout { timeout: 0 };
        self.add("blackhole-up", kind, StreamDirection::Upstream)
            .await;
        self.add("blackhole-down", kind, StreamDirection::Downstream)
            .await;
    }

    /// Removes every toxic, by name.
    pub(crate) async fn clear(&mut self) {
        for name in std::mem::take(&mut self.toxics) {
            self.event(ToxicEventKind::RemoveToxic(name)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(run) = self.running.take() {
            run.stopper.stop();
            run.task.abort();
        }
    }
}
