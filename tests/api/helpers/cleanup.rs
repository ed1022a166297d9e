//! Removing what a test app made: its running server and actors, its databases, the
//! queues and Redis keys named after it, and its data directory, at the end of a test
//! and when a failing test unwinds.

use std::fmt::Display;
use std::path::PathBuf;
use std::time::Duration;

use flashsale::app::StopHandle;
use flashsale::config::Settings;

use super::wait::POLL;
use super::{Mode, REDIS_DBS};

/// What a test app leaves behind: its running server and actors, its databases, the
/// queues and Redis keys named after it, and its data directory. (Its topics are
/// deleted by scripts/test.sh after the test process: see there.)
pub(super) struct Leftovers {
    pub(super) settings: Settings,
    pub(super) shard_urls: Vec<String>,
    pub(super) running: Option<(StopHandle, tokio::task::JoinHandle<()>)>,
    /// Another app's data (a peer's): only the running app is stopped.
    pub(super) shared: bool,
}

impl Leftovers {
    /// Stops the app (when `stop_app` and it runs) and removes everything it made.
    /// Reports what it could not remove instead of failing the test for it.
    pub(super) async fn remove(self, stop_app: bool) {
        let warn = |what: &str, e: &dyn Display| eprintln!("test cleanup: {what}: {e}");
        if let (Some((stop, served)), true) = (self.running, stop_app) {
            let within = Duration::from_secs(20);
            if tokio::time::timeout(within, stop.stop()).await.is_err() {
                warn("stopping the app", &"timed out");
            }
            // Served returns once the actor tree is down and has let go of its files.
            if tokio::time::timeout(within, served).await.is_err() {
                warn("waiting for the app to stop", &"timed out");
            }
        }
        let s = &self.settings;
        if self.shared {
            return;
        }
        if s.mode == Mode::Cluster {
            if let Err(e) = delete_queues(s).await {
                warn("deleting the queues", &e);
            }
            if let Err(e) = delete_redis_keys(&s.inventory.key_prefix).await {
                warn("deleting the Redis keys", &e);
            }
            // Topics stay: scripts/test.sh deletes them once this process is gone.
            let mut dbs: Vec<&str> = vec![database_of(s.catalog.url.expose())];
            dbs.extend(self.shard_urls.iter().map(|u| database_of(u)));
            if let Err(e) = drop_databases(&dbs).await {
                warn("dropping the databases", &e);
            }
        }
        remove_dir(&s.embedded.data_dir).await;
    }
}

/// Removes the leftovers when dropped: at the end of a test and when a failing test
/// unwinds. `Drop` cannot await, so the removal runs on a runtime of its own on another
/// thread and is waited for, while the test's runtime goes on serving the app until
/// it has stopped. (A single-threaded test runtime cannot serve it meanwhile: then the
/// app is left to the runtime's end and only its data is removed.)
pub(super) struct Cleanup(pub(super) Option<Leftovers>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Some(leftovers) = self.0.take() else {
            return;
        };
        let stop_app = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let removal = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a cleanup runtime")
                .block_on(leftovers.remove(stop_app));
        });
        if removal.join().is_err() {
            eprintln!("test cleanup: the removal panicked");
        }
    }
}

fn database_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or_default()
}

async fn drop_databases(names: &[&str]) -> Result<(), sqlx::Error> {
    let pool = sqlx::PgPool::connect("postgres://postgres@127.0.0.1:5432/postgres").await?;
    for name in names {
        // FORCE: connections an unstopped app still holds do not keep it.
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            name.replace('"', "")
        ))
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

async fn delete_queues(s: &Settings) -> Result<(), lapin::Error> {
    let conn =
        lapin::Connection::connect(s.queue.url.expose(), lapin::ConnectionProperties::default())
            .await?;
    let ch = conn.create_channel().await?;
    for q in [&s.queue.orders_queue, &s.queue.notifications_queue] {
        ch.queue_delete(q.as_str().into(), Default::default())
            .await?;
    }
    conn.close(200, "bye".into()).await
}

pub async fn delete_redis_keys(prefix: &str) -> redis::RedisResult<()> {
    for url in REDIS_DBS {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async::<()>(&mut conn)
                    .await?;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// Removes a directory whose files the app may be closing at that moment.
async fn remove_dir(dir: &PathBuf) {
    let mut tries = 0;
    while dir.exists() {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return,
            Err(_) if tries < 20 => tries += 1,
            Err(e) => {
                eprintln!("test cleanup: removing {}: {e}", dir.display());
                return;
            }
        }
        tokio::time::sleep(POLL).await;
    }
}
