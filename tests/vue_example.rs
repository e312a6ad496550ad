//! The Vue example's logic (`examples/django/frontend/marketFeed.js`, what
//! `MarketTicker.vue` runs) in Node.js against a real node
//! (`tests/vue_example/feed.test.mjs`): live after the first connection and
//! again after a reconnect, symbols added and removed, "logged out" on
//! revocation and live again after a re-login with another token. Node.js
//! 20+ is required: without it this test fails, it never skips.

mod common;

use std::process::Command;

use common::{API_KEY, node};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// `--experimental-websocket` where Node (20) needs it for `WebSocket`.
fn node_flags() -> Vec<&'static str> {
    let probe = |flags: &[&str]| -> Option<String> {
        let out = Command::new("node")
            .args(flags)
            .args(["-e", "process.stdout.write(typeof WebSocket)"])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match probe(&[]).as_deref() {
        None => panic!("Node.js is missing: this test needs `node` (20 or later) on PATH"),
        Some("function") => Vec::new(),
        Some(_) => match probe(&["--experimental-websocket"]).as_deref() {
            Some("function") => vec!["--experimental-websocket"],
            _ => panic!("this Node.js has no WebSocket: need Node 20 or later"),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn market_feed_follows_reconnects_symbols_and_relogin() {
    let flags = node_flags();
    let (_dir, node) = node().await;
    let token_1 = node.issue_token("u1").await;
    let token_2 = node.issue_token("u2").await;

    let work = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("examples/django/frontend/marketFeed.js", "marketFeed.js"),
        ("clients/js/wsgate.js", "wsgate.js"),
        ("tests/vue_example/feed.test.mjs", "feed.test.mjs"),
    ] {
        std::fs::copy(format!("{REPO}/{from}"), work.path().join(to)).unwrap();
    }
    // ES modules whatever the Node version's default for `.js`.
    std::fs::write(work.path().join("package.json"), r#"{"type":"module"}"#).unwrap();
    let ws = node.ws_url();
    let api = format!("http://{}", node.addrs.api);
    let dir = work.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(&flags)
            .arg("feed.test.mjs")
            .current_dir(dir)
            .env("WS_URL", ws)
            .env("API_URL", api)
            .env("API_KEY", API_KEY)
            .env("TOKEN_1", token_1)
            .env("TOKEN_2", token_2)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "feed.test.mjs failed:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
    node.shutdown().await;
}
