//! The scenarios: fan-out and many groups (deliveries), connect
//! (authentications), idle (memory per socket) and publish (API throughput).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::Common;
use crate::net::{self, Endpoint, Publisher};
use crate::output;
use crate::sys::{self, Snapshot, Usage};
use crate::worker::{self, Command, GroupPlan, WorkerSpec, new_hist};

/// Longest wait for the server to go quiet before a run.
const QUIET: Duration = Duration::from_secs(20);

fn snapshot(c: &Common) -> Snapshot {
    Snapshot::take(&c.server_pid, &c.aux_pid)
}

fn record(scenario: &str, c: &Common, default_label: &str, params: Value) -> Value {
    json!({
        "scenario": scenario,
        "label": c.label.clone().unwrap_or_else(|| default_label.to_string()),
        "unix_time": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        "nodes": c.ws.len(),
        "params": params,
    })
}

fn add(map: &Mutex<BTreeMap<String, u64>>, key: String, n: u64) {
    *map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default() += n;
}

fn take_map(map: &Mutex<BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    std::mem::take(&mut *map.lock().unwrap_or_else(|e| e.into_inner()))
}

// ---------------------------------------------------------------------------
// Deliveries: fanout and groups.

/// One run of a delivery scenario.
pub struct DeliveryRun {
    pub scenario: &'static str,
    pub sockets: usize,
    pub plan: GroupPlan,
    /// Messages per second; 0 means as fast as the window allows.
    pub rate: f64,
    pub batch: usize,
    /// Closed loop (rate 0): messages outstanding per subscriber.
    pub window: f64,
    /// Most publish requests in flight.
    pub inflight: usize,
    pub duration: f64,
    pub payload: usize,
    /// Longest wait for the last deliveries after publishing stops.
    pub drain: f64,
    pub params: Value,
}

#[derive(Default)]
struct PubAcc {
    counts: HashMap<String, u64>,
    messages: u64,
    requests: u64,
    errors: BTreeMap<String, u64>,
}

struct PubResult {
    acc: PubAcc,
    req_hist: Histogram<u64>,
    elapsed: Duration,
    lag_requests: u64,
}

/// Publishes for `run.duration`. `run.inflight` lanes each send one request
/// at a time (so each lane is "one publisher" whose order the server must
/// keep); a central loop hands them work at the target rate, or whenever
/// fewer than `run.window` messages are outstanding.
async fn publish_loop(
    publisher: Arc<Publisher>,
    groups: Arc<Vec<String>>,
    members: Arc<Vec<u64>>,
    progress: Arc<AtomicU64>,
    run: &DeliveryRun,
) -> PubResult {
    let lanes = run.inflight.max(1);
    let acc = Arc::new(Mutex::new(PubAcc::default()));
    // Deliveries expected from the messages sent so far (failed requests
    // are taken back).
    let sent_expected = Arc::new(AtomicU64::new(0));
    let batch = run.batch.max(1);
    let per_msg = (members.iter().sum::<u64>() as f64 / members.len().max(1) as f64).max(1.0);
    let limit = (run.window.max(1.0) * per_msg) as u64;
    let req_rate = run.rate / batch as f64;
    let (job_tx, job_rx) = tokio::sync::mpsc::channel::<(u64, Vec<(usize, u64)>, u64)>(1);
    let job_rx = Arc::new(tokio::sync::Mutex::new(job_rx));
    let mut lane_tasks = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let (publisher, groups, acc, sent_expected, job_rx) = (
            publisher.clone(),
            groups.clone(),
            acc.clone(),
            sent_expected.clone(),
            job_rx.clone(),
        );
        lane_tasks.push(tokio::spawn(async move {
            let mut hist = new_hist();
            loop {
                let job = job_rx.lock().await.recv().await;
                let Some((n, items, expect)) = job else { break };
                let named: Vec<(&str, u64)> = items
                    .iter()
                    .map(|(g, s)| (groups[*g].as_str(), *s))
                    .collect();
                let body = publisher.body(&named, lane);
                let t = Instant::now();
                let r = publisher.send(n, body).await;
                hist.saturating_record((t.elapsed().as_micros() as u64).max(1));
                let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
                match r {
                    Ok(()) => {
                        a.requests += 1;
                        a.messages += items.len() as u64;
                        for (g, _) in &items {
                            *a.counts.entry(groups[*g].clone()).or_default() += 1;
                        }
                    }
                    Err(e) => {
                        *a.errors.entry(e).or_default() += 1;
                        sent_expected.fetch_sub(expect, Ordering::Relaxed);
                    }
                }
            }
            hist
        }));
    }
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(run.duration);
    let planned = if run.rate > 0.0 {
        (run.duration * req_rate).round() as u64
    } else {
        u64::MAX
    };
    let mut seq = 0u64;
    let mut reqs = 0u64;
    while reqs < planned {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if run.rate > 0.0 {
            // Request k is due at k / rate.
            let due_at = start + Duration::from_secs_f64(reqs as f64 / req_rate);
            if due_at > now {
                tokio::time::sleep_until(due_at.min(end).into()).await;
                continue;
            }
        } else {
            let outstanding = sent_expected
                .load(Ordering::Relaxed)
                .saturating_sub(progress.load(Ordering::Relaxed));
            if outstanding >= limit {
                tokio::time::sleep(Duration::from_micros(500)).await;
                continue;
            }
        }
        let mut items: Vec<(usize, u64)> = Vec::with_capacity(batch);
        let mut expect = 0;
        for _ in 0..batch {
            let g = (seq % groups.len() as u64) as usize;
            expect += members[g];
            items.push((g, seq));
            seq += 1;
        }
        sent_expected.fetch_add(expect, Ordering::Relaxed);
        if job_tx.send((reqs, items, expect)).await.is_err() {
            break;
        }
        reqs += 1;
    }
    // A fixed-rate run that kept its schedule lasted `duration`.
    let elapsed = if run.rate > 0.0 {
        start.elapsed().max(Duration::from_secs_f64(run.duration))
    } else {
        start.elapsed()
    };
    drop(job_tx);
    let mut req_hist = new_hist();
    for t in lane_tasks {
        if let Ok(h) = t.await {
            let _ = req_hist.add(&h);
        }
    }
    let lag_requests = if run.rate > 0.0 {
        planned.saturating_sub(reqs)
    } else {
        0
    };
    let acc = std::mem::take(&mut *acc.lock().unwrap_or_else(|e| e.into_inner()));
    PubResult {
        acc,
        req_hist,
        elapsed,
        lag_requests,
    }
}

pub async fn deliveries(c: &Common, run: DeliveryRun) -> Result<Value, String> {
    let tokens = c.tokens()?;
    let key = c.api_key()?;
    for u in &c.ws {
        Endpoint::parse(u)?;
    }
    let publisher = Arc::new(Publisher::new(&c.api, &key, run.payload)?);
    let scraper = crate::nodes::Scraper::new(&c.metrics_url)?;
    sys::wait_quiet(&c.server_pid, QUIET).await;
    let progress = Arc::new(AtomicU64::new(0));
    let spec = WorkerSpec {
        worker: 0,
        urls: c.ws.clone(),
        tokens,
        first_socket: 0,
        sockets: run.sockets,
        source_addrs: c.source_addrs,
        plan: run.plan.clone(),
        connect_concurrency: c.connect_concurrency,
        lanes: run.inflight.max(1),
        track: true,
        child: false,
    };
    let mut handles = worker::start(&spec, run.sockets, c.sockets_per_process, &progress)?;
    let ready = worker::await_ready(&mut handles, Duration::from_secs(600)).await?;
    eprintln!(
        "wsgate-bench: {} sockets ready ({} failed) in {:.1} s on {} process(es)",
        ready.ok,
        ready.failed,
        ready.setup_s,
        handles.len()
    );
    if ready.ok == 0 {
        let _ = worker::finish(&mut handles, Command::Close, Duration::from_secs(30)).await;
        return Err(format!("no socket could be set up: {:?}", ready.failures));
    }
    let groups = Arc::new(run.plan.all_groups());
    let members = Arc::new(
        groups
            .iter()
            .map(|g| ready.members.get(g).copied().unwrap_or(0))
            .collect::<Vec<u64>>(),
    );
    // What the setup left the server doing (a Redis-backed node's presence
    // and occupancy writes) is not the publishes' cost: wait until it is
    // quiet, as `connect` does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    sys::wait_quiet(&c.server_pid, QUIET).await;
    let loadavg = sys::loadavg();
    let metrics_before = scraper.read().await;
    let before = snapshot(c);
    let t0_us = net::unix_micros();
    let pubres = publish_loop(
        publisher,
        groups.clone(),
        members.clone(),
        progress.clone(),
        &run,
    )
    .await;
    // Drain: until everything expected has arrived, progress stalls for 2 s,
    // or the drain time is up.
    let expected_total: u64 = groups
        .iter()
        .zip(members.iter())
        .map(|(g, m)| pubres.acc.counts.get(g).copied().unwrap_or(0) * m)
        .sum();
    let drain_end = Instant::now() + Duration::from_secs_f64(run.drain);
    let (mut last, mut last_change) = (progress.load(Ordering::Relaxed), Instant::now());
    while Instant::now() < drain_end {
        let p = progress.load(Ordering::Relaxed);
        if p >= expected_total {
            break;
        }
        if p != last {
            (last, last_change) = (p, Instant::now());
        } else if last_change.elapsed() > Duration::from_secs(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = snapshot(c);
    let metrics_after = scraper.read().await;
    let (rep, hist) = worker::finish(
        &mut handles,
        Command::Finish {
            counts: pubres.acc.counts.clone(),
            drain_ms: 200,
        },
        Duration::from_secs(120),
    )
    .await?;
    let usage = Usage::between(&before, &after);
    let span_s = (rep.last_rx_us.saturating_sub(t0_us) as f64 / 1e6).max(1e-6);
    let per_s = rep.unique as f64 / span_s;
    let offered = expected_total as f64 / pubres.elapsed.as_secs_f64().max(1e-6);
    let mut r = record(run.scenario, c, run.scenario, run.params);
    output::merge(
        &mut r,
        json!({
            "rate": per_s.round(),
            "rate_unit": "deliveries/s",
            "sockets": {
                "ok": ready.ok,
                "failed": ready.failed,
                "failures": ready.failures,
                "setup_s": (ready.setup_s * 100.0).round() / 100.0,
                "processes": handles.len(),
            },
            "published": {
                "messages": pubres.acc.messages,
                "requests": pubres.acc.requests,
                "errors": pubres.acc.errors,
                "rate_msgs_s": (pubres.acc.messages as f64 / pubres.elapsed.as_secs_f64().max(1e-6)).round(),
                "behind_schedule_requests": pubres.lag_requests,
                "request_latency_ms": output::latency_ms(&pubres.req_hist),
                "elapsed_s": (pubres.elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
            },
            "deliveries": {
                "expected": rep.expected,
                "received": rep.received,
                "unique": rep.unique,
                "missing": rep.expected.saturating_sub(rep.unique),
                "duplicates": rep.duplicates,
                "reordered": rep.reordered,
                "per_s": per_s.round(),
                "offered_per_s": offered.round(),
                "span_s": (span_s * 1000.0).round() / 1000.0,
            },
            "closed": rep.closed,
            "latency_ms": output::latency_ms(&hist),
        }),
    );
    output::merge(
        &mut r,
        output::usage(
            &usage,
            rep.unique,
            "delivery",
            &c.server_pid,
            &c.aux_pid,
            rep.cpu_s,
            loadavg,
        ),
    );
    if !scraper.is_empty() {
        r["nodes"] = scraper.report(
            &metrics_before,
            &metrics_after,
            &c.server_pid,
            &usage.server_cpu_each_s,
        );
    }
    Ok(r)
}

// ---------------------------------------------------------------------------
// Connect: authentications per second.

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One token reused: every authentication after the first is a cache hit.
    Hit,
    /// A distinct token per connection: every one is a cache miss.
    Miss,
}

pub async fn connect(
    c: &Common,
    mode: Mode,
    count: usize,
    duration: f64,
    concurrency: usize,
) -> Result<Value, String> {
    let tokens = Arc::new(c.tokens()?);
    let count = match mode {
        Mode::Hit => count,
        Mode::Miss => count.min(tokens.len()),
    };
    let endpoints: Arc<Vec<Endpoint>> = Arc::new(
        c.ws.iter()
            .map(|u| Endpoint::parse(u))
            .collect::<Result<_, _>>()?,
    );
    sys::wait_quiet(&c.server_pid, QUIET).await;
    let loadavg = sys::loadavg();
    let before = snapshot(c);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let next = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(BTreeMap::new()));
    let closers = Arc::new(Semaphore::new(4096));
    let source_addrs = c.source_addrs;
    let mut loops = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (tokens, endpoints, next, failures, closers) = (
            tokens.clone(),
            endpoints.clone(),
            next.clone(),
            failures.clone(),
            closers.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut total = new_hist();
            let mut auth = new_hist();
            let mut ok = 0u64;
            let mut last_ok = start;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count || Instant::now() >= deadline {
                    break;
                }
                let token = match mode {
                    Mode::Hit => &tokens[0],
                    Mode::Miss => &tokens[i],
                };
                let ep = &endpoints[i % endpoints.len()];
                let t0 = Instant::now();
                let mut ws = match net::open(ep, net::source_addr(i, source_addrs)).await {
                    Ok(ws) => ws,
                    Err(f) => {
                        add(&failures, f.to_string(), 1);
                        continue;
                    }
                };
                let t1 = Instant::now();
                match net::authenticate(&mut ws, token).await {
                    Ok(()) => {
                        let t2 = Instant::now();
                        ok += 1;
                        last_ok = t2;
                        total.saturating_record((t2 - t0).as_micros() as u64);
                        auth.saturating_record((t2 - t1).as_micros() as u64);
                        let Ok(permit) = closers.clone().acquire_owned().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            net::close(ws).await;
                            drop(permit);
                        });
                    }
                    Err(f) => add(&failures, f.to_string(), 1),
                }
            }
            (ok, last_ok, total, auth)
        }));
    }
    let mut ok = 0;
    let mut last_ok = start;
    let mut total = new_hist();
    let mut auth = new_hist();
    for l in loops {
        if let Ok((n, last, t, a)) = l.await {
            ok += n;
            last_ok = last_ok.max(last);
            let _ = total.add(&t);
            let _ = auth.add(&a);
        }
    }
    let elapsed = (last_ok - start).as_secs_f64().max(1e-6);
    // Let the closes finish: their server work belongs to the cycle.
    let _ = closers.acquire_many(4096).await;
    let after = snapshot(c);
    let usage = Usage::between(&before, &after);
    let failures = take_map(&failures);
    let attempts = next.load(Ordering::Relaxed).min(count);
    let mut r = record(
        "connect",
        c,
        match mode {
            Mode::Hit => "connect-hit",
            Mode::Miss => "connect-miss",
        },
        json!({
            "mode": match mode { Mode::Hit => "hit", Mode::Miss => "miss" },
            "count": count,
            "duration_s": duration,
            "concurrency": concurrency,
            "distinct_tokens": match mode { Mode::Hit => 1, Mode::Miss => count },
        }),
    );
    output::merge(
        &mut r,
        json!({
            "rate": (ok as f64 / elapsed).round(),
            "rate_unit": "authentications/s",
            "authenticated": ok,
            "attempts": attempts,
            "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
            "failures": failures,
            // From TCP connect to welcome; and from the auth frame to welcome.
            "latency_ms": output::latency_ms(&total),
            "auth_latency_ms": output::latency_ms(&auth),
        }),
    );
    output::merge(
        &mut r,
        output::usage(
            &usage,
            ok,
            "authentication",
            &c.server_pid,
            &c.aux_pid,
            0.0,
            loadavg,
        ),
    );
    Ok(r)
}

// ---------------------------------------------------------------------------
// Idle: server memory per authenticated socket.

pub async fn idle(c: &Common, sockets: usize, settle: f64, hold: f64) -> Result<Value, String> {
    let tokens = c.tokens()?;
    for u in &c.ws {
        Endpoint::parse(u)?;
    }
    if c.server_pid.is_empty() {
        eprintln!("wsgate-bench: idle without --server-pid measures no server memory");
    }
    sys::wait_quiet(&c.server_pid, QUIET).await;
    let loadavg = sys::loadavg();
    let base = snapshot(c);
    let progress = Arc::new(AtomicU64::new(0));
    let spec = WorkerSpec {
        worker: 0,
        urls: c.ws.clone(),
        tokens,
        first_socket: 0,
        sockets,
        source_addrs: c.source_addrs,
        plan: GroupPlan::None,
        connect_concurrency: c.connect_concurrency,
        lanes: 1,
        track: false,
        child: false,
    };
    let mut handles = worker::start(&spec, sockets, c.sockets_per_process, &progress)?;
    let ready = worker::await_ready(&mut handles, Duration::from_secs(900)).await?;
    eprintln!(
        "wsgate-bench: {} idle sockets open ({} failed) in {:.1} s on {} process(es)",
        ready.ok,
        ready.failed,
        ready.setup_s,
        handles.len()
    );
    tokio::time::sleep(Duration::from_secs_f64(settle)).await;
    let opened = snapshot(c);
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let held = snapshot(c);
    let (rep, _) = worker::finish(&mut handles, Command::Close, Duration::from_secs(120)).await?;
    // Generator CPU to open the sockets: this process and the children up to Ready.
    let ready_cpu = Usage::between(&base, &opened).generator_cpu_s + rep.cpu_at_ready_s;
    let grew = opened.server_rss_kib.saturating_sub(base.server_rss_kib);
    let per_socket = if ready.ok > 0 {
        grew as f64 / ready.ok as f64
    } else {
        0.0
    };
    let hold_usage = Usage::between(&opened, &held);
    let open_usage = Usage::between(&base, &opened);
    let mut r = record(
        "idle",
        c,
        "idle",
        json!({"sockets": sockets, "settle_s": settle, "hold_s": hold}),
    );
    output::merge(
        &mut r,
        json!({
            "rate": (ready.ok as f64 / ready.setup_s.max(1e-6)).round(),
            "rate_unit": "sockets opened/s",
            "sockets": {
                "ok": ready.ok,
                "failed": ready.failed,
                "failures": ready.failures,
                "setup_s": (ready.setup_s * 100.0).round() / 100.0,
                "processes": handles.len(),
            },
            "rss_per_socket_kib": (per_socket * 1000.0).round() / 1000.0,
            "server_rss_base_kib": base.server_rss_kib,
            "server_rss_open_kib": opened.server_rss_kib,
            "closed": rep.closed,
            "open_server_cpu_s": (open_usage.server_cpu_s * 1000.0).round() / 1000.0,
            "open_server_cpu_us_per_socket": if ready.ok > 0 {
                json!(((open_usage.server_cpu_s * 1e6 / ready.ok as f64) * 10.0).round() / 10.0)
            } else { Value::Null },
        }),
    );
    // The usage block covers the hold period (idle sockets; pings only).
    output::merge(
        &mut r,
        output::usage(
            &hold_usage,
            ready.ok,
            "socket_held",
            &c.server_pid,
            &c.aux_pid,
            rep.cpu_s,
            loadavg,
        ),
    );
    r["open_generator_cpu_s"] = json!((ready_cpu * 1000.0).round() / 1000.0);
    Ok(r)
}

// ---------------------------------------------------------------------------
// Publish: API throughput with the batch form.

pub async fn publish(
    c: &Common,
    batch: usize,
    concurrency: usize,
    duration: f64,
    groups: usize,
    payload: usize,
) -> Result<Value, String> {
    let key = c.api_key()?;
    let publisher = Arc::new(Publisher::new(&c.api, &key, payload)?);
    let names: Arc<Vec<String>> = Arc::new(
        (0..groups.max(1))
            .map(|i| GroupPlan::group_name("bench.pub.", i))
            .collect(),
    );
    sys::wait_quiet(&c.server_pid, QUIET).await;
    let loadavg = sys::loadavg();
    let before = snapshot(c);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(duration);
    let seq = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(BTreeMap::new()));
    let mut loops = Vec::new();
    for lane in 0..concurrency.max(1) {
        let (publisher, names, seq, errors) = (
            publisher.clone(),
            names.clone(),
            seq.clone(),
            errors.clone(),
        );
        loops.push(tokio::spawn(async move {
            let mut hist = new_hist();
            let (mut msgs, mut reqs) = (0u64, 0u64);
            while Instant::now() < deadline {
                let first = seq.fetch_add(batch as u64, Ordering::Relaxed);
                let items: Vec<(&str, u64)> = (first..first + batch as u64)
                    .map(|s| (names[(s % names.len() as u64) as usize].as_str(), s))
                    .collect();
                let body = publisher.body(&items, lane);
                let t = Instant::now();
                match publisher.send(first / batch as u64, body).await {
                    Ok(()) => {
                        msgs += batch as u64;
                        reqs += 1;
                    }
                    Err(e) => add(&errors, e, 1),
                }
                hist.saturating_record(t.elapsed().as_micros() as u64);
            }
            (msgs, reqs, hist)
        }));
    }
    let (mut msgs, mut reqs, mut hist) = (0u64, 0u64, new_hist());
    for l in loops {
        if let Ok((m, q, h)) = l.await {
            msgs += m;
            reqs += q;
            let _ = hist.add(&h);
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = snapshot(c);
    let usage = Usage::between(&before, &after);
    let mut r = record(
        "publish",
        c,
        "publish",
        json!({"batch": batch, "concurrency": concurrency, "duration_s": duration, "groups": groups, "payload": payload}),
    );
    output::merge(
        &mut r,
        json!({
            "rate": (msgs as f64 / elapsed).round(),
            "rate_unit": "messages/s",
            "published": {
                "messages": msgs,
                "requests": reqs,
                "errors": take_map(&errors),
                "rate_msgs_s": (msgs as f64 / elapsed).round(),
            },
            "latency_ms": output::latency_ms(&hist),
        }),
    );
    output::merge(
        &mut r,
        output::usage(
            &usage,
            msgs,
            "message",
            &c.server_pid,
            &c.aux_pid,
            0.0,
            loadavg,
        ),
    );
    Ok(r)
}
