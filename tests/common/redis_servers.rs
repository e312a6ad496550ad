//! Redis for tests: a key prefix of their own on the shared server at
//! 127.0.0.1:6379 (never stopped or flushed), and throwaway `redis-server`
//! processes for tests that kill Redis or need a Redis Cluster.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::{free_port, wait_for_port};

pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// A key prefix no other test uses. On the shared Redis take a
/// [`RedisPrefix`] instead, which deletes its keys.
pub fn random_prefix() -> String {
    format!("wsgate_t_{}:", hex::encode(rand::random::<[u8; 6]>()))
}

/// A test's own key prefix on the shared Redis: every key under it is
/// deleted when this value is dropped, also when the test panics. Derefs to
/// the prefix (`wsgate_t_<hex>:`).
pub struct RedisPrefix(String);

impl RedisPrefix {
    pub fn random() -> RedisPrefix {
        RedisPrefix(random_prefix())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for RedisPrefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for RedisPrefix {
    fn drop(&mut self) {
        // Best effort, and never a panic (that would abort an unwinding test).
        // Group keys are hash-tagged: `{<prefix>group:<g>}:history`.
        for pattern in [format!("{}*", self.0), format!("{{{}*", self.0)] {
            let Some(keys) = try_redis_cli(6379, &["--scan", "--pattern", &pattern]) else {
                return;
            };
            for chunk in keys.chunks(100) {
                let mut args = vec!["del"];
                args.extend(chunk.iter().map(String::as_str));
                try_redis_cli(6379, &args);
            }
        }
    }
}

fn wait_for_redis(port: u16, up: bool) {
    wait_for_port(port, up, Duration::from_secs(10), "redis-server");
}

/// One throwaway `redis-server`, killed on drop; can be killed and started
/// again on the same port.
pub struct RedisProc {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisProc {
    pub fn start(dir: &Path) -> RedisProc {
        Self::start_with(dir, free_port(), &[])
    }

    pub fn start_with(dir: &Path, port: u16, extra: &[&str]) -> RedisProc {
        let mut p = RedisProc {
            port,
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        p.restart();
        p
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for_redis(self.port, false);
    }

    /// SIGSTOP: connections stay open, nothing answers (drop still kills it).
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: a [`RedisProc::freeze`] ends, and Redis serves what queued.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server running").id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        wait_for_redis(self.port, true);
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A 3-master Redis Cluster of throwaway servers.
pub struct RedisCluster {
    pub nodes: Vec<RedisProc>,
    _dirs: Vec<tempfile::TempDir>,
}

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        let cluster = Self::nodes(masters);
        let addrs: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let status = Command::new("timeout")
            .arg("30")
            .arg("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli --cluster create");
        assert!(status.success(), "cluster create failed");
        cluster.wait_ok();
        cluster
    }

    /// One node holding every slot (`redis-cli --cluster create` wants
    /// three): a server that enforces slots behind a single address.
    pub fn one_node() -> RedisCluster {
        let cluster = Self::nodes(1);
        redis_cli(
            cluster.nodes[0].port,
            &["cluster", "addslotsrange", "0", "16383"],
        );
        cluster.wait_ok();
        cluster
    }

    /// `masters` cluster-enabled servers, not yet joined.
    fn nodes(masters: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..masters {
            let dir = tempfile::tempdir().unwrap();
            let port = free_port();
            let conf = dir.path().join("nodes.conf");
            nodes.push(RedisProc::start_with(
                dir.path(),
                port,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--cluster-node-timeout",
                    "2000",
                ],
            ));
            dirs.push(dir);
        }
        RedisCluster { nodes, _dirs: dirs }
    }

    /// Waits until every node reports the cluster healthy.
    fn wait_ok(&self) {
        let start = Instant::now();
        for n in &self.nodes {
            loop {
                let out = Command::new("redis-cli")
                    .args(["-p", &n.port.to_string(), "cluster", "info"])
                    .output()
                    .expect("cluster info");
                if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "cluster not ok");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port)
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

/// `redis-cli -p <port> <args>` output lines.
pub fn redis_cli(port: u16, args: &[&str]) -> Vec<String> {
    try_redis_cli(port, args).unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
}

/// A counter of `INFO stats` (`total_reads_processed`, ...).
pub fn info_stat(port: u16, field: &str) -> u64 {
    let prefix = format!("{field}:");
    redis_cli(port, &["info", "stats"])
        .iter()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in INFO stats"))
}

/// How many times the server ran `command` (lower case), from the lines
/// of `INFO commandstats`; 0 when it never ran.
pub fn command_calls(commandstats: &[String], command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    commandstats
        .iter()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

fn try_redis_cli(port: u16, args: &[&str]) -> Option<Vec<String>> {
    let out = Command::new("timeout")
        .arg("10")
        .arg("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    })
}

/// `MONITOR` on a throwaway server: the commands its clients send, in
/// order, apart from those a script runs (`[0 lua]`), which Redis's own
/// counters cannot tell from a client's. Stopped on drop.
pub struct Monitor {
    port: u16,
    child: Child,
    out: PathBuf,
}

impl Monitor {
    /// Starts `redis-cli monitor` and waits until it is attached.
    pub fn start(port: u16, dir: &Path) -> Monitor {
        let out = dir.join(format!("monitor-{port}.log"));
        let file = std::fs::File::create(&out).expect("monitor log");
        let child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(file)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli monitor");
        let mut m = Monitor { port, child, out };
        m.wait_for("OK");
        m
    }

    fn wait_for(&mut self, text: &str) -> String {
        let started = Instant::now();
        loop {
            let log = std::fs::read_to_string(&self.out).unwrap_or_default();
            if log.contains(text) {
                return log;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "MONITOR did not show {text:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The commands clients sent since the start (not those run by
    /// scripts), each as its monitor line; ends with a marker command so
    /// that everything sent before the call is in.
    pub fn client_commands(&mut self) -> Vec<String> {
        let marker = format!("wsgate-monitor-{}", rand::random::<u64>());
        redis_cli(self.port, &["echo", &marker]);
        let log = self.wait_for(&marker);
        log.lines()
            .filter(|l| l.contains(" [") && !l.contains(" lua] ") && !l.contains(&marker))
            .map(String::from)
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
