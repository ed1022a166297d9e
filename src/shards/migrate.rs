//! Creates missing databases and applies `migrations/` to the catalog and to every
//! shard. Each database records what it has applied; concurrent runs (several pods
//! starting at once) serialise on an advisory lock.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::config::Settings;

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

/// `migration!(version, name, path)`: a migration whose SQL is the file at `path`.
macro_rules! migration {
    ($version:literal, $name:literal, $path:literal) => {
        $crate::shards::migrate::Migration {
            version: $version,
            name: $name,
            sql: include_str!($path),
        }
    };
}
pub(crate) use migration;

pub const CATALOG: &[Migration] = &[
    migration!(1, "init", "../../migrations/catalog/0001_init.sql"),
    migration!(2, "events", "../../migrations/catalog/0002_events.sql"),
];

pub const SHARD: &[Migration] = &[
    migration!(1, "init", "../../migrations/shard/0001_init.sql"),
    migration!(2, "events", "../../migrations/shard/0002_events.sql"),
];

const LOCK_KEY: i64 = 0x666c_6173_6873; // "flashs"

#[derive(Debug, thiserror::Error)]
#[error("database {database}: {source}")]
pub struct MigrateError {
    pub database: String,
    #[source]
    pub source: sqlx::Error,
}

/// Creates the database named in `url` when it does not exist.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = options.get_database().unwrap_or("postgres").to_string();
    let mut admin = options.clone().database("postgres").connect().await?;
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(&name)
        .fetch_optional(&mut admin)
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut admin)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it meanwhile.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {}
            Err(e) => return Err(e),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Applies every migration of `set` that `url` has not applied yet; returns how many.
pub async fn apply(url: &str, set: &[Migration]) -> Result<usize, sqlx::Error> {
    let mut con = PgConnectOptions::from_str(url)?.connect().await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(LOCK_KEY)
        .execute(&mut con)
        .await?;
    let result = apply_locked(&mut con, set).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut con)
        .await;
    con.close().await?;
    result
}

async fn apply_locked(
    con: &mut sqlx::PgConnection,
    set: &[Migration],
) -> Result<usize, sqlx::Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS flashsale_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *con)
    .await?;
    let applied: Vec<i64> = sqlx::query("SELECT version FROM flashsale_migrations")
        .fetch_all(&mut *con)
        .await?
        .iter()
        .map(|r| r.get::<i64, _>(0))
        .collect();
    let mut n = 0;
    for m in set.iter().filter(|m| !applied.contains(&m.version)) {
        let mut tx = con.begin().await?;
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO flashsale_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(m.version)
        .bind(m.name)
        .bind(crate::domain::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        n += 1;
    }
    Ok(n)
}

/// Every database of a cluster deployment: created when missing, then migrated.
pub async fn migrate_all(settings: &Settings) -> Result<Vec<(String, usize)>, MigrateError> {
    let mut targets: Vec<(&str, &[Migration])> = vec![(settings.catalog.url.expose(), CATALOG)];
    for url in &settings.shards.urls {
        targets.push((url.expose(), SHARD));
    }
    let mut report = Vec::new();
    for (url, set) in targets {
        let database = PgConnectOptions::from_str(url)
            .ok()
            .and_then(|o| o.get_database().map(str::to_string))
            .unwrap_or_else(|| "postgres".into());
        let err = |source| MigrateError {
            database: database.clone(),
            source,
        };
        ensure_database(url).await.map_err(err)?;
        let n = apply(url, set).await.map_err(err)?;
        report.push((database, n));
    }
    Ok(report)
}

/// The id of this deployment, stored in the catalog on first start.
pub async fn deployment_id(catalog_url: &str, candidate: &str) -> Result<String, sqlx::Error> {
    let mut con = PgConnectOptions::from_str(catalog_url)?.connect().await?;
    sqlx::query(
        "INSERT INTO secrets (name, value) VALUES ('deployment', $1) ON CONFLICT (name) DO NOTHING",
    )
    .bind(candidate)
    .execute(&mut con)
    .await?;
    let id: String = sqlx::query("SELECT value FROM secrets WHERE name = 'deployment'")
        .fetch_one(&mut con)
        .await?
        .get(0);
    con.close().await?;
    Ok(id)
}
