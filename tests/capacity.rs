//! `scripts/capacity`, the capacity calculator of docs/scaling.md, run on the
//! doc's worked examples with the committed inputs file: each plan must be
//! consistent with itself (the pods' capacity covers the load they are sized
//! for, the binding limit is the one asking for the most pods, Redis shards
//! carry the pub/sub traffic), more load never asks for fewer resources, and
//! a missing or garbled inputs file is a clear error. No figure is pinned
//! here (the inputs change with every benchmark run), but the pods row of
//! the doc's worked examples must be what the calculator gives from the
//! committed inputs: a benchmark run that moves them moves the doc too.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(args: &[String]) -> Output {
    Command::new("python3")
        .arg(root().join("scripts/capacity"))
        .args(args)
        .output()
        .expect("python3 runs scripts/capacity")
}

/// The plan for `workload` (the calculator's options), as JSON.
fn plan(workload: &[&str], extra: &[&str]) -> Value {
    let mut args: Vec<String> = workload.iter().map(|s| s.to_string()).collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--json".into());
    let out = run(&args);
    assert!(
        out.status.success(),
        "capacity {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

fn f(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for key in path.split('.') {
        cur = &cur[key];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v}"))
}

/// The doc's worked examples (docs/scaling.md), as the calculator's options.
const WORKLOADS_TEXT: [(&str, &str); 5] = [
    (
        "market feed, 1M",
        "--sockets 1000000 --groups 1000 --groups-per-socket 10 --publish-rate 2000",
    ),
    (
        "market feed, 10M",
        "--sockets 10000000 --groups 1000 --groups-per-socket 10 --publish-rate 2000",
    ),
    (
        "notifications, 1M",
        "--sockets 1000000 --groups 1000000 --groups-per-socket 1 --publish-rate 10000",
    ),
    (
        "notifications, 10M",
        "--sockets 10000000 --groups 10000000 --groups-per-socket 1 --publish-rate 10000",
    ),
    (
        "Centrifugo's run",
        "--sockets 1000000 --groups 100000 --groups-per-socket 1 --publish-rate 50000",
    ),
];

/// The worked examples with their options as the words of a command line.
fn workloads() -> Vec<(&'static str, [&'static str; 8])> {
    WORKLOADS_TEXT
        .iter()
        .map(|(name, w)| (*name, w.split(' ').collect::<Vec<_>>().try_into().unwrap()))
        .collect()
}

const EPS: f64 = 1e-6;

/// Every internal relation the plan must satisfy.
fn check(name: &str, p: &Value) {
    let w = &p["workload"];
    let (n, g, k, r) = (
        f(w, "sockets"),
        f(w, "groups"),
        f(w, "groups_per_socket"),
        f(w, "publish_rate"),
    );
    let subs = f(w, "subscribers_per_group");
    assert!(
        (subs - n * k / g).abs() <= EPS * subs.max(1.0),
        "{name}: members per group"
    );
    let deliveries = f(w, "deliveries_per_s");
    assert!(
        (deliveries - r * subs).abs() <= EPS * deliveries.max(1.0),
        "{name}: deliveries/s"
    );

    // Pods: the count is the largest of the per-limit counts, and the binding
    // limit is one that asks for exactly that many.
    let pods = &p["pods"];
    let count = f(pods, "count");
    let by_limit = pods["by_limit"].as_object().expect("by_limit");
    let max = by_limit
        .values()
        .map(|v| v.as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(count, max, "{name}: pods = the largest per-limit count");
    let binding = p["binding_limit"].as_str().expect("binding limit named");
    assert_eq!(
        by_limit.get(binding).and_then(Value::as_f64),
        Some(count),
        "{name}: the binding limit ({binding}) asks for the pods planned"
    );
    assert!(
        p["binding_limit_text"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );

    // CPU: the pods at their target utilisation cover the load, and the parts add up.
    let needed = f(pods, "cpu_cores_needed");
    let at_target = f(pods, "cpu_capacity_at_target");
    assert!(
        at_target + EPS >= needed,
        "{name}: CPU {at_target} < {needed}"
    );
    let target = f(pods, "cpu_utilisation_target");
    let pod_cpu = f(pods, "cpu_request_cores");
    assert!((at_target - count * pod_cpu * target).abs() <= EPS * at_target);
    let parts: f64 = pods["cpu_cores_by_part"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!(
        (parts - needed).abs() <= EPS * needed.max(1.0),
        "{name}: CPU parts"
    );
    assert!(
        f(pods, "cpu_cores_by_part.deliveries") + EPS
            >= deliveries * f(pods, "cpu_us_per_delivery") / 1e6 * (1.0 - EPS),
        "{name}: deliveries' CPU"
    );
    assert!(f(pods, "total_cpu_cores") >= needed, "{name}: total CPUs");

    // Sockets, memory, descriptors per pod.
    let per_pod = f(pods, "sockets_per_pod");
    assert!(per_pod * count >= n, "{name}: every socket has a pod");
    assert!(
        per_pod <= f(pods, "max_connections"),
        "{name}: max_connections"
    );
    assert!(
        f(pods, "descriptors_per_pod") <= f(pods, "fd_limit"),
        "{name}: descriptors"
    );
    assert!(
        f(pods, "descriptors_per_pod") > per_pod,
        "{name}: descriptor overhead"
    );
    let mem_load = f(pods, "memory_mib_per_pod_at_load");
    assert!(mem_load >= per_pod * f(pods, "memory_kib_per_socket") / 1024.0);
    let request = f(pods, "memory_request_mib");
    assert!(request >= mem_load, "{name}: memory request below the load");
    assert!(
        request <= f(pods, "memory_limit_mib"),
        "{name}: memory request above the pod's limit"
    );

    // Redis: each publish reaches at most every pod (and at most one per
    // member); the shards carry it at their target utilisation.
    let redis = &p["redis"];
    let nodes = f(redis, "nodes_per_group");
    assert!(
        nodes <= count.min(subs.max(1.0)) + EPS,
        "{name}: nodes per group"
    );
    assert!(nodes > 0.0);
    let msgs = f(redis, "pubsub_msgs_per_s");
    assert!(msgs >= r * nodes * (1.0 - EPS), "{name}: Redis egress");
    let shards = f(redis, "shards");
    assert!(shards >= 1.0 && shards >= f(redis, "shards_for_pubsub"));
    assert!(
        f(redis, "shards_for_pubsub") * f(redis, "per_shard_capacity_at_target") >= msgs,
        "{name}: shards carry the pub/sub traffic"
    );

    // A full reconnect: every socket within the window, misses go to PostgreSQL.
    let pg = &p["postgres_full_reconnect"];
    let auths = f(pg, "authentications_per_s");
    assert!((auths - n / f(pg, "reconnect_window_s")).abs() <= EPS * auths);
    let hit = f(pg, "cache_hit_ratio");
    assert!((f(pg, "uncached_per_s") - auths * (1.0 - hit)).abs() <= EPS * auths);
    assert!(f(pg, "queries_per_s") <= f(pg, "queries_per_s_cold_cache") + EPS);
    assert!(f(pg, "queries_per_s") >= f(pg, "uncached_per_s"));

    // The inputs' provenance travels with the plan.
    assert!(
        p["inputs"]["run"]["date"].as_str().is_some(),
        "{name}: inputs date"
    );
}

#[test]
fn worked_examples_are_consistent() {
    for (name, w) in workloads() {
        check(name, &plan(&w, &[]));
        // The same with other pod sizes, headroom and storm settings.
        check(
            name,
            &plan(
                &w,
                &[
                    "--pod-cpu",
                    "8",
                    "--pod-memory-gib",
                    "16",
                    "--cpu-utilisation",
                    "0.5",
                    "--max-connections",
                    "400000",
                    "--cache-hit-ratio",
                    "0.8",
                    "--reconnect-window",
                    "300",
                ],
            ),
        );
    }
}

fn with(w: &[&str; 8], option: &str, value: f64) -> Vec<String> {
    let mut out: Vec<String> = w.iter().map(|s| s.to_string()).collect();
    let at = out.iter().position(|a| a == option).unwrap() + 1;
    out[at] = format!("{value}");
    out
}

fn plan_of(args: &[String]) -> Value {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    plan(&refs, &[])
}

/// docs/scaling.md's worked-example table says, in its `**pods**` row, the
/// pod counts the calculator gives for its four columns from the committed
/// inputs (the figure in brackets is the table's previous edition).
#[test]
fn the_docs_pods_row_is_the_calculators() {
    let doc = std::fs::read_to_string(root().join("docs/scaling.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with("| **pods** |"))
        .expect("docs/scaling.md has a `| **pods** |` row");
    let in_doc: Vec<u64> = row
        .split('|')
        .skip(2)
        .filter_map(|cell| {
            let bold = cell.trim().strip_prefix("**")?;
            bold.split("**").next()?.replace(',', "").parse().ok()
        })
        .collect();
    let computed: Vec<u64> = workloads()
        .iter()
        .take(4)
        .map(|(_, w)| f(&plan(w, &[]), "pods.count") as u64)
        .collect();
    assert_eq!(
        in_doc, computed,
        "docs/scaling.md's pods row {row:?} is not what `scripts/capacity` gives from \
         docs/capacity-inputs.json for the market and notification examples: \
         regenerate the worked examples"
    );
}

#[test]
fn more_load_never_asks_for_less() {
    for (name, w) in workloads() {
        let n: f64 = w[1].parse().unwrap();
        let mut last = plan(&w, &[]);
        for factor in [2.0, 4.0, 8.0] {
            // More sockets (the groups grow with them where they are per user).
            let mut args = with(&w, "--sockets", n * factor);
            if w[3] == w[1] {
                let at = args.iter().position(|a| a == "--groups").unwrap() + 1;
                args[at] = format!("{}", n * factor);
            }
            let next = plan_of(&args);
            check(name, &next);
            for key in [
                "pods.count",
                "pods.total_cpu_cores",
                "redis.shards",
                "postgres_full_reconnect.queries_per_s",
            ] {
                assert!(
                    f(&next, key) >= f(&last, key),
                    "{name}: x{factor} sockets lowered {key}"
                );
            }
            last = next;
        }
        // A higher publish rate never lowers the CPU needed, the pods or the Redis traffic.
        let r: f64 = w[7].parse().unwrap();
        let base = plan(&w, &[]);
        let doubled = plan_of(&with(&w, "--publish-rate", 2.0 * r));
        for key in [
            "pods.count",
            "pods.cpu_cores_needed",
            "redis.pubsub_msgs_per_s",
        ] {
            assert!(
                f(&doubled, key) >= f(&base, key),
                "{name}: twice the publish rate lowered {key}"
            );
        }
    }
}

#[test]
fn cache_hits_take_load_off_postgres() {
    let w = workloads()[0].1;
    let cold = plan(&w, &["--cache-hit-ratio", "0"]);
    let warm = plan(&w, &["--cache-hit-ratio", "0.9"]);
    let q = |p: &Value| f(p, "postgres_full_reconnect.queries_per_s");
    assert!(q(&warm) < q(&cold));
    assert!((q(&warm) - 0.1 * q(&cold)).abs() <= 1e-6 * q(&cold));
    assert!(
        f(&warm, "postgres_full_reconnect.gateway_cores")
            < f(&cold, "postgres_full_reconnect.gateway_cores")
    );
}

#[test]
fn text_output_names_the_binding_limit() {
    let args: Vec<String> = workloads()[2].1.iter().map(|s| s.to_string()).collect();
    let out = run(&args);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "pods:",
        "redis:",
        "postgres, full reconnect",
        "binding limit:",
        "inputs:",
    ] {
        assert!(text.contains(needle), "no {needle:?} in:\n{text}");
    }
}

/// The committed inputs file says where each figure comes from.
#[test]
fn committed_inputs_carry_their_sources() {
    let path = root().join("docs/capacity-inputs.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert!(doc["run"]["date"].as_str().is_some());
    let inputs = doc["inputs"].as_object().unwrap();
    assert!(inputs.len() >= 20);
    for (name, entry) in inputs {
        if name == "delivery_us_by_rate" {
            // The curve: [deliveries/s per node, us per delivery] pairs.
            let points = entry["value"].as_array().expect("the curve is a list");
            assert!(!points.is_empty(), "{name}: no points");
            for p in points {
                let pair = p.as_array().expect("a point is a pair");
                assert!(
                    pair.len() == 2 && pair.iter().all(|x| x.as_f64().is_some_and(|v| v > 0.0))
                );
            }
        } else {
            assert!(entry["value"].as_f64().is_some(), "{name}: value");
        }
        let source = entry["source"].as_str().unwrap_or_default();
        assert!(!source.is_empty(), "{name}: no source");
        let measured = entry["measured"].as_bool().expect("measured flag");
        if measured {
            assert!(
                source.contains("BENCHMARKS.md row")
                    || source.contains("measure-kernel")
                    || source.contains("scripts/cluster-bench.sh"),
                "{name}: a measured figure names its run: {source}"
            );
        }
    }
}

fn fails_with(inputs: &Path, needle: &str) {
    let mut args: Vec<String> = workloads()[0].1.iter().map(|s| s.to_string()).collect();
    args.push("--inputs".into());
    args.push(inputs.display().to_string());
    args.push("--json".into());
    let out = run(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "no plan on a bad inputs file");
    assert!(
        stderr.contains(needle) && stderr.contains(&inputs.display().to_string()),
        "expected {needle:?} and the file's name in: {stderr}"
    );
    assert!(
        !stderr.contains("Traceback"),
        "a clear error, not a traceback: {stderr}"
    );
}

#[test]
fn bad_inputs_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    fails_with(&dir.path().join("absent.json"), "does not exist");

    let garbled = dir.path().join("garbled.json");
    std::fs::write(&garbled, "{\"schema\": 1, \"inputs\": {").unwrap();
    fails_with(&garbled, "not valid JSON");

    let other = dir.path().join("other.json");
    std::fs::write(&other, "[1, 2, 3]").unwrap();
    fails_with(&other, "not a capacity inputs document");

    // The real file with one figure removed and one made a string.
    let real: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/capacity-inputs.json")).unwrap(),
    )
    .unwrap();
    let mut broken = real.clone();
    let inputs = broken["inputs"].as_object_mut().unwrap();
    inputs.remove("delivery_us_non_coalescing");
    inputs["rss_kib_per_idle_socket"]["value"] = Value::String("6.6 KiB".into());
    let partial = dir.path().join("partial.json");
    std::fs::write(&partial, broken.to_string()).unwrap();
    fails_with(&partial, "delivery_us_non_coalescing");
    fails_with(&partial, "rss_kib_per_idle_socket");
}

/// The real inputs file with a curve of CPU per delivery by load put in (test figures, not measured ones).
fn with_curve(dir: &Path, points: Value) -> PathBuf {
    let mut doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/capacity-inputs.json")).unwrap(),
    )
    .unwrap();
    doc["inputs"]["delivery_us_by_rate"] = serde_json::json!({
        "value": points, "unit": "[deliveries/s per node, us]", "measured": true,
        "saturated_at_last_point": true, "writer": "scripts/cluster-bench.sh", "source": "test",
    });
    let path = dir.join("curve.json");
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

#[test]
fn the_curve_gives_the_cost_at_the_rate_per_pod() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = with_curve(
        dir.path(),
        serde_json::json!([[16000, 20.0], [4000, 30.0], [64000, 10.0]]),
    );
    let inputs = inputs.display().to_string();
    let market = workloads()[0].1;
    let source = |p: &Value| p["pods"]["cpu_us_per_delivery_source"].clone();
    // A fixed fleet: the curve at deliveries / pods (20M / 1250 = 16,000: a point).
    let p = plan(&market, &["--inputs", &inputs, "--pods", "1250"]);
    assert_eq!(source(&p)["from"], "delivery_us_by_rate");
    assert!((f(&p, "pods.cpu_us_per_delivery") - 20.0).abs() < 1e-9);
    assert!((f(&source(&p), "rate_per_pod") - 16000.0).abs() < 1e-6);
    // Between points: linear in log(rate); 20M / 2500 = 8,000 is half way from 4,000 to 16,000.
    let p = plan(&market, &["--inputs", &inputs, "--pods", "2500"]);
    assert!((f(&p, "pods.cpu_us_per_delivery") - 25.0).abs() < 1e-9);
    assert_eq!(source(&p)["how"], "interpolated");
    // Outside the points: clamped, and said so.
    let p = plan(&market, &["--inputs", &inputs, "--pods", "100"]);
    assert!((f(&p, "pods.cpu_us_per_delivery") - 10.0).abs() < 1e-9);
    assert_eq!(source(&p)["how"], "above");
    let p = plan(&market, &["--inputs", &inputs, "--pods", "100000"]);
    assert!((f(&p, "pods.cpu_us_per_delivery") - 30.0).abs() < 1e-9);
    assert_eq!(source(&p)["how"], "below");
    // Sized by the model: the count it settles on is the smallest that fits at its own rate per pod.
    let p = plan(&market, &["--inputs", &inputs]);
    check("market on the curve", &p);
    let pods = f(&p, "pods.count");
    assert!((f(&source(&p), "rate_per_pod") - 20e6 / pods).abs() < 1e-3);
    let fewer = plan(
        &market,
        &["--inputs", &inputs, "--pods", &format!("{}", pods - 1.0)],
    );
    assert!(
        f(&fewer, "pods.cpu_cores_needed") > f(&fewer, "pods.cpu_capacity_at_target"),
        "one pod fewer would fit too"
    );
    // --delivery-us overrides the curve.
    let p = plan(&market, &["--inputs", &inputs, "--delivery-us", "3"]);
    assert_eq!(source(&p)["from"], "--delivery-us");
    assert!((f(&p, "pods.cpu_us_per_delivery") - 3.0).abs() < 1e-9);
    // Frames that coalesce keep their own figures.
    let p = plan(&market, &["--inputs", &inputs, "--coalescing", "yes"]);
    assert_eq!(source(&p)["from"], "delivery_us_coalescing_redis");
    // The text says which figure and why.
    let mut args: Vec<String> = market.iter().map(|s| s.to_string()).collect();
    args.extend(["--inputs".to_string(), inputs.clone()]);
    let text = String::from_utf8(run(&args).stdout).unwrap();
    assert!(text.contains("the measured curve at"), "{text}");
    // More load never asks for less, on the curve too.
    let doubled = plan_of(
        &[
            with(&market, "--publish-rate", 4000.0),
            vec!["--inputs".into(), inputs.clone()],
        ]
        .concat(),
    );
    let base = plan(&market, &["--inputs", &inputs]);
    assert!(f(&doubled, "pods.count") >= f(&base, "pods.count"));
}

#[test]
fn a_bad_curve_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    for bad in [
        serde_json::json!([]),
        serde_json::json!([[4000, "30 us"]]),
        serde_json::json!([[4000, 30.0, 1.0]]),
        serde_json::json!([[0, 30.0]]),
        serde_json::json!([[4000, 30.0], [4000, 20.0]]),
        serde_json::json!(12.5),
    ] {
        fails_with(&with_curve(dir.path(), bad), "delivery_us_by_rate");
    }
}
