//! `GET /flash-sales/{productId}`: the countdown every buyer's app polls before and
//! during a sale. A herd of pollers must not become a herd of backend reads, so each
//! pod keeps a micro-cache: at most one read of a product's sale from its inventory
//! partition per second, whatever the number of pollers. While one request refreshes
//! an entry, the others answer from the entry they have (at most two seconds old); only
//! a product never seen waits for the first read. The status is worked out per request
//! from the cached window and `remaining`, against the server's clock, so a sale opens
//! on the second for every poller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{web, HttpResponse};
use dashmap::DashMap;
use serde_json::json;

use super::error::ApiError;
use super::AppState;
use crate::actors::inventory::{Counters, SaleCounters};
use crate::domain::{now_ms, rfc3339, ProductId};

/// How long an entry answers without a refresh.
const FRESH: Duration = Duration::from_secs(1);
/// Most products kept; past it the cache starts over (a poller of random ids must not
/// grow it without bound).
const MOST_PRODUCTS: usize = 10_000;

#[derive(Clone, Copy)]
struct Entry {
    read_at: Instant,
    /// `None`: the product has no sale.
    sale: Option<SaleCounters>,
}

/// The per-pod micro-cache of sales.
#[derive(Default)]
pub struct Countdown {
    entries: DashMap<ProductId, Entry>,
    /// One refresh at a time per product.
    refreshing: DashMap<ProductId, Arc<tokio::sync::Mutex<()>>>,
    /// Backend reads made by this cache (`flashsale_countdown_reads_total` counts
    /// those of every cache in the process).
    reads: AtomicU64,
}

impl Countdown {
    /// How many times this cache has read a sale from its partition.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    async fn sale(
        &self,
        state: &AppState,
        product: ProductId,
    ) -> Result<Option<SaleCounters>, ApiError> {
        let cached = self.entries.get(&product).map(|e| *e);
        if let Some(e) = &cached {
            if e.read_at.elapsed() < FRESH {
                return Ok(e.sale);
            }
        }
        let lock = self.refreshing.entry(product).or_default().clone();
        let _turn = match (lock.try_lock(), &cached) {
            (Ok(turn), _) => turn,
            // Another request is reading it: answer with what is here.
            (Err(_), Some(e)) => return Ok(e.sale),
            // Nothing here yet: wait for that read, then take it.
            (Err(_), None) => {
                let turn = lock.lock().await;
                if let Some(e) = self.entries.get(&product) {
                    if e.read_at.elapsed() < FRESH {
                        return Ok(e.sale);
                    }
                }
                turn
            }
        };
        let sale = state
            .directory
            .product_partition(product)
            .call(Counters { product })
            .await?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flashsale_countdown_reads_total").increment(1);
        if self.entries.len() >= MOST_PRODUCTS && !self.entries.contains_key(&product) {
            self.entries.clear();
            self.refreshing.retain(|p, _| *p == product);
        }
        self.entries.insert(
            product,
            Entry {
                read_at: Instant::now(),
                sale,
            },
        );
        Ok(sale)
    }
}

/// What a sale is at `now`.
fn status(sale: &SaleCounters, now: i64) -> &'static str {
    if sale.starts_at.is_some_and(|s| now < s) {
        "upcoming"
    } else if sale.ends_at.is_some_and(|e| now >= e) {
        "ended"
    } else if sale.remaining <= 0 {
        "sold_out"
    } else {
        "active"
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/flash-sales/{productId}").get(get_countdown));
}

async fn get_countdown(
    state: web::Data<AppState>,
    product: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let product = ProductId::parse(&product).map_err(|_| ApiError::NotFound)?;
    let sale = state
        .countdown
        .sale(&state, product)
        .await?
        .ok_or(ApiError::NotFound)?;
    let now = now_ms();
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(json!({
            "productId": product.get(),
            "status": status(&sale, now),
            "startsAt": sale.starts_at.map(rfc3339),
            "endsAt": sale.ends_at.map(rfc3339),
            "serverTime": rfc3339(now),
            "remaining": sale.remaining.max(0),
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sale(remaining: i64, starts: Option<i64>, ends: Option<i64>) -> SaleCounters {
        SaleCounters {
            stock: 10,
            remaining,
            pending: 0,
            per_user_limit: 1,
            starts_at: starts,
            ends_at: ends,
            payment_window: None,
        }
    }

    #[test]
    fn status_follows_the_window_then_the_stock() {
        assert_eq!(status(&sale(5, Some(100), Some(200)), 99), "upcoming");
        assert_eq!(status(&sale(5, Some(100), Some(200)), 100), "active");
        assert_eq!(status(&sale(0, Some(100), Some(200)), 150), "sold_out");
        assert_eq!(status(&sale(0, Some(100), Some(200)), 200), "ended");
        assert_eq!(status(&sale(5, None, None), 0), "active");
    }
}
