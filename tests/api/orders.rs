//! The order flow: bursts, idempotency, limits, persistence in the right shard.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use flashsale::shards::hash::bucket;
use futures_util::future::join_all;
use reqwest::StatusCode;

use crate::helpers::{eventually, spawn_app, spawn_app_with, Mode, Options, Webhook};

in_both_modes!(a_burst_sells_exactly_the_stock_and_every_order_lands_once_in_its_shard);
async fn a_burst_sells_exactly_the_stock_and_every_order_lands_once_in_its_shard(mode: Mode) {
    let app = spawn_app_with(Options {
        shards: 4,
        mode,
        ..Options::default()
    })
    .await;
    let stock = 40;
    let product = app.sale(stock, 1).await;
    let buyers: Vec<_> = (0..300).map(|_| app.token_for_new_user()).collect();

    let replies = join_all(
        buyers
            .iter()
            .map(|(_, token)| app.buy(token, product, "burst", None)),
    )
    .await;

    let mut created = Vec::new();
    for ((user, token), r) in buyers.iter().zip(&replies) {
        match r.status {
            StatusCode::CREATED => {
                assert_eq!(r.body["status"], "pending");
                let id = r.body["orderId"].as_str().unwrap().to_string();
                assert_eq!(r.headers["location"], format!("/orders/{id}").as_str());
                created.push((user.clone(), token.clone(), id));
            }
            StatusCode::CONFLICT => assert_eq!(r.error(), "out_of_stock", "{:?}", r.body),
            other => panic!("unexpected {other}: {:?}", r.body),
        }
    }
    assert_eq!(created.len() as i64, stock, "sold exactly the stock");

    for (_, token, id) in &created {
        assert_eq!(app.wait_settled(token, id).await["status"], "completed");
    }
    let rows = app.all_shard_orders().await;
    assert_eq!(rows.len() as i64, stock, "one row per accepted order");
    let by_id: HashMap<_, _> = rows
        .iter()
        .map(|(shard, o, u, s)| (o.clone(), (*shard, u.clone(), s.clone())))
        .collect();
    assert_eq!(by_id.len(), rows.len(), "no order stored twice");
    for (user, _, id) in &created {
        let (shard, owner, status) = &by_id[id];
        assert_eq!(
            *shard,
            bucket(user.as_str(), 4),
            "order in the shard its user hashes to"
        );
        assert_eq!(owner, user.as_str());
        assert_eq!(status, "completed");
    }
    // Each order was consumed once: no message was handed out twice. (Counts are added
    // just after a batch is acknowledged, so the last one may still be on its way.)
    let consumed = eventually(
        Duration::from_secs(10),
        "every order was consumed",
        || async {
            let tree = app
                .admin(reqwest::Method::GET, "/admin/actors", None)
                .await
                .body;
            let consumers = tree["children"]
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["name"] == "consumers")
                .unwrap();
            let consumed = consumers["children"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["name"].as_str().unwrap().starts_with("order-consumer-"))
                .map(|n| n["processed"].as_i64().unwrap())
                .sum::<i64>();
            if consumed >= stock {
                Ok(consumed)
            } else {
                Err(consumed)
            }
        },
    )
    .await;
    assert_eq!(consumed, stock, "order messages consumed exactly once each");
    let counters = app.sale_counters(product).await;
    assert_eq!(counters["remaining"], 0);
    assert_eq!(counters["sold"], stock);
    assert_eq!(counters["completed"], stock);
    assert_eq!(counters["pending"], 0);
    app.stop().await;
}

in_both_modes!(concurrent_requests_with_one_key_make_one_order);
async fn concurrent_requests_with_one_key_make_one_order(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(100, 5).await;
    let (_, token) = app.token_for_new_user();

    let replies = join_all((0..8).map(|_| app.buy(&token, product, "same-key", None))).await;

    let ids: HashSet<_> = replies
        .iter()
        .map(|r| r.body["orderId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 1, "one order id for one key");
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    let replayed = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!((created, replayed), (1, 7));
    let id = ids.into_iter().next().unwrap();
    app.wait_settled(&token, &id).await;
    assert_eq!(app.all_shard_orders().await.len(), 1);
    assert_eq!(app.sale_counters(product).await["remaining"], 99);
    app.stop().await;
}

in_both_modes!(a_replay_answers_200_with_the_same_body_and_orders_settle_for_their_owner_only);
async fn a_replay_answers_200_with_the_same_body_and_orders_settle_for_their_owner_only(
    mode: Mode,
) {
    let app = spawn_app(mode).await;
    let product = app.sale(10, 3).await;
    let (_, token) = app.token_for_new_user();

    let first = app.buy(&token, product, "k-1", Some(2)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let replay = app.buy(&token, product, "k-1", Some(2)).await;
    assert_eq!(replay.status, StatusCode::OK);
    assert_eq!(replay.body, first.body, "a replay repeats the first answer");

    let id = first.body["orderId"].as_str().unwrap();
    let settled = app.wait_settled(&token, id).await;
    assert_eq!(settled["status"], "completed");
    assert_eq!(settled["quantity"], 2);
    assert_eq!(settled["productId"], product);
    assert!(settled["createdAt"].as_str().unwrap().ends_with('Z'));

    let (_, stranger) = app.token_for_new_user();
    let r = app.get_order(&stranger, id).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error(), "not_found");

    // The list may come from a read replica, up to `shards.replica_max_lag_ms` behind.
    let mine = eventually(Duration::from_secs(5), "the order is listed", || async {
        let mine = app
            .client
            .get(format!("{}/users/me/orders", app.address))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        match mine["orders"].as_array().unwrap().len() {
            0 => Err("no order listed yet".to_string()),
            _ => Ok(mine),
        }
    })
    .await;
    assert_eq!(mine["orders"].as_array().unwrap().len(), 1);
    assert_eq!(mine["orders"][0]["orderId"], id);
    assert_eq!(mine["orders"][0]["status"], "completed");
    app.stop().await;
}

in_both_modes!(the_per_user_limit_holds_across_keys);
async fn the_per_user_limit_holds_across_keys(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(100, 2).await;
    let (_, token) = app.token_for_new_user();

    assert_eq!(
        app.buy(&token, product, "a", None).await.status,
        StatusCode::CREATED
    );
    let over = app.buy(&token, product, "b", Some(2)).await;
    assert_eq!(
        (over.status, over.error()),
        (StatusCode::CONFLICT, "purchase_limit_reached")
    );
    assert_eq!(
        app.buy(&token, product, "c", None).await.status,
        StatusCode::CREATED
    );
    let over = app.buy(&token, product, "d", None).await;
    assert_eq!(
        (over.status, over.error()),
        (StatusCode::CONFLICT, "purchase_limit_reached")
    );
    assert_eq!(
        app.sale_counters(product).await["remaining"],
        98,
        "rejections reserve nothing"
    );
    app.stop().await;
}

in_both_modes!(the_rate_limit_answers_429_with_retry_after);
async fn the_rate_limit_answers_429_with_retry_after(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(1000, 1000).await;
    let (_, token) = app.token_for_new_user();
    for i in 0..10 {
        let r = app.buy(&token, product, &format!("k{i}"), None).await;
        assert_eq!(r.status, StatusCode::CREATED, "request {i}: {:?}", r.body);
    }
    let r = app.buy(&token, product, "k10", None).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited")
    );
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");

    let (_, other) = app.token_for_new_user();
    assert_eq!(
        app.buy(&other, product, "k0", None).await.status,
        StatusCode::CREATED,
        "the limit is per user"
    );
    app.stop().await;
}

in_both_modes!(sales_outside_their_window_are_not_active);
async fn sales_outside_their_window_are_not_active(mode: Mode) {
    let app = spawn_app(mode).await;
    let later = app.sale(5, 1).await;
    let r = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/flash-sales/{later}"),
            Some(serde_json::json!({"stock": 5, "perUserLimit": 1, "startsAt": "2999-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, later, "k", None).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::CONFLICT, "sale_not_active")
    );

    let no_sale = app
        .admin(
            reqwest::Method::POST,
            "/admin/products",
            Some(serde_json::json!({"name": "Quiet", "priceCents": 5})),
        )
        .await
        .body["id"]
        .as_i64()
        .unwrap();
    let r = app.buy(&token, no_sale, "k", None).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::CONFLICT, "sale_not_active")
    );
    app.stop().await;
}

in_both_modes!(register_login_and_products);
async fn register_login_and_products(mode: Mode) {
    let app = spawn_app(mode).await;
    let r = app.register("Buyer@Example.com", "long-password").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let user = r.body["userId"].as_str().unwrap().to_string();
    let r = app.register("buyer@example.com", "another-password").await;
    assert_eq!((r.status, r.error()), (StatusCode::CONFLICT, "email_taken"));

    let r = app.login("buyer@example.com", "long-password").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body["expiresAt"].as_str().unwrap().ends_with('Z'));
    let token = r.body["token"].as_str().unwrap().to_string();
    for (email, pass) in [
        ("buyer@example.com", "wrong-password"),
        ("nobody@example.com", "long-password"),
    ] {
        let r = app.login(email, pass).await;
        assert_eq!(
            (r.status, r.error()),
            (StatusCode::UNAUTHORIZED, "invalid_credentials")
        );
    }

    let product = app.sale(3, 1).await;
    let r = app.buy(&token, product, "first", None).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let order = app
        .wait_settled(&token, r.body["orderId"].as_str().unwrap())
        .await;
    assert_eq!(order["userId"], user.as_str());

    let r = app
        .client
        .get(format!("{}/products/{product}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        body,
        serde_json::json!({"id": product, "name": "Phone", "priceCents": 19900})
    );
    // The second read is served from the cache and says the same.
    let again: serde_json::Value = app
        .client
        .get(format!("{}/products/{product}", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(again, body);
    app.stop().await;
}

in_both_modes!(confirmations_reach_the_webhook_at_least_once);
async fn confirmations_reach_the_webhook_at_least_once(mode: Mode) {
    // A receiver that fails its first delivery, so the confirmation must come again.
    let hook = Webhook::start(1);

    let app = spawn_app_with(Options {
        mode,
        webhook_url: Some(hook.url.clone()),
        ..Options::default()
    })
    .await;
    let product = app.sale(5, 1).await;
    let (user, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "hook", None).await;
    let id = r.body["orderId"].as_str().unwrap().to_string();

    // A refused delivery is retried.
    let deliveries = eventually(
        Duration::from_secs(10),
        "the confirmation is delivered again",
        || async {
            let deliveries = hook.received();
            if deliveries.len() >= 2 {
                Ok(deliveries)
            } else {
                Err(format!("{deliveries:?}"))
            }
        },
    )
    .await;
    for (body, key) in &deliveries {
        assert_eq!(body["type"], "order.confirmed");
        assert_eq!(body["orderId"], id.as_str());
        assert_eq!(body["userId"], user.as_str());
        assert_eq!(body["productId"], product);
        assert_eq!(key, &id, "the order id is the receiver's idempotency key");
    }
    app.stop().await;
    hook.stop().await;
}

/// A client keeps a connection idle in its pool for longer than a server closing
/// idle connections after a few seconds would wait (reqwest 90 s, browsers and load
/// balancers about a minute); a request sent as the server closes is lost with the
/// connection. The server keeps an idle connection longer than its clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_idle_between_requests_stays_open() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = spawn_app(Mode::Embedded).await;
    let host = app.address.trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&host).await.unwrap();
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n");
    let mut answer = vec![0u8; 4096];
    for round in ["first", "after the idle time"] {
        conn.write_all(request.as_bytes()).await.unwrap();
        let n = conn.read(&mut answer).await.unwrap();
        let got = String::from_utf8_lossy(&answer[..n]);
        assert!(got.starts_with("HTTP/1.1 200"), "{round}: {got:?}");
        if round == "first" {
            // Idle for longer than the old 5 s, far shorter than the server's keep-alive.
            let idle = Duration::from_secs(8);
            match tokio::time::timeout(idle, conn.read(&mut answer)).await {
                Err(_) => {} // still open, nothing to read
                Ok(r) => panic!("the server closed an idle connection within {idle:?}: {r:?}"),
            }
        }
    }
}
