//! Logging (plain or JSON, filtered by `RUST_LOG`) and the Prometheus recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::http::AppState;
use crate::supervisors::TreeNode;

/// Installs the global subscriber once; `json` selects JSON lines.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("valid buckets")
                .install_recorder()
                .expect("the Prometheus recorder is installed once")
        })
        .clone()
}

/// Updates the gauges that are read at scrape time.
pub fn record_gauges(state: &AppState) {
    fn walk(node: &TreeNode) {
        let s = &node.stats;
        let name = s.name.clone();
        metrics::gauge!("flashsale_actor_restarts", "actor" => name.clone())
            .set(s.restarts() as f64);
        metrics::gauge!("flashsale_actor_up", "actor" => name.clone()).set(if s.is_running() {
            1.0
        } else {
            0.0
        });
        if s.kind == crate::supervisors::stats::Kind::Actor {
            metrics::gauge!("flashsale_actor_mailbox", "actor" => name.clone())
                .set(s.mailbox() as f64);
            metrics::gauge!("flashsale_actor_processed", "actor" => name).set(s.processed() as f64);
        }
        node.children.iter().for_each(walk);
    }
    walk(&state.tree);
    if let Some((cpu, rss)) = process_usage() {
        metrics::gauge!("flashsale_process_cpu_seconds_total").set(cpu);
        metrics::gauge!("flashsale_process_resident_memory_bytes").set(rss);
    }
    metrics::gauge!("flashsale_ready").set(if state.directory.order_path_ready() {
        1.0
    } else {
        0.0
    });
}

/// CPU seconds used and resident memory of this process (Linux `/proc`).
fn process_usage() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: f64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((ticks / 100.0, pages * 4096.0))
}
