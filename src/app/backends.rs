//! The backends of the deployment's mode: where each actor's connection goes. Cluster
//! mode reaches PostgreSQL, Redis, RabbitMQ and Kafka; embedded mode keeps the same
//! actors over SQLite files, in-process partitions, a local queue and a local event
//! log under the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::secrets::{private_dir, random_secret, shared_secret, stored_secret};
use super::StartError;
use crate::actors::directory::{CatalogSlot, Directory, InventorySlot, PublisherSlot, ShardSlot};
use crate::actors::inventory::local::LocalInventoryConnect;
use crate::actors::inventory::redis::RedisConnect;
use crate::actors::queue::amqp::{AmqpPublisherConnect, AmqpSource};
use crate::actors::queue::local::{LocalPublisherConnect, LocalQueue, LocalSource};
use crate::actors::queue::QueueSource;
use crate::actors::recovery::CatalogSales;
use crate::config::{Mode, Secret, Settings};
use crate::config::{MIN_ADMIN_TOKEN, MIN_JWT_SECRET};
use crate::db::DbOptions;
use crate::events::log::EventLog;
use crate::events::EventBus;
use crate::shards::catalog::CatalogConnect;
use crate::shards::migrate;
use crate::shards::sqlite;
use crate::shards::store::ShardConnect;
use crate::supervisors::slot::Nudge;
use crate::supervisors::{self, Child, Policy};

pub enum Backends {
    /// `deployment` scopes every Redis key to this catalog, so a re-created catalog
    /// never meets the inventory of an earlier one.
    Cluster { deployment: String },
    Embedded {
        dir: PathBuf,
        queue: Arc<LocalQueue>,
        log: Arc<EventLog>,
    },
}

impl Backends {
    /// Creates and migrates the databases of the mode.
    pub async fn prepare(settings: &Settings) -> Result<Self, StartError> {
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
                private_dir(&dir)?;
                let embedded = |path: &Path| {
                    let path = path.display().to_string();
                    move |source| StartError::Embedded { path, source }
                };
                let catalog = dir.join("catalog.db");
                sqlite::migrate(&catalog, &sqlite::CATALOG)
                    .await
                    .map_err(embedded(&catalog))?;
                for i in 0..settings.shard_count() {
                    let shard = dir.join(format!("shard-{i}.db"));
                    sqlite::migrate(&shard, &sqlite::SHARD)
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
    pub fn event_bus(&self, settings: &Settings) -> Result<Arc<EventBus>, StartError> {
        Ok(Arc::new(match self {
            Backends::Cluster { .. } => {
                EventBus::kafka(&settings.events).map_err(StartError::Events)?
            }
            Backends::Embedded { log, .. } => EventBus::Log(log.clone()),
        }))
    }

    /// The catalog database, as sqlx `Any` opens it (with this application's
    /// [`DbOptions`]).
    pub fn catalog_url(&self, settings: &Settings) -> String {
        match self {
            Backends::Cluster { .. } => db_options(settings).url(settings.catalog.url.expose()),
            Backends::Embedded { dir, .. } => sqlite_url(&dir.join("catalog.db")),
        }
    }

    /// A shard's primary database, as sqlx `Any` opens it (with this application's
    /// [`DbOptions`]).
    pub fn shard_url(&self, settings: &Settings, i: usize) -> String {
        match self {
            Backends::Cluster { .. } => db_options(settings).url(settings.shards.urls[i].expose()),
            Backends::Embedded { dir, .. } => sqlite_url(&dir.join(format!("shard-{i}.db"))),
        }
    }

    /// Connections per database pool: SQLite files need few (one writer at a time).
    fn pool_size(&self, settings: &Settings) -> u32 {
        match self {
            Backends::Cluster { .. } => settings.shards.pool_size,
            Backends::Embedded { .. } => 2,
        }
    }

    pub fn catalog(
        &self,
        settings: &Settings,
        slot: Arc<CatalogSlot>,
        nudge: Nudge,
        policy: &Policy,
    ) -> Child {
        let connect = CatalogConnect {
            url: self.catalog_url(settings),
            pool_size: self.pool_size(settings),
            nudge,
        };
        supervisors::worker(slot, Arc::new(connect), 64, None, policy)
    }

    pub fn shard(
        &self,
        settings: &Settings,
        i: usize,
        slot: Arc<ShardSlot>,
        nudge: Nudge,
        policy: &Policy,
    ) -> Child {
        let replica_url = match self {
            Backends::Cluster { .. } => settings
                .shards
                .replica_urls
                .get(i)
                .map(|u| u.expose())
                .filter(|u| !u.is_empty())
                .map(|u| db_options(settings).url(u)),
            Backends::Embedded { .. } => None,
        };
        let connect = ShardConnect {
            index: i,
            url: self.shard_url(settings, i),
            replica_url,
            replica_max_lag_ms: settings.shards.replica_max_lag_ms,
            pool_size: self.pool_size(settings),
            nudge,
            stats: slot.stats.clone(),
        };
        let max = settings.shards.max_batch;
        supervisors::worker(slot, Arc::new(connect), max, None, policy)
    }

    pub fn inventory(
        &self,
        settings: &Settings,
        i: usize,
        slot: Arc<InventorySlot>,
        catalog: &Arc<CatalogSlot>,
        policy: &Policy,
    ) -> Child {
        let inv = &settings.inventory;
        match self {
            Backends::Cluster { deployment } => {
                let connect = RedisConnect {
                    url: inv.urls[i].expose().to_string(),
                    prefix: format!("{}:{deployment}", inv.key_prefix),
                    stale_ms: inv.reconcile_after_ms,
                    idempotency_ttl_secs: inv.idempotency_ttl_secs,
                    has_sales: Arc::new(CatalogSales {
                        catalog: catalog.clone(),
                        partition: i,
                        partitions: settings.partition_count(),
                    }),
                    last_write: Default::default(),
                };
                supervisors::worker(slot, Arc::new(connect), inv.max_batch, None, policy)
            }
            Backends::Embedded { dir, .. } => {
                let connect = LocalInventoryConnect {
                    path: dir.join(format!("inventory-{i}.db")),
                    stale_ms: inv.reconcile_after_ms,
                    idempotency_ttl_secs: inv.idempotency_ttl_secs,
                };
                supervisors::worker(slot, Arc::new(connect), inv.max_batch, None, policy)
            }
        }
    }

    pub fn publisher(
        &self,
        settings: &Settings,
        slot: Arc<PublisherSlot>,
        policy: &Policy,
    ) -> Child {
        let q = &settings.queue;
        match self {
            Backends::Cluster { .. } => {
                let declare = vec![q.orders_queue.clone(), q.notifications_queue.clone()];
                let connect = AmqpPublisherConnect {
                    url: q.amqp_url(),
                    declare,
                    kind: q.kind,
                    deadline: Duration::from_millis(q.deadline_ms),
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

    pub fn source(&self, settings: &Settings) -> Arc<dyn QueueSource> {
        let q = &settings.queue;
        match self {
            Backends::Cluster { .. } => Arc::new(AmqpSource {
                url: q.amqp_url(),
                declare: vec![q.orders_queue.clone(), q.notifications_queue.clone()],
                kind: q.kind,
                deadline: Duration::from_millis(q.deadline_ms),
            }),
            Backends::Embedded { queue, .. } => Arc::new(LocalSource {
                queue: queue.clone(),
            }),
        }
    }

    /// Without a configured admin token: in cluster mode one for this run; in embedded
    /// mode one generated on first start and kept in the data directory (mode 0600).
    /// Answers whether it was generated now.
    pub fn admin_token(&self) -> Result<(Secret, bool), StartError> {
        match self {
            Backends::Cluster { .. } => Ok((Secret::new(random_secret(32)), true)),
            Backends::Embedded { dir, .. } => {
                stored_secret(&dir.join("admin-token"), MIN_ADMIN_TOKEN)
            }
        }
    }

    /// Without a configured JWT key: kept in the catalog (cluster mode, shared by every
    /// pod) or in the data directory (embedded mode, where the load tester reads it).
    pub async fn jwt_secret(&self, directory: &Directory) -> Result<Secret, StartError> {
        match self {
            Backends::Cluster { .. } => shared_secret(directory, "jwt_secret").await,
            Backends::Embedded { dir, .. } => {
                Ok(stored_secret(&dir.join("jwt-secret"), MIN_JWT_SECRET)?.0)
            }
        }
    }
}

/// How this application's pools reach PostgreSQL. Carried in the URLs its actors get,
/// not kept by the process: another application in the same process keeps its own.
fn db_options(settings: &Settings) -> DbOptions {
    DbOptions {
        pooled: settings.mode == Mode::Cluster && settings.shards.transaction_pooling,
        statement_timeout_ms: settings.limits.statement_timeout_ms,
    }
}

fn sqlite_url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}
