//! Shard reads against a real streaming replica (PostgreSQL on 5433, started by
//! scripts/services.sh as a hot standby of 5432): reads go there, an order just
//! completed is read as written, a replica whose replay is paused or that is stopped
//! sends reads to the primary without an error, and reads come back to it once it has
//! caught up. These pause and stop the one replica, so they live in a test binary of
//! their own and run one after the other.

#[path = "api/helpers/mod.rs"]
#[macro_use]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::time::Duration;

use flashsale::config::{Secret, Settings};
use reqwest::StatusCode;

use helpers::{eventually, spawn_app_with, Options, TestApp};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every shard reads from its replica: the same database on 5433; a lag above 500 ms
/// sends reads to the primary.
fn with_replicas(s: &mut Settings) {
    s.shards.replica_urls = s
        .shards
        .urls
        .iter()
        .map(|u| Secret::new(u.expose().replace("127.0.0.1:5432", "127.0.0.1:5433")))
        .collect();
    s.shards.replica_max_lag_ms = 500;
}

async fn app() -> TestApp {
    let app = spawn_app_with(Options {
        configure: Some(with_replicas),
        ..Options::default()
    })
    .await;
    eventually(Duration::from_secs(30), "every replica is up", || async {
        let m = app.metrics().await;
        let up = (0..2).all(|i| m.contains(&format!("flashsale_replica_up{{shard=\"{i}\"}} 1")));
        if up {
            Ok(())
        } else {
            Err("not yet")
        }
    })
    .await;
    app
}

/// The replica of shard-0 as the admin tree shows it.
async fn tree_replica(app: &TestApp) -> serde_json::Value {
    app.actor("shard-0").await["replica"].clone()
}

/// Reads served so far by `by` (`replica` or `primary`), over every shard.
async fn served(app: &TestApp, by: &str) -> f64 {
    let label = format!("served_by=\"{by}\"");
    app.metric_sum("flashsale_shard_reads_total", &label).await
}

/// Reads of `order` go to the replica again within `secs`.
async fn back_on_the_replica(app: &TestApp, order: &(String, String), secs: u64) {
    eventually(
        Duration::from_secs(secs),
        "reads go back to the replica",
        || async {
            let before = served(app, "replica").await;
            read_back(app, std::slice::from_ref(order)).await;
            if served(app, "replica").await > before {
                Ok(())
            } else {
                Err("still the primary")
            }
        },
    )
    .await;
}

fn psql(port: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .args([
            "-w",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-U",
            "postgres",
            "-Atc",
            sql,
        ])
        .output()
        .expect("psql runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn pg_ctl_replica(action: &str) {
    let ver = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
        .unwrap();
    let ok = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            &ver,
            "replica",
            action,
            "-m",
            "fast",
        ])
        .status()
        .expect("pg_ctlcluster runs")
        .success();
    assert!(ok || action == "start", "pg_ctlcluster {action}");
}

/// Undoes a test's harm to the replica however the test ends.
struct Restore(fn());

impl Drop for Restore {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// Each order reads `completed`, by id and in its buyer's list, with no error. The list
/// may come from the replica, which may be up to `replica_max_lag_ms` behind the order
/// (the order by id falls back to the primary): it is awaited.
async fn read_back(app: &TestApp, orders: &[(String, String)]) {
    for (token, id) in orders {
        let order = app.wait_settled(token, id).await;
        assert_eq!(order["status"], "completed", "{order}");
        let what = format!("{id} is in its buyer's list");
        eventually(Duration::from_secs(10), &what, || async {
            let list = app
                .client
                .get(format!("{}/users/me/orders", app.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            assert_eq!(list.status(), StatusCode::OK);
            let list: serde_json::Value = list.json().await.unwrap();
            let listed = list["orders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["orderId"] == id.as_str());
            if listed {
                Ok(())
            } else {
                Err(list)
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_the_replica_and_an_order_just_completed_is_read_as_written() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = app().await;
    let product = app.sale(100, 1).await;
    let orders = app.buy_as_new_buyers(product, 6).await;
    read_back(&app, &orders).await;
    // Reads go to the replica while its lag is within the bound; a busy machine may
    // hold it above the bound for a moment (reads then go to the primary).
    back_on_the_replica(&app, &orders[0], 30).await;
    // The replica's connections are this test's shards' own.
    let db = app.shard_urls[0].rsplit('/').next().unwrap().to_string();
    let on_replica = psql(
        "5433",
        &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}'"),
    );
    assert_ne!(on_replica, "0", "no connection to the replica's {db}");
    // The tree shows it on the shard's node.
    let replica = tree_replica(&app).await;
    assert_eq!(
        (&replica["up"], &replica["serving"]),
        (&true.into(), &true.into()),
        "{replica}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_replay_is_paused_sends_reads_to_the_primary_until_it_catches_up() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = app().await;
    let product = app.sale(100, 1).await;
    let _resume = Restore(|| {
        psql("5433", "SELECT pg_wal_replay_resume()");
    });
    psql("5433", "SELECT pg_wal_replay_pause()");
    // Orders written meanwhile are not on the replica: the lag grows past the bound.
    let orders = app.buy_as_new_buyers(product, 6).await;
    eventually(Duration::from_secs(30), "the lag is seen", || async {
        let m = app.metrics().await;
        let lagging = m.lines().any(|l| {
            l.starts_with("flashsale_replica_lag_seconds")
                && l.rsplit(' ')
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
                    > 0.5
        });
        let _ = app.buy_as_new_buyers(product, 1).await;
        if lagging {
            Ok(())
        } else {
            Err("no lag yet")
        }
    })
    .await;
    let before = served(&app, "primary").await;
    read_back(&app, &orders).await;
    assert!(
        served(&app, "primary").await > before,
        "the primary served nothing"
    );

    psql("5433", "SELECT pg_wal_replay_resume()");
    back_on_the_replica(&app, &orders[0], 30).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_replica_sends_reads_to_the_primary_without_an_error() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = app().await;
    let product = app.sale(100, 1).await;
    let orders = app.buy_as_new_buyers(product, 4).await;
    read_back(&app, &orders).await;

    let _start = Restore(|| pg_ctl_replica("start"));
    pg_ctl_replica("stop");
    let more = app.buy_as_new_buyers(product, 4).await;
    read_back(&app, &orders).await;
    read_back(&app, &more).await;
    eventually(
        Duration::from_secs(10),
        "the tree shows the replica down",
        || async {
            match tree_replica(&app).await {
                r if r["up"] == false && r["serving"] == false => Ok(()),
                r => Err(r),
            }
        },
    )
    .await;

    pg_ctl_replica("start");
    back_on_the_replica(&app, &more[0], 60).await;
    app.stop().await;
}
