//! Logging (plain or JSON, filtered by `RUST_LOG`), traces (OpenTelemetry, exported over
//! OTLP when an endpoint is configured, W3C `traceparent` carried across the order queue)
//! and the Prometheus recorder.

use std::collections::HashMap;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Installs the global subscriber once; `json` selects JSON lines. Without a tracer
/// provider, only logs are produced.
pub fn init_logging(json: bool) {
    init(json, None);
}

/// Installs logging, and trace export through `provider` when given.
pub fn init(json: bool, provider: Option<&SdkTracerProvider>) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"))
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let fmt = if json {
        fmt.json().with_filter(filter()).boxed()
    } else {
        fmt.with_filter(filter()).boxed()
    };
    let otel = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("flashsale"))
            .with_filter(EnvFilter::new("flashsale=debug,warn"))
    });
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    if let Some(p) = provider {
        opentelemetry::global::set_tracer_provider(p.clone());
    }
}

/// A tracer provider exporting to an OTLP/HTTP endpoint.
pub fn otlp_provider(endpoint: &str, service: &str) -> Result<SdkTracerProvider, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service.to_string())
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}

/// The trace context named by a W3C `traceparent` (empty when absent or invalid).
fn extract(traceparent: Option<&str>) -> opentelemetry::Context {
    match traceparent {
        Some(tp) => {
            let carrier: HashMap<String, String> =
                [("traceparent".to_string(), tp.to_string())].into();
            TraceContextPropagator::new().extract(&carrier)
        }
        None => opentelemetry::Context::new(),
    }
}

/// The W3C `traceparent` of a span context, when it belongs to a trace.
pub fn traceparent_of(cx: &opentelemetry::Context) -> Option<String> {
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The W3C `traceparent` of the current `tracing` span, when it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current().context())
}

/// Makes a `tracing` span continue the trace named by a W3C `traceparent`.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>) {
    let cx = extract(traceparent);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Starts a span of one order's work in the trace named by `traceparent` (a new trace
/// without one). The span ends when the returned context is dropped.
pub fn start_order_span(
    name: &'static str,
    traceparent: Option<&str>,
    order_id: &str,
) -> opentelemetry::Context {
    let cx = start_child_span(&extract(traceparent), name);
    cx.span().set_attribute(opentelemetry::KeyValue::new(
        "order_id",
        order_id.to_string(),
    ));
    cx
}

/// Starts a child span of `parent`; it ends when the returned context is dropped.
pub fn start_child_span(
    parent: &opentelemetry::Context,
    name: &'static str,
) -> opentelemetry::Context {
    use opentelemetry::trace::Tracer as _;
    let span = opentelemetry::global::tracer("flashsale").start_with_context(name, parent);
    parent.with_span(span)
}

/// How often histograms fold the samples they recorded into their buckets.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            // Event lag spans milliseconds to a broker outage: finer and wider.
            let lag = [
                0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5,
                2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0,
            ];
            let handle = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("valid buckets")
                .set_buckets_for_metric(Matcher::Full("flashsale_event_lag_seconds".into()), &lag)
                .expect("valid buckets")
                .install_recorder()
                .expect("the Prometheus recorder is installed once");
            // A histogram keeps its samples until they are folded into its buckets:
            // on a scrape, and here, so that memory does not grow with the requests
            // served while nobody scrapes.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(METRICS_UPKEEP);
                    upkeep.run_upkeep();
                })
                .expect("a thread can be started");
            handle
        })
        .clone()
}

/// Registers at zero the counters that only move when something goes wrong (a dead
/// letter, a Kafka error, a rebuild, a released reservation), for every label value
/// known at start: a series that does not exist yet cannot be alerted on with
/// `increase()` and looks, to a dashboard, like a renamed metric.
pub fn register_rare_counters(queues: &[&str], partitions: usize) {
    for queue in queues {
        metrics::counter!("flashsale_dead_letters_total", "queue" => queue.to_string())
            .increment(0);
    }
    for partition in 0..partitions {
        let p = partition.to_string();
        metrics::counter!("flashsale_inventory_rebuilds_total", "partition" => p.clone())
            .increment(0);
        metrics::counter!("flashsale_reservations_released_total", "partition" => p).increment(0);
    }
    metrics::counter!("flashsale_kafka_errors_total").increment(0);
}

/// CPU seconds used and resident memory of this process (Linux `/proc`).
pub fn process_usage() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, pages * 4096.0))
}
