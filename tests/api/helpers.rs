//! `spawn_app`: a real application on port 0 over the real PostgreSQL, Redis and
//! RabbitMQ of this machine, with its own databases, Redis key prefix and queues, and
//! typed request helpers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flashsale::app::{Application, StopHandle};
use flashsale::config::{Secret, Settings};
use flashsale::domain::UserId;
use flashsale::events::log::EventLog;
use flashsale::events::{Delivered, EventBus};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789-0123456789";

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub app_state: actix_web::web::Data<flashsale::http::AppState>,
    pub shard_urls: Vec<String>,
    pub mode: Mode,
    stop: StopHandle,
}

pub use flashsale::config::Mode;

pub struct Options {
    pub mode: Mode,
    pub shards: usize,
    pub reconcile_after_ms: u64,
    pub webhook_url: Option<String>,
    /// Replaces the Redis URLs of the inventory partitions (for example through a proxy).
    pub inventory_urls: Option<Vec<String>>,
    /// Routes the shards' PostgreSQL connections through this port (a proxy).
    pub postgres_port: Option<u16>,
    /// Another Kafka broker than the shared one.
    pub kafka_brokers: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            mode: Mode::Cluster,
            shards: 2,
            reconcile_after_ms: 15_000,
            webhook_url: None,
            inventory_urls: None,
            postgres_port: None,
            kafka_brokers: None,
        }
    }
}

/// Runs a scenario `async fn name(mode: Mode)` once per mode, as `name::cluster` and
/// `name::embedded`.
#[macro_export]
macro_rules! in_both_modes {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name($crate::helpers::Mode::Cluster).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::helpers::Mode::Embedded).await
            }
        }
    };
}

fn init_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("TEST_LOG").is_ok() {
            flashsale::telemetry::init_logging(false);
        }
    });
}

pub async fn spawn_app(mode: Mode) -> TestApp {
    spawn_app_with(Options {
        mode,
        ..Options::default()
    })
    .await
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    init_logging();
    static N: AtomicUsize = AtomicUsize::new(0);
    let id = format!(
        "{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let pg = |db: &str| format!("postgres://postgres@127.0.0.1:5432/fs_test_{id}_{db}");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.toml");
    let mut s = Settings::load_with_env(Some(&path), Vec::new()).expect("cluster config");
    s.http.listen = "127.0.0.1:0".into();
    s.http.workers = 2;
    s.admin.listen = "127.0.0.1:0".into();
    s.admin.token = Some(Secret::new(ADMIN_TOKEN));
    s.auth.jwt_secret = Some(Secret::new(JWT_SECRET));
    s.catalog.url = Secret::new(pg("catalog"));
    s.shards.urls = (0..options.shards)
        .map(|i| Secret::new(pg(&format!("shard_{i}"))))
        .collect();
    s.shards.pool_size = 2;
    s.inventory.urls = vec![
        Secret::new("redis://127.0.0.1:6379/14"),
        Secret::new("redis://127.0.0.1:6379/15"),
    ];
    s.inventory.key_prefix = format!("t{id}");
    s.inventory.reconcile_after_ms = options.reconcile_after_ms;
    s.inventory.reconcile_every_ms = 500;
    s.queue.orders_queue = format!("fstest.{id}.orders");
    s.queue.notifications_queue = format!("fstest.{id}.notifications");
    s.supervision.backoff_base_ms = 50;
    s.supervision.backoff_max_ms = 1000;
    s.supervision.max_restarts = 50;
    s.mode = options.mode;
    s.notifications.webhook_url = options.webhook_url;
    if let Some(urls) = options.inventory_urls {
        s.inventory.urls = urls.into_iter().map(Secret::new).collect();
    }
    if let Some(port) = options.postgres_port {
        s.shards.urls = s
            .shards
            .urls
            .iter()
            .map(|u| {
                Secret::new(
                    u.expose()
                        .replace("127.0.0.1:5432", &format!("127.0.0.1:{port}")),
                )
            })
            .collect();
    }
    // Topics and consumer groups of this test only.
    s.events.topic_prefix = format!("fstest.{id}.");
    s.events.group_prefix = format!("fstest.{id}");
    s.events.delivery_timeout_ms = 3000;
    if let Some(brokers) = options.kafka_brokers {
        s.events.brokers = brokers;
    }
    s.embedded.shards = options.shards;
    s.embedded.data_dir = std::env::temp_dir().join(format!("fs_test_{id}"));
    s.validate().expect("test settings are valid");

    let app = Application::build(s.clone())
        .await
        .expect("application starts");
    let address = format!("http://{}", app.public_addr);
    let admin_address = format!("http://{}", app.admin_addr);
    let app_state = app.state.clone();
    let stop = app.stop_handle();
    tokio::spawn(app.run_until_stopped());
    let test_app = TestApp {
        address,
        admin_address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shard_urls: s
            .shards
            .urls
            .iter()
            .map(|u| u.expose().to_string())
            .collect(),
        mode: s.mode,
        settings: s,
        app_state,
        stop,
    };
    test_app.wait_ready().await;
    test_app
}

/// A response's status and JSON body.
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(r: reqwest::Response) -> Self {
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
    pub async fn stop(self) {
        self.stop.stop().await;
        if self.mode == Mode::Embedded {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = std::fs::remove_dir_all(&self.settings.embedded.data_dir);
            return;
        }
        // The queues belong to this test only.
        if let Ok(conn) = lapin::Connection::connect(
            self.settings.queue.url.expose(),
            lapin::ConnectionProperties::default(),
        )
        .await
        {
            if let Ok(ch) = conn.create_channel().await {
                for q in [
                    &self.settings.queue.orders_queue,
                    &self.settings.queue.notifications_queue,
                ] {
                    let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                }
            }
            let _ = conn.close(200, "bye".into()).await;
        }
    }

    async fn wait_ready(&self) {
        for _ in 0..100 {
            if let Ok(r) = self
                .client
                .get(format!("{}/readyz", self.address))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the application never became ready");
    }

    /// Where the application's events go, opened the way its consumers open it.
    pub async fn event_bus(&self) -> EventBus {
        match self.mode {
            Mode::Cluster => EventBus::kafka(&self.settings.events).expect("valid Kafka settings"),
            Mode::Embedded => {
                let path = self.settings.embedded.data_dir.join("events.db");
                EventBus::Log(EventLog::open(&path).await.expect("the event log opens"))
            }
        }
    }

    /// Reads `topic` from the beginning in a consumer group of its own until `done`
    /// holds for what was read, or `within` has passed; then reads on for `settle` to
    /// catch anything more that would arrive.
    pub async fn read_events(
        &self,
        topic: &'static str,
        done: impl Fn(&[Delivered]) -> bool,
        within: Duration,
        settle: Duration,
    ) -> Vec<Delivered> {
        let bus = self.event_bus().await;
        let group = format!("reader-{}", uuid::Uuid::new_v4().simple());
        let mut source = bus.source(&group, &[topic]).await.expect("a consumer");
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline && !done(&seen) {
            let batch = source
                .poll(1000, Duration::from_millis(200))
                .await
                .expect("poll");
            seen.extend(batch);
        }
        let deadline = std::time::Instant::now() + settle;
        while std::time::Instant::now() < deadline {
            let batch = source
                .poll(1000, Duration::from_millis(200))
                .await
                .expect("poll");
            seen.extend(batch);
        }
        seen
    }

    /// Polls an admin GET until `ok` accepts its body; returns the last body.
    pub async fn admin_eventually(&self, path: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            let r = self.admin(reqwest::Method::GET, path, None).await;
            if r.status == StatusCode::OK && ok(&r.body) {
                return r.body;
            }
            last = r.body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} never reached the expected state; last: {last}");
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
        for _ in 0..300 {
            let r = self.get_order(token, order).await;
            if r.status == StatusCode::OK && r.body["status"] != "pending" {
                return r.body;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("order {order} never settled");
    }

    /// Every order row of every shard: (shard index, order id, user id, status).
    pub async fn all_shard_orders(&self) -> Vec<(usize, String, String, String)> {
        let mut all = Vec::new();
        let sql = "SELECT order_id, user_id, status FROM orders";
        for i in 0..self.settings.shard_count() {
            let rows: Vec<(String, String, String)> = match self.mode {
                Mode::Cluster => {
                    let pool = sqlx::PgPool::connect(&self.shard_urls[i]).await.unwrap();
                    let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
                    pool.close().await;
                    rows
                }
                Mode::Embedded => {
                    let path = self
                        .settings
                        .embedded
                        .data_dir
                        .join(format!("shard-{i}.db"));
                    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                    let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
                    pool.close().await;
                    rows
                }
            };
            all.extend(rows.into_iter().map(|(o, u, s)| (i, o, u, s)));
        }
        all
    }

    /// Terminates every PostgreSQL connection to shard `i` (as a failover would).
    pub async fn kill_shard_connections(&self, i: usize) -> i64 {
        let db = self.shard_urls[i].rsplit('/').next().unwrap().to_string();
        let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres")
            .await
            .unwrap();
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .fetch_all(&pool)
        .await
        .unwrap();
        pool.close().await;
        killed.len() as i64
    }
}

/// A TCP proxy to a real service that a test can cut (refusing and dropping every
/// connection, as an outage would) and restore.
pub struct Proxy {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Self {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> =
            Default::default();
        let (flag, conns) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !flag.load(SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    /// The service goes away: open connections break, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
