//! Accepted means kept: the races and bad inputs that could contradict an answer a
//! buyer already holds, each made reachable (a reconciler that sweeps every few
//! milliseconds, a tiny inbox, a key that expires in a second, a hand-published bad
//! message) and checked end to end.

use std::time::Duration;

use flashsale::actors::inventory::Restocked;
use flashsale::actors::queue::Publish;
use flashsale::domain::{now_ms, OrderId, ProductId, Quantity, UserId};
use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Mode, Options, TestApp};

/// Publishes raw bytes to the order queue, as a foreign or broken producer would.
async fn publish_raw(app: &TestApp, payload: Vec<u8>) {
    let dir = &app.app_state.directory;
    let publish = Publish {
        queue: dir.orders_queue.clone(),
        payload,
        traceparent: None,
    };
    assert!(dir.publisher().call(publish).await.unwrap(), "published");
}

in_both_modes!(a_201_is_never_cancelled_however_eager_the_reconciler);
async fn a_201_is_never_cancelled_however_eager_the_reconciler(mode: Mode) {
    // Every reservation is stale after 20 ms and swept every 5: whatever the
    // reconciler does between a publish and its 201, the 201 must complete.
    let app = spawn_app_with(Options {
        mode,
        reconcile_after_ms: 20,
        reconcile_every_ms: 5,
        ..Options::default()
    })
    .await;
    let product = app.sale(1_000, 1).await;
    // Most buyers are refused (released before their publish was confirmed); waves go
    // on until enough got in, however slow the machine.
    let mut accepted = Vec::new();
    for _ in 0..30 {
        if accepted.len() >= 10 {
            break;
        }
        let wave: Vec<String> = (0..30).map(|_| app.token_for_new_user().1).collect();
        let replies = join_all(wave.iter().map(|t| app.buy(t, product, "k", None))).await;
        for (t, r) in wave.iter().zip(replies) {
            match r.status {
                StatusCode::CREATED => {
                    accepted.push((t.clone(), r.body["orderId"].as_str().unwrap().to_string()))
                }
                StatusCode::SERVICE_UNAVAILABLE => {}
                other => panic!("unexpected {other}: {:?}", r.body),
            }
        }
    }
    assert!(
        accepted.len() >= 10,
        "buyers were accepted: {}",
        accepted.len()
    );
    for (token, id) in &accepted {
        let settled = app.wait_settled(token, id).await;
        assert_eq!(settled["status"], "completed", "a 201 ended {settled}");
    }
    app.stop().await;
}

in_both_modes!(a_replay_of_an_unpublished_order_publishes_it_before_naming_it);
async fn a_replay_of_an_unpublished_order_publishes_it_before_naming_it(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        ..Options::default()
    })
    .await;
    let product = app.sale(3, 1).await;
    let (user, token) = app.token_for_new_user();
    // A first attempt reserved and then lost its publish (a timeout, a crashed pod).
    let first = app.reserve_unpublished(product, &user, "retry").await;
    // The retry names that order, and the order exists: it completes.
    let r = app.buy(&token, product, "retry", None).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["orderId"], first.as_str());
    assert_eq!(
        app.wait_settled(&token, first.as_str()).await["status"],
        "completed"
    );
    let again = app.buy(&token, product, "retry", None).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body["orderId"], first.as_str());
    let c = app.sale_counters(product).await;
    assert_eq!(
        (c["remaining"].as_i64(), c["pending"].as_i64()),
        (Some(2), Some(0))
    );
    assert_eq!(app.all_shard_orders().await.len(), 1, "stored once");
    app.stop().await;
}

in_both_modes!(an_order_under_a_key_reused_after_its_lifetime_is_kept);
async fn an_order_under_a_key_reused_after_its_lifetime_is_kept(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        idempotency_ttl_secs: Some(1),
        // The buyer asks again until the key is forgotten, and every ask counts
        // against the per-user rate limit.
        configure: Some(|s| s.limits.rate_per_minute = 1_000),
        ..Options::default()
    })
    .await;
    let product = app.sale(5, 2).await;
    let (_, token) = app.token_for_new_user();
    let first = app.buy(&token, product, "reused", None).await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.body);
    let first = first.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_settled(&token, &first).await["status"],
        "completed"
    );

    // While the key lives, the same key replays the first order; once its lifetime
    // is over, it makes a new one.
    let second =
        crate::helpers::eventually(Duration::from_secs(15), "the key is forgotten", || async {
            let r = app.buy(&token, product, "reused", None).await;
            match r.status {
                StatusCode::CREATED => Ok(r.body["orderId"].as_str().unwrap().to_string()),
                StatusCode::OK if r.body["orderId"] == first.as_str() => {
                    Err(format!("still replayed: {:?}", r.body))
                }
                _ => panic!(
                    "neither a replay nor a new order: {} {:?}",
                    r.status, r.body
                ),
            }
        })
        .await;
    assert_ne!(first, second, "the key was forgotten: a new order");
    assert_eq!(
        app.wait_settled(&token, &second).await["status"],
        "completed",
        "the order accepted under the reused key is stored"
    );
    app.stop().await;
}

fn order_json(user: &str, product: i64, quantity: i64) -> Value {
    json!({
        "orderId": OrderId::generate().to_string(),
        "userId": user,
        "productId": product,
        "quantity": quantity,
        "idempotencyKey": "foreign",
        "createdAt": now_ms(),
    })
}

in_both_modes!(poison_messages_are_dead_lettered_and_the_rest_flows);
async fn poison_messages_are_dead_lettered_and_the_rest_flows(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        ..Options::default()
    })
    .await;
    let product = app.sale(10, 5).await;
    let (user, token) = app.token_for_new_user();
    // A reserved order, published by another producer beside a bad element.
    let reserved = app.reserve_unpublished(product, &user, "foreign").await;
    let mut good = order_json(user.as_str(), product, 1);
    good["orderId"] = json!(reserved.to_string());
    let bad_quantity = order_json(user.as_str(), product, 0);
    publish_raw(&app, b"\xffnot json at all".to_vec()).await;
    publish_raw(&app, br#"{"hello": "world"}"#.to_vec()).await;
    // One bad element of a grouped message never takes its neighbours with it.
    publish_raw(
        &app,
        serde_json::to_vec(&json!([good, bad_quantity])).unwrap(),
    )
    .await;

    // Orders keep flowing.
    let r = app.buy(&token, product, "after", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["orderId"].as_str().unwrap();
    assert_eq!(app.wait_settled(&token, id).await["status"], "completed");
    let good_id = good["orderId"].as_str().unwrap();
    assert_eq!(
        app.wait_settled(&token, good_id).await["status"],
        "completed"
    );

    let letters = app
        .admin_eventually("/admin/dead-letters", |v| v["total"] == 3)
        .await;
    let reasons: Vec<&str> = letters["deadLetters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.starts_with("not JSON")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.starts_with("not an order")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("quantity")),
        "{reasons:?}"
    );
    for l in letters["deadLetters"].as_array().unwrap() {
        assert_eq!(l["queue"], app.settings.queue.orders_queue.as_str());
    }
    let bad = app
        .admin(Method::GET, "/admin/dead-letters?limit=0", None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let queue = format!("queue=\"{}\"", app.settings.queue.orders_queue);
    assert!(
        app.metric_sum("flashsale_dead_letters_total", &queue).await >= 1.0,
        "the dead letters are counted"
    );
    app.stop().await;
}

in_both_modes!(an_order_its_partition_never_reserved_sells_nothing);
async fn an_order_its_partition_never_reserved_sells_nothing(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        ..Options::default()
    })
    .await;
    let product = app.sale(1, 1).await;
    let (user, token) = app.token_for_new_user();
    // Well-formed orders nobody reserved: five units of a sale of one, and a copy of
    // a real reservation with more units than were reserved.
    let forged = order_json(user.as_str(), product, 5);
    publish_raw(&app, serde_json::to_vec(&forged).unwrap()).await;
    let (other, _) = app.token_for_new_user();
    let reserved = app.reserve_unpublished(product, &other, "real").await;
    let mut altered = order_json(other.as_str(), product, 3);
    altered["orderId"] = json!(reserved.to_string());
    publish_raw(&app, serde_json::to_vec(&altered).unwrap()).await;

    let letters = app
        .admin_eventually("/admin/dead-letters", |v| v["total"] == 2)
        .await;
    for l in letters["deadLetters"].as_array().unwrap() {
        let reason = l["reason"].as_str().unwrap();
        assert!(reason.starts_with("unknown_reservation"), "{reason}");
    }
    // Nothing was sold: the forged order is in no shard, and the unit is still held
    // by its real reservation (or back on sale, once the reconciler released it).
    let forged_id = forged["orderId"].as_str().unwrap();
    assert_eq!(
        app.get_order(&token, forged_id).await.status,
        StatusCode::NOT_FOUND
    );
    let stored = app.all_shard_orders().await;
    assert!(stored.is_empty(), "{stored:?}");
    let c = app.sale_counters(product).await;
    let held = c["remaining"].as_i64().unwrap() + c["pending"].as_i64().unwrap();
    assert_eq!(held, 1, "{c}");
    app.stop().await;
}

in_both_modes!(a_backlog_larger_than_an_inbox_is_claimed_in_chunks);
async fn a_backlog_larger_than_an_inbox_is_claimed_in_chunks(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        inbox_capacity: Some(8),
        ..Options::default()
    })
    .await;
    let product = app.sale(100, 100).await;
    let tokens: Vec<String> = (0..60).map(|_| app.token_for_new_user().1).collect();
    let mut held = app.hold_orders().await;
    let mut accepted = Vec::new();
    for token in &tokens {
        let r = app.buy(token, product, "k", None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        accepted.push((token, r.body["orderId"].as_str().unwrap().to_string()));
    }
    held.wait_for(&accepted.last().unwrap().1).await;
    // The whole backlog reaches the consumers at once.
    held.release().await;
    for (token, id) in &accepted {
        assert_eq!(app.wait_settled(token, id).await["status"], "completed");
    }
    app.stop().await;
}

/// Buys with a fresh user until the answer is not `503`, and returns (token, answer).
async fn buy_once_open(app: &TestApp, product: i64) -> (String, crate::helpers::Reply) {
    crate::helpers::eventually(Duration::from_secs(30), "the sale reopens", || async {
        let (_, token) = app.token_for_new_user();
        let r = app.buy(&token, product, "k", None).await;
        match r.status {
            StatusCode::SERVICE_UNAVAILABLE => Err(format!("{} {}", r.status, r.body)),
            _ => Ok((token, r)),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_loses_its_state_rebuilds_it_and_never_oversells() {
    let app = spawn_app_with(Options {
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let product = app.sale(10, 2).await;
    let (_, ann) = app.token_for_new_user();
    let mut accepted = Vec::new();
    for (token, key) in [(&ann, "a1"), (&ann, "a2")] {
        let r = app.buy(token, product, key, None).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
        accepted.push((
            token.clone(),
            r.body["orderId"].as_str().unwrap().to_string(),
        ));
    }
    accepted.extend(app.buy_as_new_buyers(product, 2).await);
    for (token, id) in &accepted {
        assert_eq!(app.wait_settled(token, id).await["status"], "completed");
    }
    // One more accepted order is still in the queue when the state goes.
    let mut held = app.hold_orders().await;
    let (_, dan) = app.token_for_new_user();
    let r = app.buy(&dan, product, "d1", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let queued = r.body["orderId"].as_str().unwrap().to_string();
    held.wait_for(&queued).await;
    accepted.push((dan.clone(), queued.clone()));

    // The partition's Redis loses everything (a restart without persistence).
    crate::helpers::delete_redis_keys(&app.settings.inventory.key_prefix)
        .await
        .unwrap();
    held.release().await;

    // The sale answers 503 until it is rebuilt, then sells again.
    let (eve, r) = buy_once_open(&app, product).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    accepted.push((eve, r.body["orderId"].as_str().unwrap().to_string()));
    // The order from before the loss is honoured.
    assert_eq!(app.wait_settled(&dan, &queued).await["status"], "completed");
    // Replays of old keys name their orders; per-user limits hold.
    let replay = app.buy(&ann, product, "a1", None).await;
    assert_eq!(replay.status, StatusCode::OK, "{:?}", replay.body);
    assert_eq!(replay.body["orderId"], accepted[0].1.as_str());
    let third = app.buy(&ann, product, "a3", None).await;
    assert_eq!(third.error(), "purchase_limit_reached", "{:?}", third.body);

    // Exactly the stock is sold in total.
    loop {
        let (token, r) = buy_once_open(&app, product).await;
        match r.status {
            StatusCode::CREATED => {
                accepted.push((token, r.body["orderId"].as_str().unwrap().to_string()))
            }
            _ => {
                assert_eq!(r.error(), "out_of_stock", "{:?}", r.body);
                break;
            }
        }
    }
    assert_eq!(
        accepted.len(),
        10,
        "the stock of 10, one unit each but ann's two"
    );
    for (token, id) in &accepted {
        assert_eq!(app.wait_settled(token, id).await["status"], "completed");
    }
    let completed = app
        .all_shard_orders()
        .await
        .iter()
        .filter(|r| r.3 == "completed")
        .count();
    assert_eq!(completed, 10);
    app.stop().await;
}

/// Messages ready in the RabbitMQ queue `queue`; `None` when there is no such queue.
async fn queued_messages(app: &TestApp, queue: &str) -> Option<u32> {
    let url = app.settings.queue.url.expose();
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
    q.ok().map(|q| q.message_count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_published_to_a_deleted_queue_is_refused_not_lost() {
    // An api pod alone: no consumer is there to declare the order queue again.
    let app = spawn_app_with(Options {
        configure: Some(|s| s.role = flashsale::config::Role::Api),
        ..Options::default()
    })
    .await;
    let product = app.sale(5, 1).await;
    let queue = app.settings.queue.orders_queue.clone();
    let url = app.settings.queue.url.expose();
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
    assert_eq!(
        queued_messages(&app, &queue).await,
        None,
        "the queue is gone"
    );

    // The first order finds no queue: refused, its unit back on sale.
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(
        r.body["message"].as_str().unwrap().contains("order queue"),
        "{:?}",
        r.body
    );
    // The publishers declare the queue again as they restart: an order a moment later
    // (each try a new buyer, each refusal its unit back) is kept there.
    crate::helpers::eventually(
        Duration::from_secs(10),
        "an order accepted again",
        || async {
            let (_, token) = app.token_for_new_user();
            let r = app.buy(&token, product, "k", None).await;
            match r.status {
                StatusCode::CREATED => Ok(()),
                StatusCode::SERVICE_UNAVAILABLE
                    if r.body["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("order queue") =>
                {
                    Err(format!("{:?}", r.body))
                }
                _ => panic!("neither accepted nor refused for the queue: {:?}", r.body),
            }
        },
    )
    .await;
    assert_eq!(
        queued_messages(&app, &queue).await,
        Some(1),
        "the 201's message is queued"
    );
    crate::helpers::eventually(
        Duration::from_secs(10),
        "the refused unit is back",
        || async {
            let c = app.sale_counters(product).await;
            if c["remaining"] == 4 && c["pending"] == 1 {
                Ok(())
            } else {
                Err(c)
            }
        },
    )
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_is_late_is_found_by_a_retry_with_the_same_key() {
    let broker = crate::helpers::Proxy::start("127.0.0.1:5672").await;
    let app = spawn_app_with(Options {
        amqp_port: Some(broker.port),
        configure: Some(|s| {
            s.queue.deadline_ms = 1_000;
            // The buyer retries until the broker answers, and every retry counts
            // against the per-user rate limit.
            s.limits.rate_per_minute = 1_000;
        }),
        ..Options::default()
    })
    .await;
    let product = app.sale(5, 1).await;
    let (_, token) = app.token_for_new_user();

    // The broker keeps the message, but its confirm comes after the caller gave up.
    broker.stall();
    let r = app.buy(&token, product, "once", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    let said = r.body["message"].as_str().unwrap_or_default();
    assert!(said.contains("same Idempotency-Key"), "{said}");
    // The publisher waiting for the confirm gave up at its deadline and restarted.
    let restarted = |tree: &serde_json::Value| {
        ["order-publisher-0", "order-publisher-1"]
            .iter()
            .filter_map(|n| crate::helpers::find(tree, n))
            .any(|n| n["restarts"].as_u64() > Some(0))
    };
    app.admin_eventually("/admin/actors", restarted).await;
    broker.resume();

    // The buyer retries with the same key and finds the order the broker kept.
    let retry = crate::helpers::eventually(
        Duration::from_secs(30),
        "the retry is answered once the broker is back",
        || async {
            let r = app.buy(&token, product, "once", None).await;
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                Err(format!("{:?}", r.body))
            } else {
                Ok(r)
            }
        },
    )
    .await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
    let id = retry.body["orderId"].as_str().unwrap();
    assert_eq!(app.wait_settled(&token, id).await["status"], "completed");
    let completed: Vec<_> = app
        .all_shard_orders()
        .await
        .into_iter()
        .filter(|r| r.3 == "completed")
        .collect();
    assert_eq!(completed.len(), 1, "bought once: {completed:?}");
    app.stop().await;
}

in_both_modes!(a_cancellation_cut_off_before_its_restock_is_finished_by_the_reconciler);
async fn a_cancellation_cut_off_before_its_restock_is_finished_by_the_reconciler(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let product = app.sale(3, 1).await;
    let (user, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(app.wait_settled(&token, &id).await["status"], "completed");

    // The shard cancels the order; the request dies before the units go back.
    let cancel = flashsale::shards::CancelOrder {
        order: OrderId::parse(&id).unwrap(),
        user: user.clone(),
        traceparent: None,
    };
    let dir = &app.app_state.directory;
    let done = dir.shard(&user).call(cancel).await.unwrap().unwrap();
    assert!(done.now);
    assert_eq!(app.sale_counters(product).await["remaining"], 2);

    crate::helpers::eventually(
        Duration::from_secs(30),
        "the reconciler gives the unit back",
        || async {
            let c = app.sale_counters(product).await;
            if c["remaining"] == 3 {
                Ok(())
            } else {
                Err(c)
            }
        },
    )
    .await;
    // Once: the owner's retry answers the cancelled order and gives nothing more back.
    let retry = app.post_auth(&token, &format!("/orders/{id}/cancel")).await;
    assert_eq!(retry.status, StatusCode::OK, "{:?}", retry.body);
    assert_eq!(retry.body["status"], "cancelled");
    // The shard forgets a restock once the partition has the units back: from then on
    // nothing (no sweep, no retry) has this order's units to give back again.
    crate::helpers::eventually(
        Duration::from_secs(30),
        "no restock of the order is left to finish",
        || async {
            let left = app.pending_restocks().await;
            if left.contains(&id) {
                Err(format!("{left:?}"))
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert_eq!(app.sale_counters(product).await["remaining"], 3);
    app.stop().await;
}

/// Gives one unit of a cancelled order back to its partition, as a cancellation's
/// restock does, behind the HTTP layer's back.
async fn restock_one(app: &TestApp, product: i64, order: &str, user: &str) -> Restocked {
    let restock = flashsale::actors::inventory::Restock {
        product: ProductId::from_db(product),
        order: OrderId::parse(order).unwrap(),
        user: UserId::parse(user).unwrap(),
        quantity: Quantity::ONE,
    };
    let partition = app.app_state.directory.product_partition(restock.product);
    partition.call(restock).await.unwrap()
}

/// Buys one unit with a fresh buyer and waits until the order has completed.
async fn buy_completed(app: &TestApp, product: i64) -> (String, String) {
    let (token, r) = buy_once_open(app, product).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let id = r.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(app.wait_settled(&token, &id).await["status"], "completed");
    (token, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_asked_again_after_a_rebuild_gives_nothing_back() {
    let app = spawn_app_with(Options {
        reconcile_every_ms: 200,
        ..Options::default()
    })
    .await;
    let product = app.sale(1, 1).await;
    // Ann buys the one unit and cancels; it goes back on sale and Bob buys it.
    let (ann, ann_order) = buy_completed(&app, product).await;
    let cancel = format!("/orders/{ann_order}/cancel");
    let r = app.post_auth(&ann, &cancel).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let (_, bob_order) = buy_completed(&app, product).await;

    // The partition loses its state and rebuilds it from the shards.
    crate::helpers::delete_redis_keys(&app.settings.inventory.key_prefix)
        .await
        .unwrap();
    let (_, r) = buy_once_open(&app, product).await;
    assert_eq!(r.error(), "out_of_stock", "rebuilt, sold out: {:?}", r.body);

    // Ann cancels again: her order stays cancelled and no unit comes back.
    let again = app.post_auth(&ann, &cancel).await;
    assert_eq!(again.status, StatusCode::OK, "{:?}", again.body);
    assert_eq!(again.body["status"], "cancelled");
    let (_, r) = buy_once_open(&app, product).await;
    assert_eq!(r.error(), "out_of_stock", "the unit is Bob's: {:?}", r.body);
    let counters = app.sale_counters(product).await;
    assert_eq!(counters["remaining"], 0, "{counters}");
    // The rebuilt partition remembers Ann's units as returned: a restock cut off before
    // the loss and arriving after the rebuild gives nothing back either.
    let user = again.body["userId"].as_str().unwrap();
    let answer = restock_one(&app, product, &ann_order, user).await;
    assert_eq!(answer, Restocked::Already);
    let completed: Vec<_> = app
        .all_shard_orders()
        .await
        .into_iter()
        .filter(|r| r.3 == "completed")
        .map(|r| r.1)
        .collect();
    assert_eq!(completed, [bob_order], "one unit, sold once");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restock_while_the_partition_rebuilds_is_refused() {
    // No reconciler round during the test: the partition stays rebuilding.
    let app = spawn_app_with(Options {
        reconcile_every_ms: 600_000,
        ..Options::default()
    })
    .await;
    let product = app.sale(2, 1).await;
    let (ann, ann_order) = buy_completed(&app, product).await;
    let user = app.get_order(&ann, &ann_order).await.body["userId"]
        .as_str()
        .unwrap()
        .to_string();
    crate::helpers::delete_redis_keys(&app.settings.inventory.key_prefix)
        .await
        .unwrap();
    crate::helpers::eventually(Duration::from_secs(30), "the sale rebuilds", || async {
        let (_, token) = app.token_for_new_user();
        let r = app.buy(&token, product, "k", None).await;
        match r.body["message"].as_str() {
            Some(m) if m.contains("rebuilt") => Ok(()),
            _ => Err(r.body),
        }
    })
    .await;

    // Ann cancels meanwhile: told to retry, her order untouched.
    let r = app
        .post_auth(&ann, &format!("/orders/{ann_order}/cancel"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // A restock that reaches the partition now (a cancellation whose shard commit came
    // just before the loss) adds nothing: the rebuild counts cancelled orders' units.
    let answer = restock_one(&app, product, &ann_order, &user).await;
    assert_eq!(answer, Restocked::Rebuilding);
    let order = app.get_order(&ann, &ann_order).await;
    assert_eq!(order.body["status"], "completed", "{:?}", order.body);
    app.stop().await;
}
