//! Outages of the shared services themselves in the middle of a sale: RabbitMQ
//! restarted, Redis losing everything (its data flushed and every connection dropped,
//! as a restart without persistence does), the partitions' Redis servers restarted
//! with their append-only files. They take away services every other test
//! uses, so they live in a test binary of their own (cargo runs test binaries one at a
//! time) and run one after the other.

#[path = "api/helpers/mod.rs"]
#[macro_use]
#[allow(dead_code, unused_imports)]
mod helpers;

use std::time::Duration;

use futures_util::future::join_all;
use reqwest::StatusCode;

use helpers::{eventually, spawn_app_with, Options, TestApp};

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Buys with fresh users in waves of 40; `fault` runs while wave 2 is in flight.
/// Returns (token, order id) of each `201`.
async fn burst<F: std::future::Future<Output = ()>>(
    app: &TestApp,
    product: i64,
    waves: usize,
    fault: F,
) -> Vec<(String, String)> {
    let mut fault = Some(fault);
    let mut accepted = Vec::new();
    for wave in 0..waves {
        let tokens: Vec<String> = (0..40).map(|_| app.token_for_new_user().1).collect();
        let buys = join_all(tokens.iter().map(|t| app.buy(t, product, "k", None)));
        let replies = match (wave, fault.take()) {
            (2, Some(f)) => tokio::join!(buys, f).0,
            (_, f) => {
                fault = f;
                buys.await
            }
        };
        for (t, r) in tokens.iter().zip(replies) {
            match r.status {
                StatusCode::CREATED => {
                    accepted.push((t.clone(), r.body["orderId"].as_str().unwrap().to_string()))
                }
                StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("unexpected {other}: {:?}", r.body),
            }
        }
    }
    accepted
}

/// Every `201` ends `completed`, stored once, and the books balance.
async fn assert_kept(app: &TestApp, product: i64, accepted: &[(String, String)]) {
    app.assert_completed_once(accepted).await;
    let rows = app.all_shard_orders().await;
    let counters = eventually(Duration::from_secs(60), "the books balance", || async {
        let c = app.sale_counters(product).await;
        if c["pending"] == 0 && c["sold"] == c["completed"] {
            Ok(c)
        } else {
            Err(c)
        }
    })
    .await;
    let completed = rows.iter().filter(|r| r.3 == "completed").count() as i64;
    assert!(
        counters["sold"].as_i64().unwrap() >= completed,
        "{counters} vs {completed} stored"
    );
}

/// More new buyers until the sale answers `out_of_stock` (waiting out `503`s), then:
/// every `201` kept, and exactly `stock` orders completed in the shards.
async fn sell_out_exactly(
    app: &TestApp,
    product: i64,
    stock: i64,
    accepted: &mut Vec<(String, String)>,
) {
    loop {
        let (_, token) = app.token_for_new_user();
        let r = app.buy(&token, product, "k", None).await;
        match r.status {
            StatusCode::CREATED => {
                accepted.push((token, r.body["orderId"].as_str().unwrap().to_string()))
            }
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => {
                assert_eq!(r.error(), "out_of_stock", "{:?}", r.body);
                break;
            }
        }
    }
    assert_kept(app, product, accepted).await;
    let completed = app
        .all_shard_orders()
        .await
        .iter()
        .filter(|r| r.3 == "completed")
        .count() as i64;
    assert_eq!(completed, stock, "{} answered 201", accepted.len());
}

async fn run(program: &str, args: &[&str]) {
    let out = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_during_a_burst_loses_no_accepted_order() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        reconcile_after_ms: 3_000,
        ..Options::default()
    })
    .await;
    let product = app.sale(1_000, 1).await;
    let restart = async {
        run("rabbitmqctl", &["stop_app"]).await;
        // The fault itself, not a wait for it: the broker stays away for 2 s while
        // the burst goes on, long enough for publishes and consumers to fail.
        tokio::time::sleep(Duration::from_secs(2)).await;
        run("rabbitmqctl", &["start_app"]).await;
        run("rabbitmqctl", &["await_startup", "--timeout", "120"]).await;
    };
    let accepted = burst(&app, product, 6, restart).await;
    assert!(accepted.len() >= 80, "{} accepted", accepted.len());
    assert_kept(&app, product, &accepted).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_everything_during_a_burst_sells_exactly_the_stock() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let stock = 150;
    let product = app.sale(stock, 1).await;
    // Both partition servers lose their data and drop every connection.
    let lose_everything = async {
        for (port, db) in [("6380", "14"), ("6381", "15")] {
            run("redis-cli", &["-p", port, "-n", db, "FLUSHDB"]).await;
            run(
                "redis-cli",
                &["-p", port, "CLIENT", "KILL", "TYPE", "normal"],
            )
            .await;
        }
    };
    let mut accepted = burst(&app, product, 4, lose_everything).await;
    // More buyers until the sale is sold out; exactly the stock is sold: the 201s, and
    // orders whose buyers were told to retry with the same key when the partition went
    // away between publish and answer.
    sell_out_exactly(&app, product, stock, &mut accepted).await;
    // Replays of keys from before the loss return their orders; limits hold.
    for (token, id) in accepted.iter().take(5) {
        let replay = app.buy(token, product, "k", None).await;
        assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
        assert_eq!(replay.body["orderId"], id.as_str());
        let more = app.buy(token, product, "another", None).await;
        assert!(more.error() == "purchase_limit_reached", "{:?}", more.body);
    }
    app.stop().await;
}

/// `redis-cli ARGS`, answering what it printed.
async fn redis_cli(args: &[&str]) -> String {
    let out = tokio::process::Command::new("redis-cli")
        .args(args)
        .output()
        .await
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_servers_restarted_keep_their_sales_without_a_rebuild() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let app = spawn_app_with(Options {
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let product = app.sale(100, 1).await;
    let accepted = app.buy_as_new_buyers(product, 10).await;
    app.assert_completed_once(&accepted).await;
    let rebuilds = || app.metric_sum("flashsale_inventory_rebuilds_total", "");
    let rebuilt_before = rebuilds().await;

    // Each partition's own server stops (its append-only file fsynced) and starts again
    // the way scripts/services.sh starts it.
    for port in ["6380", "6381"] {
        assert_eq!(
            redis_cli(&["-p", port, "CONFIG", "GET", "appendonly"]).await,
            "appendonly\nyes"
        );
        redis_cli(&["-p", port, "SHUTDOWN"]).await;
    }
    let services = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let started = tokio::process::Command::new("bash")
        .arg(services)
        .output()
        .await
        .expect("bash runs");
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );

    // The sale comes back as it was: nothing to rebuild, nothing answered 503 for it.
    let counters = eventually(Duration::from_secs(30), "the partition is back", || async {
        let r = app
            .client
            .get(format!("{}/admin/flash-sales/{product}", app.admin_address))
            .bearer_auth(helpers::ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => Ok(r.json::<serde_json::Value>().await.unwrap()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(counters["remaining"], 90, "{counters}");
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "after", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(rebuilds().await, rebuilt_before, "a partition was rebuilt");
    // Old keys still replay their orders: the idempotency records survived too.
    let (token, id) = &accepted[0];
    let replay = app.buy(token, product, "k", None).await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["orderId"], id.as_str());
    app.stop().await;
}

/// A Redis primary with a replica and three Sentinels of this test's own (ports no
/// other test uses), so that its primary can be killed without touching the servers
/// every other test shares. Everything stops when it is dropped.
struct SentinelGroup {
    dir: std::path::PathBuf,
    ports: Vec<u16>,
}

const SERVICE: &str = "fsfailover";
// Below the ephemeral range (32768 and up), where an outgoing connection could hold one.
const PRIMARY: u16 = 16390;
const REPLICA: u16 = 16391;
const SENTINELS: [u16; 3] = [16392, 16393, 16394];

impl SentinelGroup {
    async fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("fs-sentinel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let group = SentinelGroup {
            dir: dir.clone(),
            ports: [PRIMARY, REPLICA].into_iter().chain(SENTINELS).collect(),
        };
        for port in [PRIMARY, REPLICA] {
            let port_s = port.to_string();
            let pidfile = dir.join(format!("{port}.pid"));
            let mut args = vec![
                "--daemonize",
                "yes",
                "--bind",
                "127.0.0.1",
                "--port",
                &port_s,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().unwrap(),
                "--pidfile",
                pidfile.to_str().unwrap(),
            ];
            let primary = PRIMARY.to_string();
            if port == REPLICA {
                args.extend(["--replicaof", "127.0.0.1", &primary]);
            }
            run("redis-server", &args).await;
        }
        for port in SENTINELS {
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "bind 127.0.0.1\nport {port}\ndir {dir}\nlogfile {dir}/sentinel-{port}.log\n\
                     sentinel monitor {SERVICE} 127.0.0.1 {PRIMARY} 2\n\
                     sentinel down-after-milliseconds {SERVICE} 1000\n\
                     sentinel failover-timeout {SERVICE} 5000\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            run(
                "redis-sentinel",
                &[conf.to_str().unwrap(), "--daemonize", "yes"],
            )
            .await;
        }
        // Ready when every Sentinel knows the replica and the other two (a failover
        // needs a quorum and an elected leader).
        eventually(
            Duration::from_secs(30),
            "the Sentinels know each other",
            || async {
                for port in SENTINELS {
                    let p = port.to_string();
                    let replicas = redis_cli(&["-p", &p, "SENTINEL", "REPLICAS", SERVICE]).await;
                    let peers = redis_cli(&["-p", &p, "SENTINEL", "SENTINELS", SERVICE]).await;
                    if !replicas.contains(&REPLICA.to_string())
                        || peers.matches("runid").count() < 2
                    {
                        let log = dir.join(format!("sentinel-{port}.log"));
                        let log = std::fs::read_to_string(log).unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(5).collect();
                        return Err(format!(
                            "{port}: replicas {replicas:?}, peers {peers:?}, log ends {tail:?}"
                        ));
                    }
                }
                Ok(())
            },
        )
        .await;
        group
    }

    fn url(&self, db: u32) -> String {
        let hosts: Vec<String> = SENTINELS.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        format!("redis+sentinel://{}/{SERVICE}/{db}", hosts.join(","))
    }

    /// The primary's port, as the Sentinels see it.
    async fn primary(&self) -> String {
        let p = SENTINELS[0].to_string();
        let addr = redis_cli(&["-p", &p, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE]).await;
        addr.lines().nth(1).unwrap_or_default().to_string()
    }

    /// Kills the primary with SIGKILL: no shutdown, no last sync to the replica.
    async fn kill_primary(&self) {
        let pid = std::fs::read_to_string(self.dir.join(format!("{PRIMARY}.pid"))).unwrap();
        run("kill", &["-9", pid.trim()]).await;
    }
}

impl Drop for SentinelGroup {
    fn drop(&mut self) {
        for port in &self.ports {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SHUTDOWN", "NOSAVE"])
                .output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_primary_killed_mid_sale_fails_over_and_sells_exactly_the_stock() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let group = SentinelGroup::start().await;
    let app = spawn_app_with(Options {
        reconcile_every_ms: 200,
        inventory_urls: Some(vec![group.url(1), group.url(2)]),
        ..Options::default()
    })
    .await;
    let stock = 150;
    let product = app.sale(stock, 1).await;
    let rebuilds = || app.metric_sum("flashsale_inventory_rebuilds_total", "");
    let rebuilt_before = rebuilds().await;
    assert_eq!(group.primary().await, PRIMARY.to_string());

    let mut accepted = burst(&app, product, 4, group.kill_primary()).await;
    // The Sentinels promote the replica; the partitions follow it there.
    eventually(
        Duration::from_secs(30),
        "the replica is promoted",
        || async {
            match group.primary().await {
                p if p == REPLICA.to_string() => Ok(()),
                p => Err(p),
            }
        },
    )
    .await;
    // Whatever the replica had not received when its primary died, the partition was
    // rebuilt from the shards: not one unit more than the stock, none accepted lost.
    sell_out_exactly(&app, product, stock, &mut accepted).await;
    assert!(
        rebuilds().await > rebuilt_before,
        "the promoted replica was taken as whole"
    );
    let replay = app.buy(&accepted[0].0, product, "k", None).await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["orderId"], accepted[0].1.as_str());
    app.stop().await;
}
