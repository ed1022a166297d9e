//! Talking to a test app the way its users do: typed HTTP requests to the public and
//! admin listeners, answered as a [`Reply`], and the buying, ordering and admin steps
//! the scenarios share.

use std::time::Duration;

use flashsale::domain::UserId;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{eventually, TestApp, ADMIN_TOKEN};

/// A response's status and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Self {
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap_or_default();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

impl TestApp {
    /// Polls an admin GET until `ok` accepts its body; returns the last body.
    pub async fn admin_eventually(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{path} reaches the expected state");
        eventually(Duration::from_secs(30), &what, || async {
            let r = self.admin(reqwest::Method::GET, path, None).await;
            if r.status == StatusCode::OK && ok(&r.body) {
                Ok(r.body)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await
    }

    /// A token for a fresh user, issued the way login issues it.
    pub fn token_for_new_user(&self) -> (UserId, String) {
        let user = UserId::new_random();
        let token = self.app_state.tokens.issue(&user).token;
        (user, token)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        Reply::from(
            self.client
                .post(format!("{}{path}", self.address))
                .json(body)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// POSTs with no body as the holder of `token`.
    pub async fn post_auth(&self, token: &str, path: &str) -> Reply {
        Reply::from(
            self.client
                .post(format!("{}{path}", self.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    pub async fn register(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/auth/register",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post_json(
            "/auth/login",
            &json!({ "email": email, "password": password }),
        )
        .await
    }

    pub async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.admin_address))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        Reply::from(req.send().await.unwrap()).await
    }

    /// A product with a flash sale of `stock` units, `limit` per user, open now.
    pub async fn sale(&self, stock: i64, limit: i64) -> i64 {
        let p = self
            .admin(
                reqwest::Method::POST,
                "/admin/products",
                Some(json!({"name": "Phone", "priceCents": 19900})),
            )
            .await;
        assert_eq!(p.status, StatusCode::CREATED, "{:?}", p.body);
        let id = p.body["id"].as_i64().unwrap();
        let s = self
            .admin(
                reqwest::Method::PUT,
                &format!("/admin/flash-sales/{id}"),
                Some(json!({"stock": stock, "perUserLimit": limit})),
            )
            .await;
        assert_eq!(s.status, StatusCode::OK, "{:?}", s.body);
        id
    }

    pub async fn sale_counters(&self, product: i64) -> Value {
        let r = self
            .admin(
                reqwest::Method::GET,
                &format!("/admin/flash-sales/{product}"),
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
        r.body
    }

    pub async fn buy(&self, token: &str, product: i64, key: &str, quantity: Option<i64>) -> Reply {
        let mut req = self
            .client
            .post(format!("{}/orders/flash-sale/{product}", self.address))
            .bearer_auth(token)
            .header("Idempotency-Key", key);
        if let Some(q) = quantity {
            req = req.json(&json!({ "quantity": q }));
        }
        Reply::from(req.send().await.unwrap()).await
    }

    pub async fn get_order(&self, token: &str, order: &str) -> Reply {
        Reply::from(
            self.client
                .get(format!("{}/orders/{order}", self.address))
                .bearer_auth(token)
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Polls until the order has left `pending`; returns its final view.
    pub async fn wait_settled(&self, token: &str, order: &str) -> Value {
        let what = format!("order {order} settles");
        eventually(Duration::from_secs(30), &what, || async {
            let r = self.get_order(token, order).await;
            if r.status == StatusCode::OK && r.body["status"] != "pending" {
                Ok(r.body)
            } else {
                Err(format!("{} {}", r.status, r.body))
            }
        })
        .await
    }

    /// What `GET /metrics` answers now.
    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The sum of a metric's series whose labels contain `labels` (the recorder is the
    /// process's: compare before and after, not with zero).
    pub async fn metric_sum(&self, name: &str, labels: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
                    && l.contains(labels)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// One unit each for `n` new buyers, every one answered `201`; (token, order id).
    pub async fn buy_as_new_buyers(&self, product: i64, n: usize) -> Vec<(String, String)> {
        let mut accepted = Vec::new();
        for _ in 0..n {
            let (_, token) = self.token_for_new_user();
            let r = self.buy(&token, product, "k", None).await;
            assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
            accepted.push((token, r.body["orderId"].as_str().unwrap().to_string()));
        }
        accepted
    }

    /// An actor's entry in the live tree.
    pub async fn actor(&self, name: &str) -> Value {
        let tree = self
            .admin(reqwest::Method::GET, "/admin/actors", None)
            .await
            .body;
        find(&tree, name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {tree}"))
    }
}

/// The node called `name` in a tree as `GET /admin/actors` draws it.
pub fn find<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    if node["name"] == name {
        return Some(node);
    }
    node["children"]
        .as_array()?
        .iter()
        .find_map(|c| find(c, name))
}
