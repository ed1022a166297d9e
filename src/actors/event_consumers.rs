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

/// Whether an order event changes what was sold: a completion adds, a customer's
/// cancellation takes back (an order released before it was persisted was never sold).
fn sold_delta(e: &Delivered, d: &OrderData) -> Option<(i64, i64)> {
    match e.envelope.kind.as_str() {
        "OrderCompleted" => Some((d.quantity, 0)),
        "OrderCancelled" if d.reason.as_deref() == Some("customer") => Some((0, d.quantity)),
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

/// State kept in the catalog database by a consumer.
pub struct ReportStore {
    url: String,
    pool: tokio::sync::OnceCell<AnyPool>,
    pruned: Mutex<Option<Instant>>,
}

impl ReportStore {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool: tokio::sync::OnceCell::new(),
            pruned: Mutex::new(None),
        }
    }

    async fn pool(&self) -> Result<&AnyPool, sqlx::Error> {
        self.pool.get_or_try_init(|| any_pool(&self.url, 2)).await
    }

    /// Forgets, at most every ten minutes, event ids older than the dedup window.
    async fn prune(&self, consumer: &str) -> Result<(), sqlx::Error> {
        {
            let mut last = self.pruned.lock().expect("not poisoned");
            if last.is_some_and(|t| t.elapsed() < Duration::from_secs(600)) {
                return Ok(());
            }
            *last = Some(Instant::now());
        }
        db::query("DELETE FROM processed_events WHERE consumer = $1 AND processed_at < $2")
            .bind(consumer)
            .bind(now_ms() - DEDUP_WINDOW_MS)
            .execute(db::on(self.pool().await?))
            .await?;
        Ok(())
    }
}

/// A completion, or a customer's cancellation, seen for the first time.
struct Sale {
    data: OrderData,
    occurred_ms: Option<i64>,
    sold: i64,
    cancelled: i64,
}

/// Counters to add in `table`: each row's key values and counts.
struct Counts {
    table: &'static str,
    keys: &'static [&'static str],
    counts: &'static [&'static str],
    rows: Vec<(Vec<Key>, Vec<i64>)>,
}

impl ReportStore {
    /// Applies a batch once, in one transaction: records the events' ids and adds the
    /// counters `fold` makes of the sales among the events not seen before. An empty
    /// batch (an idle round) prunes old ids instead. Returns the number of events that
    /// were not duplicates.
    async fn apply(
        &self,
        consumer: &str,
        events: &[Delivered],
        fold: impl FnOnce(Vec<Sale>) -> Vec<Counts> + Send,
    ) -> Result<usize, ActorProcessingErr> {
        if events.is_empty() {
            self.prune(consumer).await?;
            return Ok(0);
        }
        // Only the events that change a counter are recorded: the others (an order
        // created, a release before persistence) need no memory to be ignored again.
        let sales: Vec<(&str, Sale)> = orders(events, &["OrderCompleted", "OrderCancelled"])
            .filter_map(|(e, data)| {
                let (sold, cancelled) = sold_delta(e, &data)?;
                let sale = Sale {
                    occurred_ms: e.envelope.occurred_ms(),
                    data,
                    sold,
                    cancelled,
                };
                Some((e.envelope.id.as_str(), sale))
            })
            .collect();
        if sales.is_empty() {
            return Ok(events.len());
        }
        let ids: Vec<&str> = sales.iter().map(|(id, _)| *id).collect();
        let mut tx = self.pool().await?.begin().await?;
        let fresh = first_seen(&mut tx, consumer, &ids).await?;
        let duplicates = sales.len() - fresh.len();
        let sales = sales
            .into_iter()
            .filter(|(id, _)| fresh.contains(*id))
            .map(|(_, sale)| sale)
            .collect();
        for c in fold(sales) {
            add_counts(&mut tx, c.table, c.keys, c.counts, c.rows).await?;
        }
        tx.commit().await?;
        Ok(events.len() - duplicates)
    }
}

/// Analytics: units sold and cancelled per product per minute.
pub struct Analytics {
    pub store: ReportStore,
}

#[ractor::async_trait]
impl EventHandler for Analytics {
    fn name(&self) -> &'static str {
        "analytics"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[ORDER_EVENTS]
    }

    async fn handle(&self, events: &[Delivered]) -> Result<usize, ActorProcessingErr> {
        self.store
            .apply(self.name(), events, |sales| {
                let mut sums: BTreeMap<(i64, i64), [i64; 2]> = BTreeMap::new();
                for s in sales {
                    let Some(at) = s.occurred_ms else { continue };
                    let minute = at - at.rem_euclid(60_000);
                    let sum = sums.entry((s.data.product_id, minute)).or_default();
                    sum[0] += s.sold;
                    sum[1] += s.cancelled;
                }
                let rows = sums
                    .into_iter()
                    .map(|((p, m), counts)| (vec![Key::Int(p), Key::Int(m)], counts.to_vec()))
                    .collect();
                vec![Counts {
                    table: "sales_per_minute",
                    keys: &["product_id", "minute"],
                    counts: &["sold", "cancelled"],
                    rows,
                }]
            })
            .await
    }
}

/// Reporting: orders, units and cancellations per user and per product.
pub struct Reporting {
    pub store: ReportStore,
}

#[ractor::async_trait]
impl EventHandler for Reporting {
    fn name(&self) -> &'static str {
        "reporting"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[ORDER_EVENTS]
    }

    async fn handle(&self, events: &[Delivered]) -> Result<usize, ActorProcessingErr> {
        self.store
            .apply(self.name(), events, |sales| {
                let mut users: HashMap<String, [i64; 3]> = HashMap::new();
                let mut products: HashMap<i64, [i64; 3]> = HashMap::new();
                for s in sales {
                    let delta = [i64::from(s.sold > 0), s.sold, i64::from(s.cancelled > 0)];
                    let user = users.entry(s.data.user_id).or_default();
                    let product = products.entry(s.data.product_id).or_default();
                    for i in 0..3 {
                        user[i] += delta[i];
                        product[i] += delta[i];
                    }
                }
                const COUNTS: &[&str] = &["orders", "units", "cancelled"];
                vec![
                    Counts {
                        table: "report_users",
                        keys: &["user_id"],
                        counts: COUNTS,
                        rows: users
                            .into_iter()
                            .map(|(u, c)| (vec![Key::Text(u)], c.to_vec()))
                            .collect(),
                    },
                    Counts {
                        table: "report_products",
                        keys: &["product_id"],
                        counts: COUNTS,
                        rows: products
                            .into_iter()
                            .map(|(p, c)| (vec![Key::Int(p)], c.to_vec()))
                            .collect(),
                    },
                ]
            })
            .await
    }
}

/// Inventory: compares, for every product an order event names, the units its
/// inventory partition has sold with the units its shards hold as completed. A
/// product is compared at most once per `every` (the comparison reads the partition
/// and every shard); products named meanwhile wait in `dirty` and are compared on a
/// later round, idle rounds included, so the last word is always a fresh comparison.
pub struct InventoryCheck {
    directory: Arc<Directory>,
    every: Duration,
    dirty: Mutex<(BTreeSet<i64>, Option<Instant>)>,
}

impl InventoryCheck {
    pub fn new(directory: Arc<Directory>, every: Duration) -> Self {
        Self {
            directory,
            every,
            dirty: Mutex::new((BTreeSet::new(), None)),
        }
    }

    /// The products due for a comparison now, if it is time for one.
    fn due(&self, named: impl Iterator<Item = i64>) -> BTreeSet<i64> {
        let mut guard = self.dirty.lock().expect("not poisoned");
        let (dirty, last) = &mut *guard;
        dirty.extend(named);
        if dirty.is_empty() || last.is_some_and(|t| t.elapsed() < self.every) {
            return BTreeSet::new();
        }
        *last = Some(Instant::now());
        std::mem::take(dirty)
    }

    async fn compare(&self, product: i64) -> Result<(), ActorProcessingErr> {
        let dir = &self.directory;
        let id = ProductId::from_db(product);
        let Some(counters) = dir
            .product_partition(id)
            .call(Counters { product: id })
            .await?
        else {
            return Ok(());
        };
        let persisted = dir.product_totals(id).await?.completed;
        let sold = counters.stock - counters.remaining;
        let drift = sold - counters.pending - persisted;
        metrics::gauge!("flashsale_inventory_drift_units", "product" => product.to_string())
            .set(drift as f64);
        if drift != 0 {
            tracing::debug!(product, drift, "inventory and shards disagree (for now)");
        }
        dir.drift.insert(
            product,
            InventoryDrift {
                product_id: product,
                stock: counters.stock,
                remaining: counters.remaining,
                pending: counters.pending,
                persisted,
                drift,
                checked_at: rfc3339(now_ms()),
            },
        );
        Ok(())
    }
}

#[ractor::async_trait]
impl EventHandler for InventoryCheck {
    fn name(&self) -> &'static str {
        "inventory"
    }

    fn topics(&self) -> &'static [&'static str] {
        &[ORDER_EVENTS]
    }

    async fn handle(&self, events: &[Delivered]) -> Result<usize, ActorProcessingErr> {
        let named = orders(
            events,
            &["OrderCreated", "OrderCompleted", "OrderCancelled"],
        )
        .map(|(_, d)| d.product_id);
        let due = self.due(named);
        for (i, product) in due.iter().enumerate() {
            if let Err(e) = self.compare(*product).await {
                // Compared on the next round instead.
                let mut guard = self.dirty.lock().expect("not poisoned");
                guard.0.extend(due.iter().skip(i));
                return Err(e);
            }
        }
        Ok(events.len())
    }
}
