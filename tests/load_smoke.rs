//! The load tester against a server started here: a small burst and a short retry
//! storm end with exit code 0 and a JSON report that says what happened.

#[path = "api/helpers/mod.rs"]
#[allow(dead_code, unused_imports)]
#[macro_use]
mod helpers;

use clap::Parser;
use helpers::{spawn_app, Mode, ADMIN_TOKEN, JWT_SECRET};
use serde_json::Value;

async fn load(app: &helpers::TestApp, args: &[&str]) -> (i32, Value) {
    let (code, json, html) = load_keeping_html(app, args).await;
    let _ = std::fs::remove_file(html);
    (code, json)
}

/// Like [`load`], leaving the HTML report in place for a look at it; returns its path.
async fn load_keeping_html(
    app: &helpers::TestApp,
    args: &[&str],
) -> (i32, Value, std::path::PathBuf) {
    let report =
        std::env::temp_dir().join(format!("fs_load_{}.json", uuid::Uuid::new_v4().simple()));
    let html = report.with_extension("html");
    let mut argv = vec![
        "flashsale-load".to_string(),
        "--quiet".into(),
        format!("--target={}", app.address),
        format!("--admin-url={}", app.admin_address),
        format!("--admin-token={ADMIN_TOKEN}"),
        format!("--jwt-secret={JWT_SECRET}"),
        format!("--report-json={}", report.display()),
        format!("--report-html={}", html.display()),
        "--deadline-secs=60".into(),
    ];
    argv.extend(args.iter().map(|a| a.to_string()));
    let code = flashsale_load::main_with(flashsale_load::Cli::parse_from(argv)).await;
    let json: Value =
        serde_json::from_slice(&std::fs::read(&report).expect("a JSON report")).unwrap();
    let page = std::fs::read_to_string(&html).expect("an HTML report");
    assert!(
        page.contains("<svg") && !page.contains("http://cdn"),
        "a self-contained page with charts"
    );
    let _ = std::fs::remove_file(report);
    (code, json, html)
}

in_both_modes!(a_small_burst_and_a_retry_storm_pass_their_checks);
async fn a_small_burst_and_a_retry_storm_pass_their_checks(mode: Mode) {
    let app = spawn_app(mode).await;

    let (code, report) = load(
        &app,
        &["burst", "--buyers=300", "--stock=50", "--window-ms=200"],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["scenario"], "burst");
    assert_eq!(report["accepted"], 50);
    assert_eq!(report["statusCounts"]["201"], 50);
    assert_eq!(report["statusCounts"]["409"], 250);
    assert_eq!(report["violations"], serde_json::json!([]));
    assert!(report["latencyMs"]["p99"].as_f64().unwrap() > 0.0);
    assert!(report["completedAfterSeconds"].as_f64().is_some());

    let (code, report) = load(
        &app,
        &[
            "retry-storm",
            "--buyers=100",
            "--stock=30",
            "--retries=3",
            "--jitter-ms=30",
        ],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["requests"], 400);
    assert_eq!(
        report["accepted"], 30,
        "one order per buyer, however often it retried"
    );
    assert_eq!(report["violations"], serde_json::json!([]));
    app.stop().await;
}

in_both_modes!(the_countdown_scenario_polls_the_herd_then_sells_the_stock);
async fn the_countdown_scenario_polls_the_herd_then_sells_the_stock(mode: Mode) {
    let app = spawn_app(mode).await;
    let (code, report) = load(
        &app,
        &[
            "countdown",
            "--pollers=2000",
            "--countdown-secs=4",
            "--buyers=200",
            "--stock=40",
            "--window-ms=200",
            "--baseline",
        ],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["scenario"], "countdown");
    let c = &report["countdown"];
    assert_eq!(c["polls"], 2000, "{c:#}");
    assert!(c["answers"]["upcoming"].as_u64().unwrap_or(0) > 0, "{c:#}");
    assert!(c["healthzPerSecond"].as_f64().unwrap() > 0.0, "{c:#}");
    assert!(c["shareOfHealthz"].as_f64().unwrap() > 0.0, "{c:#}");
    assert_eq!(report["accepted"], 40);
    assert_eq!(report["violations"], serde_json::json!([]));
    // Two thousand polls cost the backend about one read a second, not one each (this
    // app's reads: the process holds the other mode's app too).
    let reads = app.app_state.countdown.reads() as f64;
    let secs = c["seconds"].as_f64().unwrap().ceil();
    assert!(
        reads <= secs + 2.0,
        "{reads} backend reads in {secs} s of polls"
    );
    app.stop().await;
}

/// A buyer answered `503` while its order was in fact queued (the broker kept the
/// message, its confirm came after the publisher gave up) is asked again with its key
/// once the run is over, as a buyer's app retries: the order is found and counted, and
/// the sale's invariants hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_answered_503_is_asked_again_and_its_order_counted() {
    let broker = helpers::Proxy::start("127.0.0.1:5672").await;
    let app = helpers::spawn_app_with(helpers::Options {
        amqp_port: Some(broker.port),
        configure: Some(|s| s.queue.deadline_ms = 1_000),
        ..Default::default()
    })
    .await;
    let restarts = |tree: &Value| -> u64 {
        ["order-publisher-0", "order-publisher-1"]
            .iter()
            .filter_map(|n| helpers::find(tree, n))
            .filter_map(|n| n["restarts"].as_u64())
            .sum()
    };
    let before = restarts(
        &app.admin(reqwest::Method::GET, "/admin/actors", None)
            .await
            .body,
    );
    broker.stall();
    let run = load(
        &app,
        &["burst", "--buyers=1", "--stock=5", "--window-ms=10"],
    );
    let resume = async {
        // The publisher waiting for the confirm gave up at its deadline and restarted
        // (the buyer's request was answered 503 as it did).
        app.admin_eventually("/admin/actors", |tree| restarts(tree) > before)
            .await;
        broker.resume();
    };
    let ((code, report), ()) = tokio::join!(run, resume);
    assert_eq!(
        report["statusCounts"],
        serde_json::json!({"503": 1}),
        "{report:#}"
    );
    // Found (the broker kept the message), or made again had the order been let go
    // meanwhile: either way it is counted once.
    let again = &report["askedAgain"];
    assert_eq!(
        (&again["requests"], &again["refused"], &again["undecided"]),
        (
            &serde_json::json!(1),
            &serde_json::json!(0),
            &serde_json::json!(0)
        ),
        "{report:#}"
    );
    assert_eq!(
        again["found"].as_u64().unwrap() + again["created"].as_u64().unwrap(),
        1,
        "{report:#}"
    );
    assert_eq!(report["violations"], serde_json::json!([]), "{report:#}");
    assert_eq!(code, 0);
    app.stop().await;
}

/// Measures, in the page as Chromium lays it out, what each chart of a report draws.
const MEASURE: &str = r#"<script>
const out = {};
for (const svg of document.querySelectorAll('svg[id]')) {
  const series = {};
  for (const g of svg.querySelectorAll('g.series')) {
    const line = g.querySelector('polyline');
    series[g.dataset.label] = {
      points: g.querySelectorAll('circle').length,
      width: Math.round(line.getBBox().width),
      height: Math.round(line.getBBox().height),
    };
  }
  out[svg.id] = { ticks: svg.querySelectorAll('.tick').length, series };
}
document.body.setAttribute('data-measured', JSON.stringify(out));
</script>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_report_draws_every_chart_in_a_real_browser() {
    let app = spawn_app(Mode::Cluster).await;
    let (code, report, html) = load_keeping_html(
        &app,
        &["burst", "--buyers=400", "--stock=60", "--window-ms=300"],
    )
    .await;
    assert_eq!(code, 0, "{report:#}");
    // A short run is bucketed by 100 ms, so a 300 ms burst is several points.
    assert_eq!(report["bucketMs"], 100);

    let page = std::fs::read_to_string(&html).unwrap();
    let measured_page = html.with_extension("measured.html");
    std::fs::write(
        &measured_page,
        page.replace("</body>", &format!("{MEASURE}</body>")),
    )
    .unwrap();
    let url = format!("file://{}", measured_page.display());
    let dom = helpers::chromium(&["--dump-dom".into(), url]).await;
    let start = dom.find("data-measured=\"").expect("the page was measured") + 15;
    let end = start + dom[start..].find('"').unwrap();
    let measured: Value = serde_json::from_str(&dom[start..end].replace("&quot;", "\"")).unwrap();
    for chart in ["throughput", "latency", "progress", "distribution"] {
        let c = &measured[chart];
        assert!(
            c["ticks"].as_u64().unwrap() >= 4,
            "{chart} has labelled ticks: {c}"
        );
        let series = c["series"].as_object().unwrap();
        assert!(!series.is_empty(), "{chart} draws a series: {c}");
        for (label, s) in series {
            assert!(
                s["points"].as_u64().unwrap() >= 2,
                "{chart} {label} marks its points: {s}"
            );
            assert!(
                s["width"].as_u64().unwrap() > 100,
                "{chart} {label} spans the chart: {s}"
            );
        }
    }
    // Completed beside accepted: both drawn, and completed catches up with accepted.
    let progress = &measured["progress"]["series"];
    assert!(progress["accepted"].is_object() && progress["completed"].is_object());
    let points = report["progress"].as_array().unwrap();
    let last = points.last().unwrap();
    assert_eq!(last["completed"], last["accepted"], "{last}");
    assert_eq!(last["accepted"], 60);
    // The distribution runs from p50 to the maximum, per outcome.
    assert_eq!(measured["distribution"]["series"]["201"]["points"], 8);
    assert_eq!(measured["distribution"]["series"]["409"]["points"], 8);

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("load-report.png");
    let _ = std::fs::remove_file(&shot);
    helpers::chromium(&[
        "--window-size=1000,2000".into(),
        format!("--screenshot={}", shot.display()),
        format!("file://{}", html.display()),
    ])
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    let _ = std::fs::remove_file(measured_page);
    let _ = std::fs::remove_file(html);
    app.stop().await;
}

/// The logins before a sale: every login of the accounts it registered succeeds, and
/// the report says how many, how fast and how long they took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logins_scenario_measures_logins_of_registered_accounts() {
    let app = spawn_app(Mode::Embedded).await;
    let report =
        std::env::temp_dir().join(format!("fs_logins_{}.json", uuid::Uuid::new_v4().simple()));
    let argv = [
        "flashsale-load".to_string(),
        "--quiet".into(),
        format!("--target={}", app.address),
        format!("--report-json={}", report.display()),
        "logins".into(),
        "--accounts=5".into(),
        "--logins=40".into(),
        "--window-ms=500".into(),
    ];
    let code = flashsale_load::main_with(flashsale_load::Cli::parse_from(argv)).await;
    assert_eq!(code, 0);
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(report);
    assert_eq!(json["accounts"], 5, "{json:#}");
    assert_eq!(json["answers"]["200"], 40, "every login succeeds: {json:#}");
    assert_eq!(json["latencyMs"]["count"], 40, "{json:#}");
    assert!(json["loginsPerSecond"].as_f64().unwrap() > 0.0, "{json:#}");
    assert!(json["latencyMs"]["p99"].as_f64().unwrap() > 0.0, "{json:#}");
    app.stop().await;
}
