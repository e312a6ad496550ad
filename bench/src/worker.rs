//! Subscriber workers: a set of sockets that connect, authenticate, join
//! their groups, then count, check and time every message they receive.
//!
//! A worker runs in this process or, when the sockets would pass the
//! per-process open-file limit, in a child process of this binary
//! (`wsgate-bench worker`), which reads its spec and commands as JSON lines
//! on stdin and writes its events as JSON lines on stdout. The parent drives
//! both kinds the same way through a [`WorkerHandle`].

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::net::{self, Endpoint, Failure, Ws};

/// Latency histograms are in microseconds, up to 2 minutes.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid histogram bounds")
}

/// Which groups each socket joins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum GroupPlan {
    /// Only the auto-joined groups (idle sockets).
    None,
    /// Every socket in the same group.
    One(String),
    /// Socket `s` joins `per_socket` distinct groups out of `groups`
    /// (`{prefix}0000`..), chosen by a fixed hash of `s` and `seed`.
    Spread {
        prefix: String,
        groups: usize,
        per_socket: usize,
        seed: u64,
    },
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl GroupPlan {
    pub fn group_name(prefix: &str, i: usize) -> String {
        format!("{prefix}{i:04}")
    }

    /// Every group of the plan (what a publisher spreads over).
    pub fn all_groups(&self) -> Vec<String> {
        match self {
            GroupPlan::None => Vec::new(),
            GroupPlan::One(g) => vec![g.clone()],
            GroupPlan::Spread { prefix, groups, .. } => {
                (0..*groups).map(|i| Self::group_name(prefix, i)).collect()
            }
        }
    }

    pub fn groups_of(&self, socket: usize) -> Vec<String> {
        match self {
            GroupPlan::None => Vec::new(),
            GroupPlan::One(g) => vec![g.clone()],
            GroupPlan::Spread {
                prefix,
                groups,
                per_socket,
                seed,
            } => {
                let want = (*per_socket).min(*groups);
                let mut picked: Vec<usize> = Vec::with_capacity(want);
                let mut k = 0u64;
                while picked.len() < want {
                    let h = splitmix64(seed ^ ((socket as u64) << 20) ^ k);
                    let g = (h % *groups as u64) as usize;
                    if !picked.contains(&g) {
                        picked.push(g);
                    }
                    k += 1;
                }
                picked
                    .into_iter()
                    .map(|g| Self::group_name(prefix, g))
                    .collect()
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub worker: usize,
    pub urls: Vec<String>,
    /// Socket `s` uses `tokens[s % len]`. Passed on stdin, never argv.
    pub tokens: Vec<String>,
    pub first_socket: usize,
    pub sockets: usize,
    pub source_addrs: usize,
    pub plan: GroupPlan,
    pub connect_concurrency: usize,
    /// Sequential publishers ("lanes"): order is checked per group and lane.
    pub lanes: usize,
    /// Count and time message frames (off for idle sockets).
    pub track: bool,
    /// Runs in a child process (reports its own CPU time).
    pub child: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReadyInfo {
    pub ok: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Members per group (plan groups only) among the sockets that are ready.
    pub members: HashMap<String, u64>,
    pub setup_s: f64,
}

impl ReadyInfo {
    pub fn merge(&mut self, other: ReadyInfo) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for (k, v) in other.members {
            *self.members.entry(k).or_default() += v;
        }
        self.setup_s = self.setup_s.max(other.setup_s);
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub received: u64,
    pub unique: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub expected: u64,
    /// Sockets the server closed (or that dropped) after setup, by close code.
    pub closed: BTreeMap<u16, u64>,
    pub last_rx_us: u64,
    /// Latency histogram as (value in us, count) pairs.
    pub latency: Vec<(u64, u64)>,
    /// CPU seconds of the child process after it was ready (0 in-process).
    pub cpu_s: f64,
    /// CPU seconds of the child process until it was ready (0 in-process).
    pub cpu_at_ready_s: f64,
}

impl WorkerReport {
    pub fn merge(&mut self, other: &WorkerReport, hist: &mut Histogram<u64>) {
        self.received += other.received;
        self.unique += other.unique;
        self.duplicates += other.duplicates;
        self.reordered += other.reordered;
        self.expected += other.expected;
        for (k, v) in &other.closed {
            *self.closed.entry(*k).or_default() += v;
        }
        self.last_rx_us = self.last_rx_us.max(other.last_rx_us);
        self.cpu_s += other.cpu_s;
        self.cpu_at_ready_s += other.cpu_at_ready_s;
        for (v, n) in &other.latency {
            let _ = hist.record_n(*v, *n);
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Event {
    Ready(ReadyInfo),
    /// Message frames received so far (child processes only; in-process
    /// workers add to the shared counter directly).
    Progress(u64),
    Report(WorkerReport),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    /// Publishing is over: `counts` is how many messages each group got.
    /// Wait up to `drain_ms` for the rest, then report.
    Finish {
        counts: HashMap<String, u64>,
        drain_ms: u64,
    },
    /// Report now (idle sockets).
    Close,
}

enum Fin {
    Drain {
        counts: HashMap<String, u64>,
        until: tokio::time::Instant,
    },
    Close,
}

#[derive(Default)]
struct SocketStats {
    received: u64,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    expected: u64,
    closed: Option<u16>,
    last_rx_us: u64,
}

struct Shared {
    progress: Arc<AtomicU64>,
    hists: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    fn flush(&self, shard: usize, samples: &mut Vec<u64>) {
        if samples.is_empty() {
            return;
        }
        let mut h = self.hists[shard % self.hists.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for v in samples.drain(..) {
            h.saturating_record(v.max(1));
        }
    }
}

/// Sets bit `i`; returns whether it was already set.
fn test_and_set(bits: &mut Vec<u64>, i: u64) -> bool {
    let (w, b) = ((i / 64) as usize, i % 64);
    if w >= bits.len() {
        bits.resize(w + 1, 0);
    }
    let was = bits[w] & (1 << b) != 0;
    bits[w] |= 1 << b;
    was
}

async fn setup(
    ep: &Endpoint,
    src: Option<std::net::IpAddr>,
    token: &str,
    groups: &[String],
) -> Result<Ws, Failure> {
    let mut ws = net::open(ep, src).await?;
    net::authenticate(&mut ws, token).await?;
    if !groups.is_empty() {
        net::subscribe(&mut ws, groups).await?;
    }
    Ok(ws)
}

async fn read_loop(
    mut ws: Ws,
    groups: Vec<String>,
    track: bool,
    lanes: usize,
    shared: Arc<Shared>,
    shard: usize,
    mut fin_rx: oneshot::Receiver<Arc<Fin>>,
) -> (SocketStats, Ws) {
    let mut st = SocketStats::default();
    let mut seen: Vec<u64> = Vec::new();
    // Highest sequence number + 1 seen per group and lane (for reordering),
    // allocated at the first message.
    let lanes = lanes.max(1);
    let mut top: Vec<u32> = Vec::new();
    let mut samples: Vec<u64> = Vec::with_capacity(64);
    let mut alive = true;
    let mut fin_open = true;
    let mut expected: Option<u64> = None;
    let mut deadline: Option<Pin<Box<Sleep>>> = None;
    loop {
        if let Some(e) = expected
            && (st.unique >= e || !alive)
        {
            break;
        }
        tokio::select! {
            biased;
            fin = &mut fin_rx, if fin_open => {
                fin_open = false;
                match fin.as_deref() {
                    Ok(Fin::Drain { counts, until }) => {
                        expected = Some(groups.iter().map(|g| counts.get(g).copied().unwrap_or(0)).sum());
                        deadline = Some(Box::pin(sleep_until(*until)));
                    }
                    _ => break,
                }
            }
            _ = async { deadline.as_mut().expect("guarded").await }, if deadline.is_some() => break,
            msg = ws.next(), if alive => match msg {
                Some(Ok(Message::Text(text))) => {
                    if !track {
                        continue;
                    }
                    let Some(tick) = net::parse_tick(text.as_str()) else { continue };
                    let Some(gi) = groups.iter().position(|g| g == tick.group) else { continue };
                    let now = net::unix_micros();
                    st.received += 1;
                    st.last_rx_us = now;
                    shared.progress.fetch_add(1, Ordering::Relaxed);
                    samples.push(now.saturating_sub(tick.ts_us));
                    if samples.len() >= 64 {
                        shared.flush(shard, &mut samples);
                    }
                    if test_and_set(&mut seen, tick.seq) {
                        st.duplicates += 1;
                    } else {
                        st.unique += 1;
                        if top.is_empty() {
                            top = vec![0; groups.len() * lanes];
                        }
                        let slot = &mut top[gi * lanes + (tick.lane as usize % lanes)];
                        let next = (tick.seq + 1) as u32;
                        if next <= *slot {
                            st.reordered += 1;
                        }
                        *slot = (*slot).max(next);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    st.closed = Some(frame.map(|f| f.code.into()).unwrap_or(1005));
                    alive = false;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    st.closed.get_or_insert(1006);
                    alive = false;
                }
            },
        }
    }
    shared.flush(shard, &mut samples);
    st.expected = expected.unwrap_or(0);
    (st, ws)
}

/// Runs one worker to the end: setup, `Ready`, receive, `Report`.
pub async fn run(
    spec: WorkerSpec,
    progress: Arc<AtomicU64>,
    events: mpsc::UnboundedSender<Event>,
    mut cmds: mpsc::UnboundedReceiver<Command>,
) {
    let started = Instant::now();
    let endpoints: Vec<Endpoint> = match spec.urls.iter().map(|u| Endpoint::parse(u)).collect() {
        Ok(e) => e,
        Err(e) => {
            let mut info = ReadyInfo {
                failed: spec.sockets as u64,
                ..Default::default()
            };
            info.failures.insert(e, spec.sockets as u64);
            let _ = events.send(Event::Ready(info));
            return;
        }
    };
    let sem = Arc::new(Semaphore::new(spec.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for k in 0..spec.sockets {
        let s = spec.first_socket + k;
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        let ep = endpoints[s % endpoints.len()].clone();
        let token = spec.tokens[s % spec.tokens.len()].clone();
        let groups = spec.plan.groups_of(s);
        let src = net::source_addr(s, spec.source_addrs);
        set.spawn(async move {
            let r = setup(&ep, src, &token, &groups).await;
            drop(permit);
            (s, groups, r)
        });
    }
    let mut info = ReadyInfo::default();
    let mut ready: Vec<(usize, Vec<String>, Ws)> = Vec::with_capacity(spec.sockets);
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((s, groups, Ok(ws))) => {
                info.ok += 1;
                for g in &groups {
                    *info.members.entry(g.clone()).or_default() += 1;
                }
                ready.push((s, groups, ws));
            }
            Ok((_, _, Err(f))) => {
                info.failed += 1;
                *info.failures.entry(f.to_string()).or_default() += 1;
            }
            Err(e) => {
                info.failed += 1;
                *info.failures.entry(format!("task: {e}")).or_default() += 1;
            }
        }
    }
    info.setup_s = started.elapsed().as_secs_f64();
    let cpu_at_ready = if spec.child {
        crate::sys::process_cpu_seconds("self").unwrap_or(0.0)
    } else {
        0.0
    };
    let _ = events.send(Event::Ready(info));

    let shards = 64;
    let shared = Arc::new(Shared {
        progress,
        hists: (0..shards).map(|_| Mutex::new(new_hist())).collect(),
    });
    let mut readers = JoinSet::new();
    let mut fin_txs = Vec::with_capacity(ready.len());
    for (s, groups, ws) in ready {
        let (tx, rx) = oneshot::channel();
        fin_txs.push(tx);
        readers.spawn(read_loop(
            ws,
            groups,
            spec.track,
            spec.lanes,
            shared.clone(),
            s,
            rx,
        ));
    }
    let fin = match cmds.recv().await {
        Some(Command::Finish { counts, drain_ms }) => Fin::Drain {
            counts,
            until: tokio::time::Instant::now() + Duration::from_millis(drain_ms),
        },
        Some(Command::Close) | None => Fin::Close,
    };
    let fin = Arc::new(fin);
    for tx in fin_txs {
        let _ = tx.send(fin.clone());
    }
    let mut report = WorkerReport::default();
    let mut sockets = Vec::new();
    while let Some(joined) = readers.join_next().await {
        let Ok((st, ws)) = joined else { continue };
        report.received += st.received;
        report.unique += st.unique;
        report.duplicates += st.duplicates;
        report.reordered += st.reordered;
        report.expected += st.expected;
        report.last_rx_us = report.last_rx_us.max(st.last_rx_us);
        if let Some(code) = st.closed {
            *report.closed.entry(code).or_default() += 1;
        }
        sockets.push(ws);
    }
    let mut hist = new_hist();
    for h in &shared.hists {
        let h = h.lock().unwrap_or_else(|e| e.into_inner());
        let _ = hist.add(&*h);
    }
    report.latency = hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    if spec.child {
        let total = crate::sys::process_cpu_seconds("self").unwrap_or(0.0);
        report.cpu_s = (total - cpu_at_ready).max(0.0);
        report.cpu_at_ready_s = cpu_at_ready;
    }
    let _ = events.send(Event::Report(report));
    drop(sockets);
}

/// A child worker process, killed if still running when dropped.
pub struct ChildProc(std::process::Child);

impl ChildProc {
    /// Waits up to `within` for the child to exit, then kills it.
    async fn reap(&mut self, within: Duration) {
        let end = Instant::now() + within;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The parent's end of a worker, in-process or a child process.
pub struct WorkerHandle {
    pub events: mpsc::UnboundedReceiver<Event>,
    pub cmds: mpsc::UnboundedSender<Command>,
    pub child: Option<ChildProc>,
}

pub fn spawn_local(spec: WorkerSpec, progress: Arc<AtomicU64>) -> WorkerHandle {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(spec, progress, ev_tx, cmd_rx));
    WorkerHandle {
        events: ev_rx,
        cmds: cmd_tx,
        child: None,
    }
}

/// Starts `wsgate-bench worker` and bridges its pipes to channels with two
/// plain threads (the child's stdio is line-oriented and small).
pub fn spawn_child(spec: WorkerSpec, progress: Arc<AtomicU64>) -> Result<WorkerHandle, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut child = std::process::Command::new(exe)
        .arg("worker")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn worker: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Command>();
    let first = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        if writeln!(stdin, "{first}")
            .and_then(|_| stdin.flush())
            .is_err()
        {
            return;
        }
        while let Some(cmd) = cmd_rx.blocking_recv() {
            let Ok(line) = serde_json::to_string(&cmd) else {
                continue;
            };
            if writeln!(stdin, "{line}")
                .and_then(|_| stdin.flush())
                .is_err()
            {
                return;
            }
        }
    });
    std::thread::spawn(move || {
        let mut last = 0u64;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Event>(&line) {
                Ok(Event::Progress(n)) => {
                    progress.fetch_add(n.saturating_sub(last), Ordering::Relaxed);
                    last = last.max(n);
                }
                Ok(ev) => {
                    let _ = ev_tx.send(ev);
                }
                Err(e) => eprintln!("wsgate-bench: bad line from worker: {e}"),
            }
        }
    });
    Ok(WorkerHandle {
        events: ev_rx,
        cmds: cmd_tx,
        child: Some(ChildProc(child)),
    })
}

/// `wsgate-bench worker`: the child side.
pub async fn child_main() -> i32 {
    let (line_tx, mut line_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let spec: WorkerSpec = match line_rx.recv().await {
        Some(line) => match serde_json::from_str(&line) {
            Ok(spec) => spec,
            Err(e) => {
                eprintln!("wsgate-bench worker: bad spec: {e}");
                return 2;
            }
        },
        None => {
            eprintln!("wsgate-bench worker: no spec on stdin");
            return 2;
        }
    };
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(line) = line_rx.recv().await {
            if let Ok(cmd) = serde_json::from_str::<Command>(&line) {
                let _ = cmd_tx.send(cmd);
            }
        }
        // The parent went away: stop.
        let _ = cmd_tx.send(Command::Close);
    });
    let progress = Arc::new(AtomicU64::new(0));
    let worker = tokio::spawn(run(spec, progress.clone(), ev_tx, cmd_rx));
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut last = 0u64;
    loop {
        tokio::select! {
            ev = ev_rx.recv() => {
                let Some(ev) = ev else { break };
                if matches!(ev, Event::Report(_)) {
                    let n = progress.load(Ordering::Relaxed);
                    let _ = write_line(&Event::Progress(n));
                }
                if write_line(&ev).is_err() {
                    return 1;
                }
            }
            _ = tick.tick() => {
                let n = progress.load(Ordering::Relaxed);
                if n != last {
                    last = n;
                    if write_line(&Event::Progress(n)).is_err() {
                        return 1;
                    }
                }
            }
        }
    }
    let _ = worker.await;
    0
}

/// One event as a JSON line on stdout (a short blocking write to the pipe,
/// which the parent reads continuously).
fn write_line(ev: &Event) -> std::io::Result<()> {
    let line = serde_json::to_string(ev).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// Starts workers for `total` sockets: in this process when they fit in
/// `per_process`, else split evenly over child processes.
pub fn start(
    base: &WorkerSpec,
    total: usize,
    per_process: usize,
    progress: &Arc<AtomicU64>,
) -> Result<Vec<WorkerHandle>, String> {
    let per_process = per_process.max(1);
    if total <= per_process {
        let spec = WorkerSpec {
            first_socket: 0,
            sockets: total,
            child: false,
            ..base.clone()
        };
        return Ok(vec![spawn_local(spec, progress.clone())]);
    }
    let n = total.div_ceil(per_process);
    let mut handles = Vec::with_capacity(n);
    let mut first = 0;
    for w in 0..n {
        let count = total / n + usize::from(w < total % n);
        let spec = WorkerSpec {
            worker: w,
            first_socket: first,
            sockets: count,
            child: true,
            ..base.clone()
        };
        handles.push(spawn_child(spec, progress.clone())?);
        first += count;
    }
    Ok(handles)
}

/// Waits for every worker's `Ready`.
pub async fn await_ready(
    handles: &mut [WorkerHandle],
    within: Duration,
) -> Result<ReadyInfo, String> {
    let mut all = ReadyInfo::default();
    for h in handles.iter_mut() {
        match tokio::time::timeout(within, h.events.recv()).await {
            Ok(Some(Event::Ready(info))) => all.merge(info),
            Ok(Some(other)) => return Err(format!("worker: expected Ready, got {other:?}")),
            Ok(None) => return Err("a worker ended before it was ready".into()),
            Err(_) => return Err(format!("workers not ready within {within:?}")),
        }
    }
    Ok(all)
}

/// Sends `cmd` to every worker and collects their reports.
pub async fn finish(
    handles: &mut [WorkerHandle],
    cmd: Command,
    within: Duration,
) -> Result<(WorkerReport, Histogram<u64>), String> {
    for h in handles.iter() {
        let _ = h.cmds.send(cmd.clone());
    }
    let mut total = WorkerReport::default();
    let mut hist = new_hist();
    for h in handles.iter_mut() {
        match tokio::time::timeout(within, h.events.recv()).await {
            Ok(Some(Event::Report(r))) => total.merge(&r, &mut hist),
            Ok(Some(other)) => return Err(format!("worker: expected Report, got {other:?}")),
            Ok(None) => return Err("a worker ended without a report".into()),
            Err(_) => return Err(format!("no worker report within {within:?}")),
        }
    }
    for h in handles.iter_mut() {
        if let Some(child) = h.child.as_mut() {
            child.reap(Duration::from_secs(10)).await;
        }
    }
    Ok((total, hist))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_plan_is_distinct_and_stable() {
        let plan = GroupPlan::Spread {
            prefix: "g.".into(),
            groups: 1000,
            per_socket: 10,
            seed: 7,
        };
        let a = plan.groups_of(42);
        assert_eq!(a.len(), 10);
        let mut d = a.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), 10);
        assert_eq!(a, plan.groups_of(42));
        assert_ne!(a, plan.groups_of(43));
    }

    #[test]
    fn bitset() {
        let mut b = Vec::new();
        assert!(!test_and_set(&mut b, 130));
        assert!(test_and_set(&mut b, 130));
        assert!(!test_and_set(&mut b, 0));
    }
}
