//! wsgate-floor: "the floor" of issue 15 ("Performance, round two"), the
//! minimal broadcast server wsgate's figures are compared with: tokio, one
//! pre-encoded frame per broadcast shared by all recipients, one write per
//! socket wake-up, hand-rolled framing, no database, no Redis.
//!
//! Why it exists: the issue states its targets as ratios to such a server,
//! and none was in the repository, so the ratios could not be measured. It
//! lives in the bench crate so that `scripts/bench.sh --only floor` can run
//! the same wsgate-bench command lines against it as against wsgate, on the
//! same machine, in the same run.
//!
//! It speaks only the subset of wsgate's protocol (docs/protocol.md) that
//! wsgate-bench uses: `/ws` with first-frame `auth` (any non-empty token is
//! welcomed: **the floor authenticates nothing**), `subscribe`, `message`
//! frames shaped like wsgate's, `POST /api/v1/publish` (any bearer key),
//! `/readyz` and a `/metrics` with the counters wsgate-bench reads. No
//! history, presence, authorization, per-IP limits, pings or drain: what it
//! costs is the cost of delivering, and nothing else. Not for production.
//!
//! Modules: `frame` (RFC 6455 framing), `hub` (groups, bounded queues,
//! counters), `http` (HTTP/1.1 requests, upgrade, publish API), `ws` (the
//! session's reader and writer).

mod frame;
mod http;
mod hub;
mod ws;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio::net::TcpListener;

use crate::hub::Hub;

#[derive(Parser, Debug)]
#[command(
    name = "wsgate-floor",
    version,
    about = "The floor: a minimal WebSocket broadcast server speaking wsgate-bench's subset of wsgate's protocol"
)]
struct Args {
    /// WebSocket listener (serves `--ws-path`, and the HTTP routes too).
    #[arg(long, default_value = "127.0.0.1:8080")]
    ws_listen: SocketAddr,
    /// API listener (`POST /api/v1/publish`, `/readyz`, `/metrics`).
    #[arg(long, default_value = "127.0.0.1:8081")]
    api_listen: SocketAddr,
    /// Optional third listener for `/metrics` (every listener serves every route).
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/ws")]
    ws_path: String,
    /// Frames queued per connection before it is closed with 4009 (slow consumer).
    #[arg(long, default_value_t = 1024)]
    outbound_queue: usize,
    /// Runtime worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

/// Raises the soft open-file limit to the hard limit (every socket is a file).
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

async fn accept_loop(l: TcpListener, hub: Arc<Hub>, ws_path: Arc<str>) {
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                tokio::spawn(http::serve(s, hub.clone(), ws_path.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little.
                eprintln!("wsgate-floor: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    raise_nofile_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsgate-floor: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let hub = Arc::new(Hub::new(args.outbound_queue));
        let ws_path: Arc<str> = Arc::from(args.ws_path.as_str());
        let mut addrs = vec![args.ws_listen, args.api_listen];
        addrs.extend(args.metrics_listen);
        for addr in addrs {
            let l = match TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("wsgate-floor: cannot listen on {addr}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            tokio::spawn(accept_loop(l, hub.clone(), ws_path.clone()));
        }
        eprintln!(
            "wsgate-floor: WebSocket on ws://{}{}, API on http://{}, outbound queue {} frames",
            args.ws_listen, args.ws_path, args.api_listen, args.outbound_queue
        );
        let _ = tokio::signal::ctrl_c().await;
        ExitCode::SUCCESS
    })
}
