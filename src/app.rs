//! Builds the application from settings: migrations, the supervisor tree, the
//! directory, and both HTTP listeners bound to their own sockets (port 0 works, the
//! real ports are reported back).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::web;
use ractor::ActorRef;
use ractor_supervisor::{ChildSpec, SupervisorMsg};
use rand::distr::{Alphanumeric, SampleString};
use tokio::task::JoinHandle;

use crate::actors::catalog::{CatalogOp, CatalogReply};
use crate::actors::inventory::local::LocalInventoryConnect;
use crate::actors::inventory::redis::RedisConnect;
use crate::actors::orders::{NotificationHandler, OrderHandler, Webhook};
use crate::actors::queue::amqp::{AmqpPublisherConnect, AmqpSource};
use crate::actors::queue::local::{LocalPublisherConnect, LocalQueue, LocalSource};
use crate::actors::queue::{DeliveryHandler, QueueConsumer, QueueSource};
use crate::actors::reconciler::ReconcilerConnect;
use crate::auth::Tokens;
use crate::config::{Mode, Secret, Settings};
use crate::events::consumers::{
    Analytics, ConsumerConnect, EventHandler, InventoryCheck, ReportStore, Reporting,
};
use crate::events::log::EventLog;
use crate::events::relay::{Nudge, RelayConnect, RelaySlot};
use crate::events::EventBus;
use crate::http::{self, AppState};
use crate::shards::catalog::CatalogConnect;
use crate::shards::migrate;
use crate::shards::postgres::ShardConnect;
use crate::shards::sqlite::{self, SqliteShardConnect};
use crate::supervisors::directory::{
    CatalogSlot, Directory, InventorySlot, PublisherSlot, ShardSlot,
};
use crate::supervisors::slot::Slot;
use crate::supervisors::stats::{Kind, NodeStats};
use crate::supervisors::{self, leaf, Namer, Policy, TreeNode};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("embedded storage {path}: {source}")]
    Embedded { path: String, source: sqlx::Error },
    #[error(transparent)]
    Migrate(#[from] migrate::MigrateError),
    #[error("cannot bind {what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot start the supervisor tree: {0}")]
    Spawn(#[from] ractor::SpawnErr),
    #[error("the catalog did not come up: {0}")]
    Catalog(String),
    #[error("Kafka settings: {0}")]
    Events(String),
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("the supervisor tree gave up after too many restarts")]
    TreeGaveUp,
    #[error("HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

pub struct Application {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub admin_token: Secret,
    /// Whether the admin token was generated at this start (and must be printed).
    pub admin_token_generated: bool,
    pub state: web::Data<AppState>,
    public: Server,
    admin: Server,
    root: ActorRef<SupervisorMsg>,
    root_done: JoinHandle<()>,
}

/// Stops a running application: HTTP first, then the actor tree.
#[derive(Clone)]
pub struct StopHandle {
    public: ServerHandle,
    admin: ServerHandle,
    root: ActorRef<SupervisorMsg>,
}

impl StopHandle {
    pub async fn stop(&self) {
        self.public.stop(true).await;
        self.admin.stop(true).await;
        self.root.stop(Some("shutdown".into()));
    }
}

fn bind(what: &'static str, addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|source| StartError::Bind {
        what,
        addr: addr.to_string(),
        source,
    })
}

fn consumer<H: DeliveryHandler>(
    stats: Arc<NodeStats>,
    settings: &Settings,
    queue: &str,
    source: Arc<dyn QueueSource>,
    handler: Arc<H>,
    policy: &Policy,
) -> ChildSpec {
    let queue = queue.to_string();
    let (prefetch, max_batch) = (settings.queue.prefetch, settings.queue.max_batch);
    let node = stats.clone();
    leaf(stats, policy, move |cell, id| {
        let actor = QueueConsumer {
            stats: node.clone(),
            source: source.clone(),
            queue: queue.clone(),
            prefetch,
            max_batch,
            handler: handler.clone(),
        };
        Box::pin(async move {
            let (r, _) = ractor_supervisor::Supervisor::spawn_linked(id, actor, (), cell).await?;
            Ok(r.get_cell())
        })
    })
}

fn random_secret(len: usize) -> String {
    Alphanumeric.sample_string(&mut rand::rng(), len)
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartError> {
        let metrics = crate::telemetry::metrics_handle();
        let backends = Backends::prepare(&settings).await?;
        let public_listener = bind("public", &settings.http.listen)?;
        let admin_listener = bind("admin", &settings.admin.listen)?;

        let policy = Policy::from(&settings.supervision);
        let namer = Namer::new();
        let timeout = Duration::from_millis(settings.limits.call_timeout_ms);
        let capacity = settings.limits.inbox_capacity;
        fn slot<O: Send + 'static, R: Send + 'static>(
            namer: &Namer,
            name: &str,
            capacity: usize,
            timeout: Duration,
        ) -> Arc<Slot<O, R>> {
            Slot::new(namer.node(name, Kind::Actor), capacity, timeout)
        }

        let catalog = slot(&namer, "catalog", capacity, timeout);
        let shards: Vec<_> = (0..settings.shard_count())
            .map(|i| slot(&namer, &format!("shard-{i}"), capacity, timeout))
            .collect();
        let inventory: Vec<_> = (0..settings.partition_count())
            .map(|i| slot(&namer, &format!("inventory-{i}"), capacity, timeout))
            .collect();
        let publishers: Vec<_> = (0..settings.queue.publishers)
            .map(|i| slot(&namer, &format!("order-publisher-{i}"), capacity, timeout))
            .collect();
        let reconciler = slot(&namer, "reconciler", capacity, timeout);
        // One outbox relay per database: the catalog's first, then each shard's.
        let relays: Vec<Arc<RelaySlot>> = std::iter::once("catalog".to_string())
            .chain((0..settings.shard_count()).map(|i| format!("shard-{i}")))
            .map(|db| slot(&namer, &format!("relay-{db}"), capacity, timeout))
            .collect();
        let q = &settings.queue;
        let directory = Arc::new(Directory::new(
            catalog.clone(),
            shards.clone(),
            inventory.clone(),
            publishers.clone(),
            q.orders_queue.clone(),
            q.notifications_queue.clone(),
        ));

        // shards: the catalog and one actor per PostgreSQL shard
        let nudge = |i: usize| Nudge::new(relays[i].clone());
        let mut shard_specs = vec![backends.catalog(&settings, catalog.clone(), nudge(0), &policy)];
        let mut shard_nodes = vec![TreeNode {
            stats: catalog.stats.clone(),
            children: vec![],
        }];
        for (i, s) in shards.iter().enumerate() {
            shard_specs.push(backends.shard(&settings, i, s.clone(), nudge(i + 1), &policy));
            shard_nodes.push(TreeNode {
                stats: s.stats.clone(),
                children: vec![],
            });
        }

        // inventory: one actor per Redis partition, and the reconciler
        let inv = &settings.inventory;
        let mut inventory_specs = Vec::new();
        let mut inventory_nodes = Vec::new();
        for (i, s) in inventory.iter().enumerate() {
            inventory_specs.push(backends.inventory(&settings, i, s.clone(), &policy));
            inventory_nodes.push(TreeNode {
                stats: s.stats.clone(),
                children: vec![],
            });
        }
        inventory_specs.push(supervisors::worker(
            reconciler.clone(),
            Arc::new(ReconcilerConnect {
                directory: directory.clone(),
            }),
            1,
            Some(Duration::from_millis(inv.reconcile_every_ms)),
            &policy,
        ));
        inventory_nodes.push(TreeNode {
            stats: reconciler.stats.clone(),
            children: vec![],
        });

        // consumers: order publishers, order consumers, notification consumers
        let mut consumer_specs = Vec::new();
        let mut consumer_nodes = Vec::new();
        let source = backends.source(&settings);
        for p in &publishers {
            consumer_specs.push(backends.publisher(&settings, p.clone(), &policy));
            consumer_nodes.push(TreeNode {
                stats: p.stats.clone(),
                children: vec![],
            });
        }
        let orders = Arc::new(OrderHandler {
            directory: directory.clone(),
        });
        for i in 0..q.order_consumers {
            let stats = namer.node(&format!("order-consumer-{i}"), Kind::Actor);
            consumer_specs.push(consumer(
                stats.clone(),
                &settings,
                &q.orders_queue,
                source.clone(),
                orders.clone(),
                &policy,
            ));
            consumer_nodes.push(TreeNode {
                stats,
                children: vec![],
            });
        }
        let webhook = settings
            .notifications
            .webhook_url
            .as_ref()
            .map(|url| Webhook {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_millis(
                        settings.notifications.webhook_timeout_ms,
                    ))
                    .build()
                    .expect("an HTTP client"),
                url: url.clone(),
            });
        let notifications = Arc::new(NotificationHandler {
            directory: directory.clone(),
            webhook,
        });
        for i in 0..q.notification_consumers {
            let stats = namer.node(&format!("notification-consumer-{i}"), Kind::Actor);
            consumer_specs.push(consumer(
                stats.clone(),
                &settings,
                &q.notifications_queue,
                source.clone(),
                notifications.clone(),
                &policy,
            ));
            consumer_nodes.push(TreeNode {
                stats,
                children: vec![],
            });
        }

        // events: one outbox relay per database, then the event consumers
        let mut event_specs = Vec::new();
        let mut event_nodes = Vec::new();
        let ev = &settings.events;
        let bus = backends.event_bus(&settings)?;
        let databases = std::iter::once(("catalog".to_string(), backends.catalog_url(&settings)))
            .chain(
                (0..settings.shard_count())
                    .map(|i| (format!("shard-{i}"), backends.shard_url(&settings, i))),
            );
        for ((database, url), relay) in databases.zip(&relays) {
            let connect = RelayConnect {
                database,
                url,
                bus: bus.clone(),
                batch: ev.relay_batch,
                retention: Duration::from_secs(ev.outbox_retention_secs),
                exclusive: settings.mode == Mode::Cluster,
            };
            let every = Duration::from_millis(ev.relay_every_ms);
            event_specs.push(supervisors::worker(
                relay.clone(),
                Arc::new(connect),
                1024,
                Some(every),
                &policy,
            ));
            event_nodes.push(TreeNode {
                stats: relay.stats.clone(),
                children: vec![],
            });
        }
        let reports = || ReportStore::new(backends.catalog_url(&settings));
        let handlers: [Arc<dyn EventHandler>; 3] = [
            Arc::new(Analytics { store: reports() }),
            Arc::new(InventoryCheck::new(
                directory.clone(),
                Duration::from_secs(1),
            )),
            Arc::new(Reporting { store: reports() }),
        ];
        for handler in handlers {
            let consumer = slot(
                &namer,
                &format!("{}-consumer", handler.name()),
                capacity,
                timeout,
            );
            let connect = ConsumerConnect {
                bus: bus.clone(),
                handler,
                batch: ev.consumer_batch,
            };
            // Consumers poll continuously (each poll waits for events itself).
            let every = Duration::from_millis(10);
            event_specs.push(supervisors::worker(
                consumer.clone(),
                Arc::new(connect),
                1,
                Some(every),
                &policy,
            ));
            event_nodes.push(TreeNode {
                stats: consumer.stats.clone(),
                children: vec![],
            });
        }

        let mut root_specs = Vec::new();
        let mut root_nodes = Vec::new();
        for (name, specs, nodes) in [
            ("shards", shard_specs, shard_nodes),
            ("inventory", inventory_specs, inventory_nodes),
            ("consumers", consumer_specs, consumer_nodes),
            ("events", event_specs, event_nodes),
        ] {
            let stats = namer.node(name, Kind::Supervisor);
            root_specs.push(supervisors::supervisor(stats.clone(), &policy, specs));
            root_nodes.push(TreeNode {
                stats,
                children: nodes,
            });
        }
        let root_stats = namer.node("root", Kind::Supervisor);
        let tree = Arc::new(TreeNode {
            stats: root_stats.clone(),
            children: root_nodes,
        });
        let (root, root_done) = supervisors::spawn_root(root_stats, &policy, root_specs).await?;

        let jwt_secret = match &settings.auth.jwt_secret {
            Some(s) => s.clone(),
            None => backends.jwt_secret(&directory).await?,
        };
        let (admin_token, admin_token_generated) = match &settings.admin.token {
            Some(t) => (t.clone(), false),
            None => backends.admin_token()?,
        };
        let state = web::Data::new(AppState {
            directory,
            tokens: Tokens::new(jwt_secret.expose().as_bytes(), settings.auth.token_ttl_secs),
            admin_token: admin_token.clone(),
            tree,
            policy,
            metrics,
            settings: Arc::new(settings),
        });
        let public_addr = public_listener.local_addr().expect("bound");
        let admin_addr = admin_listener.local_addr().expect("bound");
        let bind_err = |what, addr: SocketAddr| {
            move |source| StartError::Bind {
                what,
                addr: addr.to_string(),
                source,
            }
        };
        let public =
            http::public_server(state.clone(), public_listener, state.settings.http.workers)
                .map_err(bind_err("public", public_addr))?;
        let admin = http::admin_server(state.clone(), admin_listener)
            .map_err(bind_err("admin", admin_addr))?;
        Ok(Self {
            public_addr,
            admin_addr,
            admin_token,
            admin_token_generated,
            state,
            public,
            admin,
            root,
            root_done,
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            public: self.public.handle(),
            admin: self.admin.handle(),
            root: self.root.clone(),
        }
    }

    /// Serves until stopped. Ends with an error when the supervisor tree gives up,
    /// so that the process exits non-zero and its orchestrator restarts it.
    pub async fn run_until_stopped(self) -> Result<(), RunError> {
        let stop = self.stop_handle();
        let public = tokio::spawn(self.public);
        let admin = tokio::spawn(self.admin);
        let mut root_done = self.root_done;
        let served = tokio::select! {
            r = public => r.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r),
            r = admin => r.map_err(|e| std::io::Error::other(e.to_string())).and_then(|r| r),
            _ = &mut root_done => {
                stop.public.stop(false).await;
                stop.admin.stop(false).await;
                return Err(RunError::TreeGaveUp);
            }
        };
        stop.stop().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), root_done).await;
        served.map_err(RunError::from)
    }
}

/// A secret shared by every process of the deployment, generated once and kept in
/// the catalog. Waits for the catalog actor to come up.
async fn shared_secret(directory: &Directory, name: &str) -> Result<Secret, StartError> {
    let mut last = String::new();
    for _ in 0..20 {
        let op = CatalogOp::Secret {
            name: name.into(),
            candidate: random_secret(48),
        };
        match directory.catalog.call(op).await {
            Ok(CatalogReply::Secret(s)) => return Ok(Secret::new(s)),
            Ok(other) => return Err(StartError::Catalog(format!("unexpected reply {other:?}"))),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(StartError::Catalog(last))
}

/// The backends of the deployment's mode: where each actor's connection goes.
enum Backends {
    /// `deployment` scopes every Redis key to this catalog, so a re-created catalog
    /// never meets the inventory of an earlier one.
    Cluster { deployment: String },
    Embedded {
        dir: std::path::PathBuf,
        queue: Arc<LocalQueue>,
        log: Arc<EventLog>,
    },
}

impl Backends {
    /// Creates and migrates the databases of the mode.
    async fn prepare(settings: &Settings) -> Result<Self, StartError> {
        match settings.mode {
            Mode::Cluster => {
                let report = migrate::migrate_all(settings).await?;
                for (db, n) in report.iter().filter(|(_, n)| *n > 0) {
                    tracing::info!(database = %db, applied = n, "migrated");
                }
                let deployment =
                    migrate::deployment_id(settings.catalog.url.expose(), &random_secret(12))
                        .await
                        .map_err(|source| migrate::MigrateError {
                            database: "catalog".into(),
                            source,
                        })?;
                Ok(Backends::Cluster { deployment })
            }
            Mode::Embedded => {
                let dir = settings.embedded.data_dir.clone();
                std::fs::create_dir_all(&dir).map_err(|source| StartError::DataDir {
                    path: dir.display().to_string(),
                    source,
                })?;
                let embedded = |path: &std::path::Path| {
                    let path = path.display().to_string();
                    move |source| StartError::Embedded { path, source }
                };
                let catalog = dir.join("catalog.db");
                sqlite::migrate(&catalog, sqlite::CATALOG)
                    .await
                    .map_err(embedded(&catalog))?;
                for i in 0..settings.shard_count() {
                    let shard = dir.join(format!("shard-{i}.db"));
                    sqlite::migrate(&shard, sqlite::SHARD)
                        .await
                        .map_err(embedded(&shard))?;
                }
                let path = dir.join("queue.db");
                let queue = LocalQueue::open(&path).await.map_err(embedded(&path))?;
                let path = dir.join("events.db");
                let log = EventLog::open(&path).await.map_err(embedded(&path))?;
                Ok(Backends::Embedded { dir, queue, log })
            }
        }
    }

    /// Where domain events go: Kafka, or the local event log.
    fn event_bus(&self, settings: &Settings) -> Result<Arc<EventBus>, StartError> {
        Ok(Arc::new(match self {
            Backends::Cluster { .. } => {
                EventBus::kafka(&settings.events).map_err(StartError::Events)?
            }
            Backends::Embedded { log, .. } => EventBus::Log(log.clone()),
        }))
    }

    /// The catalog database, as sqlx `Any` opens it.
    fn catalog_url(&self, settings: &Settings) -> String {
        match self {
            Backends::Cluster { .. } => settings.catalog.url.expose().to_string(),
            Backends::Embedded { dir, .. } => {
                format!("sqlite://{}", dir.join("catalog.db").display())
            }
        }
    }

    /// A shard's primary database, as sqlx `Any` opens it.
    fn shard_url(&self, settings: &Settings, i: usize) -> String {
        match self {
            Backends::Cluster { .. } => settings.shards.urls[i].expose().to_string(),
            Backends::Embedded { dir, .. } => {
                format!("sqlite://{}", dir.join(format!("shard-{i}.db")).display())
            }
        }
    }

    fn catalog(
        &self,
        settings: &Settings,
        slot: Arc<CatalogSlot>,
        nudge: Nudge,
        policy: &Policy,
    ) -> ChildSpec {
        let pool_size = match self {
            Backends::Cluster { .. } => settings.shards.pool_size,
            Backends::Embedded { .. } => 2,
        };
        let connect = CatalogConnect {
            url: self.catalog_url(settings),
            pool_size,
            nudge,
        };
        supervisors::worker(slot, Arc::new(connect), 64, None, policy)
    }

    fn shard(
        &self,
        settings: &Settings,
        i: usize,
        slot: Arc<ShardSlot>,
        nudge: Nudge,
        policy: &Policy,
    ) -> ChildSpec {
        let max = settings.shards.max_batch;
        match self {
            Backends::Cluster { .. } => {
                let replica_url = settings
                    .shards
                    .replica_urls
                    .get(i)
                    .map(|u| u.expose().to_string())
                    .filter(|u| !u.is_empty());
                let connect = ShardConnect {
                    index: i,
                    url: settings.shards.urls[i].expose().to_string(),
                    replica_url,
                    pool_size: settings.shards.pool_size,
                    nudge,
                };
                supervisors::worker(slot, Arc::new(connect), max, None, policy)
            }
            Backends::Embedded { dir, .. } => {
                let connect = SqliteShardConnect {
                    index: i,
                    path: dir.join(format!("shard-{i}.db")),
                    nudge,
                };
                supervisors::worker(slot, Arc::new(connect), max, None, policy)
            }
        }
    }

    fn inventory(
        &self,
        settings: &Settings,
        i: usize,
        slot: Arc<InventorySlot>,
        policy: &Policy,
    ) -> ChildSpec {
        let inv = &settings.inventory;
        match self {
            Backends::Cluster { deployment } => {
                let connect = RedisConnect {
                    url: inv.urls[i].expose().to_string(),
                    prefix: format!("{}:{deployment}", inv.key_prefix),
                    stale_ms: inv.reconcile_after_ms,
                    idempotency_ttl_secs: inv.idempotency_ttl_secs,
                };
                supervisors::worker(slot, Arc::new(connect), inv.max_batch, None, policy)
            }
            Backends::Embedded { dir, .. } => {
                let connect = LocalInventoryConnect {
                    path: dir.join(format!("inventory-{i}.db")),
                    stale_ms: inv.reconcile_after_ms,
                };
                supervisors::worker(slot, Arc::new(connect), inv.max_batch, None, policy)
            }
        }
    }

    fn publisher(
        &self,
        settings: &Settings,
        slot: Arc<PublisherSlot>,
        policy: &Policy,
    ) -> ChildSpec {
        let q = &settings.queue;
        match self {
            Backends::Cluster { .. } => {
                let declare = vec![q.orders_queue.clone(), q.notifications_queue.clone()];
                let connect = AmqpPublisherConnect {
                    url: q.url.expose().to_string(),
                    declare,
                };
                supervisors::worker(slot, Arc::new(connect), q.max_batch, None, policy)
            }
            Backends::Embedded { queue, .. } => {
                let connect = LocalPublisherConnect {
                    queue: queue.clone(),
                };
                supervisors::worker(slot, Arc::new(connect), q.max_batch, None, policy)
            }
        }
    }

    fn source(&self, settings: &Settings) -> Arc<dyn QueueSource> {
        let q = &settings.queue;
        match self {
            Backends::Cluster { .. } => Arc::new(AmqpSource {
                url: q.url.expose().to_string(),
                declare: vec![q.orders_queue.clone(), q.notifications_queue.clone()],
            }),
            Backends::Embedded { queue, .. } => Arc::new(LocalSource {
                queue: queue.clone(),
            }),
        }
    }

    /// Without a configured admin token: in cluster mode one for this run; in embedded
    /// mode one generated on first start and kept in the data directory (mode 0600).
    fn admin_token(&self) -> Result<(Secret, bool), StartError> {
        match self {
            Backends::Cluster { .. } => Ok((Secret::new(random_secret(32)), true)),
            Backends::Embedded { dir, .. } => Ok((stored_secret(&dir.join("admin-token"))?, true)),
        }
    }

    /// Without a configured JWT key: kept in the catalog (cluster mode, shared by every
    /// pod) or in the data directory (embedded mode, where the load tester reads it).
    async fn jwt_secret(&self, directory: &Directory) -> Result<Secret, StartError> {
        match self {
            Backends::Cluster { .. } => shared_secret(directory, "jwt_secret").await,
            Backends::Embedded { dir, .. } => stored_secret(&dir.join("jwt-secret")),
        }
    }
}

/// A secret kept in a file readable by its owner only, generated when missing.
fn stored_secret(path: &std::path::Path) -> Result<Secret, StartError> {
    let err = |source| StartError::DataDir {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().len() >= 16 => return Ok(Secret::new(t.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let value = random_secret(40);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(err)?;
    std::io::Write::write_all(&mut file, value.as_bytes()).map_err(err)?;
    Ok(Secret::new(value))
}
