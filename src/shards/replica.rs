//! A shard's read replica, used only while it is healthy: a monitor task measures its
//! replication lag every second (replay behind what it received, as seconds since the
//! last replayed commit) and whether it answers at all. Reads go to the replica while
//! it is up and its lag is within `shards.replica_max_lag_ms`; otherwise, and whenever
//! a read on it fails, to the primary, without an error. The shard actor never waits
//! on the monitor, and a read never fails the actor because of the replica.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::AnyPool;
use tokio::task::JoinHandle;

use crate::db;
use crate::supervisors::stats::{NodeStats, ReplicaState};

/// How long a read waits for a replica connection before it goes to the primary.
const ACQUIRE: Duration = Duration::from_millis(500);
/// How often the monitor looks.
const EVERY: Duration = Duration::from_secs(1);

/// What a shard knows of its replica.
#[derive(Default)]
pub struct Health {
    up: AtomicBool,
    lag_ms: AtomicU64,
}

pub struct Replica {
    pub pool: AnyPool,
    health: Arc<Health>,
    max_lag_ms: u64,
    shard: String,
    monitor: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

/// Replay lag in seconds: zero when everything received has been replayed.
const LAG: &str = "SELECT CAST(CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
     ELSE COALESCE(EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp())), 0) END AS DOUBLE PRECISION)";

impl Replica {
    /// Opens the replica's pool lazily (a replica that is down does not stop the shard)
    /// and starts its monitor.
    pub fn open(
        url: &str,
        size: u32,
        shard: usize,
        max_lag_ms: u64,
        stats: Arc<NodeStats>,
    ) -> Result<Self, sqlx::Error> {
        let pool = crate::db::any_pool_lazy(url, size, ACQUIRE)?;
        let health = Arc::new(Health::default());
        let shard = shard.to_string();
        let watch = Monitor {
            pool: pool.clone(),
            health: health.clone(),
            shard: shard.clone(),
            max_lag_ms,
            stats,
        };
        let monitor = tokio::spawn(watch.run());
        Ok(Self {
            pool,
            health,
            max_lag_ms,
            shard,
            monitor,
        })
    }

    /// The replica's pool when reads may go there now.
    pub fn usable(&self) -> Option<&AnyPool> {
        let h = &self.health;
        (h.up.load(Ordering::Relaxed) && h.lag_ms.load(Ordering::Relaxed) <= self.max_lag_ms)
            .then_some(&self.pool)
    }

    /// A read on the replica failed: the primary answers until the monitor sees it up.
    pub fn failed(&self, error: &sqlx::Error) {
        if self.health.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(shard = %self.shard, %error, "replica read failed; reading from the primary");
        }
        metrics::gauge!("flashsale_replica_up", "shard" => self.shard.clone()).set(0.0);
    }

    /// Counts a read by who served it.
    pub fn served(&self, by: &'static str) {
        metrics::counter!("flashsale_shard_reads_total", "shard" => self.shard.clone(), "served_by" => by)
            .increment(1);
    }
}

/// Looks at the replica every second; the shard's node in the tree shows what it saw.
struct Monitor {
    pool: AnyPool,
    health: Arc<Health>,
    shard: String,
    max_lag_ms: u64,
    stats: Arc<NodeStats>,
}

impl Monitor {
    async fn run(self) {
        let Monitor {
            pool,
            health,
            shard,
            max_lag_ms,
            stats,
        } = self;
        loop {
            let lag = db::query_scalar::<_, f64>(LAG)
                .fetch_one(db::on(&pool))
                .await;
            match lag {
                Ok(secs) => {
                    if !health.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(%shard, "replica up; reads go there while its lag allows");
                    }
                    let ms = (secs.max(0.0) * 1000.0) as u64;
                    health.lag_ms.store(ms, Ordering::Relaxed);
                    metrics::gauge!("flashsale_replica_lag_seconds", "shard" => shard.clone())
                        .set(secs);
                    metrics::gauge!("flashsale_replica_up", "shard" => shard.clone()).set(1.0);
                    stats.set_replica(ReplicaState {
                        up: true,
                        lag_seconds: (secs.max(0.0) * 1000.0).round() / 1000.0,
                        serving: ms <= max_lag_ms,
                    });
                }
                Err(e) => {
                    if health.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(%shard, error = %e, "replica down; reads go to the primary");
                    }
                    metrics::gauge!("flashsale_replica_up", "shard" => shard.clone()).set(0.0);
                    stats.set_replica(ReplicaState {
                        up: false,
                        lag_seconds: 0.0,
                        serving: false,
                    });
                }
            }
            tokio::time::sleep(EVERY).await;
        }
    }
}
