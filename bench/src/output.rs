//! Results: one JSON object per scenario run, printed as a JSON line on
//! stdout (and appended to `--json-out`), and as a readable table on stderr.

use std::io::Write;
use std::path::Path;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::sys::Usage;

/// Percentiles of a latency histogram (recorded in microseconds), in ms.
pub fn latency_ms(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0});
    }
    let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": h.len(),
        "p50": ms(h.value_at_quantile(0.50)),
        "p90": ms(h.value_at_quantile(0.90)),
        "p99": ms(h.value_at_quantile(0.99)),
        "p999": ms(h.value_at_quantile(0.999)),
        "max": ms(h.max()),
        "mean": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
    })
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// Server, generator and machine figures for `ops` operations of kind `op`
/// (e.g. "delivery"). `child_cpu` is CPU used by child worker processes.
pub fn usage(
    u: &Usage,
    ops: u64,
    op: &str,
    server_pids: &[u32],
    aux_pids: &[u32],
    child_cpu: f64,
    loadavg_before: f64,
) -> Value {
    let per_op = |cpu: f64| {
        if ops == 0 {
            Value::Null
        } else {
            json!(round(cpu * 1e6 / ops as f64, 3))
        }
    };
    let wall = u.wall_s.max(1e-9);
    let gen_cpu = u.generator_cpu_s + child_cpu;
    let mut v = json!({
        "server": {
            "pids": server_pids,
            "cpu_s": round(u.server_cpu_s, 3),
            "cores": round(u.server_cpu_s / wall, 3),
            "cpu_s_each": u.server_cpu_each_s.iter().map(|c| round(*c, 3)).collect::<Vec<_>>(),
            format!("cpu_us_per_{op}"): per_op(u.server_cpu_s),
            format!("user_us_per_{op}"): per_op(u.server_user_s),
            "rss_before_kib": u.server_rss_before_kib,
            "rss_after_kib": u.server_rss_after_kib,
        },
        "generator": {
            "cpu_s": round(gen_cpu, 3),
            "cores": round(gen_cpu / wall, 3),
        },
        "machine": {
            "wall_s": round(u.wall_s, 3),
            "busy_cores": round(u.machine_busy_cores, 3),
            // What neither the server, the generator nor the aux processes used:
            // other builds and tests sharing the machine.
            "other_cores": round(
                (u.machine_busy_cores - (u.server_cpu_s + gen_cpu + u.aux_cpu_s) / wall).max(0.0),
                3
            ),
            "loadavg_before": loadavg_before,
            "ncpu": crate::sys::ncpu(),
        },
    });
    if !aux_pids.is_empty() {
        v["aux"] = json!({
            "pids": aux_pids,
            "cpu_s": round(u.aux_cpu_s, 3),
            "cores": round(u.aux_cpu_s / wall, 3),
            "cpu_s_each": u.aux_cpu_each_s.iter().map(|c| round(*c, 3)).collect::<Vec<_>>(),
            format!("cpu_us_per_{op}"): per_op(u.aux_cpu_s),
        });
    }
    v
}

/// Merges `extra` (an object) into `into` (an object).
pub fn merge(into: &mut Value, extra: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), extra) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// Prints the JSON line and the table; appends to `json_out`.
pub fn emit(record: &Value, json_out: Option<&Path>) -> std::io::Result<()> {
    let line = serde_json::to_string(record)?;
    println!("{line}");
    if let Some(path) = json_out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        writeln!(f, "{line}")?;
    }
    eprint!("{}", table(record));
    Ok(())
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

pub fn fmt_int(v: f64) -> String {
    let n = v.round() as i64;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// A readable two-column table of the main figures of one run.
pub fn table(r: &Value) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let label = r["label"].as_str().unwrap_or("?");
    let scenario = r["scenario"].as_str().unwrap_or("?");
    if let (Some(rate), Some(unit)) = (num(&r["rate"]), r["rate_unit"].as_str()) {
        rows.push((unit.to_string(), fmt_int(rate)));
    }
    let lat = &r["latency_ms"];
    if lat["count"].as_u64().unwrap_or(0) > 0 {
        rows.push((
            "latency ms".into(),
            format!(
                "p50 {}  p90 {}  p99 {}  max {}",
                lat["p50"], lat["p90"], lat["p99"], lat["max"]
            ),
        ));
    }
    let d = &r["deliveries"];
    if d.is_object() {
        rows.push((
            "deliveries".into(),
            format!(
                "{} of {} expected; missing {}, duplicates {}, reordered {}",
                fmt_int(num(&d["unique"]).unwrap_or(0.0)),
                fmt_int(num(&d["expected"]).unwrap_or(0.0)),
                d["missing"],
                d["duplicates"],
                d["reordered"]
            ),
        ));
    }
    let p = &r["published"];
    if p.is_object() {
        rows.push((
            "published".into(),
            format!(
                "{} messages in {} requests ({} msg/s), errors {}",
                fmt_int(num(&p["messages"]).unwrap_or(0.0)),
                fmt_int(num(&p["requests"]).unwrap_or(0.0)),
                fmt_int(num(&p["rate_msgs_s"]).unwrap_or(0.0)),
                p["errors"]
            ),
        ));
    }
    let s = &r["sockets"];
    if s.is_object() {
        rows.push((
            "sockets".into(),
            format!(
                "{} ok, {} failed {} (setup {} s)",
                s["ok"], s["failed"], s["failures"], s["setup_s"]
            ),
        ));
    }
    for key in ["closed", "failures"] {
        if let Some(o) = r[key].as_object()
            && !o.is_empty()
        {
            rows.push((key.into(), r[key].to_string()));
        }
    }
    if let Some(v) = num(&r["rss_per_socket_kib"]) {
        rows.push(("server RSS per socket".into(), format!("{v:.2} KiB")));
    }
    let srv = &r["server"];
    if let Some(o) = srv.as_object() {
        let per = o
            .iter()
            .find(|(k, _)| k.starts_with("cpu_us_per_"))
            .map(|(k, v)| format!("{v} us per {}", &k["cpu_us_per_".len()..]))
            .unwrap_or_default();
        rows.push((
            "server CPU".into(),
            format!(
                "{} s ({} cores); {per}; RSS {} -> {} KiB",
                srv["cpu_s"], srv["cores"], srv["rss_before_kib"], srv["rss_after_kib"]
            ),
        ));
    }
    if r["aux"].is_object() {
        rows.push(("aux CPU".into(), r["aux"].to_string()));
    }
    rows.push((
        "generator CPU".into(),
        format!(
            "{} s ({} cores)",
            r["generator"]["cpu_s"], r["generator"]["cores"]
        ),
    ));
    rows.push((
        "machine".into(),
        format!(
            "busy {} of {} cores, other processes {} cores, load avg before {}",
            r["machine"]["busy_cores"],
            r["machine"]["ncpu"],
            r["machine"]["other_cores"],
            r["machine"]["loadavg_before"]
        ),
    ));
    if let Some(e) = r["error"].as_str() {
        rows.push(("ERROR".into(), e.to_string()));
    }
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = format!("== {label} ({scenario}) ==\n");
    for (k, v) in rows {
        out.push_str(&format!("  {k:<w$}  {v}\n"));
    }
    out
}
