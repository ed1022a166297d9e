//! The payment window (DESIGN §3b): an order of a sale with a window waits in its
//! shard as `awaiting_payment` until the shop's payment service confirms it, signed
//! like a payment provider's webhook, or until its `payBy` passes and it expires,
//! giving its unit back once. One scenario per answer of `POST /payments/confirm`.

use std::time::Duration;

use flashsale::config::{Secret, Settings};
use flashsale::domain::{now_ms, parse_rfc3339};
use flashsale::events::ORDER_EVENTS;
use flashsale::http::payments::sign;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{
    eventually, spawn_app, spawn_app_with, Mode, Options, Reply, TestApp, Webhook,
};

const SECRET: &str = "test-payment-webhook-secret-0123456789";

fn with_payments(s: &mut Settings) {
    s.payments.webhook_secret = Some(Secret::new(SECRET));
    s.payments.sweep_every_ms = 100;
}

async fn spawn_paying(mode: Mode) -> TestApp {
    spawn_app_with(Options {
        mode,
        configure: Some(with_payments),
        ..Options::default()
    })
    .await
}

const PRICE: i64 = 1_250;

/// A product at [`PRICE`] with a sale of `stock` units, `limit` per buyer, open now,
/// whose orders must be paid within `window_secs`.
async fn window_sale(app: &TestApp, stock: i64, limit: i64, window_secs: i64) -> i64 {
    let p = app
        .admin(
            reqwest::Method::POST,
            "/admin/products",
            Some(json!({"name": "Console", "priceCents": PRICE})),
        )
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
    let id = p.body["id"].as_i64().unwrap();
    let body = json!({"stock": stock, "perUserLimit": limit, "paymentWindowSecs": window_secs});
    let s = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/flash-sales/{id}"),
            Some(body),
        )
        .await;
    assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
    assert_eq!(s.body["paymentWindowSecs"], window_secs);
    id
}

/// POSTs a raw body to `/payments/confirm` with the given signature header.
async fn post_confirm(app: &TestApp, body: &str, signature: Option<String>) -> Reply {
    let mut req = app
        .client
        .post(format!("{}/payments/confirm", app.address))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(s) = signature {
        req = req.header("Flashsale-Signature", s);
    }
    Reply::from(req.send().await.unwrap()).await
}

fn signature(secret: &str, t: i64, body: &str) -> String {
    format!("t={t},v1={}", sign(secret.as_bytes(), t, body.as_bytes()))
}

/// Confirms a payment as the shop's payment service does.
async fn pay(app: &TestApp, order: &str, payment: &str, amount: i64) -> Reply {
    let body = json!({"orderId": order, "paymentId": payment, "amountCents": amount}).to_string();
    let header = signature(SECRET, now_ms() / 1000, &body);
    post_confirm(app, &body, Some(header)).await
}

/// Buys one unit as a new buyer; waits until the order awaits payment. Answers the
/// buyer's token and the order's view.
async fn bought(app: &TestApp, product: i64) -> (String, Value) {
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let order = app
        .wait_settled(&token, r.body["orderId"].as_str().unwrap())
        .await;
    assert_eq!(order["status"], "awaiting_payment", "{order}");
    (token, order)
}

fn id(order: &Value) -> &str {
    order["orderId"].as_str().unwrap()
}

/// The order events of `kind` about `order`, once at least one has come (and what
/// else came in half a second more).
async fn events_of(app: &TestApp, kind: &str, order: &str) -> Vec<Value> {
    let about = |e: &flashsale::events::Delivered| {
        e.envelope.kind == kind && e.envelope.data["orderId"] == order
    };
    let events = app
        .read_events(
            ORDER_EVENTS,
            |seen| seen.iter().any(about),
            Duration::from_secs(20),
            Duration::from_millis(500),
        )
        .await;
    events
        .iter()
        .filter(|e| about(e))
        .map(|e| e.envelope.data.clone())
        .collect()
}

in_both_modes!(a_paid_order_completes_and_a_repeat_is_answered_the_same);
async fn a_paid_order_completes_and_a_repeat_is_answered_the_same(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 5, 2, 600).await;
    let (token, order) = bought(&app, product).await;
    assert_eq!(order["amountCents"], PRICE);
    let pay_by = parse_rfc3339(order["payBy"].as_str().unwrap()).unwrap();
    let created = parse_rfc3339(order["createdAt"].as_str().unwrap()).unwrap();
    assert!(
        (created + 600_000..created + 630_000).contains(&pay_by),
        "payBy is the window after the order reached its shard: {order}"
    );
    let counters = app.sale_counters(product).await;
    assert_eq!(
        (
            &counters["awaitingPayment"],
            &counters["completed"],
            &counters["sold"]
        ),
        (&json!(1), &json!(0), &json!(1))
    );

    let paid = pay(&app, id(&order), "pay_1", PRICE).await;
    assert_eq!(paid.status, StatusCode::OK, "{:?}", paid.body);
    assert_eq!(
        paid.body,
        json!({"orderId": id(&order), "status": "completed", "paymentId": "pay_1"})
    );
    let again = pay(&app, id(&order), "pay_1", PRICE).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &paid.body));
    let other = pay(&app, id(&order), "pay_2", PRICE).await;
    assert_eq!(
        (other.status, other.error()),
        (StatusCode::CONFLICT, "already_paid")
    );

    let view = app.get_order(&token, id(&order)).await.body;
    assert_eq!(view["status"], "completed");
    let counters = app.sale_counters(product).await;
    assert_eq!(
        (
            &counters["awaitingPayment"],
            &counters["completed"],
            &counters["sold"]
        ),
        (&json!(0), &json!(1), &json!(1))
    );
    let paid_events = events_of(&app, "OrderPaid", id(&order)).await;
    assert_eq!(paid_events.len(), 1, "one OrderPaid");
    assert_eq!(paid_events[0]["paymentId"], "pay_1");
}

in_both_modes!(a_payment_of_another_amount_is_refused_and_a_reprice_changes_no_debt);
async fn a_payment_of_another_amount_is_refused_and_a_reprice_changes_no_debt(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 5, 2, 600).await;
    let (_, order) = bought(&app, product).await;
    let r = app
        .admin(
            reqwest::Method::PATCH,
            &format!("/admin/products/{product}"),
            Some(json!({"priceCents": PRICE * 2})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);

    let wrong = pay(&app, id(&order), "pay_1", PRICE * 2).await;
    assert_eq!(
        (wrong.status, wrong.error()),
        (StatusCode::CONFLICT, "amount_mismatch"),
        "{:?}",
        wrong.body
    );
    let right = pay(&app, id(&order), "pay_1", PRICE).await;
    assert_eq!(right.status, StatusCode::OK, "{:?}", right.body);
    // A buyer after the reprice owes the new price.
    let (_, later) = bought(&app, product).await;
    assert_eq!(later["amountCents"], PRICE * 2);
}

in_both_modes!(a_confirmation_without_a_valid_signature_is_refused);
async fn a_confirmation_without_a_valid_signature_is_refused(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 5, 2, 600).await;
    let (token, order) = bought(&app, product).await;
    let body =
        json!({"orderId": id(&order), "paymentId": "pay_1", "amountCents": PRICE}).to_string();
    let now = now_ms() / 1000;
    let forged = signature("another-secret-of-the-same-length-0123", now, &body);
    let altered =
        json!({"orderId": id(&order), "paymentId": "pay_1", "amountCents": 1}).to_string();
    let stale = signature(SECRET, now - 400, &body);
    let ahead = signature(SECRET, now + 400, &body);
    let cases = [
        (body.clone(), None),
        (body.clone(), Some("t=1,v1=zz".to_string())),
        (body.clone(), Some(forged)),
        (altered, Some(signature(SECRET, now, &body))),
        (body.clone(), Some(stale)),
        (body.clone(), Some(ahead)),
    ];
    for (body, header) in cases {
        let r = post_confirm(&app, &body, header.clone()).await;
        assert_eq!(
            (r.status, r.error()),
            (StatusCode::UNAUTHORIZED, "invalid_signature"),
            "{header:?}: {:?}",
            r.body
        );
    }
    assert_eq!(
        app.get_order(&token, id(&order)).await.body["status"],
        "awaiting_payment",
        "nothing was paid"
    );
    // Within the tolerance, either way, is fine.
    let late = signature(SECRET, now - 200, &body);
    assert_eq!(
        post_confirm(&app, &body, Some(late)).await.status,
        StatusCode::OK
    );
}

in_both_modes!(unknown_and_pending_orders_are_told_apart);
async fn unknown_and_pending_orders_are_told_apart(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 5, 2, 600).await;
    let unknown = pay(&app, &uuid::Uuid::now_v7().to_string(), "pay_1", PRICE).await;
    assert_eq!(
        (unknown.status, unknown.error()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Accepted, but held in the queue before its shard.
    let mut held = app.hold_orders().await;
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let order = r.body["orderId"].as_str().unwrap().to_string();
    held.wait_for(&order).await;
    let pending = pay(&app, &order, "pay_1", PRICE).await;
    assert_eq!(
        (pending.status, pending.error()),
        (StatusCode::CONFLICT, "order_pending"),
        "{:?}",
        pending.body
    );
    held.release().await;
    let view = app.wait_settled(&token, &order).await;
    assert_eq!(view["status"], "awaiting_payment");
    assert_eq!(
        pay(&app, &order, "pay_1", PRICE).await.status,
        StatusCode::OK
    );
    let malformed = post_confirm(
        &app,
        "{\"orderId\": 1}",
        Some(signature(SECRET, now_ms() / 1000, "{\"orderId\": 1}")),
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.error()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

in_both_modes!(an_unpaid_order_expires_and_its_unit_is_sold_again);
async fn an_unpaid_order_expires_and_its_unit_is_sold_again(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 1, 1, 3).await;
    let (token, order) = bought(&app, product).await;
    let (_, other) = app.token_for_new_user();
    let sold_out = app.buy(&other, product, "k", None).await;
    assert_eq!(sold_out.error(), "out_of_stock");

    let expired = app.wait_settled_as(&token, id(&order), "expired").await;
    assert_eq!(expired["payBy"], order["payBy"]);
    let late = pay(&app, id(&order), "pay_1", PRICE).await;
    assert_eq!(
        (late.status, late.error()),
        (StatusCode::CONFLICT, "payment_window_closed")
    );
    let counters = app
        .admin_eventually(&format!("/admin/flash-sales/{product}"), |c| {
            c["remaining"] == 1
        })
        .await;
    assert_eq!(
        (
            &counters["expired"],
            &counters["awaitingPayment"],
            &counters["sold"]
        ),
        (&json!(1), &json!(0), &json!(0))
    );
    // The unit is on sale again, and the first buyer's limit has it back too (the
    // orders from now on have a long window: this one is not to expire too).
    let body = json!({"stock": 1, "perUserLimit": 1, "paymentWindowSecs": 600});
    let path = format!("/admin/flash-sales/{product}");
    let r = app.admin(reqwest::Method::PUT, &path, Some(body)).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    let again = app.buy(&token, product, "k2", None).await;
    assert_eq!(again.status, StatusCode::CREATED, "{:?}", again.body);
    let after = app.buy(&other, product, "k2", None).await;
    assert_eq!(after.error(), "out_of_stock", "returned once, sold once");
    let expired = events_of(&app, "OrderExpired", id(&order)).await;
    assert_eq!(expired.len(), 1, "one OrderExpired");
    // The reporting consumer counts it.
    app.admin_eventually("/admin/reports/orders", |r| {
        let products = r["products"].as_array().cloned().unwrap_or_default();
        products
            .iter()
            .any(|p| p["productId"] == product && p["expired"] == 1)
    })
    .await;
}

in_both_modes!(a_cancelled_order_cannot_be_paid_and_gives_its_unit_back_once);
async fn a_cancelled_order_cannot_be_paid_and_gives_its_unit_back_once(mode: Mode) {
    let app = spawn_paying(mode).await;
    let product = window_sale(&app, 1, 1, 600).await;
    let (token, order) = bought(&app, product).await;
    let cancel = app
        .post_auth(&token, &format!("/orders/{}/cancel", id(&order)))
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);
    let r = pay(&app, id(&order), "pay_1", PRICE).await;
    assert_eq!(
        (r.status, r.error()),
        (StatusCode::CONFLICT, "order_cancelled")
    );
    let counters = app.sale_counters(product).await;
    assert_eq!(
        (
            &counters["remaining"],
            &counters["cancelled"],
            &counters["sold"]
        ),
        (&json!(1), &json!(1), &json!(0))
    );
}

in_both_modes!(without_a_secret_there_is_no_payment_endpoint);
async fn without_a_secret_there_is_no_payment_endpoint(mode: Mode) {
    let app = spawn_app(mode).await;
    let body =
        json!({"orderId": uuid::Uuid::now_v7().to_string(), "paymentId": "p", "amountCents": 1})
            .to_string();
    let r = post_confirm(&app, &body, Some(signature(SECRET, now_ms() / 1000, &body))).await;
    assert_eq!((r.status, r.error()), (StatusCode::NOT_FOUND, "not_found"));
}

in_both_modes!(payments_racing_their_deadline_end_as_answered);
/// Orders paid right at their `payBy`: each payment and its order's expiry race in
/// the shard, and every order ends as its answer said.
async fn payments_racing_their_deadline_end_as_answered(mode: Mode) {
    let app = spawn_paying(mode).await;
    let stock = 24;
    let product = window_sale(&app, stock, 1, 3).await;
    let buyers = join_all((0..stock).map(|_| bought(&app, product))).await;
    let answers = join_all(buyers.iter().enumerate().map(|(i, (_, order))| {
        let app = &app;
        async move {
            let pay_by = parse_rfc3339(order["payBy"].as_str().unwrap()).unwrap();
            // Spread around the deadline: a little before, at, and after it.
            let at = pay_by + (i as i64 % 5 - 2) * 15;
            let wait = (at - now_ms()).max(0) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
            pay(app, id(order), &format!("pay_{i}"), PRICE).await
        }
    }))
    .await;
    let (mut paid, mut lapsed) = (0, 0);
    for ((token, order), answer) in buyers.iter().zip(&answers) {
        let expected = match (answer.status, answer.error()) {
            (StatusCode::OK, _) => {
                paid += 1;
                "completed"
            }
            (StatusCode::CONFLICT, "payment_window_closed") => {
                lapsed += 1;
                "expired"
            }
            other => panic!("unexpected answer {other:?}: {:?}", answer.body),
        };
        let view = app.wait_settled_as(token, id(order), expected).await;
        assert_eq!(view["status"], expected);
    }
    let counters = app
        .admin_eventually(&format!("/admin/flash-sales/{product}"), |c| {
            c["remaining"] == lapsed
        })
        .await;
    assert_eq!(
        (
            &counters["completed"],
            &counters["expired"],
            &counters["awaitingPayment"]
        ),
        (&json!(paid), &json!(lapsed), &json!(0)),
        "{counters}"
    );
    assert_eq!(paid + lapsed, stock);
}

impl TestApp {
    /// Polls the order until its status is `status`.
    async fn wait_settled_as(&self, token: &str, order: &str, status: &str) -> Value {
        let what = format!("order {order} is {status}");
        eventually(Duration::from_secs(30), &what, || async {
            let r = self.get_order(token, order).await;
            if r.status == StatusCode::OK && r.body["status"] == status {
                Ok(r.body)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await
    }
}

/// A new buyer's order as soon as the sale takes orders again (it answers `503`
/// while its partition rebuilds); any answer but `503`. Each try is another buyer's:
/// one buyer asking all along would meet the rate limit.
async fn buy_when_open(app: &TestApp, product: i64) -> Reply {
    eventually(Duration::from_secs(30), "the sale takes orders", || async {
        let (_, token) = app.token_for_new_user();
        let r = app.buy(&token, product, "k", None).await;
        match r.status {
            StatusCode::SERVICE_UNAVAILABLE => Err(r.body),
            _ => Ok(r),
        }
    })
    .await
}

/// New buyers buy until the sale is sold out; answers how many bought.
async fn buy_out(app: &TestApp, product: i64) -> i64 {
    let mut bought = 0;
    loop {
        let r = buy_when_open(app, product).await;
        match (r.status, r.error()) {
            (StatusCode::CREATED, _) => bought += 1,
            (StatusCode::CONFLICT, "out_of_stock") => return bought,
            other => panic!("unexpected {other:?}: {:?}", r.body),
        }
    }
}

/// The shards of orders awaiting payment are away across their `payBy`: nothing is
/// decided meanwhile (a payment is told to retry, no unit goes back), and once the
/// shards are back the orders expire and their units return, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_whose_shard_is_away_at_their_deadline_expire_once_it_is_back() {
    let target = match std::env::var("FLASHSALE_TEST_PGBOUNCER") {
        Ok(port) => &*Box::leak(format!("127.0.0.1:{port}").into_boxed_str()),
        Err(_) => "127.0.0.1:5432",
    };
    let postgres = crate::helpers::Proxy::start(target).await;
    let app = spawn_app_with(Options {
        postgres_port: Some(postgres.port),
        configure: Some(with_payments),
        ..Options::default()
    })
    .await;
    let stock = 6;
    let product = window_sale(&app, stock, 1, 5).await;
    let orders = join_all((0..stock).map(|_| bought(&app, product))).await;
    let last_pay_by = orders
        .iter()
        .map(|(_, o)| parse_rfc3339(o["payBy"].as_str().unwrap()).unwrap())
        .max()
        .unwrap();

    postgres.cut();
    let past = (last_pay_by + 1_000 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(past)).await;
    let (_, first) = &orders[0];
    let r = pay(&app, id(first), "late", PRICE).await;
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "undecided while the shard is away: {:?}",
        r.body
    );
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.error(), "out_of_stock", "no unit came back meanwhile");

    postgres.restore();
    let counters = app
        .admin_eventually(&format!("/admin/flash-sales/{product}"), |c| {
            c["expired"] == stock && c["remaining"] == stock
        })
        .await;
    assert_eq!(counters["awaitingPayment"], 0, "{counters}");
    for (token, order) in &orders {
        let view = app.get_order(token, id(order)).await.body;
        assert_eq!(view["status"], "expired", "{view}");
    }
    let late = pay(&app, id(first), "late", PRICE).await;
    assert_eq!(late.error(), "payment_window_closed");
    assert!(app.pending_restocks().await.is_empty());
    assert_eq!(
        buy_out(&app, product).await,
        stock,
        "each unit came back once"
    );
}

/// A partition that loses its state is rebuilt from the shards: an order awaiting
/// payment counts as sold, an expired one as returned, and neither comes back twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_counts_held_orders_sold_and_expired_ones_returned() {
    let app = spawn_paying(Mode::Cluster).await;
    let stock = 4;
    let product = window_sale(&app, stock, 1, 600).await;
    let window = |secs: i64| {
        let app = &app;
        async move {
            let body = json!({"stock": stock, "perUserLimit": 1, "paymentWindowSecs": secs});
            let path = format!("/admin/flash-sales/{product}");
            let r = app.admin(reqwest::Method::PUT, &path, Some(body)).await;
            assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        }
    };
    // Ann pays; Bob's order (of a one-second window) expires; Cat's awaits payment.
    let (_, ann) = bought(&app, product).await;
    assert_eq!(
        pay(&app, id(&ann), "pay_ann", PRICE).await.status,
        StatusCode::OK
    );
    window(3).await;
    let (bob_token, bob) = bought(&app, product).await;
    app.wait_settled_as(&bob_token, id(&bob), "expired").await;
    app.admin_eventually(&format!("/admin/flash-sales/{product}"), |c| {
        c["remaining"] == stock - 1
    })
    .await;
    window(600).await;
    let (cat_token, cat) = bought(&app, product).await;

    crate::helpers::delete_redis_keys(&app.settings.inventory.key_prefix)
        .await
        .unwrap();
    // Rebuilt: Ann's and Cat's units are sold, Bob's is on sale (once).
    let r = buy_when_open(&app, product).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    // The new order is counted once it is in its shard (between its claim and its
    // write it is in neither count).
    let counters = app
        .admin_eventually(&format!("/admin/flash-sales/{product}"), |c| {
            c["awaitingPayment"] == 2
        })
        .await;
    assert_eq!(
        (
            &counters["remaining"],
            &counters["sold"],
            &counters["completed"]
        ),
        (&json!(1), &json!(3), &json!(1)),
        "{counters}"
    );
    // Cat gives up: her unit comes back once.
    let cancel = app
        .post_auth(&cat_token, &format!("/orders/{}/cancel", id(&cat)))
        .await;
    assert_eq!(cancel.status, StatusCode::OK, "{:?}", cancel.body);
    assert_eq!(buy_out(&app, product).await, 2);
}

/// The signing example of docs/payments.md, run as it is written there with `openssl`
/// and `curl`, pays an order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_openssl_example_confirms_a_payment() {
    let app = spawn_paying(Mode::Cluster).await;
    let product = window_sale(&app, 1, 1, 600).await;
    let (token, order) = bought(&app, product).await;
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/payments.md")).unwrap();
    let script = doc
        .split("```sh\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .find(|block| block.contains("/payments/confirm"))
        .expect("docs/payments.md has a sh block that confirms a payment");
    let out = tokio::process::Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .env("FLASHSALE_URL", &app.address)
        .env("FLASHSALE_PAYMENT_SECRET", SECRET)
        .env("ORDER_ID", id(&order))
        .env("PAYMENT_ID", "pi_doc_1")
        .env("AMOUNT_CENTS", order["amountCents"].to_string())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_str(&stdout).expect("a JSON answer");
    assert_eq!(
        answer,
        json!({"orderId": id(&order), "status": "completed", "paymentId": "pi_doc_1"})
    );
    let view = app.get_order(&token, id(&order)).await.body;
    assert_eq!(view["status"], "completed");
}

in_both_modes!(the_buyer_is_told_when_payment_is_due_and_when_it_lapsed);
async fn the_buyer_is_told_when_payment_is_due_and_when_it_lapsed(mode: Mode) {
    let hook = Webhook::start(0);

    let app = spawn_app_with(Options {
        mode,
        webhook_url: Some(hook.url.clone()),
        configure: Some(with_payments),
        ..Options::default()
    })
    .await;
    let product = window_sale(&app, 1, 1, 3).await;
    let (token, order) = bought(&app, product).await;
    app.wait_settled_as(&token, id(&order), "expired").await;
    let kinds = ["order.payment_due", "order.payment_lapsed"];
    let told = eventually(Duration::from_secs(20), "both notices arrive", || async {
        let seen = hook.received();
        match kinds
            .iter()
            .all(|k| seen.iter().any(|(b, _)| b["type"] == *k))
        {
            true => Ok(seen),
            false => Err(format!("{seen:?}")),
        }
    })
    .await;
    for (body, key) in &told {
        assert_eq!(body["orderId"], id(&order));
        let kind = body["type"].as_str().unwrap().trim_start_matches("order.");
        assert_eq!(key, &format!("{}:{kind}", id(&order)));
    }
    let (due, _) = told
        .iter()
        .find(|(b, _)| b["type"] == "order.payment_due")
        .unwrap();
    assert_eq!(
        (&due["payBy"], &due["amountCents"]),
        (&order["payBy"], &json!(PRICE))
    );
    app.stop().await;
    hook.stop().await;
}

in_both_modes!(a_payment_after_pay_by_expires_the_order_itself);
/// No sweep runs (its interval is a minute): a payment that arrives after `payBy`
/// decides the expiry itself, in the same transaction, and the order reads `expired`
/// at once; asking again changes nothing.
async fn a_payment_after_pay_by_expires_the_order_itself(mode: Mode) {
    fn without_sweeps(s: &mut Settings) {
        with_payments(s);
        s.payments.sweep_every_ms = 60_000;
    }
    let app = spawn_app_with(Options {
        mode,
        configure: Some(without_sweeps),
        ..Options::default()
    })
    .await;
    let product = window_sale(&app, 1, 1, 1).await;
    let (token, order) = bought(&app, product).await;
    let pay_by = parse_rfc3339(order["payBy"].as_str().unwrap()).unwrap();
    let past = (pay_by + 200 - now_ms()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(past)).await;
    for _ in 0..2 {
        let late = pay(&app, id(&order), "late", PRICE).await;
        assert_eq!(late.error(), "payment_window_closed", "{:?}", late.body);
        let view = app.get_order(&token, id(&order)).await.body;
        assert_eq!(view["status"], "expired", "{view}");
    }
    let counters = app.sale_counters(product).await;
    assert_eq!(
        (&counters["expired"], &counters["awaitingPayment"]),
        (&json!(1), &json!(0)),
        "{counters}"
    );
    let expired = events_of(&app, "OrderExpired", id(&order)).await;
    assert_eq!(expired.len(), 1, "one OrderExpired");
}
