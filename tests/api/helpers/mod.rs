//! `spawn_app`: a real application on port 0 over the real PostgreSQL, Redis and
//! RabbitMQ of this machine, with its own databases, Redis key prefix and queues, and
//! typed request helpers. Whatever an app creates is removed when its `TestApp` is
//! dropped, also when the test fails.

use std::fmt::Display;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flashsale::app::{Application, StopHandle};
use flashsale::config::{Secret, Settings};
use flashsale::domain::{IdempotencyKey, OrderId, ProductId, Quantity, UserId};
use flashsale::events::log::EventLog;
use flashsale::events::{Delivered, EventBus};
use reqwest::StatusCode;
use serde_json::{json, Value};

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789-0123456789";
/// The Redis databases of the inventory partitions (also behind a test's proxy).
/// The inventory partitions of every test: each on a Redis server of its own
/// (scripts/services.sh starts them), in databases the test script clears.
pub const REDIS_DBS: [&str; 2] = ["redis://127.0.0.1:6380/14", "redis://127.0.0.1:6381/15"];
/// How often a wait for a condition looks again.
const POLL: Duration = Duration::from_millis(50);

pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub client: reqwest::Client,
    pub settings: Settings,
    pub app_state: actix_web::web::Data<flashsale::http::AppState>,
    /// The shards' databases, reached directly (never through a test's proxy), so
    /// that a test can look at them during an outage it made.
    pub shard_urls: Vec<String>,
    pub mode: Mode,
    cleanup: Cleanup,
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
    /// Partitions of the order events topic (the configured count when `None`).
    pub order_partitions: Option<i32>,
    /// How often the reconciler sweeps (ms).
    pub reconcile_every_ms: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_ttl_secs: Option<u64>,
    /// Bounds every actor's inbox (the configured bound when `None`).
    pub inbox_capacity: Option<usize>,
    /// Routes the RabbitMQ connections through this port (a proxy).
    pub amqp_port: Option<u16>,
    /// Changes any other setting.
    pub configure: Option<fn(&mut Settings)>,
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
            order_partitions: None,
            reconcile_every_ms: 500,
            idempotency_ttl_secs: None,
            inbox_capacity: None,
            amqp_port: None,
            configure: None,
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

/// Polls `check` until it answers `Ok`, and returns what it answered. Panics once
/// `within` has passed, saying what was awaited and the last `Err` (what was seen).
pub async fn eventually<T, E, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen = match check().await {
            Ok(done) => return done,
            Err(seen) => seen,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}; last seen: {seen}");
        }
        tokio::time::sleep(POLL).await;
    }
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
    s.inventory.urls = REDIS_DBS.iter().map(|u| Secret::new(*u)).collect();
    s.inventory.key_prefix = format!("t{id}");
    s.inventory.reconcile_after_ms = options.reconcile_after_ms;
    s.inventory.reconcile_every_ms = options.reconcile_every_ms;
    if let Some(ttl) = options.idempotency_ttl_secs {
        s.inventory.idempotency_ttl_secs = ttl;
    }
    if let Some(n) = options.inbox_capacity {
        s.limits.inbox_capacity = n;
    }
    if let Some(port) = options.amqp_port {
        let url = s
            .queue
            .url
            .expose()
            .replace("127.0.0.1:5672", &format!("127.0.0.1:{port}"));
        s.queue.url = Secret::new(url);
    }
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
    let shard_urls: Vec<String> = s.shards.urls.iter().map(|u| u.expose().into()).collect();
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
    // FLASHSALE_TEST_REPLICA=PORT: each shard names its database on the streaming
    // replica on that port (scripts/services.sh starts one on 5433) as its read replica.
    if let Ok(port) = std::env::var("FLASHSALE_TEST_REPLICA") {
        s.shards.replica_urls = shard_urls
            .iter()
            .map(|u| Secret::new(u.replace("127.0.0.1:5432", &format!("127.0.0.1:{port}"))))
            .collect();
    }
    // FLASHSALE_TEST_PGBOUNCER=PORT: the catalog and the shards through PgBouncer in
    // transaction mode on that port (scripts/services.sh starts one on 6432), except
    // for a test that puts a proxy of its own in front of PostgreSQL. Every app of the
    // run says so: the setting holds for the whole process.
    if let Ok(port) = std::env::var("FLASHSALE_TEST_PGBOUNCER") {
        s.shards.transaction_pooling = true;
        if options.postgres_port.is_none() {
            let to = format!("127.0.0.1:{port}");
            let pooled = |u: &Secret| Secret::new(u.expose().replace("127.0.0.1:5432", &to));
            let catalog = pooled(&s.catalog.url);
            let shards = s.shards.urls.iter().map(pooled).collect();
            s.catalog.url = catalog;
            s.shards.urls = shards;
        }
    }
    // Topics and consumer groups of this test only.
    s.events.topic_prefix = format!("fstest.{id}.");
    s.events.group_prefix = format!("fstest.{id}");
    s.events.delivery_timeout_ms = 3000;
    if let Some(brokers) = options.kafka_brokers {
        s.events.brokers = brokers;
    }
    if let Some(n) = options.order_partitions {
        s.events.order_partitions = n;
    }
    if let Some(configure) = options.configure {
        configure(&mut s);
    }
    s.embedded.shards = options.shards;
    s.embedded.data_dir = std::env::temp_dir().join(format!("fs_test_{id}"));
    s.validate().expect("test settings are valid");

    // Armed before the start: a start that fails has created databases too.
    let mut cleanup = Cleanup(Some(Leftovers {
        settings: s.clone(),
        shard_urls: shard_urls.clone(),
        running: None,
        shared: false,
    }));
    let app = Application::build(s.clone())
        .await
        .expect("application starts");
    let address = format!("http://{}", app.public_addr.expect("a public listener"));
    let admin_address = format!("http://{}", app.admin_addr);
    let app_state = app.state.clone();
    let stop = app.stop_handle();
    let served = tokio::spawn(async move {
        let _ = app.run_until_stopped().await;
    });
    if let Some(leftovers) = cleanup.0.as_mut() {
        leftovers.running = Some((stop, served));
    }
    let test_app = TestApp {
        address,
        admin_address,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap(),
        shard_urls,
        mode: s.mode,
        settings: s,
        app_state,
        cleanup,
    };
    test_app.wait_ready().await;
    test_app
}

/// Another pod of a test app's deployment, in this process: its databases, Redis
/// keys and queues are the app's, and stay when the pod stops.
pub struct Peer {
    cleanup: Cleanup,
}

impl TestApp {
    /// Starts another pod over this app's backends, with settings `configure` changes
    /// (its role, its own limits), and waits until it has started.
    pub async fn spawn_peer(&self, configure: impl FnOnce(&mut Settings)) -> Peer {
        let mut s = self.settings.clone();
        s.http.listen = "127.0.0.1:0".into();
        s.admin.listen = "127.0.0.1:0".into();
        s.pod.id = format!("peer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        s.pod.admin_url = String::new();
        configure(&mut s);
        s.validate().expect("peer settings are valid");
        let app = Application::build(s.clone())
            .await
            .expect("the peer starts");
        let stop = app.stop_handle();
        let served = tokio::spawn(async move {
            let _ = app.run_until_stopped().await;
        });
        Peer {
            cleanup: Cleanup(Some(Leftovers {
                settings: s,
                shard_urls: Vec::new(),
                running: Some((stop, served)),
                shared: true,
            })),
        }
    }
}

impl Peer {
    /// Stops the pod; the deployment's data stays.
    pub async fn stop(mut self) {
        if let Some(leftovers) = self.cleanup.0.take() {
            leftovers.remove(true).await;
        }
    }
}

/// What a test app leaves behind: its running server and actors, its databases, the
/// queues and Redis keys named after it, and its data directory. (Its topics are
/// deleted by scripts/test.sh after the test process: see there.)
struct Leftovers {
    settings: Settings,
    shard_urls: Vec<String>,
    running: Option<(StopHandle, tokio::task::JoinHandle<()>)>,
    /// Another app's data (a peer's): only the running app is stopped.
    shared: bool,
}

impl Leftovers {
    /// Stops the app (when `stop_app` and it runs) and removes everything it made.
    /// Reports what it could not remove instead of failing the test for it.
    async fn remove(self, stop_app: bool) {
        let warn = |what: &str, e: &dyn Display| eprintln!("test cleanup: {what}: {e}");
        if let (Some((stop, served)), true) = (self.running, stop_app) {
            let within = Duration::from_secs(20);
            if tokio::time::timeout(within, stop.stop()).await.is_err() {
                warn("stopping the app", &"timed out");
            }
            // Served returns once the actor tree is down and has let go of its files.
            if tokio::time::timeout(within, served).await.is_err() {
                warn("waiting for the app to stop", &"timed out");
            }
        }
        let s = &self.settings;
        if self.shared {
            return;
        }
        if s.mode == Mode::Cluster {
            if let Err(e) = delete_queues(s).await {
                warn("deleting the queues", &e);
            }
            if let Err(e) = delete_redis_keys(&s.inventory.key_prefix).await {
                warn("deleting the Redis keys", &e);
            }
            // Topics stay: scripts/test.sh deletes them once this process is gone.
            let mut dbs: Vec<&str> = vec![database_of(s.catalog.url.expose())];
            dbs.extend(self.shard_urls.iter().map(|u| database_of(u)));
            if let Err(e) = drop_databases(&dbs).await {
                warn("dropping the databases", &e);
            }
        }
        remove_dir(&s.embedded.data_dir).await;
    }
}

/// Removes the leftovers when dropped: at the end of a test and when a failing test
/// unwinds. `Drop` cannot await, so the removal runs on a runtime of its own on another
/// thread and is waited for, while the test's runtime goes on serving the app until
/// it has stopped. (A single-threaded test runtime cannot serve it meanwhile: then the
/// app is left to the runtime's end and only its data is removed.)
struct Cleanup(Option<Leftovers>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(leftovers) = self.0.take() else {
            return;
        };
        let stop_app = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let removal = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime")
                .block_on(leftovers.remove(stop_app));
        });
        if removal.join().is_err() {
            eprintln!("test cleanup: the removal panicked");
        }
    }
}

fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

async fn drop_databases(names: &[&str]) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    for name in names {
        // FORCE: connections an unstopped app still holds do not keep it.
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "")
        ))
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

async fn delete_queues(s: &Settings) -> Result<(), lapin::Error> {
    let conn =
        lapin::Connection::connect(s.queue.url.expose(), lapin::ConnectionProperties::default())
            .await?;
    let ch = conn.create_channel().await?;
    for q in [&s.queue.orders_queue, &s.queue.notifications_queue] {
        ch.queue_delete(q.as_str().into(), Default::default())
            .await?;
    }
    conn.close(200, "bye".into()).await
}

pub async fn delete_redis_keys(prefix: &str) -> redis::RedisResult<()> {
    for url in REDIS_DBS {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Removes a directory whose files the app may be closing at that moment.
async fn remove_dir(dir: &PathBuf) {
    let mut tries = 0;
    while dir.exists() {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(_) if tries < 20 => tries += 1,
            Err(e) => {
                eprintln!("test cleanup: removing {}: {e}", dir.display());
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
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
    /// Stops the app and removes what it made; dropping the app does the same.
    pub async fn stop(mut self) {
        if let Some(leftovers) = self.cleanup.0.take() {
            leftovers.remove(true).await;
        }
    }

    async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.address);
        eventually(Duration::from_secs(30), "the app is ready", || async {
            match self.client.get(&url).send().await {
                Ok(r) if r.status() == StatusCode::OK => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        })
        .await
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

    /// Reserves one unit for `user` under `key` straight in the product's partition,
    /// as a request that died before publishing would leave it; answers its order.
    pub async fn reserve_unpublished(&self, product: i64, user: &UserId, key: &str) -> OrderId {
        use flashsale::actors::inventory::{ReserveOutcome, ReserveRequest};
        let product = ProductId::from_db(product);
        let order = OrderId::generate();
        let reserve = ReserveRequest {
            product,
            user: user.clone(),
            key: IdempotencyKey::parse(key).unwrap(),
            quantity: Quantity::ONE,
            order: order.clone(),
            now_ms: flashsale::domain::now_ms(),
        };
        let partition = self.app_state.directory.product_partition(product);
        let r = partition.call(reserve).await.unwrap();
        assert_eq!(r, ReserveOutcome::Created(order.clone()));
        order
    }

    /// Every (token, order id) accepted ends `completed`, stored exactly once.
    pub async fn assert_completed_once(&self, accepted: &[(String, String)]) {
        for (token, id) in accepted {
            assert_eq!(
                self.wait_settled(token, id).await["status"],
                "completed",
                "order {id}"
            );
        }
        let rows = self.all_shard_orders().await;
        for (_, id) in accepted {
            let stored = rows.iter().filter(|r| &r.1 == id).count();
            assert_eq!(stored, 1, "order {id} stored exactly once");
        }
    }

    /// Every order row of every shard: (shard index, order id, user id, status).
    pub async fn all_shard_orders(&self) -> Vec<(usize, String, String, String)> {
        let mut all = Vec::new();
        for i in 0..self.settings.shard_count() {
            let pool = self.shard_pool(i).await;
            let rows: Vec<(String, String, String)> =
                sqlx::query_as("SELECT order_id, user_id, status FROM orders")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            pool.close().await;
            all.extend(rows.into_iter().map(|(o, u, s)| (i, o, u, s)));
        }
        all
    }

    /// A connection to shard `i` that bypasses the application (PostgreSQL directly, or
    /// the SQLite file).
    async fn shard_pool(&self, i: usize) -> sqlx::AnyPool {
        let url = match self.mode {
            Mode::Cluster => self.shard_urls[i].clone(),
            Mode::Embedded => {
                let dir = &self.settings.embedded.data_dir;
                format!("sqlite://{}", dir.join(format!("shard-{i}.db")).display())
            }
        };
        flashsale::db::any_pool(&url, 1).await.unwrap()
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

    /// Runs statements on shard `i` (one connection), behind the application's back;
    /// returns the rows they changed.
    pub async fn exec_on_shard(&self, i: usize, sql: &str) -> u64 {
        let pool = self.shard_pool(i).await;
        let n = sqlx::raw_sql(sql)
            .execute(&pool)
            .await
            .unwrap()
            .rows_affected();
        pool.close().await;
        n
    }
}

/// A TCP proxy to a real service that a test can cut (refusing and dropping every
/// connection, as an outage would) and restore.
pub struct Proxy {
    pub port: u16,
    state: std::sync::Arc<std::sync::Mutex<ProxyState>>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct ProxyState {
    up: bool,
    connections: Vec<tokio::task::AbortHandle>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Self {
        use std::sync::atomic::AtomicBool;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = std::sync::Arc::new(std::sync::Mutex::new(ProxyState {
            up: true,
            connections: Vec::new(),
        }));
        let stalled = std::sync::Arc::new(AtomicBool::new(false));
        let holding = std::sync::Arc::new(AtomicBool::new(false));
        let (shared, held, sent) = (state.clone(), stalled.clone(), holding.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                // Checked and recorded under one lock, so that a cut cannot miss a
                // connection accepted just before it.
                let mut state = shared.lock().unwrap();
                if !state.up {
                    continue; // dropped: the connection is refused
                }
                let (held, sent) = (held.clone(), sent.clone());
                let task = tokio::spawn(async move {
                    if let Ok(outbound) = tokio::net::TcpStream::connect(target).await {
                        forward(inbound, outbound, sent, held).await;
                    }
                });
                state.connections.push(task.abort_handle());
            }
        });
        Self {
            port,
            state,
            stalled,
            held: holding,
        }
    }

    /// The service goes away: open connections break, new ones are refused. Answers
    /// how many connections were open.
    pub fn cut(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.up = false;
        state.connections.retain(|c| !c.is_finished());
        let open = state.connections.len();
        for c in state.connections.drain(..) {
            c.abort();
        }
        open
    }

    pub fn restore(&self) {
        self.state.lock().unwrap().up = true;
    }

    /// The service goes on receiving, but its answers are held back until `resume`
    /// (a broker whose confirms are late, a network that lost its way back).
    pub fn stall(&self) {
        self.stalled
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.stalled
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// What clients send is held back until `let_through`: the service never sees a
    /// statement sent meanwhile, and its sender waits (a writer frozen mid-commit).
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn let_through(&self) {
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each read waiting while `wait` is set.
async fn copy_unless(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    wait: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while wait.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Copies both ways; what goes out waits while `held`, what comes back while `stalled`.
async fn forward(
    inbound: tokio::net::TcpStream,
    outbound: tokio::net::TcpStream,
    held: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    let (from_client, to_client) = inbound.into_split();
    let (from_server, to_server) = outbound.into_split();
    tokio::select! {
        _ = copy_unless(from_client, to_server, held) => {}
        _ = copy_unless(from_server, to_client, stalled) => {}
    }
}

/// Orders held in the order queue where the application's consumers cannot take
/// them, as stalled consumers would leave them: accepted and durable, in no shard.
pub enum HeldOrders {
    /// A consumer of the order queue that outranks the application's (RabbitMQ
    /// consumer priority: the broker delivers to it alone while it can take more) and
    /// acknowledges nothing.
    Amqp {
        conn: Box<lapin::Connection>,
        deliveries: Box<lapin::Consumer>,
        held: Vec<String>,
    },
    /// A trigger on the embedded journal that moves each order message into a queue
    /// nobody consumes, in the transaction that publishes it.
    Journal {
        pool: sqlx::SqlitePool,
        queue: String,
    },
}

const HOLD_TRIGGER: &str = "fs_test_hold_orders";

impl HeldOrders {
    fn aside(queue: &str) -> String {
        format!("{queue}.held")
    }

    /// Waits until `order` is among the held messages, and panics if it never is.
    pub async fn wait_for(&mut self, order: &str) {
        let what = format!("order {order} is held in the queue");
        match self {
            HeldOrders::Amqp {
                deliveries, held, ..
            } => {
                use futures_util::StreamExt;
                let within = Duration::from_secs(10);
                let found = tokio::time::timeout(within, async {
                    while !held.iter().any(|o| o == order) {
                        let d = deliveries.next().await.expect("the hold consumes")?;
                        held.extend(order_ids(&d.data));
                    }
                    Ok::<_, lapin::Error>(())
                })
                .await;
                match found {
                    Ok(r) => r.expect("the held deliveries"),
                    Err(_) => panic!("{what}: not within {within:?}; held: {held:?}"),
                }
            }
            HeldOrders::Journal { pool, queue } => {
                let aside = Self::aside(queue);
                eventually(Duration::from_secs(10), &what, || async {
                    let payloads: Vec<Vec<u8>> =
                        sqlx::query_scalar("SELECT payload FROM messages WHERE queue = ?")
                            .bind(&aside)
                            .fetch_all(&*pool)
                            .await
                            .map_err(|e| e.to_string())?;
                    let held: Vec<String> = payloads.iter().flat_map(|p| order_ids(p)).collect();
                    if held.iter().any(|o| o == order) {
                        Ok(())
                    } else {
                        Err(format!("{held:?}"))
                    }
                })
                .await
            }
        }
    }

    /// Gives the held orders back to the application's consumers.
    pub async fn release(self) {
        match self {
            HeldOrders::Amqp { conn, .. } => {
                // A consumer that goes away returns what it did not acknowledge.
                conn.close(200, "released".into())
                    .await
                    .expect("the hold closes");
            }
            HeldOrders::Journal { pool, queue } => {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query(&format!("DROP TRIGGER {HOLD_TRIGGER}"))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("UPDATE messages SET queue = ? WHERE queue = ?")
                    .bind(&queue)
                    .bind(Self::aside(&queue))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
                pool.close().await;
            }
        }
    }
}

/// The order ids a queue message carries (one order, or several in an array).
fn order_ids(payload: &[u8]) -> Vec<String> {
    let orders = match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Array(many)) => many,
        Ok(one) => vec![one],
        Err(_) => Vec::new(),
    };
    orders
        .iter()
        .filter_map(|o| o["orderId"].as_str().map(String::from))
        .collect()
}

impl TestApp {
    /// From now on, orders stay in the queue until `release`: see [`HeldOrders`].
    pub async fn hold_orders(&self) -> HeldOrders {
        let queue = self.settings.queue.orders_queue.clone();
        match self.mode {
            Mode::Cluster => {
                use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
                use lapin::types::{AMQPValue, FieldTable};
                let conn = lapin::Connection::connect(
                    self.settings.queue.url.expose(),
                    lapin::ConnectionProperties::default(),
                )
                .await
                .expect("RabbitMQ");
                let ch = conn.create_channel().await.unwrap();
                // Declared as the app declares it, in case its consumers have not yet.
                let kind = self.settings.queue.kind;
                ch.queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions::durable(),
                    flashsale::actors::queue::amqp::queue_arguments(kind),
                )
                .await
                .unwrap();
                let mut priority = FieldTable::default();
                priority.insert("x-priority".into(), AMQPValue::LongInt(100));
                let deliveries = ch
                    .basic_consume(
                        queue.as_str().into(),
                        "fs-test-hold".into(),
                        BasicConsumeOptions::default(),
                        priority,
                    )
                    .await
                    .expect("the hold consumes the order queue");
                HeldOrders::Amqp {
                    conn: Box::new(conn),
                    deliveries: Box::new(deliveries),
                    held: Vec::new(),
                }
            }
            Mode::Embedded => {
                let path = self.settings.embedded.data_dir.join("queue.db");
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(path)
                    .busy_timeout(Duration::from_secs(10));
                let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
                let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
                sqlx::query(&format!(
                    "CREATE TRIGGER {HOLD_TRIGGER} AFTER INSERT ON messages WHEN NEW.queue = {} \
                     BEGIN UPDATE messages SET queue = {} WHERE id = NEW.id; END",
                    quote(&queue),
                    quote(&HeldOrders::aside(&queue)),
                ))
                .execute(&pool)
                .await
                .expect("the hold trigger");
                HeldOrders::Journal { pool, queue }
            }
        }
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

/// Runs headless Chromium (Debian's `chromium`) against a page; returns its stdout.
pub async fn chromium(args: &[String]) -> String {
    let profile =
        std::env::temp_dir().join(format!("fs_chromium_{}", uuid::Uuid::new_v4().simple()));
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--virtual-time-budget=8000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium is installed (scripts/test.sh installs it)");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
