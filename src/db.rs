//! Database pools, built in one place for every backend: the PostgreSQL pools of the
//! shards, the SQLite files of embedded mode, and sqlx `Any` pools for the SQL that
//! is written once for both dialects (the catalog, the shards' reads and single-row
//! writes, the outbox relays, the event consumers' stores). Timeouts and statement
//! settings live here.

use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::{StreamExt, TryStreamExt};
use sqlx::any::AnyPoolOptions;
use sqlx::database::HasStatementCache;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::AnyPool;
use sqlx::{Database, Describe, Either, Execute, Executor, FromRow, Pool};

use crate::supervisors::slot::{ItemError, ReplyPort};

/// How long a caller waits for a pooled connection before the backend counts as down.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// How an application reaches its PostgreSQL databases. Each pool carries its own: the
/// application writes them into the URLs it hands its actors ([`DbOptions::url`]), and
/// [`pg_pool`], [`any_pool`] and [`any_pool_lazy`] build pools that keep them, so two
/// applications in one process (tests) never see each other's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbOptions {
    /// Whether PostgreSQL is reached through a pooler in transaction mode (PgBouncer
    /// with `pool_mode = transaction`, `shards.transaction_pooling`). Such a pooler may
    /// give the server connection to another client whenever no transaction is open,
    /// which breaks two things sqlx does by default: named prepared statements cached
    /// per connection (the next transaction may run on a server that never saw them,
    /// or on one where another client left a statement of the same name), and
    /// preparing a statement in one round trip and executing it in the next (the
    /// unnamed statement may be another client's by then). So a pooled pool's
    /// connections keep no prepared statements, and every statement that is not
    /// already in a transaction runs in one of its own ([`on`]).
    pub pooled: bool,
    /// The longest a statement may run (`limits.statement_timeout_ms`): a hung or
    /// locked database fails the actor waiting on it (its supervisor restarts it)
    /// instead of holding it for ever. Not sent through a pooler, which does not pass
    /// startup options on: it sets the timeout itself (PgBouncer: `connect_query`).
    pub statement_timeout_ms: u64,
}

/// The URL parameter that keeps a connection's statements unnamed and uncached: the
/// mark of a pool behind a transaction pooler.
const NO_STATEMENT_CACHE: (&str, &str) = ("statement-cache-capacity", "0");

impl DbOptions {
    /// `url` with these options as sqlx reads them from a URL (a PostgreSQL URL; an
    /// SQLite one is returned as it is): no statement cache when pooled, the statement
    /// timeout as a startup option otherwise.
    pub fn url(&self, url: &str) -> String {
        if is_sqlite(url) {
            return url.to_string();
        }
        let joint = if url.contains('?') { '&' } else { '?' };
        match self.pooled {
            true => format!(
                "{url}{joint}{}={}",
                NO_STATEMENT_CACHE.0, NO_STATEMENT_CACHE.1
            ),
            // `-c statement_timeout=…`, as a URL writes it.
            false => format!(
                "{url}{joint}options=-c%20statement_timeout%3D{}",
                self.statement_timeout_ms
            ),
        }
    }
}

/// What a pool's connect options say of the way it reaches its database.
pub trait CarriesOptions {
    /// Whether the pool is behind a transaction pooler ([`DbOptions::pooled`]).
    fn pooled(&self) -> bool;
}

impl CarriesOptions for sqlx::any::AnyConnectOptions {
    fn pooled(&self) -> bool {
        let (key, value) = NO_STATEMENT_CACHE;
        // The last of a repeated parameter is the one sqlx keeps.
        let cache = self.database_url.query_pairs().filter(|(k, _)| k == key);
        cache.last().is_some_and(|(_, v)| v == value)
    }
}

impl CarriesOptions for SqliteConnectOptions {
    fn pooled(&self) -> bool {
        false
    }
}

/// Whether `pool` is behind a transaction pooler ([`DbOptions::pooled`]).
pub fn pooled<DB: Database>(pool: &Pool<DB>) -> bool
where
    <DB::Connection as sqlx::Connection>::Options: CarriesOptions,
{
    pool.connect_options().pooled()
}

/// `sqlx::query`, with an unnamed statement: a statement does not know which pool it
/// will run on, and a named one is safe only off a transaction pooler. Run through
/// [`on`], it is named (prepared once per connection) when its pool allows; in a
/// transaction, one the connection has already prepared is reused.
pub fn query<DB: Database + HasStatementCache>(
    sql: &str,
) -> Query<'_, DB, <DB as Database>::Arguments<'_>> {
    sqlx::query(sql).persistent(false)
}

/// `sqlx::query_as`, with an unnamed statement (see [`query`]).
pub fn query_as<'q, DB, O>(sql: &'q str) -> QueryAs<'q, DB, O, <DB as Database>::Arguments<'q>>
where
    DB: Database + HasStatementCache,
    O: for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_as(sql).persistent(false)
}

/// `sqlx::query_scalar`, with an unnamed statement (see [`query`]).
pub fn query_scalar<'q, DB, O>(
    sql: &'q str,
) -> QueryScalar<'q, DB, O, <DB as Database>::Arguments<'q>>
where
    DB: Database + HasStatementCache,
    (O,): for<'r> FromRow<'r, DB::Row>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// Where a statement outside a transaction runs: the pool itself, with the statement
/// named and kept by the connection; or, when the pool is [`pooled`], unnamed and in a
/// transaction of its own on one of the pool's connections (see
/// [`DbOptions::pooled`]). `query(..).fetch_all(db::on(&pool))` where one would write
/// `&pool`.
pub fn on<DB: Database>(pool: &Pool<DB>) -> On<'_, DB>
where
    <DB::Connection as sqlx::Connection>::Options: CarriesOptions,
{
    On {
        pool,
        pooled: pooled(pool),
    }
}

#[derive(Debug)]
pub struct On<'p, DB: Database> {
    pool: &'p Pool<DB>,
    pooled: bool,
}

/// A statement as [`On`] runs it: named or not as its pool allows.
struct Named<E> {
    statement: E,
    named: bool,
}

impl<'q, DB: Database, E: Execute<'q, DB>> Execute<'q, DB> for Named<E> {
    fn sql(&self) -> &'q str {
        self.statement.sql()
    }

    fn statement(&self) -> Option<&DB::Statement<'q>> {
        self.statement.statement()
    }

    fn take_arguments(
        &mut self,
    ) -> Result<Option<<DB as Database>::Arguments<'q>>, sqlx::error::BoxDynError> {
        self.statement.take_arguments()
    }

    fn persistent(&self) -> bool {
        self.named
    }
}

impl<'p, DB: Database> Executor<'p> for On<'p, DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
{
    type Database = DB;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<DB::QueryResult, DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let query = Named {
            statement: query,
            named: !self.pooled,
        };
        if !self.pooled {
            return self.pool.fetch_many(query);
        }
        let pool = self.pool.clone();
        let all = async move {
            let mut tx = pool.begin().await?;
            let items: Vec<_> = (&mut *tx).fetch_many(query).try_collect().await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(stream::iter(items.into_iter().map(Ok)))
        };
        stream::once(all).try_flatten().boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<DB::Row>, sqlx::Error>>
    where
        'p: 'e,
        E: 'q + Execute<'q, DB>,
    {
        let query = Named {
            statement: query,
            named: !self.pooled,
        };
        if !self.pooled {
            return self.pool.fetch_optional(query);
        }
        let pool = self.pool.clone();
        Box::pin(async move {
            let mut tx = pool.begin().await?;
            let row = (&mut *tx).fetch_optional(query).await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [DB::TypeInfo],
    ) -> BoxFuture<'e, Result<DB::Statement<'q>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(self, sql: &'q str) -> BoxFuture<'e, Result<Describe<DB>, sqlx::Error>>
    where
        'p: 'e,
    {
        self.pool.describe(sql)
    }
}

/// How long SQLite waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL pool named `flashsale` in `pg_stat_activity`, with the [`DbOptions`]
/// its URL carries.
pub async fn pg_pool(url: &str, size: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("flashsale");
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

/// The most of its file an SQLite connection keeps in memory, in KiB (SQLite's own
/// default is 2,000). Embedded mode opens about 30 connections, and at the default
/// their caches grow with the files to some 60 MB. The operating system caches the
/// files as well: a page missed here is read from its cache, not from the disk.
pub const SQLITE_CACHE_KIB: u32 = 512;

/// A pool over an SQLite file (created when missing): write-ahead log, every commit
/// synced (an accepted order survives `kill -9` and power loss), a page cache of
/// [`SQLITE_CACHE_KIB`] per connection.
pub async fn sqlite_pool(path: &Path, size: u32) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));
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

/// A pool for SQL written once for both dialects: `postgres://…` (with the
/// [`DbOptions`] its URL carries) or `sqlite://path` (an SQLite file must exist: the
/// migrations create it).
pub async fn any_pool(url: &str, size: u32) -> Result<AnyPool, sqlx::Error> {
    any_pool_options(url, size, ACQUIRE_TIMEOUT)
        .connect(url)
        .await
}

/// A pool like [`any_pool`] that connects on first use, with its own acquire timeout:
/// for a database that may be down without that being this actor's failure (a read
/// replica).
pub fn any_pool_lazy(url: &str, size: u32, acquire: Duration) -> Result<AnyPool, sqlx::Error> {
    any_pool_options(url, size, acquire).connect_lazy(url)
}

/// Each new connection gets what [`pg_pool`] and [`sqlite_pool`] give theirs: on
/// PostgreSQL what its URL carries ([`DbOptions::url`]: the statement timeout unless a
/// pooler sets it), on SQLite the page cache's size.
fn any_pool_options(url: &str, size: u32, acquire: Duration) -> AnyPoolOptions {
    install_drivers();
    let set = is_sqlite(url).then(|| format!("PRAGMA cache_size = -{SQLITE_CACHE_KIB}"));
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(acquire)
        .after_connect(move |conn, _| {
            let set = set.clone();
            Box::pin(async move {
                if let Some(set) = set {
                    sqlx::Executor::execute(&mut *conn, set.as_str()).await?;
                }
                Ok(())
            })
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_applications_in_one_process_keep_their_own_database_options() {
        // One behind a transaction pooler, one not, built one after the other as two
        // test applications would be: neither sees the other's options.
        let base = "postgres://flashsale@127.0.0.1:5432/flashsale";
        let through_pooler = DbOptions {
            pooled: true,
            statement_timeout_ms: 1_000,
        };
        let direct = DbOptions {
            pooled: false,
            statement_timeout_ms: 2_500,
        };
        let a = any_pool_lazy(&through_pooler.url(base), 1, ACQUIRE_TIMEOUT).unwrap();
        let b = any_pool_lazy(&direct.url(base), 1, ACQUIRE_TIMEOUT).unwrap();
        let c = any_pool_lazy(
            &direct.url(&format!("{base}?sslmode=disable")),
            1,
            ACQUIRE_TIMEOUT,
        )
        .unwrap();
        assert!(
            pooled(&a),
            "statements through the pooler are unnamed, each in a transaction"
        );
        assert!(
            !pooled(&b) && !pooled(&c),
            "the direct pools keep theirs named"
        );
        assert!(on(&a).pooled && !on(&b).pooled);

        // What each pool's connections are started with: the statement timeout goes
        // to PostgreSQL directly, never through the pooler.
        let startup = |url: &str| {
            let options = PgConnectOptions::from_str(url).unwrap();
            options.get_options().map(str::to_string)
        };
        assert_eq!(startup(&through_pooler.url(base)), None);
        assert_eq!(
            startup(&direct.url(base)).as_deref(),
            Some("-c statement_timeout=2500")
        );
        assert_eq!(
            startup(&direct.url(&format!("{base}?sslmode=disable"))).as_deref(),
            Some("-c statement_timeout=2500")
        );
        let sqlite = "sqlite:///tmp/x.db";
        assert_eq!(through_pooler.url(sqlite), sqlite, "SQLite has no pooler");
    }

    #[tokio::test]
    async fn every_sqlite_connection_keeps_a_small_page_cache() {
        let path = std::env::temp_dir().join(format!("fs_db_{}.db", uuid::Uuid::new_v4()));
        let native = sqlite_pool(&path, 1).await.unwrap();
        let any = any_pool(&format!("sqlite://{}", path.display()), 1)
            .await
            .unwrap();
        let native_kib: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&native)
            .await
            .unwrap();
        let any_kib: i64 = sqlx::query_scalar("PRAGMA cache_size")
            .fetch_one(&any)
            .await
            .unwrap();
        native.close().await;
        any.close().await;
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        // Negative: a size in KiB rather than in pages.
        assert_eq!((native_kib, any_kib), (-512, -512));
    }
}
