//! The admin API on the internal listener: products, flash sales, the live actor tree
//! and restarts, the admin page and Prometheus metrics.

use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::public::product_cache_key;
use super::{admin_document, json_body, resource, AppState};
use crate::actors::catalog::{CatalogOp, CatalogReply};
use crate::actors::inventory::{InventoryOp, InventoryReply, SaleCounters, SaleDefinition};
use crate::domain::{now_ms, parse_rfc3339, rfc3339, ProductId, ProductName};

const PAGE: &str = include_str!("admin.html");

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin/products").post(create_product))
        .service(resource("/admin/products/{id}").patch(update_product))
        .service(resource("/admin/reports/sales").get(sales_report))
        .service(resource("/admin/reports/orders").get(orders_report))
        .service(resource("/admin/reports/inventory").get(inventory_report))
        .service(
            resource("/admin/flash-sales/{productId}")
                .put(put_sale)
                .get(get_sale),
        )
        .service(resource("/admin/actors").get(actors))
        .service(resource("/admin/actors/{name}/restart").post(restart))
        .service(resource("/admin").get(page))
        .service(resource("/admin/openapi.json").get(admin_document))
        .service(resource("/metrics").get(metrics));
}

fn admin(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    if state.is_admin(req) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct NewProduct {
    name: String,
    price_cents: i64,
}

async fn create_product(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let body: NewProduct = json_body(payload, state.settings.http.body_limit).await?;
    let name = ProductName::parse(&body.name).map_err(|e| ApiError::InvalidRequest(e.0))?;
    if body.price_cents < 0 {
        return Err(ApiError::InvalidRequest(
            "priceCents must not be negative".into(),
        ));
    }
    match state
        .directory
        .catalog
        .call(CatalogOp::CreateProduct {
            name,
            price_cents: body.price_cents,
        })
        .await?
    {
        CatalogReply::Product(Some(p)) => {
            let id = ProductId::from_db(p.id);
            state
                .directory
                .product_partition(id)
                .tell(InventoryOp::CacheDel {
                    key: product_cache_key(id),
                });
            Ok(HttpResponse::Created().json(p))
        }
        other => Err(ApiError::Internal(format!(
            "unexpected catalog reply {other:?}"
        ))),
    }
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
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let id = ProductId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let body: ProductChange = json_body(payload, state.settings.http.body_limit).await?;
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
    let op = CatalogOp::UpdateProduct {
        id,
        name,
        price_cents: body.price_cents,
    };
    match state.directory.catalog.call(op).await? {
        CatalogReply::Product(Some(p)) => {
            let key = product_cache_key(id);
            state
                .directory
                .product_partition(id)
                .call(InventoryOp::CacheDel { key })
                .await?;
            Ok(HttpResponse::Ok().json(p))
        }
        CatalogReply::Product(None) => Err(ApiError::NotFound),
        other => Err(ApiError::Internal(format!(
            "unexpected catalog reply {other:?}"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReportQuery {
    product_id: Option<String>,
    user_id: Option<String>,
}

async fn report(state: &AppState, op: CatalogOp) -> Result<HttpResponse, ApiError> {
    match state.directory.catalog.call(op).await? {
        CatalogReply::Report(r) => Ok(HttpResponse::Ok().json(r)),
        other => Err(ApiError::Internal(format!(
            "unexpected catalog reply {other:?}"
        ))),
    }
}

/// Units sold and cancelled per product per minute, as the analytics consumer counted
/// them from the order events.
async fn sales_report(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let product = query
        .product_id
        .as_deref()
        .map(ProductId::parse)
        .transpose()
        .map_err(|_| ApiError::InvalidRequest("productId must be a positive integer".into()))?;
    report(&state, CatalogOp::SalesReport(product)).await
}

/// Orders per product and per user, as the reporting consumer counted them.
async fn orders_report(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ReportQuery>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let user = query.user_id.clone();
    report(&state, CatalogOp::OrdersReport { user }).await
}

/// The inventory consumer's last comparison of each product's inventory partition
/// with its shards.
async fn inventory_report(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
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

fn sale_json(product: ProductId, c: &SaleCounters, completed: i64, cancelled: i64) -> Value {
    let now = now_ms();
    let active = c.active_at(now);
    json!({
        "productId": product.get(),
        "stock": c.stock,
        "remaining": c.remaining,
        "sold": c.stock - c.remaining,
        "pending": c.pending,
        "completed": completed,
        "cancelled": cancelled,
        "perUserLimit": c.per_user_limit,
        "startsAt": c.starts_at.map(rfc3339),
        "endsAt": c.ends_at.map(rfc3339),
        "active": active,
    })
}

async fn put_sale(
    state: web::Data<AppState>,
    req: HttpRequest,
    product: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let product = ProductId::parse(&product).map_err(|_| ApiError::NotFound)?;
    let body: SaleBody = json_body(payload, state.settings.http.body_limit).await?;
    if body.stock < 0 {
        return Err(ApiError::InvalidRequest(
            "stock must not be negative".into(),
        ));
    }
    if body.per_user_limit < 1 {
        return Err(ApiError::InvalidRequest(
            "perUserLimit must be at least 1".into(),
        ));
    }
    let sale = SaleDefinition {
        stock: body.stock,
        per_user_limit: body.per_user_limit,
        starts_at: instant(body.starts_at, "startsAt")?,
        ends_at: instant(body.ends_at, "endsAt")?,
    };
    if let (Some(s), Some(e)) = (sale.starts_at, sale.ends_at) {
        if e <= s {
            return Err(ApiError::InvalidRequest(
                "endsAt must be after startsAt".into(),
            ));
        }
    }
    match state
        .directory
        .catalog
        .call(CatalogOp::PutSale { product, sale })
        .await?
    {
        CatalogReply::SaleStored(true) => {}
        CatalogReply::SaleStored(false) => return Err(ApiError::NotFound),
        other => {
            return Err(ApiError::Internal(format!(
                "unexpected catalog reply {other:?}"
            )))
        }
    }
    let counters = match state
        .directory
        .product_partition(product)
        .call(InventoryOp::LoadSale { product, sale })
        .await?
    {
        InventoryReply::SaleLoaded(Ok(c)) => c,
        InventoryReply::SaleLoaded(Err(sold)) => {
            return Err(ApiError::InvalidRequest(format!(
                "stock cannot be below the {sold} units already sold"
            )))
        }
        other => {
            return Err(ApiError::Internal(format!(
                "unexpected inventory reply {other:?}"
            )))
        }
    };
    let (completed, cancelled) = state.directory.product_totals(product).await?;
    Ok(HttpResponse::Ok().json(sale_json(product, &counters, completed, cancelled)))
}

async fn get_sale(
    state: web::Data<AppState>,
    req: HttpRequest,
    product: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    let product = ProductId::parse(&product).map_err(|_| ApiError::NotFound)?;
    let counters = match state
        .directory
        .product_partition(product)
        .call(InventoryOp::Counters { product })
        .await?
    {
        InventoryReply::Counters(Some(c)) => c,
        InventoryReply::Counters(None) => return Err(ApiError::NotFound),
        other => {
            return Err(ApiError::Internal(format!(
                "unexpected inventory reply {other:?}"
            )))
        }
    };
    let (completed, cancelled) = state.directory.product_totals(product).await?;
    Ok(HttpResponse::Ok().json(sale_json(product, &counters, completed, cancelled)))
}

async fn actors(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
    Ok(HttpResponse::Ok().json(state.tree.view(&state.policy)))
}

async fn restart(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    admin(&state, &req)?;
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

async fn page(state: web::Data<AppState>, req: HttpRequest) -> HttpResponse {
    let _ = (&state, &req);
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

async fn metrics(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    if state.settings.admin.metrics_auth {
        admin(&state, &req)?;
    }
    crate::telemetry::record_gauges(&state);
    // Remaining stock of the sales open now.
    let now = now_ms();
    let partitions = join_all(
        state
            .directory
            .inventory
            .iter()
            .map(|p| p.call(InventoryOp::Sales)),
    )
    .await;
    for reply in partitions {
        if let Ok(InventoryReply::Sales(sales)) = reply {
            for (pid, stock, remaining, starts, ends) in sales {
                if starts.is_none_or(|s| now >= s) && ends.is_none_or(|e| now < e) {
                    let product = pid.to_string();
                    metrics::gauge!("flashsale_sale_remaining", "product" => product.clone())
                        .set(remaining as f64);
                    metrics::gauge!("flashsale_sale_stock", "product" => product).set(stock as f64);
                }
            }
        }
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
