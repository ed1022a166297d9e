//! The SQLite files of embedded mode (one per order shard and one for the catalog,
//! under the data directory) and their migrations. Their actors are the same as in
//! cluster mode ([`super::store`], [`super::catalog`]).

use std::path::Path;

use sqlx::Row;

use crate::db::sqlite_pool;
use crate::domain::now_ms;
use crate::shards::migrate::{migration, Migration};

pub const CATALOG: &[Migration] = &[
    migration!(1, "init", "../../migrations/sqlite/catalog/0001_init.sql"),
    migration!(
        2,
        "events",
        "../../migrations/sqlite/catalog/0002_events.sql"
    ),
];

pub const SHARD: &[Migration] = &[
    migration!(1, "init", "../../migrations/sqlite/shard/0001_init.sql"),
    migration!(2, "events", "../../migrations/sqlite/shard/0002_events.sql"),
];

/// Applies the migrations `path` has not applied yet; returns how many.
pub async fn migrate(path: &Path, set: &[Migration]) -> Result<usize, sqlx::Error> {
    let pool = sqlite_pool(path, 1).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flashsale_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
    )
    .execute(&pool)
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM flashsale_migrations")
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut n = 0;
    for m in set.iter().filter(|m| !applied.contains(&m.version)) {
        let mut tx = pool.begin().await?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO flashsale_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        n += 1;
    }
    pool.close().await;
    Ok(n)
}
