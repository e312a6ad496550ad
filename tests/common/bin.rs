//! The real `wsgate` binary, for tests about signals, exit codes and logs,
//! and `node` (Node.js) for the JavaScript client tests.

use std::io::BufRead;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::Value;

use super::{API_KEY, SHARED_REDIS};

/// The lines `r` yields, read on a thread of their own until it ends or the
/// receiver is dropped.
pub fn line_reader(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// A `wsgate` process started by a test; killed on drop.
pub struct BinNode {
    pub child: std::process::Child,
    pub ws: String,
    pub api: String,
    pub metrics: String,
    lines: Receiver<String>,
    pub log: Vec<String>,
}

/// The environment of a [`BinNode`] in a test cluster: node id `id`, the
/// shared Redis under `prefix` with a fast heartbeat (200 ms, node TTL 1 s),
/// tokens in the Postgres at `database_url`.
pub fn redis_node_env<'a>(
    id: &'a str,
    prefix: &'a str,
    database_url: &'a str,
) -> [(&'static str, &'a str); 6] {
    [
        ("WSGATE__SERVER__NODE_ID", id),
        ("WSGATE__REDIS__URL", SHARED_REDIS),
        ("WSGATE__REDIS__PREFIX", prefix),
        ("WSGATE__REDIS__HEARTBEAT", "200ms"),
        ("WSGATE__REDIS__NODE_TTL", "1s"),
        ("WSGATE__DATABASE__URL", database_url),
    ]
}

/// Runs `wsgate <args>` in `dir` and returns its stdout (fails on a non-zero exit).
pub fn run_bin(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .expect("run wsgate");
    assert!(
        out.status.success(),
        "wsgate {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl BinNode {
    /// Starts `wsgate serve` on loopback port 0 with JSON logs, the test API
    /// key and `env` on top, and waits for its "serving" line.
    #[allow(clippy::zombie_processes)] // the child is killed and waited for in Drop
    pub fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> BinNode {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wsgate"))
            .current_dir(dir)
            .env("WSGATE__SERVER__LISTEN", "127.0.0.1:0")
            .env("WSGATE__API__LISTEN", "127.0.0.1:0")
            .env("WSGATE__METRICS__LISTEN", "127.0.0.1:0")
            .env("WSGATE__API__KEYS", API_KEY)
            .env("WSGATE__LOG__FORMAT", "json")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn wsgate");
        let lines = line_reader(child.stderr.take().unwrap());
        let mut log = Vec::new();
        loop {
            let Ok(line) = lines.recv_timeout(Duration::from_secs(30)) else {
                // Never leave the process behind.
                let _ = child.kill();
                let _ = child.wait();
                panic!("wsgate did not start; log so far:\n{}", log.join("\n"));
            };
            log.push(line.clone());
            if line.contains("wsgate serving") {
                let v: Value = serde_json::from_str(&line).expect("JSON log line");
                let field = |k: &str| v[k].as_str().unwrap().to_string();
                return BinNode {
                    ws: field("ws"),
                    api: field("api"),
                    metrics: field("metrics"),
                    child,
                    lines,
                    log,
                };
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.ws)
    }

    pub fn signal(&self, sig: &str) {
        std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    /// Waits for the process to exit (up to `wait`) and collects its log.
    pub fn wait_exit(&mut self, wait: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.log.push(line);
                }
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "wsgate did not exit in {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Log lines received so far.
    pub fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for BinNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `node` with `args` and `env` in the repository root (blocking, off
/// the runtime), prints everything it wrote, and returns whether it
/// succeeded and that output.
pub async fn run_node(args: Vec<String>, env: Vec<(String, String)>) -> (bool, String) {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("node")
            .args(&args)
            .envs(env)
            .current_dir(root)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{report}");
    (out.status.success(), report)
}
