//! The event consumers: one actor each, in its own consumer group. A round polls a
//! batch, applies it, and only then commits the group's offsets; a restart resumes
//! from the last commit. The consumers that keep state (analytics, reporting) apply an
//! event once: its id is recorded in the same transaction as its effect, so a
//! redelivered event changes nothing. The inventory consumer keeps no state: it
//! recomputes the comparison for the products an event names.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::ActorProcessingErr;
use sqlx::{AnyPool, Row};

use super::directory::{Directory, InventoryDrift};
use super::inventory::Counters;
use crate::db::{self, any_pool};
use crate::domain::{now_ms, rfc3339, ProductId};
use crate::events::{Delivered, EventBus, EventSource, OrderData, ORDER_EVENTS};
use crate::supervisors::slot::Wake;
use crate::supervisors::worker::{Backend, Batch, Connect, Tick};

mod inventory_check;
mod reports;

pub use inventory_check::InventoryCheck;
pub use reports::{Analytics, ReportStore, Reporting};

/// What one consumer does with a batch of events.
#[ractor::async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// The consumer's name: its group id suffix and its metrics label.
    fn name(&self) -> &'static str;
    fn topics(&self) -> &'static [&'static str];
    /// Applies the batch; returns how many events took effect (duplicates do not).
    async fn handle(&self, events: &[Delivered]) -> Result<usize, ActorProcessingErr>;
}

pub struct ConsumerConnect {
    pub bus: Arc<EventBus>,
    pub handler: Arc<dyn EventHandler>,
    pub batch: usize,
    /// How long a round that found a few events waits for more (`events.linger_ms`).
    pub linger: Duration,
}

pub struct EventConsumer {
    source: Box<dyn EventSource>,
    handler: Arc<dyn EventHandler>,
    batch: usize,
    linger: Duration,
}

#[ractor::async_trait]
impl Connect for ConsumerConnect {
    type Backend = EventConsumer;

    async fn connect(&self) -> Result<EventConsumer, ActorProcessingErr> {
        let h = &self.handler;
        Ok(EventConsumer {
            source: self.bus.source(h.name(), h.topics()).await?,
            handler: self.handler.clone(),
            batch: self.batch,
            linger: self.linger,
        })
    }
}

#[ractor::async_trait]
impl Backend for EventConsumer {
    type Msg = Wake;

    async fn process(&mut self, _wakes: Batch<Self>) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        let name = self.handler.name();
        let mut events = self
            .source
            .poll(self.batch, Duration::from_millis(200))
            .await?;
        if !events.is_empty() && events.len() < self.batch && !self.linger.is_zero() {
            // A few events: wait a little for more, so that one transaction and one
            // offset commit serve many.
            tokio::time::sleep(self.linger).await;
            let more = self
                .source
                .poll(self.batch - events.len(), Duration::ZERO)
                .await?;
            events.extend(more);
        }
        if events.is_empty() {
            metrics::gauge!("flashsale_event_consumer_lag_seconds", "consumer" => name).set(0.0);
            // Idle rounds let a handler finish deferred work.
            self.handler.handle(&[]).await?;
            self.source.commit().await?;
            return Ok(Tick {
                processed: 0,
                again: true,
            });
        }
        let started = Instant::now();
        let applied = self.handler.handle(&events).await?;
        self.source.commit().await?;
        metrics::histogram!("flashsale_event_batch_seconds", "consumer" => name)
            .record(started.elapsed().as_secs_f64());
        // End-to-end lag: from the change's commit (the event's occurredAt) to now.
        // An OrderCreated event's occurredAt is when the order was accepted, before it
        // crossed the order queue, so it does not measure this path.
        let now = now_ms();
        let lag = metrics::histogram!("flashsale_event_lag_seconds", "consumer" => name);
        let mut newest = i64::MIN;
        for e in events.iter().filter(|e| e.envelope.kind != "OrderCreated") {
            if let Some(at) = e.envelope.occurred_ms() {
                lag.record((now - at).max(0) as f64 / 1000.0);
                newest = newest.max(at);
            }
        }
        if newest > i64::MIN {
            metrics::gauge!("flashsale_event_consumer_lag_seconds", "consumer" => name)
                .set((now - newest).max(0) as f64 / 1000.0);
        }
        metrics::counter!("flashsale_events_consumed_total", "consumer" => name)
            .increment(events.len() as u64);
        metrics::counter!("flashsale_events_duplicates_total", "consumer" => name)
            .increment((events.len() - applied) as u64);
        Ok(Tick {
            processed: events.len() as u64,
            again: true,
        })
    }
}

/// The order events of a batch that are `kind`, with their ids.
fn orders<'a>(
    events: &'a [Delivered],
    kinds: &'a [&str],
) -> impl Iterator<Item = (&'a Delivered, OrderData)> + 'a {
    events
        .iter()
        .filter(move |e| e.topic == ORDER_EVENTS && kinds.contains(&e.envelope.kind.as_str()))
        .filter_map(|e| match serde_json::from_value(e.envelope.data.clone()) {
            Ok(d) => Some((e, d)),
            Err(err) => {
                tracing::error!(event = %e.envelope.id, error = %err, "skipping an order event without order data");
                None
            }
        })
}

/// Whether an order event changes what was sold: a completion (of a paid order too)
/// adds, a customer's cancellation takes back (an order released before it was
/// persisted was never sold), an expiry counts a hold that was never paid. Answers
/// (sold, cancelled, expired) units.
fn sold_delta(e: &Delivered, d: &OrderData) -> Option<(i64, i64, i64)> {
    match e.envelope.kind.as_str() {
        "OrderCompleted" => Some((d.quantity, 0, 0)),
        "OrderCancelled" if d.reason.as_deref() == Some("customer") => Some((0, d.quantity, 0)),
        "OrderExpired" => Some((0, 0, d.quantity)),
        _ => None,
    }
}

/// `($1, $2, …), (…)` for `rows` rows of `cols` placeholders, numbered from `first`.
fn values(rows: usize, cols: usize, first: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (0..cols)
                .map(|c| format!("${}", first + r * cols + c))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records the events' ids for `consumer`; returns the ids not seen before.
async fn first_seen(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    consumer: &str,
    ids: &[&str],
) -> Result<BTreeSet<String>, sqlx::Error> {
    let mut fresh = BTreeSet::new();
    let now = now_ms();
    for chunk in ids.chunks(300) {
        let sql = format!(
            "INSERT INTO processed_events (consumer, event_id, processed_at) VALUES {} ON CONFLICT DO NOTHING RETURNING event_id",
            values(chunk.len(), 3, 1)
        );
        let mut q = db::query(&sql);
        for id in chunk {
            q = q.bind(consumer).bind(*id).bind(now);
        }
        for row in q.fetch_all(&mut **tx).await? {
            fresh.insert(row.try_get::<String, _>(0)?);
        }
    }
    Ok(fresh)
}

/// A key column's value.
enum Key {
    Int(i64),
    Text(String),
}

/// Adds each row's counts to the counters of its key in `table` (one upsert per 200
/// rows; valid in PostgreSQL and SQLite).
async fn add_counts(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    table: &str,
    key_cols: &[&str],
    count_cols: &[&str],
    rows: Vec<(Vec<Key>, Vec<i64>)>,
) -> Result<(), sqlx::Error> {
    let all: Vec<&str> = key_cols.iter().chain(count_cols).copied().collect();
    let set: Vec<String> = count_cols
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect();
    for chunk in rows.chunks(200) {
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES {} ON CONFLICT ({}) DO UPDATE SET {}",
            all.join(", "),
            values(chunk.len(), all.len(), 1),
            key_cols.join(", "),
            set.join(", ")
        );
        let mut q = db::query(&sql);
        for (keys, counts) in chunk {
            for k in keys {
                q = match k {
                    Key::Int(n) => q.bind(*n),
                    Key::Text(t) => q.bind(t.clone()),
                };
            }
            for n in counts {
                q = q.bind(*n);
            }
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// How long a consumer remembers the ids of the events it applied.
const DEDUP_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
