//! The inventory consumer: after the events of a product, it compares the product's
//! partition with its shards, and keeps the last comparison for the admin report.

use super::*;

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
