//! The consumers that keep what they count: analytics (units per product per minute)
//! and reporting (orders per product and per user), in the catalog's database.

use super::*;

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

/// A completion, a customer's cancellation or an expiry, seen for the first time.
struct Sale {
    data: OrderData,
    occurred_ms: Option<i64>,
    sold: i64,
    cancelled: i64,
    expired: i64,
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
        let kinds = ["OrderCompleted", "OrderCancelled", "OrderExpired"];
        let sales: Vec<(&str, Sale)> = orders(events, &kinds)
            .filter_map(|(e, data)| {
                let (sold, cancelled, expired) = sold_delta(e, &data)?;
                let sale = Sale {
                    occurred_ms: e.envelope.occurred_ms(),
                    data,
                    sold,
                    cancelled,
                    expired,
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
                for s in sales.into_iter().filter(|s| s.sold + s.cancelled > 0) {
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

/// Reporting: orders, units, cancellations and expiries per user and per product.
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
                let mut users: HashMap<String, [i64; 4]> = HashMap::new();
                let mut products: HashMap<i64, [i64; 4]> = HashMap::new();
                for s in sales {
                    let delta = [
                        i64::from(s.sold > 0),
                        s.sold,
                        i64::from(s.cancelled > 0),
                        i64::from(s.expired > 0),
                    ];
                    let user = users.entry(s.data.user_id).or_default();
                    let product = products.entry(s.data.product_id).or_default();
                    for i in 0..4 {
                        user[i] += delta[i];
                        product[i] += delta[i];
                    }
                }
                const COUNTS: &[&str] = &["orders", "units", "cancelled", "expired"];
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
