//! Domain events end to end: outbox, relay, the broker (Kafka in cluster mode, the
//! local event log in embedded mode), and the consumers that read them.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flashsale::events::{Delivered, OrderData, ORDER_EVENTS, PRODUCT_EVENTS, USER_EVENTS};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Mode, Options, TestApp};

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
    let o = app.get_order(token, order).await;
    assert_eq!(o.body["status"], "cancelled");

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

/// The actor's entry in the live tree.
async fn actor(app: &TestApp, name: &str) -> Value {
    fn find(node: &Value, name: &str) -> Option<Value> {
        if node["name"] == name {
            return Some(node.clone());
        }
        node["children"]
            .as_array()?
            .iter()
            .find_map(|c| find(c, name))
    }
    let tree = app.admin(Method::GET, "/admin/actors", None).await.body;
    find(&tree, name).unwrap_or_else(|| panic!("no {name} in {tree}"))
}

in_both_modes!(a_consumer_restart_resumes_from_its_commits);
async fn a_consumer_restart_resumes_from_its_commits(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(15, 1).await;
    buy_all(&app, product, 10).await;
    // Two events per order (created, completed): 20 read and committed.
    let processed = |n: i64| move |a: &Value| a["processed"] == n && a["status"] == "running";
    wait_actor(&app, "analytics-consumer", processed(20)).await;
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
    // Only the 10 new events were read after the restart: nothing from before it.
    wait_actor(&app, "analytics-consumer", processed(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(actor(&app, "analytics-consumer").await["processed"], 30);
    app.stop().await;
}

async fn wait_actor(app: &TestApp, name: &str, ok: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    for _ in 0..300 {
        last = actor(app, name).await;
        if ok(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{name} never reached the expected state: {last}");
}

/// A Kafka-compatible broker of this test's own, so that it can be stopped.
struct Broker {
    port: u16,
    child: Option<std::process::Child>,
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

    fn start(port: u16) -> Self {
        let mut b = Self { port, child: None };
        b.resume();
        b
    }

    fn resume(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(Self::binary())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tansu runs (scripts/services.sh installs it)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the broker did not listen on {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relays_keep_every_event_through_a_broker_restart() {
    let mut broker = Broker::start(free_port());
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

    broker.stop();
    let sold = buy_all(&app, product, n as usize).await;
    assert_eq!(sold.len(), n as usize, "intake does not need the broker");
    let unsent = unsent_rows(&app).await;
    assert!(unsent >= 2 * n, "the outboxes hold the events: {unsent}");

    broker.resume();
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
    for _ in 0..100 {
        if unsent_rows(&app).await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(unsent_rows(&app).await, 0, "every row is marked sent");
    app.stop().await;
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
