//! Creates missing databases and applies `migrations/` to the catalog and to every
//! shard, with sqlx's migrator: each database records in `_sqlx_migrations` what it has
//! applied and a checksum of each file, so a migration edited after it ran stops the
//! start instead of leaving databases that differ. A run is one transaction: it takes
//! a transaction-scoped advisory lock (several pods starting at once take turns), and
//! each migration runs in a savepoint of it, so a failure leaves the database as it
//! was and the whole run works through a pooler in transaction mode (PgBouncer), which
//! session-scoped locks would not survive.
//!
//! The files are embedded in the binary (`include_str!`, listed below),
//! named `<version>_<description>.sql`. A migration that has run is never edited: a
//! change is a new file, added to its list.

use std::borrow::Cow;
use std::collections::HashSet;
use std::str::FromStr;
use std::sync::LazyLock;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sqlx::error::BoxDynError;
use sqlx::migrate::{
    Migrate, MigrateDatabase, Migration, MigrationSource, MigrationType, Migrator,
};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Executor, Postgres};

use crate::config::Settings;

/// Migrations compiled into the binary: (version, description, SQL).
#[derive(Debug)]
pub struct Embedded(pub &'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        let migrations = self
            .0
            .iter()
            .map(|(version, description, sql)| {
                let (description, sql) = (Cow::Borrowed(*description), Cow::Borrowed(*sql));
                Migration::new(*version, description, MigrationType::Simple, sql, false)
            })
            .collect();
        async move { Ok(migrations) }.boxed()
    }
}

impl Embedded {
    /// sqlx's migrator over these files (checksums computed here, once).
    pub fn migrator(self) -> Migrator {
        let mut migrator = Migrator::new(self)
            .now_or_never()
            .expect("embedded migrations resolve at once")
            .expect("embedded migrations are valid");
        // [`apply`] holds a lock of its own, for the transaction.
        migrator.set_locking(false);
        migrator
    }
}

pub static CATALOG: LazyLock<Migrator> = LazyLock::new(|| {
    Embedded(&[
        (
            1,
            "init",
            include_str!("../../migrations/catalog/0001_init.sql"),
        ),
        (
            2,
            "events",
            include_str!("../../migrations/catalog/0002_events.sql"),
        ),
        (
            3,
            "dead_letters",
            include_str!("../../migrations/catalog/0003_dead_letters.sql"),
        ),
        (
            4,
            "pods",
            include_str!("../../migrations/catalog/0004_pods.sql"),
        ),
        (
            5,
            "pod_in_flight",
            include_str!("../../migrations/catalog/0005_pod_in_flight.sql"),
        ),
        (
            6,
            "payment_window",
            include_str!("../../migrations/catalog/0006_payment_window.sql"),
        ),
        (
            7,
            "expired_reports",
            include_str!("../../migrations/catalog/0007_expired_reports.sql"),
        ),
    ])
    .migrator()
});

pub static SHARD: LazyLock<Migrator> = LazyLock::new(|| {
    Embedded(&[
        (
            1,
            "init",
            include_str!("../../migrations/shard/0001_init.sql"),
        ),
        (
            2,
            "events",
            include_str!("../../migrations/shard/0002_events.sql"),
        ),
        (
            3,
            "keys_expire",
            include_str!("../../migrations/shard/0003_keys_expire.sql"),
        ),
        (
            4,
            "restocks",
            include_str!("../../migrations/shard/0004_restocks.sql"),
        ),
        (
            5,
            "payments",
            include_str!("../../migrations/shard/0005_payments.sql"),
        ),
    ])
    .migrator()
});

#[derive(Debug, thiserror::Error)]
#[error("database {database}: {source}{hint}", hint = hint(.source))]
pub struct MigrateError {
    pub database: String,
    #[source]
    pub source: sqlx::Error,
}

/// What to do about an error that needs a person.
fn hint(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Migrate(m) => match **m {
            sqlx::migrate::MigrateError::VersionMismatch(_) => {
                " (a migration that has run must never change: restore its file and put the change in a new migration)"
            }
            sqlx::migrate::MigrateError::VersionMissing(_) => {
                " (the database is newer than this build: run a build that has every migration it has applied)"
            }
            _ => "",
        },
        _ => "",
    }
}

/// The advisory lock key of migration runs ("fsmigrat" in ASCII).
const MIGRATION_LOCK: i64 = 0x6673_6d69_6772_6174;

/// Creates the database named in `url` when it does not exist. Several pods may do this
/// at once: the one that loses the race finds the database made, which is all it wanted.
pub async fn ensure_database(url: &str) -> Result<(), sqlx::Error> {
    if database_exists(url).await? {
        return Ok(());
    }
    match Postgres::create_database(url).await {
        Ok(()) => {
            tracing::info!(database = %database_name(url), "created database");
            Ok(())
        }
        // duplicate_database, or the unique index of pg_database when both
        // CREATE DATABASE statements ran at the same moment.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("42P04" | "23505")) => {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether the database named in `url` exists, asked of the server's `postgres`
/// database in a transaction with an unnamed statement (a pooler may sit in between).
async fn database_exists(url: &str) -> Result<bool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?;
    let name = database_name(url);
    let mut con = options.database("postgres").connect().await?;
    let mut tx = con.begin().await?;
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .persistent(false)
        .bind(name)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    con.close().await?;
    Ok(exists)
}

/// Applies every migration of `set` that `url` has not applied yet; returns how many.
pub async fn apply(url: &str, set: &Migrator) -> Result<usize, sqlx::Error> {
    let mut con = PgConnectOptions::from_str(url)?.connect().await?;
    // The lock is held across the count and the run, so that the count
    // is this run's own; an error rolls all of it back and releases the lock.
    let mut tx = con.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .persistent(false)
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    let applied = applied(&mut tx).await?;
    set.run(&mut *tx).await?;
    // sqlx's migrator names its statements: leave none behind on a server that a
    // pooler hands to other clients next.
    tx.execute("DEALLOCATE ALL").await?;
    tx.commit().await?;
    con.close().await?;
    Ok(pending(set, &applied))
}

/// The versions applied so far. The caller holds the lock.
async fn applied(con: &mut PgConnection) -> Result<HashSet<i64>, sqlx::Error> {
    con.ensure_migrations_table().await?;
    let applied = con.list_applied_migrations().await?;
    Ok(applied.iter().map(|m| m.version).collect())
}

/// How many migrations of `set` were not in `applied`.
pub(crate) fn pending(set: &Migrator, applied: &HashSet<i64>) -> usize {
    set.iter()
        .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
        .count()
}

fn database_name(url: &str) -> String {
    PgConnectOptions::from_str(url)
        .ok()
        .and_then(|o| o.get_database().map(str::to_string))
        .unwrap_or_else(|| "postgres".into())
}

/// Every database of a cluster deployment: created when missing, then migrated.
pub async fn migrate_all(settings: &Settings) -> Result<Vec<(String, usize)>, MigrateError> {
    let mut report = vec![migrate_one(settings.catalog.url.expose(), &CATALOG).await?];
    for url in &settings.shards.urls {
        report.push(migrate_one(url.expose(), &SHARD).await?);
    }
    Ok(report)
}

/// One database: created when missing, then migrated; its name and how many applied.
async fn migrate_one(url: &str, set: &Migrator) -> Result<(String, usize), MigrateError> {
    let database = database_name(url);
    let err = |source| MigrateError {
        database: database.clone(),
        source,
    };
    ensure_database(url).await.map_err(err)?;
    let n = apply(url, set).await.map_err(err)?;
    Ok((database, n))
}

/// The id of this deployment, stored in the catalog on first start.
pub async fn deployment_id(catalog_url: &str, candidate: &str) -> Result<String, sqlx::Error> {
    let mut con = PgConnectOptions::from_str(catalog_url)?.connect().await?;
    let mut tx = con.begin().await?;
    sqlx::query(
        "INSERT INTO secrets (name, value) VALUES ('deployment', $1) ON CONFLICT (name) DO NOTHING",
    )
    .persistent(false)
    .bind(candidate)
    .execute(&mut *tx)
    .await?;
    let id: String = sqlx::query_scalar("SELECT value FROM secrets WHERE name = 'deployment'")
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    con.close().await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use sqlx::migrate::MigrateError as SqlxMigrateError;

    use super::*;
    use crate::config::Secret;
    use crate::shards::sqlite;

    const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

    /// Names of databases (and files) no other test uses: `fs_test_<pid>_<random>_<what>`.
    fn unique(what: &str) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!("fs_test_{}_{}_{what}", std::process::id(), &id[..8])
    }

    fn pg_url(db: &str) -> String {
        format!("{SERVER}/{db}")
    }

    /// The shipped cluster settings, pointed at `catalog` and `shards` on the local server.
    fn cluster(catalog: &str, shards: &[String]) -> Settings {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.toml");
        let mut s = Settings::load_with_env(Some(&path), Vec::new()).expect("cluster config");
        s.catalog.url = Secret::new(pg_url(catalog));
        s.shards.urls = shards.iter().map(|d| Secret::new(pg_url(d))).collect();
        s
    }

    async fn drop_databases(names: &[String]) {
        for name in names {
            Postgres::force_drop_database(&pg_url(name))
                .await
                .expect("drop test database");
        }
    }

    /// Every version of a set, as `versions` shows them once applied.
    fn all(set: &Migrator) -> Vec<(i64, bool)> {
        set.iter().map(|m| (m.version, true)).collect()
    }

    fn numbers(set: &Migrator) -> Vec<i64> {
        set.iter().map(|m| m.version).collect()
    }

    async fn versions(url: &str) -> Vec<(i64, bool)> {
        let mut con = PgConnectOptions::from_str(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let rows = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut con)
            .await
            .unwrap();
        con.close().await.unwrap();
        rows
    }

    async fn pg_tables(url: &str) -> Vec<String> {
        let mut con = PgConnectOptions::from_str(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let rows = sqlx::query_scalar(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
        )
        .fetch_all(&mut con)
        .await
        .unwrap();
        con.close().await.unwrap();
        rows
    }

    /// A copy of the migration folder `dir` whose first migration has one more line, as a
    /// careless edit of an applied migration would leave it.
    async fn edited_copy(dir: &str) -> (Migrator, PathBuf) {
        let from = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let to = std::env::temp_dir().join(unique("edited"));
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        let first = to.join("0001_init.sql");
        let sql = std::fs::read_to_string(&first).unwrap();
        std::fs::write(&first, format!("{sql}\n-- a later edit\n")).unwrap();
        let migrator = Migrator::new(to.as_path()).await.unwrap();
        (migrator, to)
    }

    fn is_version_mismatch(e: &sqlx::Error, version: i64) -> bool {
        matches!(e, sqlx::Error::Migrate(m) if matches!(**m, SqlxMigrateError::VersionMismatch(v) if v == version))
    }

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let sets = [
            (&*CATALOG, "migrations/catalog"),
            (&*SHARD, "migrations/shard"),
            (&*sqlite::CATALOG, "migrations/sqlite/catalog"),
            (&*sqlite::INVENTORY, "migrations/sqlite/inventory"),
            (&*sqlite::SHARD, "migrations/sqlite/shard"),
        ];
        for (set, dir) in sets {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let mut files: Vec<(i64, String)> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter_map(|f| {
                    let (n, name) = f.strip_suffix(".sql")?.split_once('_')?;
                    Some((n.parse().ok()?, name.to_string()))
                })
                .collect();
            files.sort();
            let embedded: Vec<(i64, String)> = set
                .iter()
                .map(|m| (m.version, m.description.to_string()))
                .collect();
            assert_eq!(embedded, files, "{}", dir.display());
            assert_eq!(embedded[0], (1, "init".to_string()));
        }
    }

    #[tokio::test]
    async fn migrating_twice_creates_the_databases_then_does_nothing() {
        let (catalog, shards) = (
            unique("catalog"),
            vec![unique("shard_0"), unique("shard_1")],
        );
        let settings = cluster(&catalog, &shards);

        let first = migrate_all(&settings).await.expect("first run");
        let second = migrate_all(&settings).await.expect("second run");

        let names: Vec<String> = [catalog.clone()]
            .into_iter()
            .chain(shards.clone())
            .collect();
        let each = |catalog_n, shard_n| {
            let n = |i| if i == 0 { catalog_n } else { shard_n };
            names
                .iter()
                .enumerate()
                .map(|(i, d)| (d.clone(), n(i)))
                .collect::<Vec<_>>()
        };
        assert_eq!(first, each(CATALOG.iter().count(), SHARD.iter().count()));
        assert_eq!(second, each(0, 0));
        assert_eq!(versions(&pg_url(&catalog)).await, all(&CATALOG));
        assert!(pg_tables(&pg_url(&catalog))
            .await
            .contains(&"products".to_string()));
        let shard_tables = pg_tables(&pg_url(&shards[1])).await;
        assert!(
            shard_tables.contains(&"orders".into()) && shard_tables.contains(&"outbox".into()),
            "{shard_tables:?}"
        );
        drop_databases(&names).await;
    }

    #[tokio::test]
    async fn an_edited_migration_is_refused() {
        let db = unique("shard");
        migrate_one(&pg_url(&db), &SHARD).await.expect("migrates");
        let (edited, dir) = edited_copy("migrations/shard").await;

        let err = migrate_one(&pg_url(&db), &edited).await.unwrap_err();

        assert!(is_version_mismatch(&err.source, 1), "{err:?}");
        let shown = err.to_string();
        assert!(
            shown.contains(&db)
                && shown.contains("migration 1 was previously applied but has been modified")
                && shown.contains("must never change"),
            "{shown}"
        );
        // The lock went with the failed run's connection: the real set still runs.
        assert_eq!(migrate_one(&pg_url(&db), &SHARD).await.unwrap().1, 0);
        std::fs::remove_dir_all(dir).unwrap();
        drop_databases(&[db]).await;
    }

    #[tokio::test]
    async fn two_pods_migrating_fresh_databases_at_once_both_succeed() {
        let (catalog, shards) = (
            unique("catalog"),
            vec![unique("shard_0"), unique("shard_1")],
        );
        let settings = cluster(&catalog, &shards);

        let (a, b) = tokio::join!(migrate_all(&settings), migrate_all(&settings));

        let (a, b) = (a.expect("first pod"), b.expect("second pod"));
        for ((db, n), (_, m)) in a.iter().zip(&b) {
            let set = if db == &catalog { &*CATALOG } else { &*SHARD };
            assert_eq!(
                n + m,
                set.iter().count(),
                "each migration of {db} applied once: {a:?} {b:?}"
            );
            assert_eq!(versions(&pg_url(db)).await, all(set));
        }
        let names: Vec<String> = [catalog].into_iter().chain(shards).collect();
        drop_databases(&names).await;
    }

    async fn sqlite_versions(path: &Path) -> Vec<i64> {
        let pool = crate::db::sqlite_pool(path, 1).await.unwrap();
        let rows = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows
    }

    fn remove_sqlite(path: &Path) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }

    #[tokio::test]
    async fn embedded_files_migrate_once_and_refuse_an_edited_migration() {
        let path = std::env::temp_dir().join(format!("{}.db", unique("shard")));

        let n = sqlite::SHARD.iter().count();
        assert_eq!(sqlite::migrate(&path, &sqlite::SHARD).await.unwrap(), n);
        assert_eq!(sqlite::migrate(&path, &sqlite::SHARD).await.unwrap(), 0);
        assert_eq!(sqlite_versions(&path).await, numbers(&sqlite::SHARD));

        let (edited, dir) = edited_copy("migrations/sqlite/shard").await;
        let err = sqlite::migrate(&path, &edited).await.unwrap_err();
        assert!(is_version_mismatch(&err, 1), "{err:?}");
        assert!(err
            .to_string()
            .contains("migration 1 was previously applied but has been modified"));

        std::fs::remove_dir_all(dir).unwrap();
        remove_sqlite(&path);
    }
}
