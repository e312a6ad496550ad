//! Logs and traces.
//!
//! Logs go to stderr as text or JSON lines. Traces go over OTLP/HTTP when
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is
//! set; `OTEL_SERVICE_NAME` and the other `OTEL_*` variables (the sampler:
//! `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`) are read by the
//! OpenTelemetry SDK itself. Only HTTP/protobuf is built in: another
//! `OTEL_EXPORTER_OTLP_PROTOCOL` stops `serve` ([`check_otlp_protocol`]). Spans: `handshake`, `authenticate` (with the
//! cache layer that answered), `publish` (parented on a caller's
//! `traceparent`), and `deliver` on every node that delivers it (parented on
//! the publish through the envelope).
//!
//! Libraries that log frame payloads or headers at debug/trace are capped at
//! `info`, so a token can never reach a log line or a span. The cap is a
//! filter of its own, combined with `log.level`'s: a more specific directive
//! (`tungstenite::protocol=trace`) wins inside `log.level`, but cannot lift
//! the cap.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing::level_filters::LevelFilter;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::Filter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat};

/// Libraries whose debug and trace output holds frame payloads or headers.
const PAYLOAD_LOGGERS: &[&str] = &["tungstenite", "tokio_tungstenite", "hyper", "h2", "reqwest"];

/// The filter for `log.level`, with the payload-logging libraries capped.
///
/// The cap says it never enables more than everything (`TRACE`), so the
/// combination's level hint is `log.level`'s: without a hint it would be
/// "unknown", the node's global maximum level would be `TRACE`, and every
/// `log::trace!` of the WebSocket library and every connection span would
/// be built and then thrown away, once per frame and per poll (measured:
/// about a tenth of the node's CPU while fanning out).
pub fn log_filter<S: tracing::Subscriber>(level: &str) -> impl Filter<S> + Send + Sync + 'static {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let cap = filter_fn(|meta| !is_capped(meta.target(), *meta.level()))
        .with_max_level_hint(LevelFilter::TRACE);
    filter.and(cap)
}

/// Whether an event or span of `target` at `level` is over the cap: debug or
/// trace from a payload-logging crate or any of its modules.
pub fn is_capped(target: &str, level: Level) -> bool {
    level > Level::INFO
        && PAYLOAD_LOGGERS.iter().any(|c| {
            target == *c
                || target
                    .strip_prefix(c)
                    .is_some_and(|rest| rest.starts_with("::"))
        })
}

/// Keeps the trace exporter alive; [`Telemetry::shutdown`] flushes it.
#[derive(Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes pending spans (called at the end of a drain).
    pub fn shutdown(&self) {
        if let Some(provider) = &self.provider
            && let Err(e) = provider.shutdown()
        {
            eprintln!("wsgate: flushing traces failed: {e}");
        }
    }
}

fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty()))
}

/// A tracer provider for the given exporter, named `wsgate` unless
/// `OTEL_SERVICE_NAME` says otherwise.
pub fn provider_with<E>(exporter: E, batch: bool) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("wsgate");
    }
    let builder = SdkTracerProvider::builder().with_resource(resource.build());
    if batch {
        builder.with_batch_exporter(exporter).build()
    } else {
        builder.with_simple_exporter(exporter).build()
    }
}

/// The tracing layer that turns spans into OpenTelemetry spans.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("wsgate"))
        .with_level(true)
}

/// Installs the global subscriber: logs per `config`, plus OTLP traces when
/// configured. Quietly does nothing when one is installed already.
pub fn init(config: &LogConfig) -> Telemetry {
    let provider = if otlp_configured() {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => Some(provider_with(exporter, true)),
            Err(e) => {
                eprintln!("wsgate: OTLP exporter not started: {e}");
                None
            }
        }
    } else {
        None
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match config.format {
        LogFormat::Json => Box::new(fmt.json().flatten_event(true).with_current_span(true)),
        LogFormat::Text => Box::new(fmt),
    };
    let _ = subscriber(fmt, &config.level, provider.as_ref()).try_init();
    Telemetry { provider }
}

/// The logs layer filtered by `level`, and the OpenTelemetry layer (when
/// there is a provider) filtered by `info`. The filter sits inside the
/// `Option`: an absent layer then says "nothing" (`OFF`) for the global
/// maximum level, rather than its filter's `info`, so spans below
/// `log.level` are not built at all.
fn subscriber(
    fmt: Box<dyn Layer<Registry> + Send + Sync>,
    level: &str,
    provider: Option<&SdkTracerProvider>,
) -> impl tracing::Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a> {
    let otel = provider.map(|p| otel_layer(p).with_filter(log_filter("info")));
    Registry::default()
        .with(fmt.with_filter(log_filter(level)))
        .with(otel)
}

/// The W3C `traceparent` of the current span, to carry in an envelope.
/// A span that is not built (below `log.level`, no traces) has no context:
/// it answers `None` at once rather than through a carrier map.
pub fn current_traceparent() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// Parents `span` on a W3C `traceparent`, when it parses.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_string(), traceparent.to_string());
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// Parents `span` on the trace context in HTTP headers, when present (a
/// span that is not built has nothing to parent).
pub fn set_parent_from_headers(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers));
    let _ = span.set_parent(cx);
}

/// The OTLP transports this build exports with: HTTP/protobuf only (no
/// gRPC, no JSON).
pub const OTLP_PROTOCOL: &str = "http/protobuf";

/// Refuses an `OTEL_EXPORTER_OTLP_PROTOCOL` or
/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` other than `http/protobuf`: the SDK
/// would fall back to HTTP quietly and send to a gRPC port (4317) that never
/// answers, so a node would run without the traces it was configured for.
/// `serve` and `demo` do not start then.
pub fn check_otlp_protocol() -> Result<(), String> {
    otlp_protocol_error(|k| std::env::var(k).ok()).map_or(Ok(()), Err)
}

/// As [`check_otlp_protocol`], with the environment given (tests).
pub fn otlp_protocol_error(env: impl Fn(&str) -> Option<String>) -> Option<String> {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .into_iter()
    .find_map(|var| {
        let value = env(var)?;
        let value = value.trim();
        (!value.is_empty() && !value.eq_ignore_ascii_case(OTLP_PROTOCOL)).then(|| {
            format!(
                "{var}={value}: wsgate exports OTLP over HTTP/protobuf only; \
                 set {var}={OTLP_PROTOCOL} (or unset it) and point \
                 OTEL_EXPORTER_OTLP_ENDPOINT at the collector's OTLP/HTTP port (4318)"
            )
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_covers_the_crates_and_their_modules() {
        assert!(is_capped("tungstenite::protocol", Level::TRACE));
        assert!(is_capped("hyper::proto::h1::io", Level::DEBUG));
        assert!(is_capped("tokio_tungstenite", Level::DEBUG));
        assert!(!is_capped("tungstenite::protocol", Level::INFO));
        assert!(!is_capped("hyperion", Level::TRACE));
        assert!(!is_capped("wsgate::session", Level::TRACE));
    }

    /// The global maximum level follows `log.level` (it was `TRACE` whatever
    /// the level, so every span and `log` record below it was built and
    /// dropped on the hot path).
    #[test]
    fn the_maximum_level_follows_log_level() {
        use tracing::Subscriber;
        let fmt = || -> Box<dyn Layer<Registry> + Send + Sync> {
            Box::new(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
        };
        for (level, max) in [
            ("warn", LevelFilter::WARN),
            ("info", LevelFilter::INFO),
            ("wsgate=debug,info", LevelFilter::DEBUG),
        ] {
            assert_eq!(
                subscriber(fmt(), level, None).max_level_hint(),
                Some(max),
                "{level}"
            );
        }
        // With traces on, `info` spans are built for the exporter.
        let provider = SdkTracerProvider::builder().build();
        let with_otel = subscriber(fmt(), "warn", Some(&provider)).max_level_hint();
        assert_eq!(with_otel, Some(LevelFilter::INFO));
    }
}
