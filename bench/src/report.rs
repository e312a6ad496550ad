//! `wsgate-bench report`: turns the JSON lines of a benchmark run into the
//! Markdown tables of BENCHMARKS.md: the targets of issue 6 with the
//! measured figures, the Django Channels comparison, and every run.
//!
//! Rows are found by run label; `scripts/bench.sh` uses these labels.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::Value;

use crate::output::fmt_int;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// JSON lines written by the scenarios (`--json-out`).
    #[arg(long)]
    results: PathBuf,
}

pub fn run(args: ReportArgs) -> ExitCode {
    let text = match std::fs::read_to_string(&args.results) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("wsgate-bench: {}: {e}", args.results.display());
            return ExitCode::FAILURE;
        }
    };
    let mut runs: Vec<Value> = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(v) => runs.push(v),
            Err(e) => eprintln!("wsgate-bench: skipping a bad line: {e}"),
        }
    }
    print!("{}", render(&runs));
    ExitCode::SUCCESS
}

struct Runs<'a>(BTreeMap<&'a str, &'a Value>);

impl<'a> Runs<'a> {
    fn get(&self, label: &str) -> Option<&'a Value> {
        self.0.get(label).copied()
    }
}

fn f(v: &Value) -> Option<f64> {
    v.as_f64()
}

fn rate(r: &Value) -> f64 {
    f(&r["rate"]).unwrap_or(0.0)
}

/// Deliveries/s offered by a fixed-rate run (published x members / time).
fn offered(r: &Value) -> f64 {
    f(&r["deliveries"]["offered_per_s"]).unwrap_or(0.0)
}

fn p99(r: &Value) -> Option<f64> {
    f(&r["latency_ms"]["p99"])
}

fn missing(r: &Value) -> u64 {
    r["deliveries"]["missing"].as_u64().unwrap_or(0)
}

fn closed(r: &Value) -> u64 {
    r["closed"]
        .as_object()
        .map(|o| o.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0)
}

fn cpu_per_op(r: &Value) -> Option<f64> {
    r["server"].as_object().and_then(|o| {
        o.iter()
            .find(|(k, _)| k.starts_with("cpu_us_per_"))
            .and_then(|(_, v)| v.as_f64())
    })
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} ms"),
        Some(v) if v >= 10.0 => format!("{v:.1} ms"),
        Some(v) => format!("{v:.2} ms"),
        None => "-".into(),
    }
}

fn us(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => format!("{v:.0} us"),
        Some(v) => format!("{v:.2} us"),
        None => "-".into(),
    }
}

/// A short summary of a delivery run.
fn delivery(r: &Value) -> String {
    let mut s = format!(
        "{}/s, p99 {}, missing {}",
        fmt_int(rate(r)),
        ms(p99(r)),
        fmt_int(missing(r) as f64)
    );
    if closed(r) > 0 {
        s.push_str(&format!(", closed {}", r["closed"]));
    }
    let want = f(&r["params"]["rate"]).unwrap_or(0.0);
    let got = f(&r["published"]["rate_msgs_s"]).unwrap_or(0.0);
    if want > 0.0 && got < 0.99 * want {
        s.push_str(&format!(
            ", publisher behind schedule ({} of {} msg/s)",
            fmt_int(got),
            fmt_int(want)
        ));
    }
    let failed = r["sockets"]["failed"].as_u64().unwrap_or(0);
    if failed > 0 {
        s.push_str(&format!(", {failed} sockets failed"));
    }
    s.push_str(&format!("; server {} per delivery", us(cpu_per_op(r))));
    s
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

struct Row {
    scenario: &'static str,
    target: &'static str,
    floor: &'static str,
    anchors: &'static str,
    measured: String,
    met: Option<bool>,
}

fn rows(runs: &Runs) -> Vec<Row> {
    let mut out = Vec::new();

    // Fan-out, 1,000 subscribers, one node.
    let a500 = runs.get("fanout-1k-500");
    let amax = runs.get("fanout-1k-max");
    let clean = |r: &Value| {
        p99(r).is_some_and(|p| p <= 50.0)
            && missing(r) == 0
            && closed(r) == 0
            && cpu_per_op(r).is_some_and(|c| c <= 2.0)
    };
    let mut m = Vec::new();
    if let Some(r) = a500 {
        m.push(format!(
            "at 500 msg/s ({}/s offered): {}",
            fmt_int(offered(r)),
            delivery(r)
        ));
    }
    if let Some(r) = amax {
        m.push(format!("as fast as possible: {}", delivery(r)));
    }
    let met = match (a500, amax) {
        (None, None) => None,
        // A fixed-rate run is met when it kept the offered 500,000/s (within
        // 1 %) with nothing missing; a closed-loop run by what it measured.
        _ => Some(
            a500.is_some_and(|r| offered(r) >= 495_000.0 && clean(r))
                || amax.is_some_and(|r| rate(r) >= 500_000.0 && clean(r)),
        ),
    };
    out.push(Row {
        scenario: "fan-out, 1,000 subscribers of one group, one node",
        target: ">= 500,000 deliveries/s with p99 <= 50 ms, none missing; server CPU <= 2 us per delivery at that load",
        floor: "~700,000/s at p99 32-48 ms; 1.3 us",
        anchors: "Django Channels here: 3,000-4,000/s; Centrifugo ~80 CPU-us per delivery",
        measured: m.join("<br>"),
        met,
    });

    // Batch publish.
    let b = runs.get("fanout-1k-batch10-max");
    out.push(Row {
        scenario: "same, batch publish (10 messages a request)",
        target: ">= 800,000 deliveries/s",
        floor: "~1,000,000/s",
        anchors: "",
        measured: b.map(delivery).unwrap_or_default(),
        met: b.map(|r| rate(r) >= 800_000.0 && missing(r) == 0),
    });

    // 10,000 subscribers.
    let c5 = runs.get("fanout-10k-5");
    let cmax = runs.get("fanout-10k-max");
    let mut m = Vec::new();
    if let Some(r) = c5 {
        m.push(format!("at 5 msg/s: {}", delivery(r)));
    }
    if let Some(r) = cmax {
        m.push(format!("as fast as possible: {}", delivery(r)));
    }
    out.push(Row {
        scenario: "fan-out, 10,000 subscribers",
        target: "p99 <= 110 ms at 5 messages/s; >= 700,000 deliveries/s at any latency",
        floor: "p99 87 ms even at 1 msg/s; 0.8-0.93 M/s",
        anchors: "Django Channels, 5,000 subscribers: p99 1.4 s at 1,000 deliveries/s",
        measured: m.join("<br>"),
        met: match (c5, cmax) {
            (Some(a), Some(b)) => {
                Some(p99(a).is_some_and(|p| p <= 110.0) && missing(a) == 0 && rate(b) >= 700_000.0)
            }
            (Some(_), None) | (None, Some(_)) => Some(false),
            (None, None) => None,
        },
    });

    // Many groups.
    let g = runs.get("groups-10k");
    out.push(Row {
        scenario: "many groups: 10,000 sockets, each in 10 of 1,000 groups, 5,000 publishes/s",
        target: "no drops, p99 <= 20 ms",
        floor: "",
        anchors: "",
        measured: g
            .map(|r| {
                format!(
                    "{} publishes/s achieved; {}",
                    fmt_int(f(&r["published"]["rate_msgs_s"]).unwrap_or(0.0)),
                    delivery(r)
                )
            })
            .unwrap_or_default(),
        met: g.map(|r| {
            let want = f(&r["params"]["rate"]).unwrap_or(5000.0);
            missing(r) == 0
                && closed(r) == 0
                && p99(r).is_some_and(|p| p <= 20.0)
                && f(&r["published"]["rate_msgs_s"]).unwrap_or(0.0) >= 0.99 * want
        }),
    });

    // Two nodes over Redis.
    let pairs = [
        ("1,000 subscribers", "redis2-fanout-1k-max", "fanout-1k-max"),
        (
            "1,000 subscribers, batch 10",
            "redis2-fanout-1k-batch10-max",
            "fanout-1k-batch10-max",
        ),
        (
            "10,000 subscribers",
            "redis2-fanout-10k-max",
            "fanout-10k-max",
        ),
    ];
    let mut m = Vec::new();
    let mut all: Option<bool> = None;
    for (name, two, one) in pairs {
        if let Some(r2) = runs.get(two) {
            let ratio = runs.get(one).map(|r1| rate(r2) / rate(r1).max(1.0));
            m.push(format!(
                "{name}: {} ({} of one node)",
                delivery(r2),
                ratio
                    .map(|x| format!("{:.0} %", x * 100.0))
                    .unwrap_or("-".into())
            ));
            let ok = ratio.is_some_and(|x| x >= 0.8) && missing(r2) == 0;
            all = Some(all.unwrap_or(true) && ok);
        }
    }
    out.push(Row {
        scenario: "the fan-out rows across 2 nodes over Redis",
        target: "within 20 % of one node",
        floor: "",
        anchors: "Redis pub/sub ~650k msgs/s per instance",
        measured: m.join("<br>"),
        met: all,
    });

    // Idle sockets.
    let i = runs.get("idle-19k");
    out.push(Row {
        scenario: "idle authenticated socket",
        target: "<= 6 KiB RSS each at 19,000 sockets on one node",
        floor: "1.65 KiB own framing; 6.3 KiB tokio-tungstenite; 7.0 KiB fastwebsockets",
        anchors: "Centrifugo 27-35 KB, 11 KB tuned; Django Channels here 37-52 KiB",
        measured: i
            .map(|r| {
                format!(
                    "{:.2} KiB per socket at {} sockets ({} failed); opened at {}/s",
                    f(&r["rss_per_socket_kib"]).unwrap_or(0.0),
                    fmt_int(f(&r["sockets"]["ok"]).unwrap_or(0.0)),
                    r["sockets"]["failed"],
                    fmt_int(rate(r))
                )
            })
            .unwrap_or_default(),
        met: i.map(|r| {
            f(&r["rss_per_socket_kib"]).is_some_and(|k| k <= 6.0)
                && r["sockets"]["ok"].as_u64().unwrap_or(0) >= 19_000
        }),
    });

    let auth = |r: &Value| {
        let fails: u64 = r["failures"]
            .as_object()
            .map(|o| o.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0);
        let mut s = format!(
            "{}/s, p99 {} (connect to welcome), {} failed; server {} per authentication",
            fmt_int(rate(r)),
            ms(p99(r)),
            fmt_int(fails as f64),
            us(cpu_per_op(r))
        );
        if fails > 0 {
            s.push_str(&format!(" {}", r["failures"]));
        }
        s
    };
    let h = runs.get("connect-hit");
    out.push(Row {
        scenario: "authentication, token cached",
        target: ">= 10,000/s measured here; server CPU <= 60 us per authentication",
        floor: "13,000-15,000/s (the generator is the bottleneck); 35-41 us",
        anchors: "Django Channels here: 400-500/s, p99 ~0.5 s",
        measured: h.map(auth).unwrap_or_default(),
        met: h.map(|r| rate(r) >= 10_000.0 && cpu_per_op(r).is_some_and(|c| c <= 60.0)),
    });
    let mi = runs.get("connect-miss");
    out.push(Row {
        scenario: "authentication, every token a Postgres miss",
        target: ">= 5,000/s",
        floor: "",
        anchors: "",
        measured: mi.map(auth).unwrap_or_default(),
        met: mi.map(|r| rate(r) >= 5_000.0),
    });
    let p = runs.get("publish-batch");
    out.push(Row {
        scenario: "publish API, batch form",
        target: ">= 100,000 messages/s into Redis per node",
        floor: "",
        anchors: "Centrifugo 1.7 M publishes/s into Redis",
        measured: p
            .map(|r| {
                format!(
                    "{} messages/s ({} per request), request p99 {}, errors {}; server {} per message",
                    fmt_int(rate(r)),
                    r["params"]["batch"],
                    ms(p99(r)),
                    r["published"]["errors"],
                    us(cpu_per_op(r))
                )
            })
            .unwrap_or_default(),
        met: p.map(|r| rate(r) >= 100_000.0),
    });
    out
}

fn peer_table(runs: &Runs) -> String {
    let pairs = [
        (
            "fan-out, 1,000 subscribers",
            "fanout-1k-max",
            "peer-fanout-1k-max",
        ),
        (
            "fan-out, 1,000 subscribers, 2 nodes",
            "redis2-fanout-1k-max",
            "peer2-fanout-1k-max",
        ),
        (
            "authentication, one token",
            "connect-hit",
            "peer-connect-hit",
        ),
        (
            "authentication, distinct tokens",
            "connect-miss",
            "peer-connect-miss",
        ),
    ];
    let mut out = String::new();
    let mut any = false;
    out.push_str("| scenario | wsgate | Django Channels | throughput wsgate/peer | server CPU per op wsgate/peer |\n|---|---|---|---|---|\n");
    for (name, ours, theirs) in pairs {
        let (Some(a), Some(b)) = (runs.get(ours), runs.get(theirs)) else {
            continue;
        };
        any = true;
        let cell = |r: &Value| {
            format!(
                "{} {}, p99 {}, {} CPU per op",
                fmt_int(rate(r)),
                r["rate_unit"].as_str().unwrap_or(""),
                ms(p99(r)),
                us(cpu_per_op(r))
            )
        };
        let cpu_ratio = match (cpu_per_op(a), cpu_per_op(b)) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.3}", x / y),
            _ => "-".into(),
        };
        out.push_str(&format!(
            "| {name} | {} | {} | {:.1} | {cpu_ratio} |\n",
            cell(a),
            cell(b),
            rate(a) / rate(b).max(1e-9),
        ));
    }
    if any { out } else { String::new() }
}

/// Every `<prefix><name>` run beside the run `<name>` of the same command
/// line, with the ratios `<prefix>` run / that run:
/// - `floor-` (scripts/bench.sh's floor section: wsgate-floor, issue 15),
///   the ratios the issue states its targets in are wsgate/floor, so the
///   floor is the denominator: `ours_first` = true;
/// - `redis1-` (one node with `redis.url`, issue 15 target 4): Redis over
///   embedded, `ours_first` = false.
fn beside_table(runs: &[Value], map: &Runs, prefix: &str, ours_first: bool) -> String {
    let mut out = String::new();
    for r in runs {
        let Some(label) = r["label"].as_str() else {
            continue;
        };
        let Some(name) = label.strip_prefix(prefix) else {
            continue;
        };
        let cell = |r: &Value| {
            let mut s = format!(
                "{} {}, p99 {}, {} CPU per op",
                fmt_int(rate(r)),
                r["rate_unit"].as_str().unwrap_or(""),
                ms(p99(r)),
                us(cpu_per_op(r))
            );
            if let Some(reached) = f(&r["published"]["rate_msgs_s"]) {
                s.push_str(&format!(" ({} publishes/s reached)", fmt_int(reached)));
            }
            if r["deliveries"].is_object() && missing(r) > 0 {
                s.push_str(&format!(", missing {}", fmt_int(missing(r) as f64)));
            }
            if let Some(k) = f(&r["rss_per_socket_kib"]) {
                s.push_str(&format!(", {k:.2} KiB per socket"));
            }
            s
        };
        let other = map.get(name);
        let (left, right) = if ours_first {
            (other, Some(r))
        } else {
            (Some(r), other)
        };
        let (throughput, cpu) = match (left, right) {
            (Some(a), Some(b)) => (
                format!("{:.2}", rate(a) / rate(b).max(1e-9)),
                match (cpu_per_op(a), cpu_per_op(b)) {
                    (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
                    _ => "-".into(),
                },
            ),
            _ => ("-".into(), "-".into()),
        };
        let show = |side: Option<&Value>| side.map(cell).unwrap_or("not in this run".into());
        out.push_str(&format!(
            "| {name} | {} | {} | {throughput} | {cpu} |\n",
            show(left),
            show(right),
        ));
    }
    if out.is_empty() {
        return out;
    }
    let (a, b) = if ours_first {
        ("wsgate", "floor")
    } else {
        ("Redis", "embedded")
    };
    format!(
        "| run | {a} | {b} | throughput {a}/{b} | server CPU per op {a}/{b} |\n|---|---|---|---|---|\n{out}"
    )
}

fn all_runs(runs: &[Value]) -> String {
    let mut out = String::from(
        "| run | rate | latency p50 / p99 / max | missing / dup / closed | server CPU per op | server cores | generator cores | other load (cores) | sockets ok / failed |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in runs {
        let lat = &r["latency_ms"];
        let lat = if lat["count"].as_u64().unwrap_or(0) > 0 {
            format!(
                "{} / {} / {}",
                ms(f(&lat["p50"])),
                ms(f(&lat["p99"])),
                ms(f(&lat["max"]))
            )
        } else {
            "-".into()
        };
        let d = &r["deliveries"];
        let losses = if d.is_object() {
            format!(
                "{} / {} / {}",
                fmt_int(f(&d["missing"]).unwrap_or(0.0)),
                fmt_int(f(&d["duplicates"]).unwrap_or(0.0)),
                closed(r)
            )
        } else {
            "-".into()
        };
        let per = r["server"]
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.starts_with("cpu_us_per_")))
            .map(|(k, v)| {
                format!(
                    "{} / {}",
                    us(v.as_f64()),
                    &k["cpu_us_per_".len()..].replace('_', " ")
                )
            })
            .unwrap_or("-".into());
        let sockets = if r["sockets"].is_object() {
            format!("{} / {}", r["sockets"]["ok"], r["sockets"]["failed"])
        } else {
            "-".into()
        };
        out.push_str(&format!(
            "| {} | {} {} | {lat} | {losses} | {per} | {} | {} | {} | {sockets} |\n",
            r["label"].as_str().unwrap_or("?"),
            fmt_int(rate(r)),
            r["rate_unit"].as_str().unwrap_or(""),
            r["server"]["cores"],
            r["generator"]["cores"],
            r["machine"]["other_cores"],
        ));
    }
    out
}

pub fn render(runs: &[Value]) -> String {
    let map = Runs(
        runs.iter()
            .filter_map(|r| r["label"].as_str().map(|l| (l, r)))
            .collect(),
    );
    let mut out = String::new();
    out.push_str("## Results against the targets (issue 6)\n\n");
    out.push_str("| scenario | target | floor here | measured | met? | anchors |\n|---|---|---|---|---|---|\n");
    for row in rows(&map) {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            row.target,
            row.floor,
            if row.measured.is_empty() {
                "-".into()
            } else {
                row.measured
            },
            verdict(row.met),
            row.anchors
        ));
    }
    let peer = peer_table(&map);
    if !peer.is_empty() {
        out.push_str("\n## wsgate and the Django Channels peer, same run\n\n");
        out.push_str(&peer);
    }
    let floor = beside_table(runs, &map, "floor-", true);
    if !floor.is_empty() {
        out.push_str("\n## wsgate and the floor (issue 15), same command lines\n\n");
        out.push_str(&floor);
    }
    let redis1 = beside_table(runs, &map, "redis1-", false);
    if !redis1.is_empty() {
        out.push_str(
            "\n## One node on Redis and embedded (issue 15, target 4), same command lines\n\n",
        );
        out.push_str(&redis1);
    }
    let coalescing = coalescing_table(runs);
    if !coalescing.is_empty() {
        out.push_str("\n## Write coalescing (`server.write_delay`), many-groups shape\n\n");
        out.push_str(&coalescing);
    }
    out.push_str("\n## Every run\n\n");
    out.push_str(&all_runs(runs));
    out
}

/// The `groups` scenario swept over offered rates at several
/// `server.write_delay` windows (labels `groups-wd<ms>-r<rate>`), and per
/// window the highest offered rate that was reached with p99 <= 50 ms.
fn coalescing_table(runs: &[Value]) -> String {
    let mut rows: Vec<(u64, u64, &Value)> = runs
        .iter()
        .filter_map(|r| {
            let label = r["label"].as_str()?;
            let (wd, rate) = label.strip_prefix("groups-wd")?.split_once("ms-r")?;
            Some((wd.parse().ok()?, rate.parse().ok()?, r))
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    rows.sort_by_key(|(wd, rate, _)| (*wd, *rate));
    let mut out = String::from(
        "| write_delay | offered publishes/s | reached publishes/s | p99 | missing | CPU per delivery |\n|---|---|---|---|---|---|\n",
    );
    let mut knee: BTreeMap<u64, u64> = BTreeMap::new();
    for (wd, rate, r) in &rows {
        let reached = f(&r["published"]["rate_msgs_s"]).unwrap_or(0.0);
        knee.entry(*wd).or_insert(0);
        if reached >= 0.99 * *rate as f64 && p99(r).is_some_and(|p| p <= 50.0) && missing(r) == 0 {
            let best = knee.entry(*wd).or_insert(0);
            *best = (*best).max(*rate);
        }
        out.push_str(&format!(
            "| {wd} ms | {} | {} | {} | {} | {} |\n",
            fmt_int(*rate as f64),
            fmt_int(reached),
            ms(p99(r)),
            fmt_int(missing(r) as f64),
            us(cpu_per_op(r)),
        ));
    }
    out.push_str("\nHighest offered rate reached in full with p99 <= 50 ms and nothing missing: ");
    let summary: Vec<String> = knee
        .iter()
        .map(|(wd, rate)| match rate {
            0 => format!("{wd} ms: none of the rates tried"),
            r => format!("{wd} ms: {}/s", fmt_int(*r as f64)),
        })
        .collect();
    out.push_str(&summary.join("; "));
    out.push_str(".\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floor_rows_beside_wsgate_rows() {
        let runs = vec![
            json!({"label": "fanout-1k-max", "rate": 300000.0, "rate_unit": "deliveries/s",
                   "server": {"cpu_us_per_delivery": 3.0}, "deliveries": {"missing": 0}}),
            json!({"label": "floor-fanout-1k-max", "rate": 600000.0, "rate_unit": "deliveries/s",
                   "server": {"cpu_us_per_delivery": 1.0}, "deliveries": {"missing": 0}}),
            json!({"label": "floor-connect-hit", "rate": 9000.0, "rate_unit": "authentications/s"}),
        ];
        let out = render(&runs);
        assert!(out.contains("## wsgate and the floor"));
        assert!(out.contains("| fanout-1k-max | 300,000 deliveries/s"));
        assert!(out.contains("| 0.50 | 3.00 |"), "{out}");
        assert!(out.contains("| connect-hit | not in this run |"));
    }

    #[test]
    fn one_node_on_redis_beside_embedded() {
        let runs = vec![
            json!({"label": "groups-10k", "rate": 100000.0, "rate_unit": "deliveries/s",
                   "server": {"cpu_us_per_delivery": 10.0}, "deliveries": {"missing": 0},
                   "published": {"rate_msgs_s": 1000.0}}),
            json!({"label": "redis1-groups-10k", "rate": 110000.0, "rate_unit": "deliveries/s",
                   "server": {"cpu_us_per_delivery": 11.5}, "deliveries": {"missing": 0},
                   "published": {"rate_msgs_s": 1100.0}}),
        ];
        let out = render(&runs);
        assert!(out.contains("## One node on Redis and embedded"), "{out}");
        assert!(out.contains("| throughput Redis/embedded | server CPU per op Redis/embedded |"));
        assert!(
            out.contains("| groups-10k | 110,000 deliveries/s, p99 -, 11.50 us CPU per op (1,100 publishes/s reached)"),
            "{out}"
        );
        assert!(out.contains("| 1.10 | 1.15 |"), "{out}");
    }
}
