//! Domain events end to end: outbox, relay, the broker (Kafka in cluster mode, the
//! local event log in embedded mode), and the consumers that read them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flashsale::events::{Delivered, OrderData, ORDER_EVENTS, PRODUCT_EVENTS, USER_EVENTS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app, spawn_app_with, Mode, Options, TestApp};

fn of_kind<'a>(events: &'a [Delivered], kind: &'a str) -> impl Iterator<Item = &'a Delivered> {
    events.iter().filter(move |e| e.envelope.kind == kind)
}

fn distinct_ids(events: &[Delivered], kind: &str) -> HashSet<String> {
    of_kind(events, kind)
        .map(|e| e.envelope.id.clone())
        .collect()
}

/// Buys one unit for each of `buyers` fresh users; returns the accepted order ids
/// and tokens.
async fn buy_all(app: &TestApp, product: i64, buyers: usize) -> Vec<(String, String)> {
    let mut accepted = Vec::new();
    for i in 0..buyers {
        let (_, token) = app.token_for_new_user();
        let r = app.buy(&token, product, &format!("k{i}"), None).await;
        if r.status == StatusCode::CREATED {
            accepted.push((r.body["orderId"].as_str().unwrap().to_string(), token));
        } else {
            assert_eq!(r.error(), "out_of_stock", "{:?}", r.body);
        }
    }
    for (order, token) in &accepted {
        let o = app.wait_settled(token, order).await;
        assert_eq!(o["status"], "completed");
    }
    accepted
}

/// Units the analytics consumer counted for a product: (sold, cancelled).
fn analytics(report: &Value, product: i64) -> (i64, i64) {
    report["products"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["productId"] == product)
        .map(|p| {
            (
                p["sold"].as_i64().unwrap(),
                p["cancelled"].as_i64().unwrap(),
            )
        })
        .unwrap_or((0, 0))
}

in_both_modes!(a_sale_of_n_units_yields_exactly_n_completed_events);
async fn a_sale_of_n_units_yields_exactly_n_completed_events(mode: Mode) {
    let app = spawn_app(mode).await;
    let n = 25;
    let product = app.sale(n, 1).await;
    let accepted = buy_all(&app, product, n as usize + 5).await;
    assert_eq!(accepted.len(), n as usize);

    let events = app
        .read_events(
            ORDER_EVENTS,
            |seen| distinct_ids(seen, "OrderCompleted").len() >= n as usize,
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await;
    let completed: Vec<_> = of_kind(&events, "OrderCompleted").collect();
    assert_eq!(distinct_ids(&events, "OrderCompleted").len(), n as usize);
    let orders: HashSet<String> = completed
        .iter()
        .map(|e| e.envelope.data["orderId"].as_str().unwrap().to_string())
        .collect();
    let sold: HashSet<String> = accepted.iter().map(|(o, _)| o.clone()).collect();
    assert_eq!(orders, sold, "one OrderCompleted per order sold");
    // Every event has the envelope; an order's events arrive in order.
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.envelope.version, 1);
        assert!(e.envelope.occurred_ms().is_some(), "{:?}", e.envelope);
        let data: OrderData = serde_json::from_value(e.envelope.data.clone()).unwrap();
        assert_eq!(data.product_id, product);
        let order = data.order_id.clone();
        match e.envelope.kind.as_str() {
            "OrderCreated" => {
                first_seen.entry(order).or_insert(i);
            }
            "OrderCompleted" => {
                let created = first_seen.get(&order).expect("OrderCreated came first");
                assert!(*created < i);
            }
            other => panic!("unexpected {other}"),
        }
    }

    // The consumers agree with the shards.
    let report = app
        .admin_eventually("/admin/reports/sales", |r| analytics(r, product).0 == n)
        .await;
    assert_eq!(analytics(&report, product), (n, 0));
    let orders = app
        .admin_eventually("/admin/reports/orders", |r| {
            r["products"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["productId"] == product && p["units"] == n)
            })
        })
        .await;
    assert_eq!(orders["users"].as_array().unwrap().len(), n as usize);
    let inventory = app
        .admin_eventually("/admin/reports/inventory", |r| {
            r["products"].as_array().is_some_and(|p| {
                p.iter()
                    .any(|p| p["productId"] == product && p["persisted"] == n)
            })
        })
        .await;
    let checked = inventory["products"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["productId"] == product)
        .unwrap();
    assert_eq!(checked["drift"], 0, "{checked}");
    app.stop().await;
}

in_both_modes!(cancellation_restocks_exactly_once);
async fn cancellation_restocks_exactly_once(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(1, 1).await;
    let accepted = buy_all(&app, product, 2).await;
    let (order, token) = &accepted[0];
    let path = format!("/orders/{order}/cancel");

    // Somebody else cannot cancel it.
    let (_, stranger) = app.token_for_new_user();
    let r = app.post_auth(&stranger, &path).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // The owner's request, repeated and concurrent: every answer is the cancelled
    // order, and one unit goes back.
    let answers = futures_util::future::join_all((0..4).map(|_| app.post_auth(token, &path))).await;
    for r in &answers {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        assert_eq!(r.body["status"], "cancelled");
    }
    assert_eq!(app.post_auth(token, &path).await.status, StatusCode::OK);
    let counters = app.sale_counters(product).await;
    assert_eq!(counters["remaining"], 1, "{counters}");
    // Read back, possibly from the shard's replica (up to `replica_max_lag_ms` behind).
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the order reads cancelled",
        || async {
            let o = app.get_order(token, order).await;
            match o.body["status"] == "cancelled" {
                true => Ok(()),
                false => Err(o.body),
            }
        },
    )
    .await;

    // That unit can be sold once more, and only once.
    let again = buy_all(&app, product, 3).await;
    assert_eq!(again.len(), 1);
    let counters = app.sale_counters(product).await;
    assert_eq!(counters["remaining"], 0, "{counters}");

    let events = app
        .read_events(
            ORDER_EVENTS,
            |seen| {
                distinct_ids(seen, "OrderCompleted").len() >= 2
                    && !distinct_ids(seen, "OrderCancelled").is_empty()
            },
            Duration::from_secs(60),
            Duration::from_secs(2),
        )
        .await;
    let cancelled: Vec<_> = of_kind(&events, "OrderCancelled").collect();
    assert_eq!(distinct_ids(&events, "OrderCancelled").len(), 1);
    assert_eq!(cancelled[0].envelope.data["orderId"], order.as_str());
    assert_eq!(cancelled[0].envelope.data["reason"], "customer");

    let report = app
        .admin_eventually("/admin/reports/sales", |r| analytics(r, product) == (2, 1))
        .await;
    assert_eq!(analytics(&report, product), (2, 1));
    app.stop().await;
}

in_both_modes!(a_price_change_is_an_event_and_clears_the_cache);
async fn a_price_change_is_an_event_and_clears_the_cache(mode: Mode) {
    let app = spawn_app(mode).await;
    let created = app
        .admin(
            Method::POST,
            "/admin/products",
            Some(json!({"name": "Lamp", "priceCents": 1000})),
        )
        .await;
    let id = created.body["id"].as_i64().unwrap();
    let get = || async {
        let r = app
            .client
            .get(format!("{}/products/{id}", app.address))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()
    };
    assert_eq!(get().await["priceCents"], 1000); // now cached
    let path = format!("/admin/products/{id}");
    let r = app
        .admin(Method::PATCH, &path, Some(json!({"priceCents": 750})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["priceCents"], 750);
    assert_eq!(
        get().await["priceCents"],
        750,
        "the cached copy was dropped"
    );
    let bad = app
        .admin(Method::PATCH, &path, Some(json!({"priceCents": -1})))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let missing = app
        .admin(
            Method::PATCH,
            "/admin/products/99999999",
            Some(json!({"priceCents": 1})),
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    let events = app
        .read_events(
            PRODUCT_EVENTS,
            |seen| of_kind(seen, "PriceChanged").count() >= 1,
            Duration::from_secs(60),
            Duration::from_millis(500),
        )
        .await;
    let created: Vec<_> = of_kind(&events, "ProductCreated").collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].envelope.data["productId"], id);
    let changed: Vec<_> = of_kind(&events, "PriceChanged").collect();
    assert_eq!(changed.len(), 1);
    assert_eq!(changed[0].envelope.data["oldPriceCents"], 1000);
    assert_eq!(changed[0].envelope.data["newPriceCents"], 750);

    // Users: registration and profile changes are events on user-events.
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let user = app.register(&email, "correct horse battery").await;
    let user_id = user.body["userId"].as_str().unwrap().to_string();
    let token = app.login(&email, "correct horse battery").await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = app
        .client
        .patch(format!("{}/users/me", app.address))
        .bearer_auth(&token)
        .json(&json!({"displayName": "Ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events = app
        .read_events(
            USER_EVENTS,
            |seen| of_kind(seen, "UserUpdated").count() >= 1,
            Duration::from_secs(60),
            Duration::from_millis(500),
        )
        .await;
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e.envelope.data["userId"] == user_id.as_str())
        .map(|e| e.envelope.kind.as_str())
        .collect();
    assert_eq!(kinds, ["UserRegistered", "UserUpdated"]);
    app.stop().await;
}

in_both_modes!(price_changes_apply_while_events_flow);
/// Price changes made while orders stream through (so relays and consumers write the
/// catalog's database at the same time) all apply, and their events keep their order.
async fn price_changes_apply_while_events_flow(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(60, 1).await;
    let path = format!("/admin/products/{product}");
    let prices: Vec<i64> = (1001..=1040).collect();
    let changes = async {
        let mut replies = Vec::new();
        for price in &prices {
            let body = json!({ "priceCents": price });
            replies.push(app.admin(Method::PATCH, &path, Some(body)).await);
        }
        replies
    };
    let (accepted, replies) = tokio::join!(buy_all(&app, product, 60), changes);
    assert_eq!(accepted.len(), 60);
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    }
    let of_product = |events: &[Delivered]| -> Vec<i64> {
        of_kind(events, "PriceChanged")
            .filter(|e| e.envelope.data["productId"] == product)
            .map(|e| e.envelope.data["newPriceCents"].as_i64().unwrap())
            .collect()
    };
    let events = app
        .read_events(
            PRODUCT_EVENTS,
            |seen| of_product(seen).len() >= prices.len(),
            Duration::from_secs(60),
            Duration::from_millis(500),
        )
        .await;
    assert_eq!(of_product(&events), prices);
    app.stop().await;
}

in_both_modes!(a_consumer_restart_resumes_from_its_commits);
async fn a_consumer_restart_resumes_from_its_commits(mode: Mode) {
    // One partition (the local log has one sequence): events are read in the order
    // they were written, so a consumer that started over after its restart would read
    // the 20 old events again before any new one.
    let app = spawn_app_with(Options {
        mode,
        order_partitions: Some(1),
        ..Options::default()
    })
    .await;
    let product = app.sale(16, 1).await;
    buy_all(&app, product, 10).await;
    // Two events per order (created, completed): 20 read and committed.
    wait_actor(&app, "analytics-consumer", |a| {
        a["processed"] == 20 && a["status"] == "running"
    })
    .await;
    let r = app
        .admin(
            Method::POST,
            "/admin/actors/analytics-consumer/restart",
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    wait_actor(&app, "analytics-consumer", |a| {
        a["restarts"] == 1 && a["status"] == "running"
    })
    .await;
    buy_all(&app, product, 5).await;
    app.admin_eventually("/admin/reports/sales", |r| analytics(r, product).0 == 15)
        .await;
    // Everything up to the 15th unit has been read and counted. One more order: once it
    // is applied, `processed` counts exactly what was read after the restart.
    buy_all(&app, product, 1).await;
    app.admin_eventually("/admin/reports/sales", |r| analytics(r, product).0 == 16)
        .await;
    let after = wait_actor(&app, "analytics-consumer", |a| {
        a["processed"].as_i64().is_some_and(|n| n >= 32)
    })
    .await;
    assert_eq!(
        after["processed"], 32,
        "only the 12 new events were read after the restart: {after}"
    );
    app.stop().await;
}

/// Waits until the actor's entry in the tree satisfies `ok`, and returns it.
async fn wait_actor(app: &TestApp, name: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let what = format!("{name} reaches the expected state");
    eventually(Duration::from_secs(30), &what, || async {
        let a = app.actor(name).await;
        if ok(&a) {
            Ok(a)
        } else {
            Err(a)
        }
    })
    .await
}

/// A Kafka-compatible broker of this test's own, so that it can be stopped. A Kafka
/// broker tells its clients its address, and a restarted one must come back where its
/// clients look for it, so it cannot take a port-0 port: it gets a fixed port below
/// the range the kernel hands out for port 0 (nobody else's port-0 socket lands
/// there), and a start counts only once this child itself is seen listening on it.
struct Broker {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl Broker {
    fn binary() -> std::path::PathBuf {
        if let Ok(p) = std::env::var("FLASHSALE_TANSU") {
            return p.into();
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let cargo = std::path::Path::new(&home).join(".cargo/bin/tansu");
        if cargo.exists() {
            return cargo;
        }
        "tansu".into()
    }

    /// Starts on a free port of its own, trying others while another process holds one.
    async fn start() -> Self {
        let below = ephemeral_ports_start();
        for _ in 0..20 {
            let port = 20_000 + (rand_u16() % (below - 20_000));
            let mut b = Self { port, child: None };
            if b.try_resume().await {
                return b;
            }
        }
        panic!("no port below {below} for a broker of this test");
    }

    async fn resume(&mut self) {
        assert!(
            self.try_resume().await,
            "the broker could not listen on {} again",
            self.port
        );
    }

    /// Starts the broker on `self.port`; false when it did not become the listener
    /// there (the port is somebody else's).
    async fn try_resume(&mut self) -> bool {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut child = tokio::process::Command::new(Self::binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tansu runs (scripts/services.sh installs it)");
        let pid = child.id().expect("a running child");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline {
            if listens(pid, self.port) {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().ok().flatten().is_some() {
                break; // it could not bind
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill().await;
        false
    }

    async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }
}

/// The first port of the range the kernel picks port-0 ports from.
fn ephemeral_ports_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .filter(|p| *p > 21_000)
        .unwrap_or(32_768)
}

fn rand_u16() -> u16 {
    uuid::Uuid::new_v4().as_u128() as u16
}

/// Whether process `pid` holds a socket listening on 127.0.0.1/0.0.0.0:`port`
/// (its socket inodes against /proc/net/tcp's listeners).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let listeners: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let (state, inode) = (*f.get(3)?, *f.get(9)?);
            (local_port == port && state == "0A").then(|| format!("socket:[{inode}]"))
        })
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| listeners.iter().any(|l| target.as_os_str() == l.as_str()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_keep_every_event_through_a_broker_restart() {
    let mut broker = Broker::start().await;
    let app = spawn_app_with(Options {
        kafka_brokers: Some(format!("127.0.0.1:{}", broker.port)),
        ..Options::default()
    })
    .await;
    let n = 20;
    let product = app.sale(n, 1).await;
    // The relays are up and publishing before the broker goes away.
    app.read_events(
        PRODUCT_EVENTS,
        |seen| of_kind(seen, "ProductCreated").count() >= 1,
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .await;

    broker.stop().await;
    let sold = buy_all(&app, product, n as usize).await;
    assert_eq!(sold.len(), n as usize, "intake does not need the broker");
    let unsent = unsent_rows(&app).await;
    assert!(unsent >= 2 * n, "the outboxes hold the events: {unsent}");

    broker.resume().await;
    let events = app
        .read_events(
            ORDER_EVENTS,
            |seen| distinct_ids(seen, "OrderCompleted").len() >= n as usize,
            Duration::from_secs(90),
            Duration::from_secs(2),
        )
        .await;
    assert_eq!(distinct_ids(&events, "OrderCompleted").len(), n as usize);
    assert_eq!(distinct_ids(&events, "OrderCreated").len(), n as usize);
    eventually(
        Duration::from_secs(10),
        "every outbox row is marked sent",
        || async {
            match unsent_rows(&app).await {
                0 => Ok(()),
                left => Err(left),
            }
        },
    )
    .await;
    app.stop().await;
    broker.stop().await;
}

/// Outbox rows not yet marked sent, over every shard.
async fn unsent_rows(app: &TestApp) -> i64 {
    let mut total = 0;
    for url in &app.shard_urls {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
        pool.close().await;
        total += n;
    }
    total
}
