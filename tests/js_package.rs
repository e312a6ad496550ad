//! The JavaScript client as npm delivers it: `npm pack` in `clients/js`,
//! the tarball installed into a scratch project (offline: the package has no
//! dependencies), then `import 'wsgate'` (ES module) and `require('wsgate')`
//! (CommonJS) there, each connecting to a real node and receiving a message
//! the backend API publishes (`clients/js/test/package/`).
//!
//! The browser half, the demo page running the packed file, is in
//! tests/browser.rs. Node.js and npm are required: without them this test
//! fails, it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{API_KEY, BinNode, issue_token};
use serde_json::Value;
use wsgate::config::Config;

fn client_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js")
}

/// Runs `program args` in `dir`; fails the test, with its output, unless it succeeds.
fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("npm_config_update_notifier", "false")
        .env("npm_config_fund", "false")
        .env("npm_config_audit", "false")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (is Node.js 20+ with npm on PATH?): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `npm pack` of clients/js into `dest`; returns the tarball and npm's
/// description of it.
fn pack(dest: &Path) -> (PathBuf, Value) {
    let out = run(
        &client_dir(),
        "npm",
        &[
            "pack",
            "--json",
            "--pack-destination",
            dest.to_str().unwrap(),
        ],
    );
    // `npm pack --json` prints the prepack script's output first, then the JSON.
    let stdout = String::from_utf8(out.stdout).unwrap();
    let json = &stdout[stdout.find('[').expect("npm pack printed its JSON")..];
    let packed: Value = serde_json::from_str(json).expect("npm pack --json");
    let packed = packed[0].clone();
    let tarball = dest.join(packed["filename"].as_str().unwrap());
    assert!(tarball.exists(), "{} was not written", tarball.display());
    (tarball, packed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npm_package_installs_offline_and_connects_from_esm_and_commonjs() {
    // The generated CommonJS build is the one committed.
    run(&client_dir(), "node", &["build-cjs.mjs", "--check"]);

    let work = tempfile::tempdir().unwrap();
    let (tarball, packed) = pack(work.path());
    assert_eq!(packed["name"], "wsgate");
    let mut files: Vec<&str> = packed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.md",
            "package.json",
            "wsgate.cjs",
            "wsgate.d.cts",
            "wsgate.d.ts",
            "wsgate.js"
        ],
        "the tarball holds the client, its CommonJS build, types and README, and no tests"
    );
    assert_eq!(packed["bundled"], serde_json::json!([]));

    // The package as published: exports for import and require, types, no
    // `private`, no dependencies (so an offline install works).
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(client_dir().join("package.json")).unwrap())
            .unwrap();
    assert!(
        manifest.get("private").is_none(),
        "private would refuse npm publish"
    );
    assert!(manifest["version"].is_string() && manifest["license"].is_string());
    for key in ["dependencies", "peerDependencies", "optionalDependencies"] {
        assert!(
            manifest.get(key).is_none(),
            "{key}: the package is dependency-free"
        );
    }
    let dot = &manifest["exports"]["."];
    assert_eq!(dot["import"]["default"], "./wsgate.js");
    assert_eq!(dot["import"]["types"], "./wsgate.d.ts");
    assert_eq!(dot["require"]["default"], "./wsgate.cjs");
    assert_eq!(dot["require"]["types"], "./wsgate.d.cts");
    assert_eq!(manifest["types"], "./wsgate.d.ts");

    // A scratch project installs the tarball, offline.
    let scratch = work.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    std::fs::write(
        scratch.join("package.json"),
        r#"{"name":"scratch","version":"1.0.0","private":true}"#,
    )
    .unwrap();
    run(
        &scratch,
        "npm",
        &["install", "--offline", tarball.to_str().unwrap()],
    );
    let installed = scratch.join("node_modules/wsgate");
    assert!(
        !installed.is_symlink(),
        "installed as a copy of the tarball"
    );
    for file in ["wsgate.js", "wsgate.cjs", "wsgate.d.ts", "wsgate.d.cts"] {
        let shipped = std::fs::read(client_dir().join(file)).unwrap();
        assert_eq!(
            std::fs::read(installed.join(file)).unwrap(),
            shipped,
            "{file} is installed as it is in clients/js"
        );
    }
    for script in ["esm.mjs", "cjs.cjs", "round-trip.mjs"] {
        std::fs::copy(
            client_dir().join("test/package").join(script),
            scratch.join(script),
        )
        .unwrap();
    }

    // Both entry points against a real node.
    let node_dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.database.sqlite_path = node_dir.path().join("wsgate.db");
    let token = issue_token(&config, "pkg-user", None).await;
    let node = BinNode::start(node_dir.path(), &[]);
    let flags = node_flags();
    for (script, module, entry) in [
        ("esm.mjs", "esm", "wsgate.js"),
        ("cjs.cjs", "cjs", "wsgate.cjs"),
    ] {
        let out = Command::new("node")
            .args(&flags)
            .arg(script)
            .current_dir(&scratch)
            .env("WSGATE_WS", node.ws_url())
            .env("WSGATE_API", format!("http://{}", node.api))
            .env("WSGATE_API_KEY", API_KEY)
            .env("WSGATE_TOKEN", &token)
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "node {script} failed:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
        assert_eq!(seen["module"], module);
        assert_eq!(seen["user_id"], "pkg-user", "{seen}");
        assert_eq!(seen["data"], serde_json::json!({"hello": "from the API"}));
        assert_eq!(seen["refused_code"], "forbidden");
        assert_eq!(seen["refused_is_wsgate_error"], true);
        let resolved = seen["resolved"].as_str().unwrap();
        assert!(
            resolved.ends_with(&format!("scratch/node_modules/wsgate/{entry}")),
            "{script} loaded {resolved}"
        );
    }
}

/// The flags Node.js needs for a global `WebSocket` (Node 20 has it behind
/// `--experimental-websocket`; 22 and later without).
fn node_flags() -> Vec<&'static str> {
    let has_websocket = |flags: &[&str]| {
        Command::new("node")
            .args(flags)
            .args([
                "-e",
                "process.exit(typeof WebSocket === 'function' ? 0 : 1)",
            ])
            .status()
            .is_ok_and(|s| s.success())
    };
    if has_websocket(&[]) {
        Vec::new()
    } else if has_websocket(&["--experimental-websocket"]) {
        vec!["--experimental-websocket"]
    } else {
        panic!("need Node.js 20 or later (node on PATH) with a WebSocket")
    }
}
