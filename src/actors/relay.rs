//! The outbox relay of one database (the catalog or one shard). Each round it takes
//! the oldest unsent rows, publishes them all, waits until every one is acknowledged,
//! then marks exactly those rows sent. A failure anywhere fails the actor: its
//! supervisor restarts it with backoff and the rows, still unsent, go out again with
//! the same event ids. Written once for PostgreSQL and SQLite (sqlx `Any`).
//!
//! A round starts when the database's actor has committed new rows (a [`Nudge`]) or
//! after `events.relay_every_ms` (rows committed by another pod). On PostgreSQL every
//! pod runs a relay per database; a round holds a transaction-scoped advisory lock,
//! so one relay at a time publishes a database's outbox and its order is kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorProcessingErr;
use sqlx::{AnyPool, Row};

use crate::db::{self, any_pool};
use crate::domain::now_ms;
use crate::events::{EventBus, EventSink, OutboxEvent, ORDER_EVENTS, PRODUCT_EVENTS, USER_EVENTS};
use crate::supervisors::slot::{Slot, Wake};
use crate::supervisors::worker::{Backend, Batch, Connect, Tick};

pub type RelaySlot = Slot<Wake>;

/// The advisory lock key of the outbox relays ("fsoutbox" in ASCII, truncated).
const RELAY_LOCK: i64 = 0x6673_6f75_7462_6f78;

pub struct RelayConnect {
    /// The database's name in metrics (`catalog`, `shard-0`, …).
    pub database: String,
    /// `postgres://…` or `sqlite://path`.
    pub url: String,
    pub bus: Arc<EventBus>,
    pub batch: usize,
    pub retention: Duration,
    /// Take the advisory lock each round (PostgreSQL, where several pods relay).
    pub exclusive: bool,
    /// How long a woken relay waits before its round (`events.linger_ms`), so that
    /// the commits of that while go out together.
    pub linger: Duration,
}

pub struct Relay {
    database: String,
    exclusive: bool,
    pool: AnyPool,
    sink: Box<dyn EventSink>,
    batch: usize,
    retention: Duration,
    linger: Duration,
    last_cleanup: Instant,
    /// Events published by nudged rounds, not yet counted in `processed`.
    published: u64,
}

#[ractor::async_trait]
impl Connect for RelayConnect {
    type Backend = Relay;

    async fn connect(&self) -> Result<Relay, ActorProcessingErr> {
        Ok(Relay {
            database: self.database.clone(),
            exclusive: self.exclusive,
            pool: any_pool(&self.url, 1).await?,
            sink: self.bus.sink().await?,
            batch: self.batch,
            retention: self.retention,
            linger: self.linger,
            last_cleanup: Instant::now(),
            published: 0,
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
    /// One round; returns how many events it published.
    async fn relay(&mut self) -> Result<usize, ActorProcessingErr> {
        if !self.exclusive {
            let mut conn = self.pool.acquire().await?;
            return self.round(&mut conn).await;
        }
        let mut tx = self.pool.begin().await?;
        let mine: bool = db::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RELAY_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !mine {
            // Another pod's relay is publishing this outbox.
            return Ok(0);
        }
        let n = self.round(&mut tx).await?;
        tx.commit().await?;
        Ok(n)
    }

    async fn round(&self, conn: &mut sqlx::AnyConnection) -> Result<usize, ActorProcessingErr> {
        let rows = db::query(
            "SELECT seq, event_id, topic, key, payload, traceparent, created_at FROM outbox \
             WHERE sent_at IS NULL ORDER BY seq LIMIT $1",
        )
        .bind(self.batch as i64)
        .fetch_all(&mut *conn)
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
        db::query(&sql).bind(now_ms()).execute(&mut *conn).await?;
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
        db::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
            .bind(before)
            .execute(db::on(&self.pool))
            .await?;
        Ok(())
    }
}

#[ractor::async_trait]
impl Backend for Relay {
    type Msg = Wake;

    /// Nudges: new rows committed. Publishes until the outbox is drained, after a
    /// linger that lets the commits of that while (every consumer's, every batch's)
    /// share one round: one read, one produce request, one update.
    async fn process(&mut self, _wakes: Batch<Self>) -> Result<(), ActorProcessingErr> {
        tokio::time::sleep(self.linger).await;
        loop {
            let n = self.relay().await?;
            self.published += n as u64;
            if n < self.batch {
                return Ok(());
            }
        }
    }

    fn counted(&mut self, _nudges: u64) -> u64 {
        std::mem::take(&mut self.published)
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
