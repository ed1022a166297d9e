//! Database pools, built in one place for every backend: the PostgreSQL pools of the
//! shards, the SQLite files of embedded mode, and sqlx `Any` pools for the SQL that
//! is written once for both dialects (the catalog, the shards' reads and single-row
//! writes, the outbox relays, the event consumers' stores). Timeouts and statement
//! settings live here.

use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::AnyPool;

use crate::supervisors::slot::{ItemError, ReplyPort};

/// How long a caller waits for a pooled connection before the backend counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest a PostgreSQL statement may run (`limits.statement_timeout_ms`): a hung
/// or locked database fails the actor waiting on it (its supervisor restarts it)
/// instead of holding it for ever. One setting for the process, set at start.
static STATEMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(10_000);

pub fn set_statement_timeout(ms: u64) {
    STATEMENT_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

fn statement_timeout_ms() -> u64 {
    STATEMENT_TIMEOUT_MS.load(Ordering::Relaxed)
}
/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL pool named `flashsale` in `pg_stat_activity`.
pub async fn pg_pool(url: &str, size: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("flashsale")
        .options([("statement_timeout", statement_timeout_ms().to_string())]);
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// A pool over an SQLite file (created when missing): write-ahead log, every commit
/// synced (an accepted order survives `kill -9` and power loss).
pub async fn sqlite_pool(path: &Path, size: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    SqlitePoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

/// sqlx `Any`'s drivers, installed once per process.
fn install_drivers() {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
}

/// A pool for SQL written once for both dialects: `postgres://…` or `sqlite://path`
/// (an SQLite file must exist: the migrations create it).
pub async fn any_pool(url: &str, size: u32) -> Result<AnyPool, sqlx::Error> {
    install_drivers();
    let postgres = !is_sqlite(url);
    let timeout = statement_timeout_ms();
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if postgres {
                    let set = format!("SET statement_timeout = {timeout}");
                    sqlx::Executor::execute(&mut *conn, set.as_str()).await?;
                }
                Ok(())
            })
        })
        .connect(url)
        .await
}

/// A pool like [`any_pool`] that connects on first use, with its own acquire timeout:
/// for a database that may be down without that being this actor's failure (a read
/// replica).
pub fn any_pool_lazy(url: &str, size: u32, acquire: Duration) -> Result<AnyPool, sqlx::Error> {
    install_drivers();
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(acquire)
        .connect_lazy(url)
}

/// Starts a transaction that writes, on a pool of either dialect. SQLite cannot turn
/// a transaction that has read into one that writes once another connection has
/// written since (it fails at once instead of waiting), so there the write lock is
/// taken at the start, waiting its turn within the busy timeout.
pub async fn begin_write(
    pool: &AnyPool,
    sqlite: bool,
) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
    pool.begin_with(if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" })
        .await
}

/// Whether a URL names an SQLite database.
pub fn is_sqlite(url: &str) -> bool {
    url.starts_with("sqlite:")
}

/// Whether an error means the database is unreachable or unusable for now (the actor
/// fails, and its supervisor reconnects it with backoff), rather than this one request
/// having gone wrong (a constraint, a row that does not decode).
pub fn is_broken(e: &sqlx::Error) -> bool {
    use sqlx::Error::*;
    match e {
        Io(_) | Tls(_) | Protocol(_) | PoolTimedOut | PoolClosed | WorkerCrashed
        | Configuration(_) => true,
        Database(d) => {
            let code = d.code();
            let code = code.as_deref().unwrap_or("");
            // PostgreSQL: connection exceptions (08), insufficient resources (53),
            // operator intervention such as a terminated backend (57), system errors
            // (58), serialization failures and deadlocks (40); SQLite: busy, locked.
            let postgres = code.len() == 5;
            (postgres && ["08", "53", "57", "58", "40"].contains(&&code[..2]))
                || (!postgres && matches!(code, "5" | "6" | "261" | "517"))
        }
        _ => false,
    }
}

/// Answers `port` with `result`. An error that breaks the database is returned (the
/// caller fails the actor, and the dropped port answers `503`); any other error is
/// this request's alone and goes back to its caller.
pub fn settle<T: Send + 'static>(
    port: ReplyPort<T>,
    result: Result<T, sqlx::Error>,
    what: &str,
) -> Result<(), sqlx::Error> {
    match result {
        Ok(v) => port.ok(v),
        Err(e) if is_broken(&e) => return Err(e),
        Err(e) => port.send(Err(ItemError::caused_by(what.to_string(), e))),
    }
    Ok(())
}
