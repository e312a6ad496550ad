//! The local cluster of `scripts/local-cluster.sh` through the real nginx:
//! three real `wsgate` processes on one Redis and one Postgres, Debian's
//! nginx in front with the config the script renders from
//! `scripts/nginx-local.conf.template` (WebSocket upgrade, round robin, no
//! stickiness). Clients spread over all nodes, a publish reaches all of them,
//! a node is SIGKILLed and its clients reconnect through nginx to the others.
//!
//! Hermetic: loopback port 0 for the nodes, free ports for nginx (never the
//! script's fixed ports), nginx in its own prefix in a temporary directory,
//! a random Redis prefix and a throwaway database. Needs the `nginx` binary
//! (`apt-get install -y nginx`); the test fails, loudly, without it.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::redis_servers::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wsgate::auth::sql::{Db, NativeStore};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/local-cluster.sh");
const NODE_IDS: [&str; 3] = ["lc-node-a", "lc-node-b", "lc-node-c"];
const CLIENTS: usize = 30;
/// The node that is killed (not the one whose API publishes).
const VICTIM: usize = 2;
const GROUP: &str = "market.AAPL";

/// The nginx binary: `$NGINX`, else `nginx` on PATH or in the usual sbin
/// directories (which are not on every user's PATH).
fn nginx_bin() -> PathBuf {
    const INSTALL: &str = "this test runs the real nginx load balancer of \
        scripts/local-cluster.sh; install it with `apt-get install -y nginx`";
    if let Some(p) = std::env::var_os("NGINX") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NGINX={} is not a file: {INSTALL}",
            p.display()
        );
        return p;
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("nginx"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("nginx is not installed (not on PATH nor in /usr/sbin): {INSTALL}")
        })
}

/// `scripts/local-cluster.sh render-conf` for these upstreams and ports.
fn render_conf(ws: &[&str], api: &[&str], lb_ws: u16, lb_api: u16, state: &Path) -> String {
    let out = Command::new("bash")
        .arg(SCRIPT)
        .arg("render-conf")
        .env("WSGATE_LOCAL_DIR", state)
        .env("WSGATE_LOCAL_WS_PORTS", ws.join(" "))
        .env("WSGATE_LOCAL_API_PORTS", api.join(" "))
        .env("WSGATE_LOCAL_LB_WS_PORT", lb_ws.to_string())
        .env("WSGATE_LOCAL_LB_API_PORT", lb_api.to_string())
        .env("WSGATE_LOCAL_LB_BIND", "127.0.0.1")
        .output()
        .expect("run scripts/local-cluster.sh");
    assert!(
        out.status.success(),
        "render-conf failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// An nginx master process in its own prefix, stopped on drop.
struct Nginx {
    child: Child,
    prefix: PathBuf,
}

impl Nginx {
    fn args(prefix: &Path) -> Vec<String> {
        let p = prefix.display();
        vec![
            "-p".into(),
            format!("{p}/"),
            "-c".into(),
            format!("{p}/nginx.conf"),
            "-e".into(),
            format!("{p}/error.log"),
        ]
    }

    /// `nginx -t` on the config in `prefix`, then nginx in the foreground
    /// (`daemon off`, so it is our child), waiting until `port` accepts.
    #[allow(clippy::zombie_processes)] // stopped and waited for in Drop
    fn start(prefix: &Path, port: u16) -> Nginx {
        let bin = nginx_bin();
        let check = Command::new(&bin)
            .arg("-t")
            .args(Self::args(prefix))
            .output()
            .expect("run nginx -t");
        assert!(
            check.status.success(),
            "nginx -t rejected the rendered config: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new(&bin)
            .args(Self::args(prefix))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let mut nginx = Nginx {
            child,
            prefix: prefix.to_path_buf(),
        };
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = nginx.child.try_wait().unwrap() {
                panic!("nginx exited with {status}: {}", nginx.error_log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx not listening on {port}: {}",
                nginx.error_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("error.log")).unwrap_or_default()
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.prefix.join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        // SIGTERM: the master stops its workers and then exits. A SIGKILL
        // would leave the workers behind, still listening.
        let workers =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for w in workers.split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", w]).status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One client of the test: its user, token and socket.
struct Peer {
    user: String,
    token: String,
    node: String,
    client: Client,
}

/// The next text frame as JSON, without panicking (for retries).
async fn next_json(c: &mut Client) -> Result<Value, String> {
    loop {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Err(_) => return Err("no frame within the wait".into()),
            Ok(Some(Ok(Message::Text(t)))) => {
                return serde_json::from_str(&t).map_err(|e| format!("bad JSON {t}: {e}"));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(other) => return Err(format!("expected a text frame, got {other:?}")),
        }
    }
}

/// Connects through nginx, authenticates and subscribes to [`GROUP`];
/// returns the client and the node of its `welcome`.
async fn join(url: &str, token: &str) -> Result<(Client, String), String> {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let mut c = Client { ws };
    let send = |v: Value| Message::text(v.to_string());
    c.ws.send(send(json!({"type": "auth", "token": token})))
        .await
        .map_err(|e| format!("send auth: {e}"))?;
    let welcome = next_json(&mut c).await?;
    if welcome["type"] != "welcome" {
        return Err(format!("expected welcome, got {welcome}"));
    }
    c.ws.send(send(json!({"type": "subscribe", "group": GROUP})))
        .await
        .map_err(|e| format!("send subscribe: {e}"))?;
    let reply = next_json(&mut c).await?;
    if reply["type"] != "subscribed" {
        return Err(format!("expected subscribed, got {reply}"));
    }
    let node = welcome["node"].as_str().unwrap_or_default().to_string();
    Ok((c, node))
}

fn distribution<'a>(nodes: impl Iterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut d = BTreeMap::new();
    for n in nodes {
        *d.entry(n.to_string()).or_default() += 1;
    }
    d
}

async fn publish(api: &str, data: Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/publish"))
        .bearer_auth(API_KEY)
        .json(&json!({"group": GROUP, "data": data}))
        .send()
        .await
        .expect("API reachable");
    let status = resp.status().as_u16();
    assert_eq!(
        status,
        200,
        "publish through {api}: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Every peer receives `data` on [`GROUP`] as its next message.
async fn expect_everyone_gets(peers: &mut [Peer], data: &Value) {
    for p in peers.iter_mut() {
        let m = p.client.recv_json().await;
        assert_eq!(m["type"], "message", "user {} on {}: {m}", p.user, p.node);
        assert_eq!(m["group"], GROUP);
        assert_eq!(&m["data"], data, "user {} on {}", p.user, p.node);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_nodes_through_nginx_and_survive_a_killed_node() {
    let test_start = Instant::now();
    // Fail first, and clearly, without nginx.
    println!("nginx: {}", nginx_bin().display());
    let pg = PgDb::create().await;
    let prefix = RedisPrefix::random();

    // Tokens first: this also applies the migrations once, before the nodes.
    let mut config = wsgate::config::Config::default();
    config.database.url = Some(pg.url.clone());
    let db = Db::connect(&config).await.expect("db");
    db.migrate().await.expect("migrate");
    let store = NativeStore::new(db.clone());
    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("u{i}");
        let token = store.issue(&user, None).await.expect("issue");
        tokens.push((user, token.expose().to_string()));
    }
    db.pool.close().await;

    // Three real nodes on loopback port 0.
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<BinNode> = NODE_IDS
        .iter()
        .map(|id| {
            BinNode::start(
                dir.path(),
                &[
                    &redis_node_env(id, &prefix, &pg.url)[..],
                    &[
                        ("WSGATE__DATABASE__MIGRATE", "false"),
                        ("WSGATE__DRAIN__GRACE", "0s"),
                    ],
                ]
                .concat(),
            )
        })
        .collect();
    let nodes_up = test_start.elapsed();

    // nginx with the script's config, on free ports, in its own prefix.
    let nginx_dir = tempfile::tempdir().unwrap();
    // nginx workers run as an unprivileged user when the test runs as root.
    std::fs::set_permissions(
        nginx_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let (lb_ws, lb_api) = (free_port(), free_port());
    let ws_upstreams: Vec<&str> = nodes.iter().map(|n| n.ws.as_str()).collect();
    let api_upstreams: Vec<&str> = nodes.iter().map(|n| n.api.as_str()).collect();
    let conf = render_conf(
        &ws_upstreams,
        &api_upstreams,
        lb_ws,
        lb_api,
        nginx_dir.path(),
    );
    for n in &nodes {
        assert!(conf.contains(&format!("server {} ", n.ws)), "{conf}");
    }
    std::fs::write(nginx_dir.path().join("nginx.conf"), &conf).unwrap();
    let nginx = Nginx::start(nginx_dir.path(), lb_ws);
    let url = format!("ws://127.0.0.1:{lb_ws}/ws");
    let lb_api_addr = format!("127.0.0.1:{lb_api}");

    // 30 clients through nginx, one after another: round robin, so the
    // nodes take turns.
    let t = Instant::now();
    let mut peers = Vec::new();
    for (user, token) in &tokens {
        let (client, node) = join(&url, token)
            .await
            .unwrap_or_else(|e| panic!("user {user} through nginx: {e}\n{}", nginx.error_log()));
        peers.push(Peer {
            user: user.clone(),
            token: token.clone(),
            node,
            client,
        });
    }
    let joined_in = t.elapsed();
    let before = distribution(peers.iter().map(|p| p.node.as_str()));
    println!("clients per node before the kill: {before:?} ({CLIENTS} joined in {joined_in:?})");
    assert_eq!(
        before.keys().map(String::as_str).collect::<Vec<_>>(),
        NODE_IDS,
        "every node takes clients (no stickiness)"
    );
    assert!(
        before.values().all(|&n| n == CLIENTS / NODE_IDS.len()),
        "round robin spreads sequential clients evenly: {before:?}"
    );

    // A publish through one node's API reaches all 30.
    let t = Instant::now();
    publish(&nodes[0].api, json!({"n": 1})).await;
    expect_everyone_gets(&mut peers, &json!({"n": 1})).await;
    println!(
        "publish 1 (node-a API) reached {CLIENTS} clients in {:?}",
        t.elapsed()
    );

    // SIGKILL one node: its clients lose their connection and reconnect
    // through nginx, which must send them to the two others.
    let victim = NODE_IDS[VICTIM];
    let (orphans, mut peers): (Vec<Peer>, Vec<Peer>) =
        peers.into_iter().partition(|p| p.node == victim);
    nodes[VICTIM].signal("KILL");
    let killed_at = Instant::now();
    nodes[VICTIM].wait_exit(Duration::from_secs(5));
    let mut tasks = Vec::new();
    for mut p in orphans {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let closed = p.client.close_within(Duration::from_secs(5)).await;
            let dropped_after = killed_at.elapsed();
            let mut backoff = Duration::from_millis(50);
            let mut attempts = 0;
            let (client, node) = loop {
                attempts += 1;
                match join(&url, &p.token).await {
                    Ok(joined) => break joined,
                    Err(e) if attempts < 6 => {
                        println!("user {} reconnect attempt {attempts} failed: {e}", p.user);
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    Err(e) => panic!("user {} could not reconnect: {e}", p.user),
                }
            };
            let back_after = killed_at.elapsed();
            (
                Peer {
                    user: p.user,
                    token: p.token,
                    node,
                    client,
                },
                closed,
                dropped_after,
                back_after,
                attempts,
            )
        }));
    }
    let mut dropped = Vec::new();
    let mut back = Vec::new();
    let mut attempts = Vec::new();
    let mut reconnected_nodes = Vec::new();
    for task in tasks {
        let (peer, closed, dropped_after, back_after, n) = task.await.unwrap();
        assert_ne!(
            peer.node, victim,
            "user {} back on the dead node",
            peer.user
        );
        reconnected_nodes.push(peer.node.clone());
        dropped.push((dropped_after, closed));
        back.push(back_after);
        attempts.push(n);
        peers.push(peer);
    }
    back.sort();
    let orphan_count = back.len();
    println!(
        "{orphan_count} clients of {victim}: connection dropped within {:?} of the SIGKILL ({:?}); \
         all reconnected and resubscribed within {:?} (median {:?}); attempts per client {attempts:?}",
        dropped.iter().map(|d| d.0).max().unwrap(),
        dropped
            .iter()
            .map(|d| format!("{:?}", d.1))
            .collect::<std::collections::BTreeSet<_>>(),
        back.last().unwrap(),
        back[back.len() / 2],
    );
    assert_eq!(orphan_count, CLIENTS / NODE_IDS.len());
    let after = distribution(peers.iter().map(|p| p.node.as_str()));
    let moved = distribution(reconnected_nodes.iter().map(String::as_str));
    println!("clients per node after the kill: {after:?} (the reconnected went to {moved:?})");
    assert_eq!(after.values().sum::<usize>(), CLIENTS);
    assert!(!after.contains_key(victim));
    assert_eq!(
        moved.len(),
        2,
        "reconnects spread over both survivors: {moved:?}"
    );

    // A new publish reaches all 30 again: through a surviving node's API,
    // then through nginx's API port (which must skip the dead node too).
    let t = Instant::now();
    publish(&nodes[0].api, json!({"n": 2})).await;
    expect_everyone_gets(&mut peers, &json!({"n": 2})).await;
    println!(
        "publish 2 (node-a API) reached {CLIENTS} clients in {:?}",
        t.elapsed()
    );
    publish(&lb_api_addr, json!({"n": 3})).await;
    expect_everyone_gets(&mut peers, &json!({"n": 3})).await;
    println!("publish 3 (nginx API) reached {CLIENTS} clients");

    // Closing the clients writes their access log lines: a handshake that
    // nginx retried on another node shows two upstreams.
    drop(peers);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = nginx.access_log();
    let retried: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("upstream=") && l.contains(", "))
        .collect();
    println!(
        "nginx retried {} request(s) on another node: {retried:#?}",
        retried.len()
    );
    println!(
        "test took {:?} (nodes up after {nodes_up:?})",
        test_start.elapsed()
    );
    drop(nginx);
    drop(nodes);
}
