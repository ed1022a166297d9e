//! Test applications: `spawn_app` starts a real application on port 0 over the real
//! PostgreSQL, Redis and RabbitMQ of this machine, with its own databases, Redis key
//! prefix and queues; `spawn_peer` starts another pod over the same backends.
//! Whatever an app creates is removed when its `TestApp` is dropped, also when the
//! test fails (see `cleanup.rs`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use flashsale::app::Application;
use flashsale::config::{Secret, Settings};
use reqwest::StatusCode;

use super::cleanup::{Cleanup, Leftovers};
use super::{eventually, Mode, ADMIN_TOKEN, JWT_SECRET, REDIS_DBS};

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
}
