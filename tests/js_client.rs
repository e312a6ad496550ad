//! Runs the JavaScript client's tests (`clients/js/test/*.test.js`, node's
//! built-in test runner) against real wsgate processes started here:
//!
//! - an embedded node (SQLite, in-process broker), as `wsgate demo` runs.
//!   It re-validates tokens every 500 ms, so a connection whose token
//!   expires is closed (4003) unless the client refreshed it; the tests
//!   issue short-lived native tokens with `wsgate token issue --ttl` in its
//!   directory;
//! - an embedded node whose `query` token store accepts the test's JWTs
//!   until their expiry (see [`JWT_QUERY`]), also re-validating every 500 ms;
//! - two Redis-backed nodes sharing a Postgres token table, `node-a` and
//!   `node-b`; the drain test sends SIGTERM to `node-a` itself (its pid is in
//!   the environment) and expects the client to land on `node-b`.
//!
//! Every node keeps history for `hist.*` (`history.size` small enough for a
//! test to overflow it), the latest message of `snap.*`, and lets clients
//! publish to `chat.*`. Node.js is
//! required: without it this test fails, it never skips.

mod common;

use std::path::Path;
use std::process::Command;

use common::{API_KEY, BinNode, PgDb, RedisPrefix, issue_token, redis_node_env};
use wsgate::config::Config;

const HISTORY_SIZE: &str = "20";
/// Signs the subscription grants of `paid.*` (test/grant.test.js).
const GRANT_SECRET: &str = "js-client-test-grant-secret-0123456789";

/// Settings every node of this test shares.
const COMMON_ENV: &[(&str, &str)] = &[
    ("WSGATE__HISTORY__GROUPS", "hist.*"),
    ("WSGATE__GROUPS__SNAPSHOT", "snap.*"),
    ("WSGATE__HISTORY__SIZE", HISTORY_SIZE),
    ("WSGATE__GROUPS__CLIENT_PUBLISH", "chat.*"),
    ("WSGATE__GROUPS__AUTHORIZE", "paid.*"),
    ("WSGATE__AUTHORIZE__GRANT_SECRET", GRANT_SECRET),
    ("WSGATE__DRAIN__GRACE", "0s"),
    ("WSGATE__DRAIN__SPREAD", "50ms"),
];

/// The JWT node's token check, standing in for a JWT verifier: the tests'
/// JWTs (`eyJ...` header and payload, see `jwt()` in test/helpers.js) carry
/// their `exp` once more in the third part, `exp<unix seconds>`, where a
/// query can read it; a token is valid until then, for user `jwt-user`.
const JWT_QUERY: &str = "SELECT 'jwt-user' FROM (SELECT $1 AS t) AS q \
     WHERE t LIKE 'eyJ%.eyJ%.exp%' \
       AND CAST(substr(t, instr(t, '.exp') + 4) AS INTEGER) > CAST(strftime('%s', 'now') AS INTEGER)";

/// Tokens are checked again this often on the embedded and JWT nodes.
const REVALIDATE: (&str, &str) = ("WSGATE__AUTH__REVALIDATE_INTERVAL", "500ms");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_client_tests_pass_against_real_nodes() {
    let node_flags = node_flags();

    // The embedded node, with two users.
    let embedded_dir = tempfile::tempdir().unwrap();
    let mut embedded_config = Config::default();
    embedded_config.database.sqlite_path = embedded_dir.path().join("wsgate.db");
    let token_1 = issue_token(&embedded_config, "js-1", None).await;
    let token_2 = issue_token(&embedded_config, "js-2", None).await;
    let embedded = BinNode::start(
        embedded_dir.path(),
        &[
            COMMON_ENV,
            &[("WSGATE__SERVER__NODE_ID", "node-embedded"), REVALIDATE],
        ]
        .concat(),
    );

    // The JWT node.
    let jwt_dir = tempfile::tempdir().unwrap();
    let jwt_node = BinNode::start(
        jwt_dir.path(),
        &[
            COMMON_ENV,
            &[
                ("WSGATE__SERVER__NODE_ID", "node-jwt"),
                ("WSGATE__AUTH__STORE", "query"),
                ("WSGATE__AUTH__QUERY", JWT_QUERY),
                REVALIDATE,
            ],
        ]
        .concat(),
    );

    // Two Redis nodes on one Postgres token table.
    let pg = PgDb::create().await;
    let mut pg_config = Config::default();
    pg_config.database.url = Some(pg.url.clone());
    let cluster_token = issue_token(&pg_config, "js-3", None).await;
    let prefix = RedisPrefix::random();
    let cluster_dir = tempfile::tempdir().unwrap();
    let cluster_node = |id: &str| {
        let env = redis_node_env(id, &prefix, &pg.url);
        BinNode::start(cluster_dir.path(), &[COMMON_ENV, &env].concat())
    };
    let node_a = cluster_node("node-a");
    let node_b = cluster_node("node-b");

    let env = [
        ("WSGATE_API_KEY", API_KEY.to_string()),
        ("WSGATE_HISTORY_SIZE", HISTORY_SIZE.to_string()),
        ("WSGATE_EMBEDDED_WS", embedded.ws_url()),
        ("WSGATE_EMBEDDED_API", format!("http://{}", embedded.api)),
        ("WSGATE_EMBEDDED_NODE", "node-embedded".to_string()),
        (
            "WSGATE_EMBEDDED_DIR",
            embedded_dir.path().to_string_lossy().into_owned(),
        ),
        ("WSGATE_BIN", env!("CARGO_BIN_EXE_wsgate").to_string()),
        ("WSGATE_JWT_WS", jwt_node.ws_url()),
        ("WSGATE_JWT_API", format!("http://{}", jwt_node.api)),
        ("WSGATE_TOKEN_1", token_1),
        ("WSGATE_TOKEN_2", token_2),
        ("WSGATE_A_WS", node_a.ws_url()),
        ("WSGATE_A_PID", node_a.child.id().to_string()),
        ("WSGATE_B_WS", node_b.ws_url()),
        ("WSGATE_B_API", format!("http://{}", node_b.api)),
        ("WSGATE_CLUSTER_TOKEN", cluster_token),
        ("WSGATE_GRANT_SECRET", GRANT_SECRET.to_string()),
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut test_files: Vec<_> = std::fs::read_dir(root.join("clients/js/test"))
        .expect("clients/js/test")
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.js"))
        .collect();
    test_files.sort();
    assert!(!test_files.is_empty(), "no clients/js/test/*.test.js");
    let args = node_flags
        .into_iter()
        .chain(["--test", "--test-reporter=spec", "--test-timeout=60000"].map(String::from))
        .chain(test_files.iter().map(|f| f.to_string_lossy().into_owned()))
        .collect();
    let env = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let (ok, report) = common::run_node(args, env).await;

    drop((embedded, jwt_node, node_a, node_b));
    assert!(ok, "the JavaScript client tests failed:\n{report}");
}

/// Checks that Node.js 20+ is installed and returns the flags it needs for a
/// global `WebSocket` (Node 20 has it behind `--experimental-websocket`).
fn node_flags() -> Vec<String> {
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
        None => panic!(
            "Node.js is missing: the JavaScript client tests need `node` (20 or later) on PATH \
             (Debian: apt-get install nodejs)"
        ),
        Some("function") => Vec::new(),
        Some(_) => match probe(&["--experimental-websocket"]).as_deref() {
            Some("function") => vec!["--experimental-websocket".into()],
            _ => panic!(
                "this Node.js has no WebSocket, even with --experimental-websocket: need Node 20 or later"
            ),
        },
    }
}
