//! What "production on Kubernetes" relies on from the binary: `wsgate
//! healthcheck` (the image's HEALTHCHECK) against a real node, secrets from
//! `WSGATE__SECTION__KEY__FILE`, `wsgate migrate` whatever
//! `database.migrate` says, the build info and process metrics, and the
//! OTLP environment (HTTP/protobuf only; the SDK's sampler variables).

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;
use opentelemetry::trace::{
    Span as _, SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry_sdk::trace::InMemorySpanExporterBuilder;
use serde_json::json;
use wsgate::config::Config;

/// The binary, run in `dir` with only the given `WSGATE__`/`OTEL_` variables.
fn wsgate(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsgate"));
    cmd.current_dir(dir).args(args).stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("WSGATE") || k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied()).output().expect("run wsgate")
}

/// As [`wsgate`], off the async workers (the node under test runs on them).
async fn wsgate_async(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        wsgate(&dir, &env, &args)
    })
    .await
    .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn healthcheck_help_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let o = wsgate(dir.path(), &[], &["healthcheck", "--help"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--url"));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_against_a_real_node() {
    let dir = tempfile::tempdir().unwrap();
    let node = spawn(test_config(dir.path())).await;
    let metrics = node.addrs.metrics;
    let port = metrics.port().to_string();
    let listen = metrics.to_string();

    // From the configuration: the node's metrics listener, and 0.0.0.0
    // (what the image's file says) read as loopback.
    for addr in [listen.clone(), format!("0.0.0.0:{port}")] {
        let o = wsgate_async(
            dir.path(),
            &[("WSGATE__METRICS__LISTEN", &addr)],
            &["healthcheck"],
        )
        .await;
        assert!(o.status.success(), "metrics.listen {addr}: {}", text(&o));
    }
    // The same through a TOML file given with --config.
    let file = dir.path().join("wsgate.toml");
    std::fs::write(&file, format!("[metrics]\nlisten = \"{listen}\"\n")).unwrap();
    let file = file.display().to_string();
    let o = wsgate_async(dir.path(), &[], &["healthcheck", "--config", &file]).await;
    assert!(o.status.success(), "--config: {}", text(&o));

    let url = |path: &str| format!("http://{listen}{path}");
    for (path, healthy) in [
        ("/healthz", true),
        ("/readyz", true),
        ("/no-such-path", false),
    ] {
        let o = wsgate_async(dir.path(), &[], &["healthcheck", "--url", &url(path)]).await;
        assert_eq!(o.status.success(), healthy, "--url {path}: {}", text(&o));
    }
    let o = wsgate_async(dir.path(), &[], &["healthcheck", "--url", &url("/nope")]).await;
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("404"),
        "{}",
        text(&o)
    );

    // An invalid configuration: exit 2, as for the other commands.
    let o = wsgate_async(
        dir.path(),
        &[("WSGATE__METRICS__LISTEN", "nowhere")],
        &["healthcheck"],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));

    // A stopped node: refused, non-zero.
    node.shutdown().await;
    let o = wsgate_async(
        dir.path(),
        &[("WSGATE__METRICS__LISTEN", &listen)],
        &["healthcheck"],
    )
    .await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn healthcheck_times_out_on_a_silent_server() {
    // Accepts (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/healthz", silent.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let o = wsgate_async(dir.path(), &[], &["healthcheck", "--url", &url]).await;
    let took = started.elapsed();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(10),
        "bounded by its 3 s timeout: {took:?}"
    );
}

#[tokio::test]
async fn api_keys_from_a_file_publish() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("api-keys");
    let key = "file-key-0123456789abcdef";
    std::fs::write(
        &keys,
        format!("\n  other-key-0123456789abcdef\n{key}  \n\n"),
    )
    .unwrap();
    let sqlite = dir.path().join("wsgate.db");
    let env = [
        ("WSGATE__SERVER__LISTEN", "127.0.0.1:0".to_string()),
        ("WSGATE__API__LISTEN", "127.0.0.1:0".to_string()),
        ("WSGATE__METRICS__LISTEN", "127.0.0.1:0".to_string()),
        (
            "WSGATE__DATABASE__SQLITE_PATH",
            sqlite.display().to_string(),
        ),
        ("WSGATE__API__KEYS__FILE", keys.display().to_string()),
    ];
    let config = Config::load_with_env(
        None,
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("config with WSGATE__API__KEYS__FILE");
    assert_eq!(config.api.keys.len(), 2);
    let node = spawn(config).await;
    let publish = |key: &'static str| {
        reqwest::Client::new()
            .post(node.api_url("/api/v1/publish"))
            .bearer_auth(key)
            .json(&json!({"group": "market.X", "data": {"p": 1}}))
            .send()
    };
    assert_eq!(publish(key).await.unwrap().status(), 200);
    assert_eq!(
        publish("wrong-key-0123456789abcd").await.unwrap().status(),
        401
    );
    node.shutdown().await;
}

#[test]
fn secret_files_in_config_check_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "sekrit-key-0123456789,sekrit-key-abcdefghij\n").unwrap();
    let url = dir.path().join("url");
    std::fs::write(&url, "redis://:sekrit-password@127.0.0.1:6379\n").unwrap();
    let (keys, url) = (keys.display().to_string(), url.display().to_string());

    let o = wsgate(
        dir.path(),
        &[
            ("WSGATE__API__KEYS__FILE", &keys),
            ("WSGATE__REDIS__URL__FILE", &url),
        ],
        &["config", "check"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(!out.contains("sekrit"), "{out}");
    assert!(out.contains("redis://:********@127.0.0.1:6379"), "{out}");

    // Both the variable and the file: an error naming the key.
    let o = wsgate(
        dir.path(),
        &[
            ("WSGATE__API__KEYS", "direct-key-0123456789"),
            ("WSGATE__API__KEYS__FILE", &keys),
        ],
        &["config", "check"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("api.keys") && err.contains("WSGATE__API__KEYS__FILE"),
        "{err}"
    );
    assert!(!err.contains("sekrit"), "{err}");

    // A file that cannot be read: the variable and the path, and `serve`
    // does not start either.
    let missing = dir.path().join("missing").display().to_string();
    for args in [&["config", "check"][..], &["serve"][..]] {
        let o = wsgate(
            dir.path(),
            &[("WSGATE__DATABASE__URL__FILE", &missing)],
            args,
        );
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(
            err.contains("WSGATE__DATABASE__URL__FILE") && err.contains(&missing),
            "{err}"
        );
    }
}

/// `database.migrate = false` is about start-up; `wsgate migrate` applies
/// the migrations anyway (the chart's migrate Job runs it with that
/// setting).
#[test]
fn migrate_applies_migrations_when_database_migrate_is_false() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("WSGATE__DATABASE__MIGRATE", "false")];
    let issue = &["token", "issue", "--user", "1"][..];
    // Without migrations, and not applying them, there is no token table.
    let o = wsgate(dir.path(), &env, issue);
    assert!(!o.status.success(), "issue before migrate: {}", text(&o));
    let o = wsgate(dir.path(), &env, &["migrate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("migrations applied"));
    let o = wsgate(dir.path(), &env, issue);
    assert!(o.status.success(), "issue after migrate: {}", text(&o));
}

#[tokio::test]
async fn migrate_applies_migrations_when_database_migrate_is_false_postgres() {
    let pg = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("WSGATE__DATABASE__URL", pg.url.as_str()),
        ("WSGATE__DATABASE__MIGRATE", "false"),
    ];
    let o = wsgate_async(dir.path(), &env, &["migrate"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let tables: Vec<(String,)> = sqlx::query_as(
        "SELECT table_name::text FROM information_schema.tables WHERE table_name LIKE 'wsgate%'",
    )
    .fetch_all(&pg.pool().await)
    .await
    .unwrap();
    assert!(tables.len() >= 2, "wsgate tables after migrate: {tables:?}");
}

#[tokio::test]
async fn build_info_and_process_metrics_are_exposed() {
    let (_dir, node) = node().await;
    let text = node.metrics().await;
    let info = format!(
        "wsgate_build_info{{commit=\"{}\",version=\"{}\"}}",
        wsgate::metrics::COMMIT,
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric_value(&text, &info), 1.0, "{text}");
    let commit = wsgate::metrics::COMMIT;
    assert!(
        commit == "unknown" || commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()),
        "{commit}"
    );
    for series in [
        "process_open_fds",
        "process_max_fds",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
    ] {
        let v = metric_value(&text, series);
        assert!(v >= 0.0, "{series} {v}");
    }
    assert!(metric_value(&text, "process_open_fds") >= 3.0);
    assert!(metric_value(&text, "process_resident_memory_bytes") > 0.0);
    let now = wsgate::clock::unix_ms() as f64 / 1000.0;
    let start = metric_value(&text, "process_start_time_seconds");
    assert!(
        start <= now && start > now - 24.0 * 3600.0,
        "{start} vs {now}"
    );
    node.shutdown().await;
}

#[test]
fn serve_refuses_an_otlp_protocol_it_does_not_have() {
    let dir = tempfile::tempdir().unwrap();
    let listen = [
        ("WSGATE__SERVER__LISTEN", "127.0.0.1:0"),
        ("WSGATE__API__LISTEN", "127.0.0.1:0"),
        ("WSGATE__METRICS__LISTEN", "127.0.0.1:0"),
    ];
    for (var, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
    ] {
        let mut env = listen.to_vec();
        env.push((var, value));
        env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9"));
        let o = wsgate(dir.path(), &env, &["serve"]);
        assert!(!o.status.success(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(err.contains(var) && err.contains("http/protobuf"), "{err}");
    }
    let env = |k: &'static str, v: &'static str| move |var: &str| (var == k).then(|| v.to_string());
    use wsgate::telemetry::otlp_protocol_error as check;
    assert!(check(|_| None).is_none());
    assert!(check(env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")).is_none());
    assert!(check(env("OTEL_EXPORTER_OTLP_PROTOCOL", "HTTP/Protobuf")).is_none());
    assert!(check(env("OTEL_EXPORTER_OTLP_PROTOCOL", "")).is_none());
    assert!(check(env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")).is_some());
    assert!(check(env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc")).is_some());
}

/// Runs this test binary's `sampler_child` with `env`, in a process of its
/// own (the SDK reads the sampler from the environment), and returns how
/// many of its root spans and of its spans with a sampled remote parent
/// were exported.
fn sampled(env: &[(&str, &str)]) -> (usize, usize) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "sampler_child",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            cmd.env_remove(k);
        }
    }
    let o = cmd
        .env("WSGATE_SAMPLER_CHILD", "1")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success(), "{}", text(&o));
    // The harness may print "test sampler_child ... " on the same line.
    let counts: Vec<usize> = out
        .split("SAMPLED ")
        .nth(1)
        .unwrap_or_else(|| panic!("no SAMPLED line: {out}"))
        .split_whitespace()
        .take(2)
        .map(|n| n.parse().unwrap())
        .collect();
    (counts[0], counts[1])
}

const SPANS: usize = 400;

/// The child of [`sampled`]: a provider as `serve` builds it
/// ([`wsgate::telemetry::provider_with`]) over the in-memory exporter.
#[test]
fn sampler_child() {
    if std::env::var("WSGATE_SAMPLER_CHILD").is_err() {
        return;
    }
    let exporter = InMemorySpanExporterBuilder::new().build();
    let provider = wsgate::telemetry::provider_with(exporter.clone(), false);
    let tracer = provider.tracer("test");
    for _ in 0..SPANS {
        tracer.start("root").end();
    }
    provider.force_flush().unwrap();
    let roots = exporter.get_finished_spans().unwrap().len();
    exporter.reset();
    for i in 0..SPANS {
        let parent = SpanContext::new(
            TraceId::from_bytes(rand_bytes(i)),
            opentelemetry::trace::SpanId::from_bytes([1; 8]),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        tracer.start_with_context("child", &cx).end();
    }
    provider.force_flush().unwrap();
    let children = exporter.get_finished_spans().unwrap().len();
    println!("SAMPLED {roots} {children}");
}

/// Spread-out trace ids, so the ratio sampler sees a fair sample.
fn rand_bytes(i: usize) -> [u8; 16] {
    let mut x = (i as u128 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
    x ^= x >> 61;
    x.wrapping_mul(0xD6E8_FEB8_6659_FD93_3C6E_F372_FE94_F82B)
        .to_be_bytes()
}

#[test]
fn sampler_from_the_environment() {
    let all = SPANS;
    let around = |n: usize, ratio: f64| {
        let expected = all as f64 * ratio;
        (n as f64 - expected).abs() < all as f64 * 0.12
    };
    // The default: parent-based, always on.
    assert_eq!(sampled(&[]), (all, all));
    /// Whether the counts of exported roots and children are right.
    type Check<'a> = &'a dyn Fn(usize, usize) -> bool;
    let cases: [(&str, Option<&str>, Check); 7] = [
        ("always_on", None, &|r, c| r == all && c == all),
        ("always_off", None, &|r, c| r == 0 && c == 0),
        ("traceidratio", Some("0.25"), &|r, c| {
            around(r, 0.25) && around(c, 0.25)
        }),
        ("parentbased_always_on", None, &|r, c| r == all && c == all),
        // Roots are not sampled; a sampled parent's children are.
        ("parentbased_always_off", None, &|r, c| r == 0 && c == all),
        ("parentbased_traceidratio", Some("0.5"), &|r, c| {
            around(r, 0.5) && c == all
        }),
        ("parentbased_traceidratio", Some("0"), &|r, c| {
            r == 0 && c == all
        }),
    ];
    for (sampler, arg, ok) in cases {
        let mut env = vec![("OTEL_TRACES_SAMPLER", sampler)];
        if let Some(arg) = arg {
            env.push(("OTEL_TRACES_SAMPLER_ARG", arg));
        }
        let (roots, children) = sampled(&env);
        assert!(
            ok(roots, children),
            "{sampler} {arg:?}: {roots} roots, {children} children of a sampled parent of {all}"
        );
    }
}
