//! Failures during a sale lose nothing: killed shard connections, restarted
//! consumers, and a crash between reserving and publishing.

use std::time::Duration;

use flashsale::actors::inventory::Counters;
use flashsale::actors::queue::Publish;
use flashsale::config::{Role, Secret};
use flashsale::domain::{now_ms, IdempotencyKey, OrderMessage, ProductId, Quantity};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{
    delete_redis_keys, eventually, spawn_app, spawn_app_with, Mode, Options, Proxy, TestApp,
};

/// Buys with `buyers` fresh users in waves of 40, and runs `fault(wave)` while each
/// wave is in flight (and the orders of the waves before it are being consumed), so
/// that every fault lands in the middle of the sale. Returns (token, order id) of each
/// 201 and what the faults returned.
async fn burst_with<T, F, Fut>(
    app: &TestApp,
    product: i64,
    buyers: usize,
    mut fault: F,
) -> (Vec<(String, String)>, Vec<T>)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut accepted = Vec::new();
    let mut faults = Vec::new();
    for wave in 0..buyers.div_ceil(WAVE) {
        let tokens: Vec<_> = (0..WAVE.min(buyers - wave * WAVE))
            .map(|_| app.token_for_new_user().1)
            .collect();
        let buys = join_all(tokens.iter().map(|t| app.buy(t, product, "k", None)));
        let (replies, done) = tokio::join!(buys, fault(wave));
        faults.push(done);
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
    (accepted, faults)
}

const WAVE: usize = 40;

fn restarts(node: &Value) -> u64 {
    node["restarts"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_shard_connections_during_a_sale_loses_nothing() {
    // The shards are reached through a proxy that the test cuts, as a failover would:
    // every connection the app holds breaks at once, whether it goes straight to
    // PostgreSQL or through PgBouncer (where killing the server's side would not reach
    // the app: the pooler replaces a server connection without a word to its client).
    let target = match std::env::var("FLASHSALE_TEST_PGBOUNCER") {
        Ok(port) => &*Box::leak(format!("127.0.0.1:{port}").into_boxed_str()),
        Err(_) => "127.0.0.1:5432",
    };
    let postgres = Proxy::start(target).await;
    let app = spawn_app_with(Options {
        postgres_port: Some(postgres.port),
        ..Options::default()
    })
    .await;
    let product = app.sale(150, 1).await;
    let (accepted, killed) = burst_with(&app, product, 200, |_| async {
        let open = postgres.cut();
        postgres.restore();
        open as i64
    })
    .await;
    assert!(
        killed.iter().sum::<i64>() > 0,
        "connections were killed: {killed:?}"
    );
    assert!(!accepted.is_empty());
    app.assert_completed_once(&accepted).await;
    // The kills were felt: a shard actor met a dead connection and was restarted.
    let mut shard_restarts = 0;
    for shard in 0..app.shard_urls.len() {
        shard_restarts += restarts(&app.actor(&format!("shard-{shard}")).await);
    }
    assert!(shard_restarts > 0, "no shard actor lost a connection");
    let counters = app.sale_counters(product).await;
    assert_eq!(
        counters["sold"],
        accepted.len(),
        "every sold unit belongs to an accepted order"
    );
    assert_eq!(counters["completed"], accepted.len());
    app.stop().await;
}

in_both_modes!(restarting_consumers_during_a_sale_loses_nothing);
async fn restarting_consumers_during_a_sale_loses_nothing(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(150, 1).await;
    let names = [
        "order-consumer-0",
        "order-consumer-1",
        "notification-consumer-0",
        "shard-0",
        "order-consumer-0",
    ];
    // One restart per wave, each of an actor that is running at that moment.
    let (accepted, _) = burst_with(&app, product, names.len() * WAVE, |wave| {
        let app = &app;
        async move {
            let name = names[wave];
            eventually(Duration::from_secs(10), &format!("{name} runs"), || async {
                let a = app.actor(name).await;
                if a["status"] == "running" {
                    Ok(())
                } else {
                    Err(a)
                }
            })
            .await;
            let r = app
                .admin(Method::POST, &format!("/admin/actors/{name}/restart"), None)
                .await;
            assert_eq!(r.status, StatusCode::OK, "restart {name}: {:?}", r.body);
        }
    })
    .await;
    assert_eq!(accepted.len(), 150, "the restarts did not stop intake");
    app.assert_completed_once(&accepted).await;
    for name in [
        "order-consumer-0",
        "order-consumer-1",
        "notification-consumer-0",
        "shard-0",
    ] {
        let asked = names.iter().filter(|n| **n == name).count() as u64;
        let what = format!("{name} was restarted {asked} time(s) and runs");
        eventually(Duration::from_secs(10), &what, || async {
            let a = app.actor(name).await;
            if restarts(&a) >= asked && a["status"] == "running" {
                Ok(())
            } else {
                Err(a)
            }
        })
        .await;
    }
    app.stop().await;
}

in_both_modes!(the_reconciler_releases_reservations_that_were_never_published);
async fn the_reconciler_releases_reservations_that_were_never_published(mode: Mode) {
    let app = spawn_app_with(Options {
        reconcile_after_ms: 800,
        mode,
        ..Options::default()
    })
    .await;
    let product = app.sale(3, 1).await;
    let (user, token) = app.token_for_new_user();
    let dir = &app.app_state.directory;

    // A reservation made just before a crash: reserved, never published.
    let lost = app.reserve_unpublished(product, &user, "crash").await;
    assert_eq!(app.sale_counters(product).await["remaining"], 2);

    eventually(
        Duration::from_secs(10),
        "the stale reservation is released",
        || async {
            let c = app.sale_counters(product).await;
            if c["remaining"] == 3 && c["pending"] == 0 {
                Ok(())
            } else {
                Err(c)
            }
        },
    )
    .await;

    // Had the message reached the queue after all, the order is recorded as cancelled.
    let message = OrderMessage {
        order_id: lost.clone(),
        user_id: user.clone(),
        product_id: ProductId::from_db(product),
        quantity: Quantity::ONE,
        idempotency_key: IdempotencyKey::parse("crash").unwrap(),
        created_at: now_ms(),
        amount_cents: None,
        payment_window_secs: None,
        traceparent: None,
    };
    let publish = Publish {
        queue: dir.orders_queue.clone(),
        payload: serde_json::to_vec(&message).unwrap(),
        traceparent: None,
    };
    assert!(dir.publisher().call(publish).await.unwrap());
    assert_eq!(
        app.wait_settled(&token, lost.as_str()).await["status"],
        "cancelled"
    );

    // The buyer retrying with the same key gets a real order.
    let r = app.buy(&token, product, "crash", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_ne!(r.body["orderId"], lost.as_str());
    let c = app.sale_counters(product).await;
    assert_eq!(c["remaining"], 2);
    app.stop().await;
}

in_both_modes!(orders_are_visible_as_pending_before_their_shard_has_them);
async fn orders_are_visible_as_pending_before_their_shard_has_them(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(5, 1).await;
    let (user, token) = app.token_for_new_user();
    // The order consumers are stalled: what is accepted now waits in the queue.
    let mut held = app.hold_orders().await;

    let r = app.buy(&token, product, "p", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["orderId"].as_str().unwrap().to_string();
    held.wait_for(&id).await;

    let now = app.get_order(&token, &id).await;
    assert_eq!(now.status, StatusCode::OK, "{:?}", now.body);
    assert_eq!(now.body["status"], "pending", "{:?}", now.body);
    assert_eq!(now.body["orderId"], id.as_str());
    assert_eq!(now.body["userId"], user.as_str());
    assert_eq!(now.body["productId"], product);
    assert_eq!(now.body["quantity"], 1);
    let rows = app.all_shard_orders().await;
    assert!(
        rows.iter().all(|(_, o, _, _)| *o != id),
        "no shard has the order yet: {rows:?}"
    );
    let counters = app.sale_counters(product).await;
    assert_eq!(
        (&counters["pending"], &counters["completed"]),
        (&1.into(), &0.into()),
        "{counters}"
    );
    let (_, stranger) = app.token_for_new_user();
    assert_eq!(
        app.get_order(&stranger, &id).await.status,
        StatusCode::NOT_FOUND,
        "a pending order is its owner's only"
    );

    // The consumers get it: it is completed, and stored once.
    held.release().await;
    assert_eq!(app.wait_settled(&token, &id).await["status"], "completed");
    let rows = app.all_shard_orders().await;
    let stored: Vec<_> = rows.iter().filter(|(_, o, _, _)| *o == id).collect();
    assert_eq!(stored.len(), 1, "{rows:?}");
    assert_eq!(stored[0].3, "completed");
    app.stop().await;
}

/// A Redis user of one test's own on the inventory partitions' servers, whose rights
/// the test can take away: a refusal that only that test's connections meet (a server
/// refusing writes for everyone, `min-replicas-to-write` or a full disk, would reach
/// every test sharing the servers). Deleted when dropped.
struct RedisUser {
    name: String,
}

const REDIS_PORTS: [&str; 2] = ["6380", "6381"];

impl RedisUser {
    fn create() -> Self {
        let user = RedisUser {
            name: format!("fstest-{}", uuid::Uuid::new_v4().simple()),
        };
        user.acl(&["on", ">pw", "~*", "&*", "+@all"]);
        user
    }

    /// The partitions' URLs, as this user.
    fn urls(&self) -> Vec<String> {
        crate::helpers::REDIS_DBS
            .iter()
            .map(|u| u.replace("redis://", &format!("redis://{}:pw@", self.name)))
            .collect()
    }

    fn acl(&self, rules: &[&str]) {
        for port in REDIS_PORTS {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", port, "ACL", "SETUSER", &self.name])
                .args(rules)
                .output()
                .expect("redis-cli runs");
            let said = String::from_utf8_lossy(&out.stdout);
            assert!(said.trim() == "OK", "ACL SETUSER on {port}: {said}");
        }
    }
}

impl Drop for RedisUser {
    fn drop(&mut self) {
        for port in REDIS_PORTS {
            let _ = std::process::Command::new("redis-cli")
                .args(["-p", port, "ACL", "DELUSER", &self.name])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_refuses_writes_is_away_and_no_order_is_dead_lettered() {
    let redis = RedisUser::create();
    let app = spawn_app_with(Options {
        inventory_urls: Some(redis.urls()),
        ..Options::default()
    })
    .await;
    let product = app.sale(20, 1).await;
    // Orders accepted while the consumers are held back wait in the queue.
    let mut held = app.hold_orders().await;
    let accepted = app.buy_as_new_buyers(product, 5).await;
    held.wait_for(&accepted.last().unwrap().1).await;

    // Redis refuses the partitions' scripts (an ACL refusal: `ERR The user executing
    // the script can't access…`, the same code as a script's own runtime error).
    redis.acl(&["resetkeys"]);
    held.release().await;
    // A buyer is told to retry; the pod is not ready.
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    let readiness = || async {
        let r = app
            .client
            .get(format!("{}/readyz", app.address))
            .send()
            .await;
        r.map(|r| r.status()).map_err(|e| e.to_string())
    };
    eventually(Duration::from_secs(30), "the pod is not ready", || async {
        match readiness().await? {
            StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;
    // The consumers met the refusal claiming the queued orders, and kept them queued.
    eventually(
        Duration::from_secs(30),
        "the consumers met the refusal",
        || async {
            let restarts = restarts(&app.actor("order-consumer-0").await)
                + restarts(&app.actor("order-consumer-1").await);
            if restarts > 0 {
                Ok(())
            } else {
                Err("no consumer restarted")
            }
        },
    )
    .await;

    // Redis takes writes again: every accepted order completes, none is a dead letter.
    redis.acl(&["~*"]);
    app.assert_completed_once(&accepted).await;
    let letters = app.admin(Method::GET, "/admin/dead-letters", None).await;
    assert_eq!(letters.body["total"], 0, "{:?}", letters.body);
    eventually(
        Duration::from_secs(30),
        "the pod is ready again",
        || async {
            match readiness().await? {
                StatusCode::OK => Ok(()),
                other => Err(other.to_string()),
            }
        },
    )
    .await;
    app.stop().await;
}

/// A Redis server of one test's own on `port` (below the ephemeral range, used by no
/// other test of this binary), with no persistence but the snapshot the test takes:
/// starting it again from that snapshot is a server back after a host crash without
/// the writes made since. Stopped when dropped.
struct PrivateRedis {
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let dir = std::env::temp_dir().join(format!("fs-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let server = PrivateRedis { port, dir };
        server.run();
        server
    }

    fn run(&self) {
        let (port, dir) = (
            self.port.to_string(),
            self.dir.to_str().unwrap().to_string(),
        );
        let pidfile = format!("{dir}/redis.pid");
        let args = [
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--dir",
            &dir,
            "--dbfilename",
            "snapshot.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
            "--pidfile",
            &pidfile,
            "--logfile",
            "redis.log",
        ];
        let started = std::process::Command::new("redis-server")
            .args(args)
            .status()
            .unwrap();
        assert!(started.success(), "redis-server on {port} starts");
        for _ in 0..100 {
            if self.cli(&["PING"]) == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {port} did not come up");
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn urls(&self) -> Vec<String> {
        (0..2)
            .map(|db| format!("redis://127.0.0.1:{}/{db}", self.port))
            .collect()
    }

    /// The host crashes: the server goes without writing anything, and comes back with
    /// the last snapshot.
    fn crash_and_restart(&self) {
        self.cli(&["SHUTDOWN", "NOSAVE"]);
        for _ in 0..100 {
            if self.cli(&["PING"]) != "PONG" {
                return self.run();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server on {} did not stop", self.port);
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.cli(&["SHUTDOWN", "NOSAVE"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_back_without_its_last_writes_rebuilds_and_never_oversells() {
    let redis = PrivateRedis::start(16396);
    let app = spawn_app_with(Options {
        inventory_urls: Some(redis.urls()),
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let product = app.sale(10, 1).await;
    let mut accepted = app.buy_as_new_buyers(product, 3).await;
    app.assert_completed_once(&accepted).await;
    // What the disk holds when the host dies: everything so far.
    assert_eq!(redis.cli(&["SAVE"]), "OK");

    // Three more orders are accepted and wait in the queue; their reservations live
    // only in the server's memory.
    let mut held = app.hold_orders().await;
    let unsaved = app.buy_as_new_buyers(product, 3).await;
    held.wait_for(&unsaved.last().unwrap().1).await;
    accepted.extend(unsaved);
    redis.crash_and_restart();
    held.release().await;

    // The partition notices, rebuilds (503 meanwhile), honours the three orders, and
    // sells exactly the rest of the stock.
    buy_out(&app, product, &mut accepted, Duration::from_secs(30)).await;
    assert_eq!(accepted.len(), 10, "the stock of ten, sold once each");
    app.assert_completed_once(&accepted).await;
    let letters = app.admin(Method::GET, "/admin/dead-letters", None).await;
    assert_eq!(letters.body["total"], 0, "{:?}", letters.body);
    app.stop().await;
}

/// Where a test app's shards are: the `host:port` of its first shard URL.
fn shard_server(app: &TestApp) -> &'static str {
    let url = app.settings.shards.urls[0].expose();
    let after = url.split('@').nth(1).expect("a shard URL with a user");
    Box::leak(
        after
            .split('/')
            .next()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    )
}

/// Two new buyers' orders, accepted while a worker's shard writes wait at `postgres`
/// (held from now on), once the worker has claimed one at least (the other is claimed
/// too, or waits in the worker's hands behind the first: a consumer's batch that
/// began with one order alone waits at the proxy); answers them.
async fn two_orders_held_at(
    api: &TestApp,
    postgres: &Proxy,
    product: i64,
) -> Vec<(String, String)> {
    let partition = api
        .app_state
        .directory
        .product_partition(ProductId::from_db(product));
    postgres.hold();
    let accepted = api.buy_as_new_buyers(product, 2).await;
    eventually(
        Duration::from_secs(20),
        "the worker claims an order",
        || async {
            let counters = partition
                .call(Counters {
                    product: ProductId::from_db(product),
                })
                .await
                .map_err(|e| e.to_string())?;
            match counters {
                Some(c) if c.pending < 2 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    accepted
}

/// New buyers buy one unit each once the sale answers (it may answer 503 `within`),
/// until it is out of stock; what they were sold joins `accepted`.
async fn buy_out(
    api: &TestApp,
    product: i64,
    accepted: &mut Vec<(String, String)>,
    within: Duration,
) {
    loop {
        let (token, r) = eventually(within, "the sale answers", || async {
            let (_, token) = api.token_for_new_user();
            let r = api.buy(&token, product, "k", None).await;
            match r.status {
                StatusCode::SERVICE_UNAVAILABLE => Err(format!("{} {}", r.status, r.body)),
                _ => Ok((token, r)),
            }
        })
        .await;
        if r.status != StatusCode::CREATED {
            assert_eq!(r.error(), "out_of_stock", "{:?}", r.body);
            return;
        }
        accepted.push((token, r.body["orderId"].as_str().unwrap().to_string()));
    }
}

/// A worker pod claims orders from their partition, then freezes before its shard has
/// them (its statements held at a proxy); the partition loses its state. Rebuilt
/// from the shards alone, the sale would sell those two units again: the rebuild
/// waits until no pod holds a claim from before the loss, and then counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_waits_for_orders_claimed_before_the_loss() {
    // The api pod takes orders and rebuilds partitions; its shard reads go straight
    // to the databases.
    let api = spawn_app_with(Options {
        reconcile_every_ms: 200,
        configure: Some(|s| s.role = Role::Api),
        ..Options::default()
    })
    .await;
    // The worker pod persists them, through a proxy the test holds.
    let server = shard_server(&api);
    let postgres = Proxy::start(server).await;
    let through = format!("127.0.0.1:{}", postgres.port);
    let worker = api
        .spawn_peer(move |s| {
            s.role = Role::Worker;
            s.shards.urls = (s.shards.urls.iter())
                .map(|u| Secret::new(u.expose().replace(server, &through)))
                .collect();
            // Its writes wait at the proxy for as long as the test holds them.
            s.limits.call_timeout_ms = 120_000;
            s.pod.heartbeat_secs = 1;
            s.pod.gone_after_secs = 3;
        })
        .await;
    let product = api.sale(3, 1).await;
    let mut accepted = two_orders_held_at(&api, &postgres, product).await;
    // The partitions lose their state, as a Redis restarted without its data would.
    delete_redis_keys(&api.settings.inventory.key_prefix)
        .await
        .unwrap();

    // The sale stays closed (503) while the worker holds the orders.
    let reopened = eventually(
        Duration::from_secs(30),
        "the rebuild waits for the orders held",
        || async {
            let (_, token) = api.token_for_new_user();
            let r = api.buy(&token, product, "k", None).await;
            if r.status == StatusCode::CREATED {
                return Ok(Some(r.body));
            }
            let waiting = r#"reason="held""#;
            if api
                .metric_sum("flashsale_inventory_rebuild_waiting", waiting)
                .await
                > 0.0
            {
                return Ok(None);
            }
            Err(format!("{} {}", r.status, r.body))
        },
    )
    .await;
    assert_eq!(
        reopened, None,
        "the sale reopened while orders claimed before the loss were on their way to their shard"
    );

    // The worker thaws: its orders reach the shard, the rebuild counts them, and the
    // one unit left sells once.
    postgres.let_through();
    buy_out(&api, product, &mut accepted, Duration::from_secs(30)).await;
    assert_eq!(accepted.len(), 3, "the stock of three, sold once each");
    api.assert_completed_once(&accepted).await;
    worker.stop().await;
    api.stop().await;
}

/// A worker pod as a process of its own, over a test app's backends, with its shards
/// reached through `shards_via` (`host:port` of a proxy in place of `server`).
async fn worker_process(
    app: &TestApp,
    id: &str,
    server: &str,
    shards_via: &str,
) -> tokio::process::Child {
    let s = &app.settings;
    let list = |urls: Vec<String>| {
        let quoted: Vec<String> = urls.iter().map(|u| format!("\"{u}\"")).collect();
        format!("[{}]", quoted.join(","))
    };
    let shards = (s.shards.urls.iter())
        .map(|u| u.expose().replace(server, shards_via))
        .collect();
    let inventory = s
        .inventory
        .urls
        .iter()
        .map(|u| u.expose().to_string())
        .collect();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "serve",
            "--role",
            "worker",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster.toml"),
        ])
        .env("FLASHSALE__POD__ID", id)
        .env("FLASHSALE__POD__HEARTBEAT_SECS", "1")
        .env("FLASHSALE__POD__GONE_AFTER_SECS", "3")
        .env("FLASHSALE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__TOKEN", crate::helpers::ADMIN_TOKEN)
        .env("FLASHSALE__CATALOG__URL", s.catalog.url.expose())
        .env("FLASHSALE__SHARDS__URLS", list(shards))
        .env(
            "FLASHSALE__SHARDS__TRANSACTION_POOLING",
            s.shards.transaction_pooling.to_string(),
        )
        .env("FLASHSALE__INVENTORY__URLS", list(inventory))
        .env("FLASHSALE__INVENTORY__KEY_PREFIX", &s.inventory.key_prefix)
        .env("FLASHSALE__QUEUE__URL", s.queue.url.expose())
        .env("FLASHSALE__QUEUE__ORDERS_QUEUE", &s.queue.orders_queue)
        .env(
            "FLASHSALE__QUEUE__NOTIFICATIONS_QUEUE",
            &s.queue.notifications_queue,
        )
        .env(
            "FLASHSALE__QUEUE__HEARTBEAT_SECS",
            s.queue.heartbeat_secs.to_string(),
        )
        .env("FLASHSALE__EVENTS__TOPIC_PREFIX", &s.events.topic_prefix)
        .env("FLASHSALE__EVENTS__GROUP_PREFIX", &s.events.group_prefix)
        // Its writes wait at the proxy for as long as the test holds them.
        .env("FLASHSALE__LIMITS__CALL_TIMEOUT_MS", "120000")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .spawn()
        .expect("the flashsale binary runs")
}

/// What the registry says of a pod: its heartbeat and the partitions it held then.
async fn pod_row(app: &TestApp, id: &str) -> Option<(i64, Option<String>)> {
    // Straight to PostgreSQL, also when the app reaches it through PgBouncer.
    let catalog = app.settings.catalog.url.expose();
    let database = catalog.rsplit('/').next().unwrap();
    let url = format!("postgres://postgres@127.0.0.1:5432/{database}");
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let row = sqlx::query_as("SELECT heartbeat_at, in_flight FROM pods WHERE id = $1")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .unwrap();
    pool.close().await;
    row
}

async fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().expect("running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
}

/// A worker pod freezes (SIGSTOP) between claiming orders and committing them, and
/// the partition loses its state. The frozen pod says nothing more, so the rebuild
/// waits until the broker has surely taken its deliveries back (missed heartbeats);
/// another worker claims them meanwhile and the rebuild counts them. Thawed (SIGCONT),
/// the frozen pod's commits land on orders stored already: nothing is sold twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_mid_commit_through_a_rebuild_sells_nothing_twice() {
    let api = spawn_app_with(Options {
        reconcile_every_ms: 200,
        configure: Some(|s| {
            s.role = Role::Api;
            // The broker drops a connection silent for 6 to 9 s; the rebuild gives a
            // silent pod 16 s (see InFlightTiming).
            s.queue.heartbeat_secs = 3;
            s.pod.heartbeat_secs = 1;
            s.pod.gone_after_secs = 3;
        }),
        ..Options::default()
    })
    .await;
    let server = shard_server(&api);
    let postgres = Proxy::start(server).await;
    let through = format!("127.0.0.1:{}", postgres.port);
    let frozen = format!("frozen-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut worker = worker_process(&api, &frozen, server, &through).await;
    api.admin_eventually("/admin/fleet", |fleet| {
        (fleet["pods"].as_array().into_iter().flatten())
            .any(|p| p["id"] == frozen.as_str() && p["ready"] == true)
    })
    .await;
    let product = api.sale(3, 1).await;
    let mut accepted = two_orders_held_at(&api, &postgres, product).await;
    signal(&worker, "STOP").await;
    delete_redis_keys(&api.settings.inventory.key_prefix)
        .await
        .unwrap();
    // Another worker, reaching the shards directly, takes what the broker gives back.
    let rescuer = api
        .spawn_peer(|s| {
            s.role = Role::Worker;
            s.pod.heartbeat_secs = 1;
            s.pod.gone_after_secs = 3;
        })
        .await;

    buy_out(&api, product, &mut accepted, Duration::from_secs(60)).await;
    assert_eq!(accepted.len(), 3, "the stock of three, sold once each");
    api.assert_completed_once(&accepted).await;

    // The frozen pod thaws and its held statements reach the shard.
    let thawed = now_ms();
    signal(&worker, "CONT").await;
    postgres.let_through();
    eventually(
        Duration::from_secs(30),
        "the thawed pod heartbeats holding nothing",
        || async {
            match pod_row(&api, &frozen).await {
                Some((at, Some(held))) if at > thawed && held.is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    api.assert_completed_once(&accepted).await;
    let counters = api.sale_counters(product).await;
    assert_eq!(counters["sold"], 3, "{counters}");
    assert_eq!(counters["completed"], 3, "{counters}");
    worker.kill().await.unwrap();
    rescuer.stop().await;
    api.stop().await;
}
