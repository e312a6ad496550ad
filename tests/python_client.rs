//! Runs the Python client's tests (`clients/python/tests`, pytest) against
//! real nodes started here:
//!
//! - an in-process node (SQLite, in-process broker) keeping history for
//!   `hist.*`, with tokens for users `py-1` … `py-8` (the tests subscribe
//!   real WebSocket clients with them, revoke some and disconnect others);
//! - a node on a `redis-server` of its own that is killed before the tests
//!   start, so its publishes answer 503 `unavailable` (the retry tests
//!   count the attempts in its `wsgate_api_errors_total`);
//! - a throwaway PostgreSQL database next to a SQLite file for the Django
//!   tests (`publish_on_commit` on both).
//!
//! The tests also build the package's wheel and install it into a scratch
//! virtualenv, and run `mypy --strict` on it. Python, pytest and the rest
//! come from the virtualenv of `scripts/install-python-tools.sh`
//! (`$WSGATE_PYENV`, else `~/.cache/wsgate-pyenv`), which this test never
//! installs into; without it the test fails naming the script, it never
//! skips. The checkout's `clients/python/src` comes first on `PYTHONPATH`,
//! so the code under test is this checkout's, not the copy in the
//! virtualenv.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_servers::RedisProc;
use common::{API_KEY, PgDb, node_with, spawn, test_config};
use serde_json::json;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// How long the whole pytest run may take.
const PYTEST_DEADLINE: Duration = Duration::from_secs(600);

/// The fewest tests a run must have passed: a collection that finds
/// nothing (or a filter left in by mistake) fails rather than passes.
const MIN_TESTS: usize = 80;

/// The virtualenv's python; panics (never skips) when it is missing.
fn python() -> PathBuf {
    let venv = std::env::var_os("WSGATE_PYENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/wsgate-pyenv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "the Python virtualenv is missing ({}): run `bash scripts/install-python-tools.sh` first",
        python.display()
    );
    let probe = Command::new(&python)
        .args([
            "-c",
            "import pytest, websockets, httpx, django, mypy, hatchling",
        ])
        .output()
        .expect("run python");
    assert!(
        probe.status.success(),
        "the virtualenv {} lacks the client's test tools: run `bash scripts/install-python-tools.sh`\n{}",
        venv.display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_tests_pass_against_real_nodes() {
    let python = python();

    let (_dir, node) = node_with(|c| {
        c.history.groups = vec!["hist.*".into()];
    })
    .await;
    let mut tokens = serde_json::Map::new();
    for i in 1..=8 {
        let user = format!("py-{i}");
        let token = node.issue_token(&user).await;
        tokens.insert(user, token.into());
    }

    // A node whose Redis is gone: it stays up, and publishes answer 503.
    let down_dir = tempfile::tempdir().unwrap();
    let mut redis = RedisProc::start(down_dir.path());
    let mut down_config = test_config(down_dir.path());
    down_config.redis.url = Some(redis.url());
    down_config.server.node_id = Some("down-node".into());
    let down = spawn(down_config).await;
    redis.kill();
    let start = Instant::now();
    loop {
        let (status, _) = down
            .api_post("/api/v1/publish", json!({"group": "g", "data": 1}))
            .await;
        if status == 503 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the node without Redis still answers {status} to a publish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let pg = PgDb::create().await;
    let out_dir = tempfile::tempdir().unwrap();
    let report = out_dir.path().join("pytest.xml");
    let env: Vec<(&str, String)> = vec![
        ("WSGATE_TEST_API", format!("http://{}", node.addrs.api)),
        ("WSGATE_TEST_WS", node.ws_url()),
        ("WSGATE_TEST_METRICS", node.metrics_url("/metrics")),
        ("WSGATE_TEST_NODE_ID", "test-node".into()),
        ("WSGATE_TEST_API_KEY", API_KEY.into()),
        (
            "WSGATE_TEST_TOKENS",
            serde_json::Value::Object(tokens).to_string(),
        ),
        ("WSGATE_TEST_DOWN_API", format!("http://{}", down.addrs.api)),
        ("WSGATE_TEST_DOWN_METRICS", down.metrics_url("/metrics")),
        ("WSGATE_TEST_DATABASE_URL", pg.url.clone()),
        ("PYTHONPATH", format!("{REPO}/clients/python/src")),
        // Nothing written into the checkout (__pycache__, .pytest_cache).
        ("PYTHONDONTWRITEBYTECODE", "1".into()),
    ];
    let args: Vec<String> = vec![
        "-m".into(),
        "pytest".into(),
        "clients/python/tests".into(),
        "-p".into(),
        "no:cacheprovider".into(),
        "-v".into(),
        "-rfEs".into(),
        format!("--junitxml={}", report.display()),
    ];
    let (ok, output) = tokio::task::spawn_blocking({
        let log = out_dir.path().join("pytest.log");
        move || run_bounded(&python, &args, &env, &log, PYTEST_DEADLINE)
    })
    .await
    .unwrap();
    println!("{output}");
    assert!(ok, "the Python client tests failed:\n{output}");

    let xml = std::fs::read_to_string(&report).expect("pytest's junit report");
    let count = |name: &str| -> usize {
        let key = format!(" {name}=\"");
        let at = xml.find(&key).unwrap_or_else(|| panic!("{name} in {xml}")) + key.len();
        xml[at..].split('"').next().unwrap().parse().unwrap()
    };
    let (tests, failures, errors, skipped) = (
        count("tests"),
        count("failures"),
        count("errors"),
        count("skipped"),
    );
    assert_eq!((failures, errors), (0, 0), "{output}");
    assert_eq!(skipped, 0, "no Python test may be skipped:\n{output}");
    assert!(
        tests >= MIN_TESTS,
        "only {tests} Python tests ran (expected at least {MIN_TESTS}):\n{output}"
    );

    drop((down, redis));
    node.shutdown().await;
}

/// Runs `python args` in the repository root with `env`, its output going
/// to `log`; kills it after `deadline`. Returns whether it succeeded, and
/// its output.
fn run_bounded(
    python: &Path,
    args: &[String],
    env: &[(&str, String)],
    log: &Path,
    deadline: Duration,
) -> (bool, String) {
    let file = std::fs::File::create(log).unwrap();
    let mut child = Command::new(python)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(REPO)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("start pytest");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for pytest") {
            break Some(status);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(log).unwrap_or_default();
    match status {
        Some(status) => (status.success(), output),
        None => (
            false,
            format!("{output}\npytest did not finish in {deadline:?}"),
        ),
    }
}
