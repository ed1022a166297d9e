//! The admin API on the internal listener: products, flash sales, the live actor tree
//! and restarts, dead letters, the admin page and Prometheus metrics.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Admin;
use super::{admin_document, healthz, json_body, readyz, resource, AppState};
use crate::actors::inventory::{
    product_cache_key, CacheDel, Counters, ListSales, LoadSale, SaleCounters, SaleRefused,
};
use crate::actors::queue::QueueDepth;
use crate::domain::{
    now_ms, parse_rfc3339, rfc3339, PaymentWindow, ProductId, ProductName, SaleDefinition, UserId,
};
use crate::orders::OrderError;
use crate::shards::catalog::{
    CreateProduct, GetProduct, ListDeadLetters, OrdersReport, PutSale, SaleDefinitions,
    SalesReport, UpdateProduct,
};
use crate::shards::UnitTotals;
use crate::supervisors::stats::Kind;
use crate::supervisors::TreeNode;

const PAGE: &str = include_str!("admin.html");

/// The most units a sale or a buyer's limit may have: far beyond any sale, and exact in
/// the doubles the inventory's Lua scripts compute with (up to 2^53).
const MAX_UNITS: i64 = 1_000_000_000_000;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin/products").post(create_product))
        .service(resource("/admin/products/{id}").patch(update_product))
        .service(resource("/admin/reports/sales").get(sales_report))
        .service(resource("/admin/reports/orders").get(orders_report))
        .service(resource("/admin/reports/inventory").get(inventory_report))
        .service(resource("/admin/dead-letters").get(dead_letters))
        .service(resource("/admin/flash-sales").get(list_sales))
        .service(
            resource("/admin/flash-sales/{productId}")
                .put(put_sale)
                .get(get_sale),
        )
        .service(resource("/admin/actors").get(actors))
        .service(resource("/healthz").get(healthz))
        .service(resource("/readyz").get(readyz))
        .service(resource("/admin/actors/{name}/restart").post(restart))
        .service(resource("/admin").get(page))
        .service(resource("/admin/openapi.json").get(admin_document))
        .service(resource("/metrics").get(metrics));
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: i64,
}

async fn create_product(
    state: web::Data<AppState>,
    _: Admin,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: NewProduct = json_body(payload, &state.settings.http).await?;
    let name = ProductName::parse(&body.name).map_err(|e| ApiError::InvalidRequest(e.0))?;
    if body.price_cents < 0 {
        return Err(ApiError::InvalidRequest(
            "priceCents must not be negative".into(),
        ));
    }
    let p = state
        .directory
        .catalog
        .call(CreateProduct {
            name,
            price_cents: body.price_cents,
        })
        .await?;
    let id = ProductId::from_db(p.id);
    state.directory.product_partition(id).tell(CacheDel {
        key: product_cache_key(id),
    });
    Ok(HttpResponse::Created().json(p))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProductChange {
    name: Option<String>,
    price_cents: Option<i64>,
}

/// Renames and/or reprices a product. A new price emits `PriceChanged`; the cached
/// copy is dropped before answering, so the next read sees the change.
async fn update_product(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let id = ProductId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let body: ProductChange = json_body(payload, &state.settings.http).await?;
    let name = body
        .name
        .as_deref()
        .map(ProductName::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.0))?;
    if body.price_cents.is_some_and(|p| p < 0) {
        return Err(ApiError::InvalidRequest(
            "priceCents must not be negative".into(),
        ));
    }
    if name.is_none() && body.price_cents.is_none() {
        return Err(ApiError::InvalidRequest(
            "give name and/or priceCents".into(),
        ));
    }
    let change = UpdateProduct {
        id,
        name,
        price_cents: body.price_cents,
    };
    let p = state
        .directory
        .catalog
        .call(change)
        .await?
        .ok_or(ApiError::NotFound)?;
    let key = product_cache_key(id);
    let partition = state.directory.product_partition(id);
    partition.call(CacheDel { key }).await?;
    // Orders are accepted at the price their sale's partition holds: it has the new
    // one before this answers (a partition that is rebuilding reads it from the
    // catalog).
    if body.price_cents.is_some() {
        let sales = state.directory.catalog.call(SaleDefinitions).await?;
        if let Some((_, sale)) = sales.into_iter().find(|(product, _)| *product == id) {
            match partition.call(LoadSale { product: id, sale }).await? {
                Ok(_) | Err(SaleRefused::Rebuilding) => {}
                Err(SaleRefused::BelowSold { sold }) => {
                    tracing::warn!(product = %id, sold, "the sale's stock is below what it sold; its price is not reloaded")
                }
            }
        }
    }
    Ok(HttpResponse::Ok().json(p))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportQuery {
    product_id: Option<String>,
    user_id: Option<String>,
}

/// Units sold and cancelled per product per minute, as the analytics consumer counted
/// them from the order events.
async fn sales_report(
    state: web::Data<AppState>,
    _: Admin,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let product = query
        .product_id
        .as_deref()
        .map(ProductId::parse)
        .transpose()
        .map_err(|_| ApiError::InvalidRequest("productId must be a positive integer".into()))?;
    let report = state
        .directory
        .catalog
        .call(SalesReport { product })
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Deserialize)]
struct DeadLetterQuery {
    limit: Option<String>,
}

/// Queue messages no consumer could process, newest first, with the reason.
async fn dead_letters(
    state: web::Data<AppState>,
    _: Admin,
    query: web::Query<DeadLetterQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = match query.limit.as_deref() {
        None => 100,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::InvalidRequest("limit must be an integer from 1 to 1000".into())
            })?,
    };
    let letters = state
        .directory
        .catalog
        .call(ListDeadLetters { limit })
        .await?;
    Ok(HttpResponse::Ok().json(letters))
}

/// Orders per product and per user, as the reporting consumer counted them.
async fn orders_report(
    state: web::Data<AppState>,
    _: Admin,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    let user = query
        .user_id
        .as_deref()
        .map(UserId::parse)
        .transpose()
        .map_err(|_| ApiError::InvalidRequest("userId must be a UUID".into()))?;
    let report = state.directory.catalog.call(OrdersReport { user }).await?;
    Ok(HttpResponse::Ok().json(report))
}

/// The inventory consumer's last comparison of each product's inventory partition
/// with its shards.
async fn inventory_report(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let mut products: Vec<_> = state
        .directory
        .drift
        .iter()
        .map(|e| e.value().clone())
        .collect();
    products.sort_by_key(|d| d.product_id);
    Ok(HttpResponse::Ok().json(json!({ "products": products })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SaleBody {
    stock: i64,
    per_user_limit: i64,
    starts_at: Option<Value>,
    ends_at: Option<Value>,
    payment_window_secs: Option<i64>,
}

/// The last instant RFC 3339 can write, 9999-12-31T23:59:59.999Z, in epoch milliseconds.
const LAST_INSTANT_MS: i64 = 253_402_300_799_999;

/// A time given as RFC 3339 text or as epoch milliseconds (up to the year 9999, which
/// the answer can still show).
fn instant(v: Option<Value>, what: &str) -> Result<Option<i64>, ApiError> {
    let invalid = || {
        ApiError::InvalidRequest(format!(
            "{what} must be an RFC 3339 time or epoch milliseconds up to the year 9999"
        ))
    };
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => parse_rfc3339(&s).map(Some).map_err(|_| invalid()),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(ms @ 1..=LAST_INSTANT_MS) => Ok(Some(ms)),
            _ => Err(invalid()),
        },
        Some(_) => Err(invalid()),
    }
}

fn sale_json(product: ProductId, c: &SaleCounters, totals: UnitTotals) -> Value {
    let now = now_ms();
    let active = c.active_at(now);
    json!({
        "productId": product.get(),
        "stock": c.stock,
        "remaining": c.remaining,
        // Units held by orders: on their way to a shard, awaiting payment, or paid
        // (completed). The shards are read before the partition, so an order moving
        // between the two is counted once at most.
        "sold": c.pending + totals.awaiting_payment + totals.completed,
        "pending": c.pending,
        "awaitingPayment": totals.awaiting_payment,
        "completed": totals.completed,
        "cancelled": totals.cancelled,
        "expired": totals.expired,
        "paymentWindowSecs": c.payment_window.map(PaymentWindow::secs),
        "perUserLimit": c.per_user_limit,
        "startsAt": c.starts_at.map(rfc3339),
        "endsAt": c.ends_at.map(rfc3339),
        "active": active,
    })
}

async fn put_sale(
    state: web::Data<AppState>,
    _: Admin,
    product: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let product = ProductId::parse(&product).map_err(|_| ApiError::NotFound)?;
    let body: SaleBody = json_body(payload, &state.settings.http).await?;
    // Counts stay exact integers in every backend (Redis scripts compute in doubles).
    if !(0..=MAX_UNITS).contains(&body.stock) {
        return Err(ApiError::InvalidRequest(format!(
            "stock must be from 0 to {MAX_UNITS}"
        )));
    }
    if !(1..=MAX_UNITS).contains(&body.per_user_limit) {
        return Err(ApiError::InvalidRequest(format!(
            "perUserLimit must be from 1 to {MAX_UNITS}"
        )));
    }
    let payment_window = body
        .payment_window_secs
        .map(PaymentWindow::try_from)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest(e.0))?;
    // Orders are accepted at the product's price as the partition holds it.
    let dir = &state.directory;
    let price = match dir.catalog.call(GetProduct { id: product }).await? {
        Some(p) => p.price_cents,
        None => return Err(ApiError::NotFound),
    };
    let sale = SaleDefinition {
        stock: body.stock,
        per_user_limit: body.per_user_limit,
        starts_at: instant(body.starts_at, "startsAt")?,
        ends_at: instant(body.ends_at, "endsAt")?,
        payment_window,
        unit_price_cents: price,
    };
    if let (Some(s), Some(e)) = (sale.starts_at, sale.ends_at) {
        if e <= s {
            return Err(ApiError::InvalidRequest(
                "endsAt must be after startsAt".into(),
            ));
        }
    }
    let stored = state
        .directory
        .catalog
        .call(PutSale { product, sale })
        .await?;
    if !stored {
        return Err(ApiError::NotFound);
    }
    let counters = state
        .directory
        .product_partition(product)
        .call(LoadSale { product, sale })
        .await?
        .map_err(|refused| match refused {
            SaleRefused::BelowSold { sold } => ApiError::InvalidRequest(format!(
                "stock cannot be below the {sold} units already sold"
            )),
            SaleRefused::Rebuilding => OrderError::Rebuilding.into(),
        })?;
    let totals = state.directory.product_totals(product).await?;
    Ok(HttpResponse::Ok().json(sale_json(product, &counters, totals)))
}

async fn get_sale(
    state: web::Data<AppState>,
    _: Admin,
    product: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let product = ProductId::parse(&product).map_err(|_| ApiError::NotFound)?;
    let totals = state.directory.product_totals(product).await?;
    let counters = state
        .directory
        .product_partition(product)
        .call(Counters { product })
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(sale_json(product, &counters, totals)))
}

/// Every sale the inventory partitions hold, with its state now, and the order
/// queue's depth (read through a publisher: `null` on a worker, which has none): what
/// the admin page's sale panels show.
async fn list_sales(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let dir = &state.directory;
    let now = now_ms();
    let partitions = join_all(dir.inventory.iter().map(|p| p.call(ListSales))).await;
    let mut sales = Vec::new();
    for sale in partitions
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
    {
        let status = if sale.starts_at.is_some_and(|s| now < s) {
            "upcoming"
        } else if sale.ends_at.is_some_and(|e| now >= e) {
            "ended"
        } else if sale.remaining == 0 {
            "sold_out"
        } else {
            "active"
        };
        let mut json = json!({
            "productId": sale.product,
            "status": status,
            "stock": sale.stock,
            "remaining": sale.remaining,
            "sold": sale.stock - sale.remaining,
            "startsAt": sale.starts_at.map(rfc3339),
            "endsAt": sale.ends_at.map(rfc3339),
            "paymentWindowSecs": sale.payment_window.map(PaymentWindow::secs),
        });
        // Where a payment window's units are: from the shards (left out while one is
        // away).
        if sale.payment_window.is_some() && status != "ended" {
            if let Ok(t) = dir.product_totals(ProductId::from_db(sale.product)).await {
                json["awaitingPayment"] = t.awaiting_payment.into();
                json["paid"] = t.completed.into();
                json["expired"] = t.expired.into();
            }
        }
        sales.push(json);
    }
    sales.sort_by_key(|s| s["productId"].as_i64());
    let depth = match dir.publishers.is_empty() {
        true => None,
        false => {
            let queue = dir.orders_queue.clone();
            dir.publisher().call(QueueDepth { queue }).await.ok()
        }
    };
    Ok(HttpResponse::Ok().json(json!({
        "serverTime": rfc3339(now),
        "orderQueueDepth": depth,
        "sales": sales,
    })))
}

async fn actors(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(state.tree.view(&state.policy)))
}

async fn restart(
    state: web::Data<AppState>,
    _: Admin,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let node = state.tree.find(&name).ok_or(ApiError::NotFound)?;
    if std::ptr::eq(node, state.tree.as_ref()) {
        return Err(ApiError::InvalidRequest(
            "the root cannot be restarted; restart the process".into(),
        ));
    }
    let cell = node
        .stats
        .cell()
        .ok_or_else(|| ApiError::Unavailable(format!("{name} is not running yet")))?;
    tracing::warn!(actor = %name, "restart requested by an operator");
    // A stopped child is restarted by its supervisor (every child is permanent).
    cell.stop(Some("restart requested by an operator".into()));
    Ok(HttpResponse::Ok().json(json!({ "name": node.stats.name, "status": "restarting" })))
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if state.settings.admin.metrics_auth {
        Admin::check(&req)?;
    }
    record_gauges(&state);
    // Stock, and where the units are, of the sales open now.
    let now = now_ms();
    let dir = &state.directory;
    let partitions = join_all(dir.inventory.iter().map(|p| p.call(ListSales))).await;
    for sale in partitions.into_iter().flatten().flatten() {
        if sale.active_at(now) {
            let product = sale.product.to_string();
            metrics::gauge!("flashsale_sale_remaining", "product" => product.clone())
                .set(sale.remaining as f64);
            metrics::gauge!("flashsale_sale_stock", "product" => product.clone())
                .set(sale.stock as f64);
            // Units awaiting payment, paid (completed) and expired: from the shards.
            if let Ok(t) = dir.product_totals(ProductId::from_db(sale.product)).await {
                for (name, units) in [
                    ("flashsale_sale_awaiting_payment", t.awaiting_payment),
                    ("flashsale_sale_paid", t.completed),
                    ("flashsale_sale_expired", t.expired),
                ] {
                    metrics::gauge!(name, "product" => product.clone()).set(units as f64);
                }
            }
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}

/// Updates the gauges that are read at scrape time.
fn record_gauges(state: &AppState) {
    fn walk(node: &TreeNode) {
        let s = &node.stats;
        let name = s.name.clone();
        metrics::gauge!("flashsale_actor_restarts", "actor" => name.clone())
            .set(s.restarts() as f64);
        metrics::gauge!("flashsale_actor_up", "actor" => name.clone()).set(if s.is_running() {
            1.0
        } else {
            0.0
        });
        if s.kind == Kind::Actor {
            metrics::gauge!("flashsale_actor_mailbox", "actor" => name.clone())
                .set(s.mailbox() as f64);
            metrics::gauge!("flashsale_actor_processed", "actor" => name).set(s.processed() as f64);
        }
        node.children.iter().for_each(walk);
    }
    walk(&state.tree);
    if let Some((cpu, rss)) = crate::telemetry::process_usage() {
        metrics::gauge!("flashsale_process_cpu_seconds_total").set(cpu);
        metrics::gauge!("flashsale_process_resident_memory_bytes").set(rss);
    }
    metrics::gauge!("flashsale_ready").set(if state.readiness().0 { 1.0 } else { 0.0 });
}
