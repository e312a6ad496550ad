//! wsgate-bench: a load generator for wsgate and for any server speaking
//! its protocol (shared/protocol.md): first-frame auth, `subscribe`, group
//! messages, and `POST /api/v1/publish`.
//!
//! Every scenario is bounded in time and count and stops by itself. It
//! prints one JSON line on stdout (also appended to `--json-out`) and a
//! readable table on stderr. Given `--server-pid`, it reads the server's CPU
//! time and RSS from /proc before and after, and reports server CPU per
//! operation. Load goes only to loopback addresses.

mod net;
mod nodes;
mod output;
mod report;
mod scenario;
mod sys;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::scenario::{DeliveryRun, Mode};
use crate::worker::GroupPlan;

#[derive(Parser)]
#[command(
    name = "wsgate-bench",
    version,
    about = "Load generator for wsgate: fanout, groups, connect, idle, publish"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Options every scenario takes.
#[derive(Args, Clone, Debug)]
pub struct Common {
    /// WebSocket URL of a node (repeat for several; sockets are spread round-robin).
    #[arg(long = "ws", default_value = "ws://127.0.0.1:8080/ws")]
    pub ws: Vec<String>,
    /// API base URL of a node (repeat for several; requests are spread round-robin).
    #[arg(long = "api", default_value = "http://127.0.0.1:8081")]
    pub api: Vec<String>,
    /// API key (better: --api-key-file or WSGATE_BENCH_API_KEY).
    #[arg(long, env = "WSGATE_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// File holding the API key.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// A client token (better: --tokens-file or WSGATE_BENCH_TOKEN).
    #[arg(long, env = "WSGATE_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File with one client token per line; socket i uses line i mod n.
    #[arg(long)]
    pub tokens_file: Option<PathBuf>,
    /// PID of a server process to read CPU and RSS of (repeatable).
    #[arg(long = "server-pid")]
    pub server_pid: Vec<u32>,
    /// PID of a helper process (e.g. Redis) whose CPU is reported apart (repeatable).
    #[arg(long = "aux-pid")]
    pub aux_pid: Vec<u32>,
    /// Prometheus `/metrics` URL of a node (loopback, repeatable), in the
    /// order of `--server-pid`: the fan-out scenarios then report each
    /// node's deliveries, publishes and CPU per delivery (`nodes`).
    #[arg(long = "metrics-url")]
    pub metrics_url: Vec<String>,
    /// Spread sockets over this many source addresses 127.0.0.2, 127.0.0.3, ...
    /// (0: let the kernel pick 127.0.0.1).
    #[arg(long, default_value_t = 4)]
    pub source_addrs: usize,
    /// Most sockets one process holds; more are split over child processes.
    #[arg(long, default_value_t = 15_000)]
    pub sockets_per_process: usize,
    /// Sockets being set up at once (per process).
    #[arg(long, default_value_t = 200)]
    pub connect_concurrency: usize,
    /// Name of this run in the results.
    #[arg(long)]
    pub label: Option<String>,
    /// Append the JSON line to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

impl Common {
    pub fn tokens(&self) -> Result<Vec<String>, String> {
        let mut tokens = Vec::new();
        if let Some(path) = &self.tokens_file {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            tokens.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from),
            );
        }
        if tokens.is_empty()
            && let Some(t) = &self.token
        {
            tokens.push(t.clone());
        }
        if tokens.is_empty() {
            return Err("no token: give --tokens-file or --token".into());
        }
        Ok(tokens)
    }

    pub fn api_key(&self) -> Result<String, String> {
        if let Some(path) = &self.api_key_file {
            let key =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            return Ok(key.trim().to_string());
        }
        self.api_key
            .clone()
            .ok_or_else(|| "no API key: give --api-key-file or --api-key".into())
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers of one group; publishes through the HTTP API.
    Fanout(FanoutArgs),
    /// M sockets, each in G of K groups; R publishes/s spread over the groups.
    Groups(GroupsArgs),
    /// Authentications per second (connect, auth, welcome, close).
    Connect(ConnectArgs),
    /// Opens N authenticated idle sockets and measures server RSS per socket.
    Idle(IdleArgs),
    /// API batch publish throughput (messages/s), no subscribers.
    Publish(PublishArgs),
    /// Renders result JSON lines as Markdown tables (targets of issue 6).
    Report(report::ReportArgs),
    /// Writes random tokens in wsgate's native format (wsg_ + 43 base64url
    /// characters), one per line, to a file only its owner can read.
    GenTokens {
        #[arg(long)]
        count: usize,
        #[arg(long)]
        out: PathBuf,
    },
    /// (internal) a child worker process; reads its spec on stdin.
    #[command(hide = true)]
    Worker,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    common: Common,
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value = "bench.fanout")]
    group: String,
    /// Messages per second; 0 publishes as fast as the window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Messages per publish request (batch form when above 1).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// With --rate 0: messages in flight (published, not yet received by all).
    #[arg(long, default_value_t = 32.0)]
    window: f64,
    /// Publish requests in flight.
    #[arg(long, default_value_t = 8)]
    inflight: usize,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Padding bytes in each message's data.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Longest wait (s) for the last deliveries.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
}

#[derive(Args)]
struct GroupsArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 10_000)]
    sockets: usize,
    /// Groups in all.
    #[arg(long, default_value_t = 1000)]
    groups: usize,
    /// Groups each socket joins.
    #[arg(long, default_value_t = 10)]
    per_socket: usize,
    #[arg(long, default_value = "bench.g.")]
    prefix: String,
    /// Publishes (messages) per second, round-robin over the groups.
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    #[arg(long, default_value_t = 1)]
    batch: usize,
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    #[arg(long, default_value_t = 6)]
    seed: u64,
}

#[derive(Args)]
struct ConnectArgs {
    #[command(flatten)]
    common: Common,
    /// hit: one token reused (cache hits); miss: a distinct token per connection.
    #[arg(long, value_enum, default_value = "hit")]
    mode: Mode,
    /// Most connections (miss: also at most the number of tokens).
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Most seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = 19_000)]
    sockets: usize,
    /// Seconds to wait after the last socket opened before reading RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Seconds to hold the sockets afterwards (server CPU while idle).
    #[arg(long, default_value_t = 5.0)]
    hold: f64,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    common: Common,
    /// Messages per request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Groups the messages are spread over.
    #[arg(long, default_value_t = 100)]
    groups: usize,
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let nofile = sys::raise_nofile_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(sys::ncpu())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let (common, result) = match cli.command {
            Cmd::Worker => return ExitCode::from(worker::child_main().await as u8),
            Cmd::Report(args) => return report::run(args),
            Cmd::GenTokens { count, out } => return gen_tokens(count, &out),
            Cmd::Fanout(a) => {
                let params = json!({
                    "subscribers": a.subscribers, "group": a.group, "rate": a.rate,
                    "batch": a.batch, "window": a.window, "inflight": a.inflight,
                    "duration_s": a.duration, "payload": a.payload,
                });
                let run = DeliveryRun {
                    scenario: "fanout",
                    sockets: a.subscribers,
                    plan: GroupPlan::One(a.group.clone()),
                    rate: a.rate,
                    batch: a.batch,
                    window: a.window,
                    inflight: a.inflight,
                    duration: a.duration,
                    payload: a.payload,
                    drain: a.drain,
                    params,
                };
                let r = scenario::deliveries(&a.common, run).await;
                (a.common, r)
            }
            Cmd::Groups(a) => {
                let params = json!({
                    "sockets": a.sockets, "groups": a.groups, "per_socket": a.per_socket,
                    "rate": a.rate, "batch": a.batch, "inflight": a.inflight,
                    "duration_s": a.duration, "payload": a.payload,
                });
                let run = DeliveryRun {
                    scenario: "groups",
                    sockets: a.sockets,
                    plan: GroupPlan::Spread {
                        prefix: a.prefix.clone(),
                        groups: a.groups,
                        per_socket: a.per_socket,
                        seed: a.seed,
                    },
                    rate: a.rate,
                    batch: a.batch,
                    window: 0.0,
                    inflight: a.inflight,
                    duration: a.duration,
                    payload: a.payload,
                    drain: a.drain,
                    params,
                };
                let r = scenario::deliveries(&a.common, run).await;
                (a.common, r)
            }
            Cmd::Connect(a) => {
                let r =
                    scenario::connect(&a.common, a.mode, a.count, a.duration, a.concurrency).await;
                (a.common, r)
            }
            Cmd::Idle(a) => {
                let r = scenario::idle(&a.common, a.sockets, a.settle, a.hold).await;
                (a.common, r)
            }
            Cmd::Publish(a) => {
                let r = scenario::publish(
                    &a.common,
                    a.batch,
                    a.concurrency,
                    a.duration,
                    a.groups,
                    a.payload,
                )
                .await;
                (a.common, r)
            }
        };
        match result {
            Ok(mut record) => {
                record["open_files_limit"] = json!(nofile);
                if let Err(e) = output::emit(&record, common.json_out.as_deref()) {
                    eprintln!("wsgate-bench: cannot write results: {e}");
                    return ExitCode::FAILURE;
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wsgate-bench: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn gen_tokens(count: usize, out: &std::path::Path) -> ExitCode {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out);
    let mut file = match file {
        Ok(f) => std::io::BufWriter::new(f),
        Err(e) => {
            eprintln!("wsgate-bench: {}: {e}", out.display());
            return ExitCode::FAILURE;
        }
    };
    for _ in 0..count {
        // 32 random bytes as unpadded base64url: 43 characters.
        let bytes: [u8; 32] = rand::random();
        let mut s = String::with_capacity(47);
        s.push_str("wsg_");
        let mut acc = 0u32;
        let mut nbits = 0;
        for b in bytes {
            acc = (acc << 8) | b as u32;
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                s.push(ALPHABET[((acc >> nbits) & 63) as usize] as char);
            }
        }
        if nbits > 0 {
            s.push(ALPHABET[((acc << (6 - nbits)) & 63) as usize] as char);
        }
        if writeln!(file, "{s}").is_err() {
            return ExitCode::FAILURE;
        }
    }
    if file.flush().is_err() {
        return ExitCode::FAILURE;
    }
    eprintln!("wsgate-bench: wrote {count} tokens to {}", out.display());
    ExitCode::SUCCESS
}
