//! The Redis link cut (reset, then blackholed) and delayed, through the
//! in-process fault proxy.

use super::proxy::FaultProxy;
use super::*;

// ---------------------------------------------------------------------------
// The tests.

/// A `wsgate` process whose Redis is behind the proxy.
fn proxied_node(
    dir: &std::path::Path,
    name: &str,
    redis_url: &str,
    prefix: &str,
    pg: &PgDb,
    timing: &[(&str, &str)],
) -> BinNode {
    let mut env = vec![
        ("WSGATE__SERVER__NODE_ID", name),
        ("WSGATE__REDIS__URL", redis_url),
        ("WSGATE__REDIS__PREFIX", prefix),
        ("WSGATE__DATABASE__URL", pg.url.as_str()),
        ("WSGATE__DRAIN__GRACE", "0s"),
        ("WSGATE__DRAIN__SPREAD", "100ms"),
    ];
    env.extend_from_slice(timing);
    BinNode::start(dir, &env)
}

/// A background publisher through one node's API, every 20 ms, until
/// stopped; returns (accepted, refused) counts.
fn publish_in_background(
    api: String,
    group: &str,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u32, u32)> {
    let group = group.to_string();
    tokio::spawn(async move {
        let (mut ok, mut refused) = (0, 0);
        let mut i = 0u64;
        while !stop.load(Ordering::Acquire) {
            let body = json!({"group": group, "data": {"tag": "bg", "i": i, "t": now_us()}});
            if post_publish(&api, body).await == 200 {
                ok += 1;
            } else {
                refused += 1;
            }
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (ok, refused)
    })
}

/// A publish after recovery reaches every client.
async fn delivery_resumes(api: &str, clients: &mut [Live], tag: &str) {
    let status = post_publish(
        api,
        json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}}),
    )
    .await;
    assert_eq!(status, 200, "publish after recovery ({tag})");
    for c in clients.iter_mut() {
        let us = c.latency_of(tag, Duration::from_secs(5)).await;
        println!("  {}: '{tag}' delivered in {}", c.name, ms(us));
    }
}

/// During an outage that began at `cut_at`: both nodes report 503 on
/// `/readyz` (the time it took is printed), `wsgate_redis_up` is 0,
/// `/healthz` stays 200, every client still answers a ping, and neither
/// process died or panicked.
async fn outage_checks(
    label: &str,
    nodes: &mut [&mut BinNode],
    clients: &mut [Live],
    cut_at: Instant,
    detect_within: Duration,
) {
    let mut detected = Vec::new();
    for n in nodes.iter() {
        let t = wait_status(
            &format!("http://{}/readyz", n.metrics),
            503,
            cut_at,
            detect_within,
        )
        .await;
        assert_eq!(bin_metric(n, "wsgate_redis_up").await, 0.0);
        detected.push(t);
    }
    println!("{label}: /readyz 503 after {detected:?} (node-a, node-b)");
    for n in nodes.iter() {
        assert_eq!(
            get_status(&format!("http://{}/healthz", n.metrics)).await,
            Some(200),
            "healthz during the outage"
        );
    }
    for c in clients.iter_mut() {
        let rtt = c.ping(Duration::from_secs(3)).await;
        println!("{label}: {} ping/pong during the outage in {rtt:?}", c.name);
    }
    for (i, n) in nodes.iter_mut().enumerate() {
        assert_alive_without_panic(n, &format!("node {i} during {label}"));
    }
}

/// Waits for both nodes to report ready again, then publishes once through
/// each node's API: a ready node should accept a publish. Returns the
/// publishes that were refused although the node said it was ready.
async fn recovery_checks(
    label: &str,
    nodes: &mut [&mut BinNode],
    restored_at: Instant,
    cut_at: Instant,
) -> Vec<String> {
    let mut recovered = Vec::new();
    for n in nodes.iter() {
        let t = wait_status(
            &format!("http://{}/readyz", n.metrics),
            200,
            restored_at,
            Duration::from_secs(15),
        )
        .await;
        assert_eq!(bin_metric(n, "wsgate_redis_up").await, 1.0);
        recovered.push(t);
    }
    println!(
        "{label}: /readyz 200 again {recovered:?} after the link came back (outage lasted {:?} in all)",
        cut_at.elapsed()
    );
    let mut refused_while_ready = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let start = Instant::now();
        let mut statuses = Vec::new();
        loop {
            let status = post_publish(
                &n.api,
                json!({"group": "ticks", "data": {"tag": "ready-probe", "t": now_us()}}),
            )
            .await;
            statuses.push(status);
            if status == 200 || start.elapsed() > Duration::from_secs(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if statuses.len() > 1 {
            let line = format!(
                "{label}: {} answered /readyz 200 but then refused {} publishes over {:?}{}",
                ["node-a", "node-b"][i.min(1)],
                statuses.iter().filter(|s| **s != 200).count(),
                start.elapsed(),
                if statuses.last() == Some(&200) {
                    " before accepting one"
                } else {
                    ", and still refuses"
                }
            );
            println!("{line}");
            refused_while_ready.push(line);
        }
    }
    refused_while_ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_link_reset_and_blackholed_through_fault_proxy() {
    bounded(Duration::from_secs(90), async {
        let pg = PgDb::create().await;
        let dir = tempfile::tempdir().unwrap();
        let mut redis = RedisProc::start(dir.path());
        let mut proxy = FaultProxy::start(redis.port).await;
        let prefix = random_prefix();
        // Short Redis timings, as in tests/cluster.rs, so faults show quickly.
        let timing = [
            ("WSGATE__REDIS__HEARTBEAT", "200ms"),
            ("WSGATE__REDIS__NODE_TTL", "2s"),
            ("WSGATE__REDIS__COMMAND_TIMEOUT", "500ms"),
        ];
        let mut a = proxied_node(dir.path(), "node-a", &proxy.url(), &prefix, &pg, &timing);
        let mut b = proxied_node(dir.path(), "node-b", &proxy.url(), &prefix, &pg, &timing);
        let token = issue_token(&pg_config(dir.path(), &pg.url), "1", None).await;
        let mut clients = vec![
            Live::join(&a.ws_url(), &token, "ticks", "client@node-a").await,
            Live::join(&b.ws_url(), &token, "ticks", "client@node-b").await,
        ];
        delivery_resumes(&a.api, &mut clients, "before").await;

        // Cut 1: the proxy goes away (connections closed, new ones refused)
        // for ~2 s, while node-a's API publishes every 20 ms.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = publish_in_background(a.api.clone(), "ticks", stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = Instant::now();
        proxy.disable().await;
        outage_checks(
            "reset",
            &mut [&mut a, &mut b],
            &mut clients,
            cut_at,
            Duration::from_secs(5),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
        let restored_at = Instant::now();
        proxy.enable().await;
        let mut refused_while_ready =
            recovery_checks("reset", &mut [&mut a, &mut b], restored_at, cut_at).await;
        stop.store(true, Ordering::Release);
        let (ok, refused) = publisher.await.unwrap();
        println!("reset: background publishes: {ok} accepted, {refused} refused");
        assert!(refused > 0, "publishes during the outage are refused (503)");
        delivery_resumes(&b.api, &mut clients, "after-reset").await;

        // Cut 2: blackhole. Every byte is swallowed, connections stay open, so
        // only timeouts can tell; lasts until both nodes noticed, at least 2 s.
        let stop = Arc::new(AtomicBool::new(false));
        let publisher = publish_in_background(b.api.clone(), "ticks", stop.clone());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cut_at = Instant::now();
        proxy.blackhole().await;
        outage_checks(
            "blackhole",
            &mut [&mut a, &mut b],
            &mut clients,
            cut_at,
            Duration::from_secs(10),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(cut_at.elapsed())).await;
        let restored_at = Instant::now();
        proxy.clear().await;
        refused_while_ready
            .extend(recovery_checks("blackhole", &mut [&mut a, &mut b], restored_at, cut_at).await);
        stop.store(true, Ordering::Release);
        let (ok, refused) = publisher.await.unwrap();
        println!("blackhole: background publishes: {ok} accepted, {refused} refused");
        delivery_resumes(&a.api, &mut clients, "after-blackhole").await;

        // New clients authenticate on both nodes after the outages (the auth
        // cache's Redis connection was blackholed too).
        for (n, name) in [(&a, "node-a"), (&b, "node-b")] {
            let start = Instant::now();
            let (_c, w) = Client::authed(&n.ws_url(), &token).await;
            assert_eq!(w["user_id"], "1");
            println!(
                "new client authenticated on {name} in {:?}",
                start.elapsed()
            );
        }
        for c in &mut clients {
            c.ping(Duration::from_secs(3)).await;
        }
        assert_alive_without_panic(&mut a, "node-a");
        assert_alive_without_panic(&mut b, "node-b");
        drop(clients);
        for (n, name) in [(&mut a, "node-a"), (&mut b, "node-b")] {
            n.signal("TERM");
            let status = n.wait_exit(Duration::from_secs(15));
            assert!(status.success(), "{name} exited with {status}");
            assert_alive_or_exited_cleanly(n, name);
        }
        drop(proxy);
        redis.kill();
        drop(pg);
        assert!(
            refused_while_ready.is_empty(),
            "a node that answers /readyz 200 accepts publishes: {refused_while_ready:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_link_latency_through_fault_proxy() {
    bounded(Duration::from_secs(90), async {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(dir.path());
    let mut proxy = FaultProxy::start(redis.port).await;
    let prefix = random_prefix();
    // The default timings (command timeout 2 s, heartbeat 2 s): 500 ms of
    // latency is slow, not down. Not a faster heartbeat: through noxious a
    // connection passes one reply chunk per 500 ms (see `FaultProxy`), and a
    // heartbeat is two pipelines one after the other, so a 1 s heartbeat
    // alone filled the command connection's link; replies then queued behind
    // it for more than the command timeout, and a publish was answered 503
    // ("Request timed out") although the link was only slow.
    let mut a = proxied_node(dir.path(), "node-a", &proxy.url(), &prefix, &pg, &[]);
    let mut b = proxied_node(dir.path(), "node-b", &proxy.url(), &prefix, &pg, &[]);
    let token = issue_token(&pg_config(dir.path(), &pg.url), "1", None).await;
    let mut clients = vec![
        Live::join(&a.ws_url(), &token, "ticks", "client@node-a").await,
        Live::join(&b.ws_url(), &token, "ticks", "client@node-b").await,
    ];

    // Delivery latency through the proxy, before, during and after.
    async fn probe(api: &str, clients: &mut [Live], tag: &str, wait: Duration) -> Vec<u64> {
        let status = post_publish(
            api,
            json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}}),
        )
        .await;
        assert_eq!(status, 200, "publish {tag}");
        let mut out = Vec::new();
        for c in clients.iter_mut() {
            out.push(c.latency_of(tag, wait).await);
        }
        out
    }
    let mut before = Vec::new();
    for i in 0..5 {
        before.extend(probe(&a.api, &mut clients, &format!("before-{i}"), WAIT).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    before.sort();

    // 500 ms on everything Redis sends to the nodes (replies and pub/sub),
    // from the first byte of every connection (see `FaultProxy`).
    let latency = Toxic {
        kind: ToxicKind::Latency {
            latency: 500,
            jitter: 0,
        },
        name: "latency".into(),
        toxicity: 1.0,
        direction: StreamDirection::Downstream,
    };
    let added_at = Instant::now();
    proxy.restart_with(vec![latency]).await;
    // The restart closed the nodes' connections: they come back through
    // the slow link.
    let slow_ready = tokio::join!(readyz_blip(&a, added_at), readyz_blip(&b, added_at));
    let watching = Arc::new(AtomicBool::new(true));
    let readyz_watch = {
        let urls = [
            format!("http://{}/readyz", a.metrics),
            format!("http://{}/readyz", b.metrics),
        ];
        let watching = watching.clone();
        tokio::spawn(async move {
            let (mut ok, mut not_ready) = (0u32, 0u32);
            while watching.load(Ordering::Acquire) {
                for url in &urls {
                    match get_status(url).await {
                        Some(200) => ok += 1,
                        _ => not_ready += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (ok, not_ready)
        })
    };
    let mut during = Vec::new();
    for i in 0..4 {
        let api = if i % 2 == 0 { &a.api } else { &b.api };
        let tag = format!("during-{i}");
        during.extend(probe(api, &mut clients, &tag, Duration::from_secs(15)).await);
        for c in &mut clients {
            let rtt = c.ping(Duration::from_secs(3)).await;
            assert!(
                rtt < Duration::from_millis(400),
                "a WebSocket ping does not wait for Redis: {rtt:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    during.sort();
    watching.store(false, Ordering::Release);
    let (ok, not_ready) = readyz_watch.await.unwrap();
    assert_alive_without_panic(&mut a, "node-a");
    assert_alive_without_panic(&mut b, "node-b");

    // Back to a fast link (again a restart of the proxy).
    let removed_at = Instant::now();
    proxy.restart_with(Vec::new()).await;
    // Recovered: a publish reaches both clients in under 100 ms again
    // (publishes made while the nodes reconnect may be refused or lost).
    let fast_again = async {
        let mut probes = 0;
        loop {
            probes += 1;
            let tag = format!("after-{probes}");
            let body = json!({"group": "ticks", "data": {"tag": tag, "t": now_us()}});
            if post_publish(&b.api, body).await == 200 {
                let mut fast = true;
                for c in clients.iter_mut() {
                    match c.try_latency_of(&tag, Duration::from_millis(300)).await {
                        Some(us) if us < 100_000 => {}
                        _ => fast = false,
                    }
                }
                if fast {
                    return (removed_at.elapsed(), probes);
                }
            }
            assert!(
                removed_at.elapsed() < Duration::from_secs(20),
                "delivery latency did not come back down after {probes} probes"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let (recovered, ready_a, ready_b) = tokio::join!(
        fast_again,
        readyz_blip(&a, removed_at),
        readyz_blip(&b, removed_at)
    );
    let ready_again = (ready_a, ready_b);
    println!(
        "latency: before the fault, delivery p50 {} max {}",
        ms(percentile(&before, 50.0)),
        ms(*before.last().unwrap()),
    );
    println!(
        "latency 500 ms (Redis to nodes): /readyz (503 at, 200 at) through the restart {slow_ready:?}; \
         delivery p50 {} max {}; /readyz polled while slow: {ok}x 200, {not_ready}x not 200; \
         slow for {:?}",
        ms(percentile(&during, 50.0)),
        ms(*during.last().unwrap()),
        removed_at - added_at,
    );
    println!(
        "latency removed: /readyz (503 at, 200 at) {ready_again:?}, delivery under 100 ms after {:?} ({} probes)",
        recovered.0, recovered.1
    );
    assert!(
        percentile(&during, 50.0) >= 450_000,
        "the latency toxic delays delivery (harness check): {during:?}"
    );
    assert_eq!(
        not_ready, 0,
        "/readyz stays 200 while Redis is slow but reachable"
    );
    for c in &mut clients {
        c.ping(Duration::from_secs(3)).await;
    }
    assert_alive_without_panic(&mut a, "node-a");
    assert_alive_without_panic(&mut b, "node-b");
    drop(clients);
    drop(proxy);
    redis.kill();
    drop(pg);
    })
    .await;
}
