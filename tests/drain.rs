//! Graceful drain of the real binary (protocol section 8): SIGTERM turns
//! `/readyz` and new upgrades to 503 at once, then after `drain.grace` every
//! client gets 1012, spread over `drain.spread`, and the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLIENTS: usize = 300;
const GRACE_MS: u64 = 1000;
const SPREAD_MS: u64 = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_300_clients_spread_with_1012() {
    let dir = tempfile::tempdir().unwrap();
    let token = run_bin(dir.path(), &["token", "issue", "--user", "1"], &[])
        .trim()
        .to_string();
    let grace = format!("{GRACE_MS}ms");
    let spread = format!("{SPREAD_MS}ms");
    let mut node = BinNode::start(
        dir.path(),
        &[
            ("WSGATE__DRAIN__GRACE", &grace),
            ("WSGATE__DRAIN__SPREAD", &spread),
        ],
    );
    let url = node.ws_url();
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        clients.push(Client::authed(&url, &token).await.0);
    }
    let readyz = format!("http://{}/readyz", node.metrics);
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);

    let sigterm_at = Instant::now();
    node.signal("TERM");
    // Each client records when its close arrived and with which code.
    let waiters: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let closed = c.close_within(Duration::from_secs(30)).await;
                (code(closed), sigterm_at.elapsed())
            })
        })
        .collect();

    // 503s at once (well before the grace period ends).
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 503);
    let public_readyz = format!("http://{}/readyz", node.ws);
    assert_eq!(reqwest::get(&public_readyz).await.unwrap().status(), 503);
    assert_refused_503(&url).await;
    let checked_503_at = sigterm_at.elapsed();
    assert!(
        checked_503_at < Duration::from_millis(GRACE_MS),
        "503s checked within the grace"
    );

    let mut times = Vec::with_capacity(CLIENTS);
    for w in waiters {
        let (code, at) = w.await.unwrap();
        assert_eq!(code, 1012, "every client gets 1012");
        times.push(at);
    }
    let status = node.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit code 0, got {status:?}");

    // The histogram of close times, in 250 ms buckets from SIGTERM.
    times.sort();
    let bucket = Duration::from_millis(250);
    let buckets = ((GRACE_MS + SPREAD_MS + 1000) / 250) as usize;
    let mut hist = vec![0usize; buckets];
    for t in &times {
        let i = (t.as_millis() / bucket.as_millis()) as usize;
        hist[i.min(buckets - 1)] += 1;
    }
    println!("closes after SIGTERM (250 ms buckets, grace {GRACE_MS} ms, spread {SPREAD_MS} ms):");
    for (i, n) in hist.iter().enumerate() {
        println!("  {:>5} ms  {:>4}  {}", i * 250, n, "#".repeat(n / 2));
    }
    let first = times[0];
    let last = times[times.len() - 1];
    println!("first close {first:?}, last close {last:?}");
    // None before the grace period; spread over most of the window, not a burst.
    assert!(
        first >= Duration::from_millis(GRACE_MS - 50),
        "first close at {first:?}"
    );
    assert!(
        last - first >= Duration::from_millis(SPREAD_MS * 3 / 4),
        "closes spread over {:?}",
        last - first
    );
    let per_bucket = CLIENTS as f64 / (SPREAD_MS as f64 / 250.0);
    let max = *hist.iter().max().unwrap() as f64;
    assert!(
        max <= per_bucket * 2.0,
        "no burst: max {max} per bucket, even would be {per_bucket}"
    );
}
