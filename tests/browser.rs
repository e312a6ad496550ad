//! `wsgate demo` end to end: the real binary on free ports, its page in
//! Debian's Chromium driven by playwright-core (`tests/browser/demo.test.mjs`,
//! screenshot in `target/artifacts/demo-page.png`), its feed seen by a plain
//! WebSocket client, and the demo routes' absence from `wsgate serve`.
//!
//! The page runs the JavaScript client as npm ships it: the browser test
//! packs `clients/js` (`npm pack`), checks that the demo serves the packed
//! `wsgate.js` byte for byte, and has Chromium load that file. With it,
//! `tests/browser/client.test.mjs` checks in the browser what only a browser
//! has: `offline`/`online` events (a probe that drops the half-open socket,
//! then an immediate reconnect) and token refresh on the demo's node; and
//! the Vue example's logic (`examples/django/frontend/marketFeed.js`): live
//! again after a reconnect, symbol changes, re-login.
//!
//! Chromium, Node.js and `tests/browser/node_modules` come from
//! `scripts/install-browser-tools.sh`; without them the browser test fails
//! (it never skips) and says so.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{API_KEY, BinNode, Client, line_reader};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";

/// A `wsgate demo` process on loopback port 0; killed on drop.
struct Demo {
    child: Child,
    page: String,
    token: String,
    _dir: tempfile::TempDir,
}

impl Demo {
    #[allow(clippy::zombie_processes)] // killed and waited for in Drop
    fn start() -> Demo {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .arg("demo")
            .current_dir(dir.path())
            .env("WSGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("WSGATE__API__LISTEN", "127.0.0.1:0")
            .env("WSGATE__METRICS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wsgate demo");
        let rx = line_reader(child.stdout.take().unwrap());
        let (mut page, mut token) = (None, None);
        while page.is_none() || token.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(30)) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsgate demo did not print its page URL and token");
            };
            if let Some(url) = line.strip_prefix("wsgate demo: open ") {
                page = Some(url.to_string());
            } else if let Some((_, t)) = line.split_once("(valid 24h): ") {
                token = Some(t.to_string());
            }
        }
        Demo {
            child,
            page: page.unwrap(),
            token: token.unwrap(),
            _dir: dir,
        }
    }

    fn ws_url(&self) -> String {
        self.page
            .replace("http://", "ws://")
            .replace("/demo", "/ws")
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_in_chromium_connects_shows_prices_and_switches_symbols() {
    let install =
        "run `bash scripts/install-browser-tools.sh` (Debian's chromium, npm ci in tests/browser)";
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: {install}"
    );
    assert!(
        root()
            .join("tests/browser/node_modules/playwright-core/package.json")
            .exists(),
        "tests/browser/node_modules/playwright-core is missing: {install}"
    );
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(node_ok, "Node.js is missing (node on PATH): {install}");

    let screenshot: PathBuf = root().join("target/artifacts/demo-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let packed_dir = tempfile::tempdir().unwrap();
    let packed = packed_client(packed_dir.path());
    let demo = Demo::start();
    let (page, shot) = (demo.page.clone(), screenshot.clone());
    // One browser at a time: the machine may be small.
    let args = [
        "--test",
        "--test-reporter=spec",
        "--test-timeout=90000",
        "--test-concurrency=1",
        "tests/browser/demo.test.mjs",
        "tests/browser/client.test.mjs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let env = vec![
        (
            "WSGATE_PACKED_CLIENT".into(),
            packed.to_string_lossy().into_owned(),
        ),
        ("WSGATE_DEMO_URL".into(), page),
        (
            "WSGATE_SCREENSHOT".into(),
            shot.to_string_lossy().into_owned(),
        ),
        ("WSGATE_CHROMIUM".into(), CHROMIUM.into()),
    ];
    let (ok, report) = common::run_node(args, env).await;
    drop(demo);
    assert!(ok, "the browser test failed:\n{report}");
    let png = std::fs::read(&screenshot).expect("the screenshot was saved");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} is not a real screenshot",
        screenshot.display()
    );
    println!("screenshot: {}", screenshot.display());
}

/// `npm pack` of clients/js into `dir`, unpacked there; returns the path of
/// the packed `wsgate.js` (the file an npm user imports).
fn packed_client(dir: &Path) -> PathBuf {
    let run = |cwd: &Path, program: &str, args: &[&str]| {
        let out = Command::new(program)
            .args(args)
            .current_dir(cwd)
            .env("npm_config_update_notifier", "false")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let dest = dir.to_str().unwrap();
    let listing = run(
        &root().join("clients/js"),
        "npm",
        &["pack", "--pack-destination", dest],
    );
    let tarball = listing.lines().last().expect("npm pack names its tarball");
    run(dir, "tar", &["-xzf", tarball]);
    let file = dir.join("package/wsgate.js");
    assert!(file.exists(), "no package/wsgate.js in {tarball}");
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_its_page_and_token_and_feeds_ticks_with_history() {
    let demo = Demo::start();
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let url = format!("{}{path}", demo.page);
        let http = http.clone();
        async move {
            let resp = http.get(url).send().await.expect("demo page reachable");
            let status = resp.status().as_u16();
            let ctype = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            (status, ctype, resp.text().await.unwrap())
        }
    };
    let (status, ctype, html) = get("").await;
    assert_eq!((status, ctype.as_str()), (200, "text/html; charset=utf-8"));
    assert!(html.contains(r#"<script type="module" src="/demo/app.js">"#));
    let (status, ctype, client) = get("/wsgate.js").await;
    assert_eq!(
        (status, ctype.as_str()),
        (200, "text/javascript; charset=utf-8")
    );
    let shipped = std::fs::read_to_string(root().join("clients/js/wsgate.js")).unwrap();
    assert_eq!(client, shipped, "the page uses the client of clients/js");
    let (status, _, body) = get("/token").await;
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body, json!({"token": demo.token, "user_id": "demo"}));
    let (_, _, config) = get("/config").await;
    let config: Value = serde_json::from_str(&config).unwrap();
    let symbols: Vec<String> = serde_json::from_value(config["symbols"].clone()).unwrap();
    assert_eq!(symbols.len(), 30);
    assert_eq!(config["ws_path"], "/ws");

    // The feed, through a plain WebSocket client: every group keeps history.
    let (mut ws, welcome) = Client::authed(&demo.ws_url(), &demo.token).await;
    assert_eq!(welcome["user_id"], "demo");
    for symbol in &symbols {
        let group = format!("market.{symbol}");
        let reply = ws
            .request(json!({"type": "subscribe", "group": group}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        assert!(
            reply["offset"].is_u64(),
            "history is on for {group}: {reply}"
        );
        assert!(reply["epoch"].is_string(), "{reply}");
    }
    // A few dozen ticks a second in all, bounded.
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut ticks = 0;
    while started.elapsed() < window {
        let m = ws.recv_json().await;
        assert_eq!(m["type"], "message", "{m}");
        let symbol = m["data"]["symbol"].as_str().unwrap();
        assert_eq!(m["group"], format!("market.{symbol}"));
        assert!(m["data"]["price"].as_f64().unwrap() > 0.0, "{m}");
        assert!(m["data"]["change"].is_f64() || m["data"]["change"].is_i64());
        assert!(m["offset"].is_u64() && m["epoch"].is_string(), "{m}");
        ticks += 1;
    }
    let per_second = ticks as f64 / window.as_secs_f64();
    assert!(
        (15.0..=60.0).contains(&per_second),
        "{per_second} ticks per second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_has_no_demo_routes_and_demo_refuses_a_shared_backend() {
    let dir = tempfile::tempdir().unwrap();
    let node = BinNode::start(dir.path(), &[]);
    for path in ["/demo", "/demo/token", "/demo/wsgate.js"] {
        let status = reqwest::get(format!("http://{}{path}", node.ws))
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404, "{path} in serve mode");
    }
    drop(node);

    // A demo token is never written to a shared database.
    let out = Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .arg("demo")
        .current_dir(dir.path())
        .env("WSGATE__REDIS__URL", "redis://127.0.0.1:6379")
        .env("WSGATE__API__KEYS", API_KEY)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("embedded mode only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
