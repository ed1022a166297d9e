//! The SQLite files of embedded mode (one per order shard and one for the catalog,
//! under the data directory) and their migrations. Their actors are the same as in
//! cluster mode ([`super::store`], [`super::catalog`]).

use std::collections::HashSet;
use std::path::Path;
use std::sync::LazyLock;

use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::SqliteConnection;
use sqlx::Connection;

use crate::db::sqlite_pool;
use crate::shards::migrate::{pending, taken_over, Embedded};

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
    ])
    .migrator()
});

/// Applies the migrations `path` has not applied yet; returns how many. Bookkeeping,
/// checksums and the takeover of `flashsale_migrations` as in `shards::migrate`; one
/// process owns a data directory, so there is no lock to take.
pub async fn migrate(path: &Path, set: &Migrator) -> Result<usize, sqlx::Error> {
    let pool = sqlite_pool(path, 1).await?;
    let mut con = pool.acquire().await?;
    let applied = baseline(&mut con, set).await?;
    set.run(&mut *con).await?;
    drop(con);
    pool.close().await;
    Ok(pending(set, &applied))
}

/// `shards::migrate::baseline` for SQLite.
async fn baseline(con: &mut SqliteConnection, set: &Migrator) -> Result<HashSet<i64>, sqlx::Error> {
    con.ensure_migrations_table().await?;
    let mut applied: HashSet<i64> = con
        .list_applied_migrations()
        .await?
        .iter()
        .map(|m| m.version)
        .collect();
    let legacy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flashsale_migrations')",
    )
    .fetch_one(&mut *con)
    .await?;
    if !applied.is_empty() || !legacy {
        return Ok(applied);
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM flashsale_migrations")
        .fetch_all(&mut *con)
        .await?;
    let mut tx = con.begin().await?;
    for m in taken_over(set, &versions) {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?, ?, TRUE, ?, 0)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .execute(&mut *tx)
        .await?;
        applied.insert(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}
