//! The SQLite files of embedded mode (one per order shard, one for the catalog and one
//! per inventory partition, under the data directory) and their migrations. The
//! shards' and the catalog's actors are the same as in cluster mode ([`super::store`],
//! [`super::catalog`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::LazyLock;

use sqlx::migrate::{Migrate, Migrator};

use crate::db::sqlite_pool;
use crate::shards::migrate::{pending, Embedded};

pub static CATALOG: LazyLock<Migrator> = LazyLock::new(|| {
    Embedded(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/catalog/0001_init.sql"),
        ),
        (
            2,
            "events",
            include_str!("../../migrations/sqlite/catalog/0002_events.sql"),
        ),
        (
            3,
            "dead_letters",
            include_str!("../../migrations/sqlite/catalog/0003_dead_letters.sql"),
        ),
        (
            4,
            "pods",
            include_str!("../../migrations/sqlite/catalog/0004_pods.sql"),
        ),
        (
            5,
            "pod_in_flight",
            include_str!("../../migrations/sqlite/catalog/0005_pod_in_flight.sql"),
        ),
        (
            6,
            "payment_window",
            include_str!("../../migrations/sqlite/catalog/0006_payment_window.sql"),
        ),
        (
            7,
            "expired_reports",
            include_str!("../../migrations/sqlite/catalog/0007_expired_reports.sql"),
        ),
    ])
    .migrator()
});

pub static SHARD: LazyLock<Migrator> = LazyLock::new(|| {
    Embedded(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/shard/0001_init.sql"),
        ),
        (
            2,
            "events",
            include_str!("../../migrations/sqlite/shard/0002_events.sql"),
        ),
        (
            3,
            "keys_expire",
            include_str!("../../migrations/sqlite/shard/0003_keys_expire.sql"),
        ),
        (
            4,
            "restocks",
            include_str!("../../migrations/sqlite/shard/0004_restocks.sql"),
        ),
        (
            5,
            "payments",
            include_str!("../../migrations/sqlite/shard/0005_payments.sql"),
        ),
    ])
    .migrator()
});

pub static INVENTORY: LazyLock<Migrator> = LazyLock::new(|| {
    Embedded(&[
        (
            1,
            "init",
            include_str!("../../migrations/sqlite/inventory/0001_init.sql"),
        ),
        (
            2,
            "terms",
            include_str!("../../migrations/sqlite/inventory/0002_terms.sql"),
        ),
    ])
    .migrator()
});

/// Applies the migrations `path` has not applied yet; returns how many. Bookkeeping
/// and checksums as in `shards::migrate`; one process owns a data directory, so there
/// is no lock to take.
pub async fn migrate(path: &Path, set: &Migrator) -> Result<usize, sqlx::Error> {
    let pool = sqlite_pool(path, 1).await?;
    let mut con = pool.acquire().await?;
    con.ensure_migrations_table().await?;
    let applied: HashSet<i64> = con
        .list_applied_migrations()
        .await?
        .iter()
        .map(|m| m.version)
        .collect();
    drop(con);
    set.run(&pool).await?;
    pool.close().await;
    Ok(pending(set, &applied))
}
