//! `GET /flash-sales/{productId}`: the countdown buyers poll, and its micro-cache.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use flashsale::domain::{now_ms, rfc3339};

use crate::helpers::{eventually, spawn_app, Mode, TestApp};

async fn countdown(app: &TestApp, product: &str) -> (StatusCode, Option<String>, Value) {
    let r = app
        .client
        .get(format!("{}/flash-sales/{product}", app.address))
        .send()
        .await
        .unwrap();
    let cache = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status(), cache, r.json().await.unwrap_or(Value::Null))
}

async fn status_becomes(app: &TestApp, product: i64, want: &str) -> Value {
    let what = format!("the sale is {want}");
    eventually(Duration::from_secs(15), &what, || async {
        let (_, _, body) = countdown(app, &product.to_string()).await;
        match body["status"] == want {
            true => Ok(body),
            false => Err(body),
        }
    })
    .await
}

in_both_modes!(the_countdown_follows_a_sale_from_upcoming_to_ended);
async fn the_countdown_follows_a_sale_from_upcoming_to_ended(mode: Mode) {
    let app = spawn_app(mode).await;
    for missing in ["999999", "abc"] {
        let (status, _, body) = countdown(&app, missing).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"], "not_found");
    }

    let p = app
        .admin(
            reqwest::Method::POST,
            "/admin/products",
            Some(json!({"name": "Phone", "priceCents": 19900})),
        )
        .await;
    let product = p.body["id"].as_i64().unwrap();
    let (starts, ends) = (now_ms() + 3_000, now_ms() + 8_000);
    let put = app
        .admin(
            reqwest::Method::PUT,
            &format!("/admin/flash-sales/{product}"),
            Some(json!({"stock": 3, "perUserLimit": 1,
                        "startsAt": rfc3339(starts), "endsAt": rfc3339(ends)})),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK, "{:?}", put.body);

    let (status, cache, body) = countdown(&app, &product.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(cache.as_deref(), Some("public, max-age=1"));
    assert_eq!(body["status"], "upcoming", "{body}");
    assert_eq!(body["productId"], product);
    assert_eq!(body["remaining"], 3);
    assert_eq!(body["startsAt"], rfc3339(starts));
    assert_eq!(body["endsAt"], rfc3339(ends));
    let server = body["serverTime"].as_str().unwrap().to_string();
    assert!(
        server < rfc3339(starts) && server.len() == rfc3339(starts).len(),
        "{body}"
    );

    // The herd: many pollers at once cost one backend read per second, not one each.
    // This app's own reads: the process holds the other mode's app too.
    let reads = || app.app_state.countdown.reads() as f64;
    let before = reads();
    let started = Instant::now();
    let id = product.to_string();
    let answers = join_all((0..300).map(|_| countdown(&app, &id))).await;
    let secs = started.elapsed().as_secs_f64().ceil();
    assert!(answers
        .iter()
        .all(|(s, _, b)| *s == StatusCode::OK && b["status"] == "upcoming"));
    let read = reads() - before;
    assert!(
        read <= secs + 1.0,
        "{read} backend reads for 300 polls in {secs} s"
    );

    // It opens on time, sells out, and ends.
    status_becomes(&app, product, "active").await;
    app.buy_as_new_buyers(product, 3).await;
    let sold_out = status_becomes(&app, product, "sold_out").await;
    assert_eq!(sold_out["remaining"], 0);
    status_becomes(&app, product, "ended").await;
    app.stop().await;
}
