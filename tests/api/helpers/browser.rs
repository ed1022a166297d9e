//! A real browser (headless Chromium) for the pages the admin listener serves.

use std::time::Duration;

/// Runs headless Chromium (Debian's `chromium`) against a page; returns its stdout.
pub async fn chromium(args: &[String]) -> String {
    let profile =
        std::env::temp_dir().join(format!("fs_chromium_{}", uuid::Uuid::new_v4().simple()));
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium is installed (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
