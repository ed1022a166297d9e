//! The load tester against a server started here: a small burst and a short retry
//! storm end with exit code 0 and a JSON report that says what happened.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
#[macro_use]
mod helpers;

use clap::Parser;
use helpers::{spawn_app, Mode, ADMIN_TOKEN, JWT_SECRET};
use serde_json::Value;

async fn load(app: &helpers::TestApp, args: &[&str]) -> (i32, Value) {
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
    let _ = std::fs::remove_file(html);
    (code, json)
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
