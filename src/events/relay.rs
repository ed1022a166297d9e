//! The outbox relay of one database (the catalog or one shard). Each round it takes
//! the oldest unsent rows, publishes them all, waits until every one is acknowledged,
//! then marks exactly those rows sent. A failure anywhere fails the actor: its
//! supervisor restarts it with backoff and the rows, still unsent, go out again with
//! the same event ids. Written once for PostgreSQL and SQLite (sqlx `Any`).

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use ractor::ActorProcessingErr;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

use super::{EventBus, EventSink, OutboxEvent, ORDER_EVENTS, PRODUCT_EVENTS, USER_EVENTS};
use crate::actors::worker::{Backend, Batch, Connect, Tick};
use crate::domain::now_ms;

pub struct RelayConnect {
    /// The database's name in metrics (`catalog`, `shard-0`, …).
    pub database: String,
    /// `postgres://…` or `sqlite://path`.
    pub url: String,
    pub bus: Arc<EventBus>,
    pub batch: usize,
    pub retention: Duration,
}

pub struct Relay {
    database: String,
    pool: AnyPool,
    sink: Box<dyn EventSink>,
    batch: usize,
    retention: Duration,
    last_cleanup: Instant,
}

pub async fn any_pool(url: &str, size: u32) -> Result<AnyPool, sqlx::Error> {
    static DRIVERS: Once = Once::new();
    DRIVERS.call_once(sqlx::any::install_default_drivers);
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(3))
        .connect(url)
        .await
}

#[ractor::async_trait]
impl Connect for RelayConnect {
    type Backend = Relay;

    async fn connect(&self) -> Result<Relay, ActorProcessingErr> {
        Ok(Relay {
            database: self.database.clone(),
            pool: any_pool(&self.url, 1).await?,
            sink: self.bus.sink().await?,
            batch: self.batch,
            retention: self.retention,
            last_cleanup: Instant::now(),
        })
    }
}

/// The outbox's topic names, mapped back to the static names events are built with.
fn topic(name: &str) -> Option<&'static str> {
    [ORDER_EVENTS, USER_EVENTS, PRODUCT_EVENTS]
        .into_iter()
        .find(|t| *t == name)
}

impl Relay {
    async fn relay(&mut self) -> Result<usize, ActorProcessingErr> {
        let rows = sqlx::query(
            "SELECT seq, event_id, topic, key, payload, traceparent, created_at FROM outbox \
             WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch as i64)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut events = Vec::with_capacity(rows.len());
        let mut oldest = i64::MAX;
        for row in &rows {
            seqs.push(row.try_get::<i64, _>("seq")?.to_string());
            oldest = oldest.min(row.try_get("created_at")?);
            let name: String = row.try_get("topic")?;
            let Some(topic) = topic(&name) else {
                return Err(format!("outbox row for unknown topic {name:?}").into());
            };
            events.push(OutboxEvent {
                event_id: row.try_get("event_id")?,
                topic,
                key: row.try_get("key")?,
                payload: row.try_get("payload")?,
                traceparent: row.try_get("traceparent")?,
            });
        }
        let started = Instant::now();
        self.sink.publish(&events).await?;
        metrics::histogram!("flashsale_relay_publish_seconds", "database" => self.database.clone())
            .record(started.elapsed().as_secs_f64());
        // Exactly the rows published: a row with a lower sequence number that commits
        // later is still unsent and goes out in a later round. The numbers are integers
        // read from the table, so listing them inline is safe.
        let sql = format!(
            "UPDATE outbox SET sent_at = $1 WHERE seq IN ({})",
            seqs.join(",")
        );
        sqlx::query(&sql).bind(now_ms()).execute(&self.pool).await?;
        let labels = [("database", self.database.clone())];
        metrics::counter!("flashsale_events_published_total", &labels)
            .increment(events.len() as u64);
        metrics::gauge!("flashsale_outbox_lag_seconds", &labels)
            .set((now_ms() - oldest).max(0) as f64 / 1000.0);
        Ok(events.len())
    }

    async fn cleanup(&mut self) -> Result<(), ActorProcessingErr> {
        if self.last_cleanup.elapsed() < Duration::from_secs(60) {
            return Ok(());
        }
        self.last_cleanup = Instant::now();
        let before = now_ms() - self.retention.as_millis() as i64;
        sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[ractor::async_trait]
impl Backend for Relay {
    type Op = ();
    type Reply = ();

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        for e in batch {
            e.answer(());
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        let n = self.relay().await?;
        if n == 0 {
            metrics::gauge!("flashsale_outbox_lag_seconds", "database" => self.database.clone())
                .set(0.0);
            self.cleanup().await?;
        }
        Ok(Tick {
            processed: n as u64,
            again: n == self.batch,
        })
    }
}
