//! A slow consumer among readers: closed with 4009, the others not slowed.

use super::*;

const READERS: usize = 50;
const MESSAGES: u64 = 3_000;
const BATCH: u64 = 10;

/// Publishes `MESSAGES` messages of phase `phase` in batches of `BATCH`
/// every 5 ms (2,000 messages/s), each stamped with `now_us`.
async fn publish_phase(node: &TestNode, phase: u64) {
    let client = http();
    let url = node.api_url("/api/v1/publish");
    let pad = "x".repeat(1_000);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    for start in (0..MESSAGES).step_by(BATCH as usize) {
        tick.tick().await;
        let messages: Vec<Value> = (start..start + BATCH)
            .map(|i| json!({"group": "ticks", "data": {"p": phase, "i": i, "t": now_us(), "pad": pad}}))
            .collect();
        let r = client
            .post(&url)
            .bearer_auth(API_KEY)
            .json(&json!({"messages": messages}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// A reader: checks that every message of both phases arrives, in order,
/// and reports each phase's latencies.
/// Reads both phases, then hands the client back so it stays connected.
async fn reader(
    mut c: Client,
    id: usize,
    report: mpsc::UnboundedSender<(usize, u64, Vec<u64>)>,
) -> Client {
    for phase in 0..2u64 {
        let mut latencies = Vec::with_capacity(MESSAGES as usize);
        for i in 0..MESSAGES {
            let frame = tokio::time::timeout(Duration::from_secs(20), c.ws.next())
                .await
                .unwrap_or_else(|_| panic!("reader {id}: message {phase}/{i} missing"))
                .expect("stream open")
                .expect("frame");
            let at = now_us();
            let Message::Text(t) = frame else {
                panic!("reader {id}: unexpected frame {frame:?}");
            };
            let v: Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                (v["data"]["p"].as_u64(), v["data"]["i"].as_u64()),
                (Some(phase), Some(i)),
                "reader {id}: every message, in order"
            );
            latencies.push(at.saturating_sub(v["data"]["t"].as_u64().unwrap()));
        }
        let _ = report.send((id, phase, latencies));
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_does_not_slow_the_others() {
    bounded(Duration::from_secs(90), async {
    watch_panics();
    let panics_before = lib_panics();
    let (_dir, node) = node_with(|config| {
        config.limits.outbound_queue = 64;
    })
    .await;
    let token = node.issue_token("1").await;
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    for id in 0..READERS {
        let (mut c, _) = Client::authed(&node.ws_url(), &token).await;
        c.subscribe("ticks").await;
        readers.push(tokio::spawn(reader(c, id, report_tx.clone())));
    }
    let mut results: Vec<Vec<u64>> = vec![Vec::new(), Vec::new()];
    let mut collect = async |phase: u64, results: &mut Vec<Vec<u64>>| {
        for _ in 0..READERS {
            let (_, p, lat) = tokio::time::timeout(Duration::from_secs(60), reports.recv())
                .await
                .expect("readers finish the phase")
                .expect("a reader failed");
            assert_eq!(p, phase);
            results[p as usize].extend(lat);
        }
    };

    // Phase 0: 50 readers only.
    publish_phase(&node, 0).await;
    collect(0, &mut results).await;

    // Phase 1: plus one client that reads nothing, with a small receive
    // buffer so its socket fills quickly.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addrs.ws).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(node.ws_url(), MaybeTlsStream::Plain(stream))
        .await
        .unwrap();
    let mut slow = Client { ws };
    slow.send_json(json!({"type": "auth", "token": token}))
        .await;
    assert_eq!(slow.recv_json().await["type"], "welcome");
    slow.subscribe("ticks").await;
    let phase1_at = Instant::now();
    publish_phase(&node, 1).await;
    collect(1, &mut results).await;
    // The readers stay connected, so the gauge below counts exactly them.
    let mut kept = Vec::with_capacity(READERS);
    for r in readers {
        kept.push(r.await.expect("reader"));
    }

    let dropped = node
        .metric("wsgate_messages_dropped_total{reason=\"slow_consumer\"}")
        .await;
    // The server should close the slow connection while its client still
    // reads nothing: wait up to 5 s without reading.
    let stalled_at = Instant::now();
    let mut closed_while_stalled = None;
    while stalled_at.elapsed() < Duration::from_secs(5) {
        if node
            .metric("wsgate_connections_closed_total{code=\"4009\"}")
            .await
            >= 1.0
            && node
                .metric("wsgate_connections{state=\"authenticated\"}")
                .await
                == READERS as f64
        {
            closed_while_stalled = Some(stalled_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Now the slow client reads what is left: messages, then the close.
    let mut skipped = 0u64;
    let slow_end = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.ws.next()).await {
            Ok(Some(Ok(Message::Text(_)))) => skipped += 1,
            Ok(Some(Ok(Message::Close(Some(f))))) => break Some(u16::from(f.code)),
            Ok(Some(Ok(Message::Close(None)))) | Ok(None) | Ok(Some(Err(_))) => break None,
            Ok(Some(Ok(_))) => {}
            Err(_) => break None,
        }
    };

    for (phase, label) in [(0, "without"), (1, "with")] {
        let lat = &mut results[phase];
        lat.sort_unstable();
        println!(
            "slow consumer: {READERS} readers x {MESSAGES} messages (1 KB, 2,000/s) {label} a stalled client: \
             delivery latency p50 {} p99 {} max {}",
            ms(percentile(lat, 50.0)),
            ms(percentile(lat, 99.0)),
            ms(*lat.last().unwrap()),
        );
    }
    println!(
        "slow consumer: {dropped} messages dropped for it; server closed it while stalled: {:?} \
         (phase 1 began {:?} earlier); once it read again it got {skipped} messages, then close {slow_end:?}",
        closed_while_stalled,
        stalled_at - phase1_at,
    );
    assert!(dropped >= 1.0, "the stalled client's queue overflowed");
    assert_eq!(
        slow_end,
        Some(4009),
        "the slow consumer is closed with 4009"
    );
    assert!(
        closed_while_stalled.is_some(),
        "the server closes a slow consumer that stays stalled (4009 counted, connection gone) \
         without waiting for it to read again"
    );
    assert_eq!(lib_panics(), panics_before, "no panic in wsgate");
    node.shutdown().await;
    })
    .await;
}
