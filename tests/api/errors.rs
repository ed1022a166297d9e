//! Bad input gets a clear JSON error, never a crash or an order; each listener's
//! OpenAPI document describes that listener's paths and methods.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{eventually, find, spawn_app, spawn_app_with, Mode, Options, TestApp};

fn assert_error(status: StatusCode, body: &Value, want_status: StatusCode, want_code: &str) {
    assert_eq!(status, want_status, "{body:?}");
    assert_eq!(body["error"], want_code, "{body:?}");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body:?}"
    );
}

in_both_modes!(hostile_order_requests_get_json_errors);
async fn hostile_order_requests_get_json_errors(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(10, 5).await;
    let (_, token) = app.token_for_new_user();
    let url = format!("{}/orders/flash-sale/{product}", app.address);
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await.unwrap();
        let status = r.status();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };

    let (s, b) = send(app.client.post(&url).header("Idempotency-Key", "k")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = send(
        app.client
            .post(&url)
            .bearer_auth("not.a.token")
            .header("Idempotency-Key", "k"),
    )
    .await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");
    let (s, b) = send(app.client.post(&url).bearer_auth(&token)).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, b) = send(
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "k".repeat(129)),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let (s, b) = send(
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "has space"),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    for body in [
        json!({"quantity": 0}),
        json!({"quantity": -1}),
        json!({"quantity": "two"}),
        json!({"quantity": 1.5}),
    ] {
        let (s, b) = send(
            app.client
                .post(&url)
                .bearer_auth(&token)
                .header("Idempotency-Key", "q")
                .json(&body),
        )
        .await;
        assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let (s, b) = send(
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "j")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_request");
    let huge = format!(
        "{{\"quantity\": 1, \"pad\": \"{}\"}}",
        "x".repeat(64 * 1024)
    );
    let (s, b) = send(
        app.client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "h")
            .body(huge),
    )
    .await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    for missing in ["999999", "abc", "-1", "0"] {
        let (s, b) = send(
            app.client
                .post(format!("{}/orders/flash-sale/{missing}", app.address))
                .bearer_auth(&token)
                .header("Idempotency-Key", "m"),
        )
        .await;
        assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    }
    assert_eq!(
        app.sale_counters(product).await["remaining"],
        10,
        "no bad request reserved stock"
    );
    app.stop().await;
}

in_both_modes!(other_bad_requests_get_json_errors);
async fn other_bad_requests_get_json_errors(mode: Mode) {
    let app = spawn_app(mode).await;
    let r = app
        .client
        .get(format!("{}/no/such/route", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "not_found");

    for body in [
        json!({"email": "not-an-email", "password": "long-password"}),
        json!({"email": "a@b.io", "password": "short"}),
        json!({"email": 5}),
    ] {
        let r = app.post_json("/auth/register", &body).await;
        assert_error(
            r.status,
            &r.body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let big = json!({"email": "a@b.io", "password": "x".repeat(20_000)});
    let r = app.post_json("/auth/register", &big).await;
    assert_error(
        r.status,
        &r.body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );

    let (_, token) = app.token_for_new_user();
    let r = app.get_order(&token, "not-a-uuid").await;
    assert_error(r.status, &r.body, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .get_order(&token, &uuid::Uuid::now_v7().to_string())
        .await;
    assert_error(r.status, &r.body, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .client
        .get(format!("{}/users/me/orders", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .get(format!("{}/products/12345678", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let r = app
        .admin(
            reqwest::Method::POST,
            "/admin/products",
            Some(json!({"name": "", "priceCents": 1})),
        )
        .await;
    assert_error(
        r.status,
        &r.body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let r = app
        .admin(
            reqwest::Method::PUT,
            "/admin/flash-sales/424242",
            Some(json!({"stock": 1, "perUserLimit": 1})),
        )
        .await;
    assert_error(r.status, &r.body, StatusCode::NOT_FOUND, "not_found");
    let r = app
        .admin(
            reqwest::Method::GET,
            "/admin/reports/sales?productId=1&productId=2",
            None,
        )
        .await;
    assert_error(
        r.status,
        &r.body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    let r = app
        .client
        .post(format!("{}/admin/products", app.admin_address))
        .json(&json!({"name": "x", "priceCents": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::UNAUTHORIZED,
        "the admin API needs the admin token"
    );
    app.stop().await;
}

in_both_modes!(a_body_with_an_unknown_field_or_not_an_object_is_refused);
async fn a_body_with_an_unknown_field_or_not_an_object_is_refused(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(10, 5).await;
    let (_, token) = app.token_for_new_user();
    let credentials = json!({"email": "eve@example.com", "password": "long-password"});
    let mut with_extra = credentials.clone();
    with_extra["admin"] = json!(true);

    for path in ["/auth/register", "/auth/login"] {
        for body in [
            with_extra.clone(),
            json!(["eve@example.com", "long-password"]),
        ] {
            let r = app.post_json(path, &body).await;
            assert_error(
                r.status,
                &r.body,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            );
        }
    }
    // Refused means not done: the address is still free.
    let r = app.register("eve@example.com", "long-password").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);

    let url = format!("{}/orders/flash-sale/{product}", app.address);
    for (key, body) in [("u1", json!({"quantity": 1, "qty": 2})), ("u2", json!([1]))] {
        let r = app
            .client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        assert_error(
            status,
            &r.json().await.unwrap(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let r = app
        .client
        .patch(format!("{}/users/me", app.address))
        .bearer_auth(&token)
        .json(&json!({"displayName": "Eve", "role": "admin"}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_error(
        status,
        &r.json().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    for (method, path, body) in [
        (
            Method::POST,
            "/admin/products".to_string(),
            json!({"name": "Pad", "priceCents": 1, "stock": 5}),
        ),
        (
            Method::PATCH,
            format!("/admin/products/{product}"),
            json!({"priceCents": 1, "colour": "red"}),
        ),
        (
            Method::PUT,
            format!("/admin/flash-sales/{product}"),
            json!({"stock": 99, "perUserLimit": 1, "limit": 3}),
        ),
        (
            Method::PUT,
            format!("/admin/flash-sales/{product}"),
            json!([99, 1]),
        ),
    ] {
        let r = app.admin(method.clone(), &path, Some(body)).await;
        assert_error(
            r.status,
            &r.body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let sale = app.sale_counters(product).await;
    assert_eq!(
        (sale["stock"].as_i64(), sale["remaining"].as_i64()),
        (Some(10), Some(10))
    );
    app.stop().await;
}

in_both_modes!(a_sale_time_past_the_year_9999_is_refused);
async fn a_sale_time_past_the_year_9999_is_refused(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(10, 5).await;
    let path = format!("/admin/flash-sales/{product}");
    // The answer shows both times as RFC 3339, which has four-digit years.
    for ends_at in [json!(253_402_300_800_000_i64), json!(i64::MAX)] {
        let r = app
            .admin(
                Method::PUT,
                &path,
                Some(json!({"stock": 10, "perUserLimit": 5, "endsAt": ends_at})),
            )
            .await;
        assert_error(
            r.status,
            &r.body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    let r = app
        .admin(
            Method::PUT,
            &path,
            Some(json!({"stock": 10, "perUserLimit": 5, "endsAt": 253_402_300_799_999_i64})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert_eq!(r.body["endsAt"], "9999-12-31T23:59:59.999Z");
    app.stop().await;
}

/// The `(path, methods)` an OpenAPI document lists, methods in upper case.
fn documented(doc: &Value) -> Vec<(String, BTreeSet<String>)> {
    doc["paths"]
        .as_object()
        .expect("the document has paths")
        .iter()
        .map(|(path, item)| {
            let methods = item
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| !matches!(k.as_str(), "parameters" | "summary" | "description"))
                .map(|k| k.to_ascii_uppercase())
                .collect();
            (path.clone(), methods)
        })
        .collect()
}

async fn document(app: &TestApp, url: String) -> Value {
    let r = app.client.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("the document is JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    doc
}

in_both_modes!(each_listener_serves_the_document_of_its_own_paths);
async fn each_listener_serves_the_document_of_its_own_paths(mode: Mode) {
    let app = spawn_app(mode).await;
    let public = document(&app, format!("{}/openapi.json", app.address)).await;
    let admin = document(&app, format!("{}/admin/openapi.json", app.admin_address)).await;
    let public_paths: Vec<_> = documented(&public).into_iter().map(|(p, _)| p).collect();
    let admin_paths: Vec<_> = documented(&admin).into_iter().map(|(p, _)| p).collect();

    for path in &public_paths {
        assert!(
            !path.starts_with("/admin") && path != "/metrics",
            "{path} is on the admin listener, not the public one"
        );
    }
    for path in [
        "/admin/products",
        "/admin/products/{id}",
        "/admin/flash-sales/{productId}",
        "/admin/reports/sales",
        "/admin/reports/orders",
        "/admin/reports/inventory",
        "/admin/actors",
        "/admin/actors/{name}/restart",
        "/admin",
        "/admin/openapi.json",
        "/metrics",
    ] {
        assert!(
            admin_paths.iter().any(|p| p == path),
            "{path} missing from the admin document"
        );
    }
    // The admin document names its bearer scheme, and the admin API wants it.
    let schemes = admin["components"]["securitySchemes"].as_object().unwrap();
    let (name, scheme) = schemes.iter().next().expect("a security scheme");
    assert_eq!(
        (&scheme["type"], &scheme["scheme"]),
        (&json!("http"), &json!("bearer"))
    );
    assert_eq!(admin["security"], json!([{ name: [] }]));
    // Neither listener answers the other's paths.
    for (base, path) in [
        (&app.address, "/admin/openapi.json"),
        (&app.address, "/admin/products"),
        (&app.admin_address, "/openapi.json"),
    ] {
        let r = app
            .client
            .get(format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{base}{path}");
    }
    app.stop().await;
}

in_both_modes!(a_method_a_path_lacks_is_405_with_the_allowed_ones);
async fn a_method_a_path_lacks_is_405_with_the_allowed_ones(mode: Mode) {
    let app = spawn_app(mode).await;
    let listeners = [
        (app.address.clone(), format!("{}/openapi.json", app.address)),
        (
            app.admin_address.clone(),
            format!("{}/admin/openapi.json", app.admin_address),
        ),
    ];
    for (base, doc_url) in listeners {
        let doc = document(&app, doc_url).await;
        for (path, methods) in documented(&doc) {
            // Any value routes; without credentials nothing changes.
            let url = format!("{base}{}", path.replace("{", "").replace("}", ""));
            for method in ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"] {
                let r = app
                    .client
                    .request(Method::from_bytes(method.as_bytes()).unwrap(), &url)
                    .send()
                    .await
                    .unwrap();
                if methods.contains(method) {
                    assert_ne!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
                    continue;
                }
                assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{method} {url}");
                let allow: BTreeSet<String> = r
                    .headers()
                    .get("allow")
                    .unwrap_or_else(|| panic!("{method} {url}: 405 without Allow"))
                    .to_str()
                    .unwrap()
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .collect();
                assert_eq!(
                    allow, methods,
                    "{method} {url}: Allow names what the document lists"
                );
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"], "method_not_allowed");
            }
        }
    }
    app.stop().await;
}

in_both_modes!(a_corrupt_row_fails_its_request_alone_not_the_shard);
async fn a_corrupt_row_fails_its_request_alone_not_the_shard(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(10, 1).await;
    let (ann, ann_token) = app.token_for_new_user();
    let bought = app.buy(&ann_token, product, "k", None).await;
    let order = bought.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_settled(&ann_token, &order).await["status"],
        "completed"
    );

    // A status no version of flashsale writes (the schema's check has to be set aside
    // to store it): corrupt data, never shown as pending.
    let shard = app.app_state.directory.shard_index(&ann);
    let unchecked = match mode {
        Mode::Cluster => "ALTER TABLE orders DROP CONSTRAINT orders_status_check",
        Mode::Embedded => "PRAGMA ignore_check_constraints = ON",
    };
    let sql =
        format!("{unchecked}; UPDATE orders SET status = 'shipped?' WHERE order_id = '{order}'");
    assert_eq!(app.exec_on_shard(shard, &sql).await, 1);
    // Read once the row as written is what the shard serves (a read replica, when the
    // shards have one, replays the change a moment later).
    let r = eventually(
        Duration::from_secs(10),
        "the corrupt row is read",
        || async {
            let r = app.get_order(&ann_token, &order).await;
            match r.status {
                StatusCode::OK => Err(r.body),
                _ => Ok(r),
            }
        },
    )
    .await;
    assert_error(
        r.status,
        &r.body,
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
    );
    let message = r.body["message"].as_str().unwrap_or_default();
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(
        message,
        format!("internal error (request {request_id})"),
        "no internals leak, the request id to quote: {:?}",
        r.body
    );

    // The shard actor answered that request with an error and went on: no restart,
    // and other users' orders on the same shard still read.
    let tree = app.admin(Method::GET, "/admin/actors", None).await.body;
    let name = format!("shard-{shard}");
    let node = find(&tree, &name).expect("the shard is in the tree");
    assert_eq!(
        (node["status"].as_str(), node["restarts"].as_u64()),
        (Some("running"), Some(0)),
        "{node}"
    );
    let bob_token = loop {
        let (user, token) = app.token_for_new_user();
        if app.app_state.directory.shard_index(&user) == shard {
            break token;
        }
    };
    let theirs = app.buy(&bob_token, product, "k", None).await;
    let theirs = theirs.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(
        app.wait_settled(&bob_token, &theirs).await["status"],
        "completed"
    );
    app.stop().await;
}

in_both_modes!(random_methods_do_not_grow_the_metrics);
async fn random_methods_do_not_grow_the_metrics(mode: Mode) {
    let app = spawn_app(mode).await;
    for i in 0..40 {
        let method = Method::from_bytes(format!("PROBE{i}").as_bytes()).unwrap();
        let r = app
            .client
            .request(method, format!("{}/healthz", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let metrics = app.admin(Method::GET, "/metrics", None).await;
    let text = metrics.body.as_str().expect("Prometheus text");
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("flashsale_http_requests_total{"))
        .collect();
    assert!(
        series.iter().all(|l| !l.contains("PROBE")),
        "a raw method became a label: {series:?}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("method=\"other\"") && l.contains("route=\"/healthz\"")),
        "unknown methods are counted as other: {series:?}"
    );
    app.stop().await;
}

in_both_modes!(a_stock_beyond_exact_counting_is_refused);
async fn a_stock_beyond_exact_counting_is_refused(mode: Mode) {
    let app = spawn_app(mode).await;
    let product = app.sale(5, 1).await;
    let path = format!("/admin/flash-sales/{product}");
    for body in [
        json!({"stock": 10_000_000_000_000_000i64, "perUserLimit": 1}),
        json!({"stock": 5, "perUserLimit": 10_000_000_000_000_000i64}),
    ] {
        let r = app.admin(Method::PUT, &path, Some(body)).await;
        assert_error(
            r.status,
            &r.body,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
    // The sale is as it was, and sells.
    let c = app.sale_counters(product).await;
    assert_eq!(
        (c["stock"].as_i64(), c["perUserLimit"].as_i64()),
        (Some(5), Some(1))
    );
    let (_, token) = app.token_for_new_user();
    let r = app.buy(&token, product, "k", None).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    app.stop().await;
}

/// Resident memory of this process (the app runs in it), in MiB.
fn resident_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib / 1024
}

in_both_modes!(a_spike_of_registrations_costs_latency_not_errors);
async fn a_spike_of_registrations_costs_latency_not_errors(mode: Mode) {
    // Forty buyers register at once, right before a sale: more than the cores can hash
    // together, far fewer than a flood.
    let app = spawn_app_with(Options {
        mode,
        configure: Some(|s| s.auth.hash_wait_ms = 20_000),
        ..Options::default()
    })
    .await;
    let emails: Vec<String> = (0..40)
        .map(|i| format!("spike-{i}-{}@example.com", uuid::Uuid::new_v4().simple()))
        .collect();
    let answers =
        futures_util::future::join_all(emails.iter().map(|e| app.register(e, "long-password")))
            .await;
    for r in &answers {
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    app.stop().await;
}

in_both_modes!(a_login_flood_is_refused_and_bounded_and_orders_go_on);
async fn a_login_flood_is_refused_and_bounded_and_orders_go_on(mode: Mode) {
    let app = spawn_app(mode).await;
    let r = app
        .register("victim@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let product = app.sale(5, 1).await;
    let before = resident_mib();
    // Six hundred wrong passwords at once: each would cost an argon2 check.
    let wrong: Vec<String> = (0..600).map(|i| format!("wrong password {i}")).collect();
    let flood: Vec<_> = wrong
        .iter()
        .map(|password| app.login("victim@example.com", password))
        .collect();
    let (_, token) = app.token_for_new_user();
    let (answers, order) = tokio::join!(
        futures_util::future::join_all(flood),
        app.buy(&token, product, "during-the-flood", None)
    );
    let grown = resident_mib().saturating_sub(before);
    assert_eq!(
        order.status,
        StatusCode::CREATED,
        "the order path is unaffected: {:?}",
        order.body
    );
    assert!(
        answers
            .iter()
            .all(|r| matches!(r.status.as_u16(), 401 | 429 | 503)),
        "only wrong-credential, rate-limited or overloaded answers"
    );
    for r in answers.iter().filter(|r| r.status.as_u16() != 401) {
        assert!(r.headers.contains_key("retry-after"), "{:?}", r.body);
    }
    let limited = answers
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS);
    let checked = answers
        .iter()
        .filter(|r| r.status == StatusCode::UNAUTHORIZED);
    assert!(
        checked.count() <= 10,
        "at most the account's ten attempts a minute were checked"
    );
    assert!(limited.count() >= 500, "the rest were refused at once");
    assert!(grown < 256, "resident memory grew {grown} MiB");
    // The account's window is spent: even the right password waits for it.
    let locked = app
        .login("victim@example.com", "correct horse battery")
        .await;
    assert_eq!(
        locked.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{:?}",
        locked.body
    );
    app.stop().await;
}

in_both_modes!(order_and_login_limits_per_client_address_trust_only_configured_proxies);
async fn order_and_login_limits_per_client_address_trust_only_configured_proxies(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        configure: Some(|s| {
            s.limits.orders_per_ip_per_minute = 3;
            s.limits.auth_per_ip_per_minute = 2;
            // The load balancer's address, and its pods' range.
            s.http.trusted_proxies = ["127.0.0.1", "10.1.0.0/16"]
                .map(|p| p.parse().unwrap())
                .to_vec();
        }),
        ..Options::default()
    })
    .await;
    let product = app.sale(100, 1).await;
    let buy_from = |ip: &'static str| {
        let (_, token) = app.token_for_new_user();
        let url = format!("{}/orders/flash-sale/{product}", app.address);
        let request = app
            .client
            .post(url)
            .bearer_auth(token)
            .header("Idempotency-Key", "k")
            .header("X-Forwarded-For", format!("203.0.113.9, {ip}, 10.1.2.3"));
        async move { request.send().await.unwrap().status() }
    };
    for _ in 0..3 {
        assert_eq!(buy_from("198.51.100.1").await, StatusCode::CREATED);
    }
    // A fourth buyer behind the same address is limited; another address is not.
    assert_eq!(
        buy_from("198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(buy_from("198.51.100.2").await, StatusCode::CREATED);

    let login_from = |ip: &'static str| {
        let url = format!("{}/auth/login", app.address);
        let request = app
            .client
            .post(url)
            .header("X-Forwarded-For", ip)
            .json(&serde_json::json!({"email": format!("{}@example.com", uuid::Uuid::new_v4()), "password": "whatever it is"}));
        async move { request.send().await.unwrap().status() }
    };
    assert_eq!(login_from("198.51.100.7").await, StatusCode::UNAUTHORIZED);
    assert_eq!(login_from("198.51.100.7").await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_from("198.51.100.7").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(login_from("198.51.100.8").await, StatusCode::UNAUTHORIZED);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_peer_cannot_choose_its_address() {
    let app = spawn_app_with(Options {
        configure: Some(|s| s.limits.orders_per_ip_per_minute = 2),
        ..Options::default()
    })
    .await;
    let product = app.sale(100, 1).await;
    let mut statuses = Vec::new();
    for i in 0..3 {
        let (_, token) = app.token_for_new_user();
        let r = app
            .client
            .post(format!("{}/orders/flash-sale/{product}", app.address))
            .bearer_auth(token)
            .header("Idempotency-Key", "k")
            .header("X-Forwarded-For", format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [201, 201, 429],
        "the header is ignored: one address"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Options {
        mode: Mode::Embedded,
        configure: Some(|s| s.http.body_timeout_ms = 300),
        ..Options::default()
    })
    .await;
    let addr = app.address.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"email\":";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered before the client gave up")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_cut_off_between_its_databases_is_finished_by_its_retry() {
    use crate::helpers::{eventually, Proxy};
    let postgres = Proxy::start("127.0.0.1:5432").await;
    let app = spawn_app_with(Options {
        postgres_port: Some(postgres.port),
        ..Options::default()
    })
    .await;
    // The login is stored in the catalog; the user's shard is away.
    postgres.cut();
    let r = app.register("half@example.com", "long-password").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    postgres.restore();

    // The retry finishes it, and names the same user every time.
    let first = eventually(Duration::from_secs(30), "the retry registers", || async {
        let r = app.register("half@example.com", "long-password").await;
        match r.status {
            StatusCode::CREATED => Ok(r.body["userId"].as_str().unwrap().to_string()),
            _ => Err(format!("{} {}", r.status, r.body)),
        }
    })
    .await;
    let first = flashsale::domain::UserId::parse(&first).unwrap();
    let shard = app.app_state.directory.shard_index(&first);
    let rows = app
        .exec_on_shard(
            shard,
            &format!("SELECT 1 FROM users WHERE user_id = '{first}'"),
        )
        .await;
    assert_eq!(rows, 1, "the user row exists");
    let login = app.login("half@example.com", "long-password").await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    // Now the account is whole: anyone is told the address is taken, whatever the
    // password (the right one too: registering tests no password).
    for password in ["another-password", "long-password"] {
        let other = app.register("half@example.com", password).await;
        assert_eq!(other.error(), "email_taken", "{:?}", other.body);
    }
    app.stop().await;
}

/// Logs in from `ip`, as a trusted proxy on this machine forwards it.
async fn login_from(app: &TestApp, ip: &str, email: &str, password: &str) -> StatusCode {
    app.client
        .post(format!("{}/auth/login", app.address))
        .header("X-Forwarded-For", ip)
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

in_both_modes!(a_guesser_elsewhere_cannot_lock_the_owner_out);
async fn a_guesser_elsewhere_cannot_lock_the_owner_out(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        configure: Some(|s| {
            s.http.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
            s.limits.logins_per_account_per_address_per_minute = 10;
            s.limits.logins_per_account_per_minute = 15;
        }),
        ..Options::default()
    })
    .await;
    let (email, password) = ("owner@example.com", "correct horse battery");
    let r = app.register(email, password).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let (guesser, owner, another) = ("198.51.100.66", "203.0.113.7", "198.51.100.67");
    for i in 0..10 {
        let wrong = format!("guess {i}");
        assert_eq!(
            login_from(&app, guesser, email, &wrong).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&app, guesser, email, "guess 10").await,
        StatusCode::TOO_MANY_REQUESTS,
        "ten guesses a minute from one address"
    );
    // The owner, from elsewhere, logs in.
    assert_eq!(
        login_from(&app, owner, email, password).await,
        StatusCode::OK
    );
    // Guessers from many addresses together meet the account's ceiling (15: ten of
    // the first guesser, the owner's login, four more).
    for i in 0..4 {
        let wrong = format!("other guess {i}");
        assert_eq!(
            login_from(&app, another, email, &wrong).await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&app, another, email, "other guess 4").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

in_both_modes!(registering_a_taken_address_says_nothing_of_its_password);
async fn registering_a_taken_address_says_nothing_of_its_password(mode: Mode) {
    let app = spawn_app_with(Options {
        mode,
        configure: Some(|s| s.limits.logins_per_account_per_address_per_minute = 3),
        ..Options::default()
    })
    .await;
    let r = app.register("taken@example.com", "the real password").await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    for password in ["the real password", "a wrong password", "the real password"] {
        let r = app.register("taken@example.com", password).await;
        assert_eq!(
            (r.status, r.error()),
            (StatusCode::CONFLICT, "email_taken"),
            "{password}: {:?}",
            r.body
        );
    }
    // Each try costs one of the account's guesses, as a login does.
    let r = app.register("taken@example.com", "the real password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    let r = app.login("taken@example.com", "the real password").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", r.body);
    app.stop().await;
}
