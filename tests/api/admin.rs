//! Operators: the live tree, restarts through the API, health, metrics, OpenAPI.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{chromium, eventually, find, spawn_app, Mode};

fn names(node: &Value, out: &mut Vec<String>) {
    out.push(node["name"].as_str().unwrap().to_string());
    for c in node["children"].as_array().unwrap() {
        names(c, out);
    }
}

in_both_modes!(the_tree_is_live_and_actors_restart_through_their_supervisor);
async fn the_tree_is_live_and_actors_restart_through_their_supervisor(mode: Mode) {
    let app = spawn_app(mode).await;
    let tree = app.admin(Method::GET, "/admin/actors", None).await;
    assert_eq!(tree.status, StatusCode::OK);
    let mut all = Vec::new();
    names(&tree.body, &mut all);
    for expected in [
        "root",
        "shards",
        "inventory",
        "consumers",
        "events",
        "shard-0",
        "shard-1",
        "inventory-0",
        "inventory-1",
        "order-consumer-0",
        "order-consumer-1",
        "notification-consumer-0",
    ] {
        assert!(
            all.contains(&expected.to_string()),
            "{expected} missing from {all:?}"
        );
    }
    let shard = find(&tree.body, "shard-0").unwrap();
    assert_eq!(shard["kind"], "actor");
    assert_eq!(shard["status"], "running");
    for field in ["restarts", "mailbox", "processed", "uptimeSeconds"] {
        assert!(shard[field].is_number(), "{field} in {shard}");
    }
    assert!(shard.get("lastError").is_some());
    assert_eq!(find(&tree.body, "shards").unwrap()["kind"], "supervisor");

    let r = app
        .admin(Method::POST, "/admin/actors/inventory-1/restart", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    eventually(
        Duration::from_secs(10),
        "inventory-1 comes back with one restart counted",
        || async {
            let t = app.admin(Method::GET, "/admin/actors", None).await.body;
            let node = find(&t, "inventory-1").unwrap().clone();
            if node["restarts"] == 1 && node["status"] == "running" {
                Ok(())
            } else {
                Err(node)
            }
        },
    )
    .await;
    // and it serves again
    let product = app.sale(5, 5).await;
    let (_, token) = app.token_for_new_user();
    assert_eq!(
        app.buy(&token, product, "after-restart", None).await.status,
        StatusCode::CREATED
    );

    let r = app
        .admin(Method::POST, "/admin/actors/no-such-actor/restart", None)
        .await;
    assert_eq!((r.status, r.error()), (StatusCode::NOT_FOUND, "not_found"));
    let r = app
        .client
        .get(format!("{}/admin/actors", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

in_both_modes!(health_metrics_page_and_openapi);
async fn health_metrics_page_and_openapi(mode: Mode) {
    let app = spawn_app(mode).await;
    let get = |url: String| {
        let c = app.client.clone();
        async move { c.get(url).send().await.unwrap() }
    };
    assert_eq!(
        get(format!("{}/healthz", app.address)).await.status(),
        StatusCode::OK
    );
    let ready: Value = get(format!("{}/readyz", app.address))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);

    // The counters of rare events exist from the start, at zero: an alert on their
    // increase sees the first one.
    let metrics = app.metrics().await;
    for queue in [
        &app.settings.queue.orders_queue,
        &app.settings.queue.notifications_queue,
    ] {
        let line = format!("flashsale_dead_letters_total{{queue=\"{queue}\"}} 0");
        assert!(metrics.contains(&line), "no {line:?} in {metrics}");
    }
    for name in [
        "flashsale_actor_restarts_total{actor=\"shard-0\"}",
        "flashsale_inventory_rebuilds_total{partition=\"1\"}",
        "flashsale_reservations_released_total{partition=\"0\"}",
        "flashsale_kafka_errors_total",
    ] {
        assert!(metrics.contains(name), "no {name} in {metrics}");
    }

    let product = app.sale(2, 1).await;
    let (_, token) = app.token_for_new_user();
    let order = app.buy(&token, product, "m", None).await;
    app.wait_settled(&token, order.body["orderId"].as_str().unwrap())
        .await;
    let names = [
        "flashsale_http_requests_total",
        "flashsale_orders_total",
        "flashsale_actor_mailbox",
        "flashsale_actor_restarts",
        "flashsale_process_resident_memory_bytes",
        "flashsale_shard_write_seconds",
        "flashsale_actor_batch_size",
        "flashsale_sale_remaining",
        "flashsale_queue_depth",
        "flashsale_consumer_lag_seconds",
    ];
    // Some are recorded just after the order settles (the consumer acknowledges first).
    let metrics = eventually(
        Duration::from_secs(10),
        "every metric is exported",
        || async {
            let metrics = app.metrics().await;
            let missing: Vec<_> = names.iter().filter(|n| !metrics.contains(*n)).collect();
            if missing.is_empty() {
                Ok(metrics)
            } else {
                Err(format!("{missing:?} missing"))
            }
        },
    )
    .await;
    assert!(!metrics.contains(&token), "no user data in metrics");

    let page = get(format!("{}/admin", app.admin_address)).await;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/admin/actors"));

    let doc: Value = get(format!("{}/openapi.json", app.address))
        .await
        .json()
        .await
        .unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/auth/register",
        "/auth/login",
        "/products/{id}",
        "/orders/flash-sale/{productId}",
        "/orders/{orderId}",
        "/users/me/orders",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
    app.stop().await;
}

in_both_modes!(the_admin_page_draws_every_actor_in_a_real_browser);
async fn the_admin_page_draws_every_actor_in_a_real_browser(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(40, 5).await;
    let (_, token) = app.token_for_new_user();
    assert_eq!(
        app.buy(&token, product, "page", None).await.status,
        StatusCode::CREATED
    );
    // A sale with a payment window, one order of it waiting to be paid.
    let held = app.sale(10, 1).await;
    let window = json!({"stock": 10, "perUserLimit": 1, "paymentWindowSecs": 600});
    let r = app
        .admin(
            Method::PUT,
            &format!("/admin/flash-sales/{held}"),
            Some(window),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let r = app.buy(&token, held, "page", None).await;
    let order = r.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_settled(&token, &order).await["status"],
        "awaiting_payment"
    );
    let tree = app.admin(Method::GET, "/admin/actors", None).await.body;
    let mut all = Vec::new();
    names(&tree, &mut all);
    let url = format!(
        "{}/admin#token={}",
        app.admin_address,
        crate::helpers::ADMIN_TOKEN
    );

    let dom = chromium(&["--dump-dom".into(), url.clone()]).await;
    for name in &all {
        assert!(
            dom.contains(&format!("data-name=\"{name}\"")),
            "{name} not drawn; DOM: {dom}"
        );
    }
    assert!(dom.contains("status running"), "statuses are drawn");
    assert!(dom.contains(">restart<"), "restart buttons are drawn");
    // The fleet of one: this pod as the top node, over its tree.
    assert!(dom.contains("data-pod=\""), "the pod is drawn; DOM: {dom}");
    // The live panel of the open sale: what is left, and units sold per second.
    assert!(
        dom.contains(&format!("data-sale=\"{product}\"")),
        "no sale panel; DOM: {dom}"
    );
    assert!(
        dom.contains(">39 left<"),
        "the panel shows what is left; DOM: {dom}"
    );
    assert!(dom.contains("class=\"spark\""), "a sparkline is drawn");
    assert!(
        dom.contains(&format!("data-payments=\"{held}\""))
            && dom.contains(">1 awaiting payment · 0 paid · 0 expired (window 600 s)<"),
        "the window's units are drawn; DOM: {dom}"
    );
    assert!(
        dom.contains("waiting<"),
        "the order queue's depth is drawn; DOM: {dom}"
    );

    let shot =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("admin-page-{mode:?}.png"));
    let _ = std::fs::remove_file(&shot);
    chromium(&[
        "--window-size=1280,1000".into(),
        format!("--screenshot={}", shot.display()),
        url,
    ])
    .await;
    let png = std::fs::read(&shot).expect("a screenshot was written");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot ({} bytes)",
        png.len()
    );
    app.stop().await;
}

async fn ready(app: &crate::helpers::TestApp) -> bool {
    let r = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    r.status() == StatusCode::OK
}

async fn wait_ready_is(app: &crate::helpers::TestApp, want: bool) {
    let what = format!("/readyz says ready: {want}");
    eventually(Duration::from_secs(10), &what, || async {
        match ready(app).await {
            now if now == want => Ok(()),
            now => Err(now),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_an_inventory_outage_and_recovery() {
    use crate::helpers::{spawn_app_with, Options, Proxy};
    // Both partitions through one proxy to one of the partition servers.
    let redis = Proxy::start("127.0.0.1:6380").await;
    let urls = vec![
        format!("redis://127.0.0.1:{}/14", redis.port),
        format!("redis://127.0.0.1:{}/15", redis.port),
    ];
    let app = spawn_app_with(Options {
        inventory_urls: Some(urls),
        ..Options::default()
    })
    .await;
    let product = app.sale(10, 5).await;
    let (_, token) = app.token_for_new_user();

    redis.cut();
    wait_ready_is(&app, false).await;
    let r = app.buy(&token, product, "during", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    let tree = app.admin(Method::GET, "/admin/actors", None).await.body;
    let partition = find(&tree, "inventory-0").unwrap();
    assert_ne!(
        partition["status"], "running",
        "the outage shows in the tree: {partition}"
    );
    assert!(partition["lastError"].is_string());
    // The product cache is away with its partition: products are read from the catalog.
    let p = app
        .client
        .get(format!("{}/products/{product}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(p.status(), StatusCode::OK);
    let p: serde_json::Value = p.json().await.unwrap();
    assert_eq!(p["id"], product);

    redis.restore();
    wait_ready_is(&app, true).await;
    let r = app.buy(&token, product, "after", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_outage_delays_persistence_but_not_intake() {
    use crate::helpers::{spawn_app_with, Options, Proxy};
    let postgres = Proxy::start("127.0.0.1:5432").await;
    let app = spawn_app_with(Options {
        postgres_port: Some(postgres.port),
        ..Options::default()
    })
    .await;
    let product = app.sale(10, 5).await;
    let (_, token) = app.token_for_new_user();

    postgres.cut();
    let r = app.buy(&token, product, "during", None).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "intake stays open: {:?}",
        r.body
    );
    assert!(
        ready(&app).await,
        "a shard outage does not make the order path unready"
    );
    let id = r.body["orderId"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "the outage shows in the tree",
        || async {
            let tree = app.admin(Method::GET, "/admin/actors", None).await.body;
            let shards = find(&tree, "shards").unwrap().clone();
            let down = shards["children"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["name"] != "catalog" && s["status"] != "running");
            if down {
                Ok(())
            } else {
                Err(shards)
            }
        },
    )
    .await;
    // The buyer still sees the order, pending: the outage delays only persistence.
    let during = app.get_order(&token, &id).await;
    assert_eq!(
        (during.status, during.body["status"].as_str()),
        (StatusCode::OK, Some("pending")),
        "{:?}",
        during.body
    );
    // Its shard, looked at past the outage, does not have it: persistence waits.
    let rows = app.all_shard_orders().await;
    assert!(
        rows.iter().all(|(_, o, _, _)| *o != id),
        "persisted during the outage: {rows:?}"
    );

    postgres.restore();
    assert_eq!(
        app.wait_settled(&token, &id).await["status"],
        "completed",
        "persisted after recovery"
    );
    let rows = app.all_shard_orders().await;
    assert_eq!(
        rows.iter().filter(|(_, o, _, _)| *o == id).count(),
        1,
        "stored once: {rows:?}"
    );
    app.stop().await;
}

/// A stand-in for a pod's admin API: counts the connections it is sent, and answers
/// each request `200` with `body` (no length: read until it closes).
async fn fake_peer(
    addr: &str,
    body: Vec<u8>,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (count, body) = (asked.clone(), std::sync::Arc::new(body));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = body.clone();
            tokio::spawn(async move {
                let mut head = [0u8; 4096];
                let _ = stream.read(&mut head).await;
                let start = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n";
                let _ = stream.write_all(start.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (port, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_view_trusts_no_registry_row_blindly() {
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        configure: Some(|s| {
            s.pod.peer_networks = vec!["127.0.0.1/32".parse().unwrap()];
            s.pod.heartbeat_secs = 1;
        }),
        ..Default::default()
    })
    .await;
    // Rows anyone with the catalog's credentials could write: an admin URL outside the
    // pods' networks, a pod inside them whose tree never ends, a heartbeat from a day
    // ahead.
    let (outside, asked_outside) = fake_peer("127.0.0.2:0", b"{}".to_vec()).await;
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(6 << 20)).into_bytes();
    let (inside, _) = fake_peer("127.0.0.1:0", huge).await;
    let rows = [
        ("rogue", format!("http://127.0.0.2:{outside}"), 0),
        ("endless", format!("http://127.0.0.1:{inside}"), 0),
        ("ahead", "http://127.0.0.1:9".to_string(), 86_400_000),
    ];
    let catalog = sqlx::PgPool::connect(app.settings.catalog.url.expose())
        .await
        .unwrap();
    // Any heartbeat round (every second here) forgets the row from the future, and one
    // may come between its writing and the view: the rows are written again until a
    // view shows them all.
    let fleet = eventually(Duration::from_secs(30), "a view of every row", || async {
        let now = flashsale::domain::now_ms();
        for (id, url, ahead) in &rows {
            let sql = format!(
                "INSERT INTO pods (id, role, version, admin_url, started_at, heartbeat_at) \
                 VALUES ('{id}', 'api', '0', '{url}', {now}, {now} + {ahead}) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = EXCLUDED.heartbeat_at"
            );
            sqlx::raw_sql(&sql).execute(&catalog).await.unwrap();
        }
        let fleet = app.admin(Method::GET, "/admin/fleet", None).await.body;
        let named = |id: &str| {
            fleet["pods"]
                .as_array()
                .is_some_and(|pods| pods.iter().any(|p| p["id"] == id))
        };
        if rows.iter().all(|(id, _, _)| named(id)) {
            Ok(fleet)
        } else {
            Err(fleet.to_string())
        }
    })
    .await;
    catalog.close().await;
    let pod = |id: &str| {
        fleet["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {fleet}"))
    };
    let rogue = pod("rogue");
    assert!(
        rogue["error"]
            .as_str()
            .unwrap()
            .contains("pod.peer_networks"),
        "{rogue}"
    );
    assert_eq!(
        asked_outside.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing, the admin token least of all, went outside the pods' networks"
    );
    let endless = pod("endless");
    assert!(
        endless["error"].as_str().unwrap().contains("larger than"),
        "{endless}"
    );
    assert_eq!(endless["summary"], Value::Null);
    assert_eq!(pod("ahead")["status"], "gone");
    // A heartbeat round forgets the row from the future; the others stay.
    let fleet = app
        .admin_eventually("/admin/fleet", |f| {
            let ids: Vec<&str> = f["pods"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|p| p["id"].as_str())
                .collect();
            !ids.contains(&"ahead") && ids.contains(&"rogue")
        })
        .await;
    assert!(fleet["pods"].as_array().unwrap().len() >= 3, "{fleet}");
    app.stop().await;
}
