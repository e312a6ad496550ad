//! What the generator reads from the operating system: the open-file limit,
//! and CPU time and memory of processes from `/proc`.

use std::time::Instant;

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> libc::rlim_t {
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
        lim.rlim_cur
    }
}

/// Clock ticks per second, the unit of `utime` and `stime` in `/proc/<pid>/stat`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    process_cpu_split(pid).map(|(user, system)| user + system)
}

/// A process's CPU seconds in user space and in the kernel. The kernel's
/// share (socket writes, wake-ups) swings between runs on a VM far more
/// than the user-space part, which is what a change to our own code moves.
pub fn process_cpu_split(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')': field 3 (state) is index 0, so utime (14) is 11, stime (15) is 12.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / clock_ticks(), stime / clock_ticks()))
}

/// Resident memory of a process in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn process_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Busy and total jiffies of the whole machine (first line of `/proc/stat`).
fn machine_jiffies() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is inside user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    Some((total - idle, total))
}

pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

pub fn ncpu() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A point-in-time reading of everything the report compares before and after.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub at: Instant,
    pub server_cpu: f64,
    /// The user-space part of `server_cpu`.
    pub server_user: f64,
    /// CPU seconds of each `--server-pid`, in order (0 for a process that is gone).
    pub server_cpu_each: Vec<f64>,
    pub server_rss_kib: u64,
    pub aux_cpu: f64,
    /// CPU seconds of each `--aux-pid`, in order.
    pub aux_cpu_each: Vec<f64>,
    pub self_cpu: f64,
    pub machine: Option<(u64, u64)>,
}

impl Snapshot {
    pub fn take(server: &[u32], aux: &[u32]) -> Snapshot {
        // One reading per process (user, system; zeros for one that is
        // gone); the sums and the user part are derived from it, so they
        // agree with each other.
        let read = |pids: &[u32]| -> Vec<(f64, f64)> {
            pids.iter()
                .map(|p| process_cpu_split(&p.to_string()).unwrap_or((0.0, 0.0)))
                .collect()
        };
        let (server_split, aux_split) = (read(server), read(aux));
        let totals = |split: &[(f64, f64)]| -> Vec<f64> {
            split.iter().map(|(user, system)| user + system).collect()
        };
        let (server_cpu_each, aux_cpu_each) = (totals(&server_split), totals(&aux_split));
        Snapshot {
            at: Instant::now(),
            server_cpu: server_cpu_each.iter().sum(),
            server_user: server_split.iter().map(|(user, _)| user).sum(),
            server_cpu_each,
            aux_cpu: aux_cpu_each.iter().sum(),
            aux_cpu_each,
            server_rss_kib: server
                .iter()
                .filter_map(|p| process_rss_kib(&p.to_string()))
                .sum(),
            self_cpu: process_cpu_seconds("self").unwrap_or(0.0),
            machine: machine_jiffies(),
        }
    }
}

/// What happened between two snapshots.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// Server CPU seconds (sum over the given PIDs).
    pub server_cpu_s: f64,
    /// The user-space part of `server_cpu_s`.
    pub server_user_s: f64,
    pub server_rss_before_kib: u64,
    pub server_rss_after_kib: u64,
    /// Server CPU seconds of each `--server-pid`, in order.
    pub server_cpu_each_s: Vec<f64>,
    /// CPU seconds of the `--aux-pid` processes (e.g. Redis).
    pub aux_cpu_s: f64,
    /// CPU seconds of each `--aux-pid`, in order.
    pub aux_cpu_each_s: Vec<f64>,
    /// This process's CPU seconds (children add theirs separately).
    pub generator_cpu_s: f64,
    /// Whole-machine CPU busy, in cores (2.0 = both cores of a 2-core machine).
    pub machine_busy_cores: f64,
}

impl Usage {
    pub fn between(a: &Snapshot, b: &Snapshot) -> Usage {
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let busy_cores = match (a.machine, b.machine) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                (b1 - b0) as f64 / (t1 - t0) as f64 * ncpu() as f64
            }
            _ => 0.0,
        };
        Usage {
            wall_s: wall,
            server_cpu_s: (b.server_cpu - a.server_cpu).max(0.0),
            server_user_s: (b.server_user - a.server_user).max(0.0),
            server_rss_before_kib: a.server_rss_kib,
            server_rss_after_kib: b.server_rss_kib,
            server_cpu_each_s: deltas(&a.server_cpu_each, &b.server_cpu_each),
            aux_cpu_s: (b.aux_cpu - a.aux_cpu).max(0.0),
            aux_cpu_each_s: deltas(&a.aux_cpu_each, &b.aux_cpu_each),
            generator_cpu_s: (b.self_cpu - a.self_cpu).max(0.0),
            machine_busy_cores: busy_cores,
        }
    }
}

fn deltas(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| (y - x).max(0.0)).collect()
}

/// Waits (at most `within`) until the server processes use less than 5 % of
/// a core, so one run's teardown (closing thousands of sockets) does not
/// count against the next. Returns how long it waited.
pub async fn wait_quiet(server: &[u32], within: std::time::Duration) -> f64 {
    let started = Instant::now();
    if server.is_empty() {
        return 0.0;
    }
    let cpu = || -> f64 {
        server
            .iter()
            .filter_map(|p| process_cpu_seconds(&p.to_string()))
            .sum()
    };
    let window = std::time::Duration::from_millis(300);
    let mut last = cpu();
    while started.elapsed() < within {
        tokio::time::sleep(window).await;
        let now = cpu();
        if (now - last) / window.as_secs_f64() < 0.05 {
            break;
        }
        last = now;
    }
    started.elapsed().as_secs_f64()
}
