//! The public API: accounts, products, flash-sale orders, health and the OpenAPI
//! document.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::error::ApiError;
use super::{client_ip, json_body, parse_json, public_document, read_body, resource, AppState};
use crate::actors::inventory::{
    CacheGet, CacheSet, Counters, Lookup, MarkPublished, PartitionState, RateCheck, Recovery,
    Release, ReserveOutcome, ReserveRequest, Restock, Restocked,
};
use crate::actors::queue::Publish;
use crate::auth;
use crate::domain::{
    now_ms, rfc3339, Email, IdempotencyKey, OrderId, OrderMessage, OrderStatus, OrderView,
    Password, ProductId, Quantity, UserId,
};
use crate::shards::catalog::{CreateCredential, GetCredential, GetProduct, Product};
use crate::shards::{
    CancelOrder, Cancellation, CreateUser, GetOrder, ListOrders, RestockDone, UpdateUser,
};
use crate::supervisors::slot::CallError;

const RATE_WINDOW_MS: i64 = 60_000;

/// Counts a request in the one-minute window of `key`, shared by every pod; `429` with
/// `Retry-After` past `per_minute` (0: no limit).
async fn rate_limit(state: &AppState, key: String, per_minute: u32) -> Result<(), ApiError> {
    if per_minute == 0 {
        return Ok(());
    }
    let window = state
        .directory
        .rate_partition(&key)
        .call(RateCheck {
            key,
            window_ms: RATE_WINDOW_MS,
        })
        .await?;
    if window.count > i64::from(per_minute) {
        return Err(ApiError::RateLimited {
            retry_after_secs: ((window.reset_ms.max(1) + 999) / 1000) as u64,
        });
    }
    Ok(())
}

/// Logins and registrations from one client address.
async fn limit_auth(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
    match client_ip(req, &state.settings.http.trusted_proxies) {
        Some(ip) => {
            let per_minute = state.settings.limits.auth_per_ip_per_minute;
            rate_limit(state, format!("ip-auth:{ip}"), per_minute).await
        }
        None => Ok(()),
    }
}

/// Guesses at one account's password: rationed per client address, so that a guesser
/// elsewhere cannot lock the owner out, under a higher ceiling for the account from
/// every address together.
async fn limit_logins(state: &AppState, req: &HttpRequest, email: &Email) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    if let Some(ip) = client_ip(req, &state.settings.http.trusted_proxies) {
        let per_address = limits.logins_per_account_per_address_per_minute;
        rate_limit(state, format!("login:{}:{ip}", email.as_str()), per_address).await?;
    }
    let per_account = limits.logins_per_account_per_minute;
    rate_limit(state, format!("login:{}", email.as_str()), per_account).await
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/auth/register").post(register))
        .service(resource("/auth/login").post(login))
        .service(resource("/products/{id}").get(get_product))
        .service(resource("/flash-sales/{productId}").get(super::countdown::get_countdown))
        .service(resource("/orders/flash-sale/{productId}").post(flash_sale))
        .service(resource("/orders/{orderId}").get(get_order))
        .service(resource("/orders/{orderId}/cancel").post(cancel_order))
        .service(resource("/users/me").patch(update_me))
        .service(resource("/users/me/orders").get(my_orders))
        .service(resource("/healthz").get(healthz))
        .service(resource("/readyz").get(readyz))
        .service(resource("/openapi.json").get(public_document));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
}

#[tracing::instrument(skip_all)]
async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Each attempt costs a password hash, and says whether an address is registered:
    // both are rationed per client address.
    limit_auth(&state, &req).await?;
    let body: Credentials = json_body(payload, &state.settings.http).await?;
    let email = Email::parse(&body.email).map_err(|e| ApiError::InvalidRequest(e.0))?;
    let password = Password::parse(&body.password).map_err(|e| ApiError::InvalidRequest(e.0))?;
    let hash = state
        .hash(move || auth::hash_password(&password))
        .await?
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let user = UserId::new_random();
    let dir = &state.directory;
    let created = dir
        .catalog
        .call(CreateCredential {
            email: email.clone(),
            user: user.to_string(),
            password_hash: hash,
        })
        .await?;
    if !created {
        // The login and the user row live in two databases. A registration that
        // stopped between them is finished by its retry (the same address and
        // password). For an account that is whole, the answer is `email_taken`
        // whatever the password: registering is no way to test one. Testing it is
        // rationed as a login is.
        limit_logins(&state, &req, &email).await?;
        let Some(same) = same_registration(&state, &email, body.password).await? else {
            return Err(ApiError::EmailTaken);
        };
        let finished = dir
            .shard(same.as_str())
            .call(CreateUser {
                user: same.to_string(),
                email: email.as_str().to_string(),
            })
            .await?;
        if !finished {
            return Err(ApiError::EmailTaken);
        }
        return Ok(HttpResponse::Created().json(json!({ "userId": same })));
    }
    // Idempotent: a user row that exists is kept (and announced once).
    dir.shard(user.as_str())
        .call(CreateUser {
            user: user.to_string(),
            email: email.as_str().to_string(),
        })
        .await?;
    Ok(HttpResponse::Created().json(json!({ "userId": user })))
}

/// The user of an existing login with this password, if it is one.
async fn same_registration(
    state: &AppState,
    email: &Email,
    password: String,
) -> Result<Option<UserId>, ApiError> {
    let found = state
        .directory
        .catalog
        .call(GetCredential {
            email: email.clone(),
        })
        .await?;
    let Some(credential) = found else {
        return Ok(None);
    };
    let hash = credential.password_hash;
    let same = state
        .hash(move || auth::verify_password(&password, &hash))
        .await?;
    if !same {
        return Ok(None);
    }
    UserId::parse(&credential.user)
        .map(Some)
        .map_err(ApiError::internal)
}

#[tracing::instrument(skip_all)]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    limit_auth(&state, &req).await?;
    let body: Credentials = json_body(payload, &state.settings.http).await?;
    let Ok(email) = Email::parse(&body.email) else {
        return Err(ApiError::InvalidCredentials);
    };
    limit_logins(&state, &req, &email).await?;
    let found = state
        .directory
        .catalog
        .call(GetCredential { email })
        .await?;
    let (user, hash) = match found {
        Some(c) => (Some(c.user), c.password_hash),
        None => (None, auth::dummy_hash().to_string()),
    };
    let password = body.password;
    let ok = state
        .hash(move || auth::verify_password(&password, &hash))
        .await?;
    let user = match (ok, user) {
        (true, Some(user)) => UserId::parse(&user).map_err(ApiError::internal)?,
        _ => return Err(ApiError::InvalidCredentials),
    };
    let issued = state.tokens.issue(&user);
    Ok(HttpResponse::Ok()
        .json(json!({ "token": issued.token, "expiresAt": rfc3339(issued.expires_at_ms) })))
}

pub(crate) fn product_cache_key(id: ProductId) -> String {
    format!("product:{id}")
}

#[tracing::instrument(skip_all, fields(product_id = %id))]
async fn get_product(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ProductId::parse(&id).map_err(|_| ApiError::NotFound)?;
    let partition = state.directory.product_partition(id);
    let key = product_cache_key(id);
    // The cache is an optimisation: while its partition is away, read the catalog.
    let cache_up = partition.stats.is_running();
    let cached = match cache_up {
        true => partition.call(CacheGet { key: key.clone() }).await,
        false => Err(CallError::Unavailable),
    };
    let result = match &cached {
        Ok(Some(_)) => "hit",
        Ok(None) => "miss",
        Err(_) => "bypass",
    };
    metrics::counter!("flashsale_product_cache_total", "result" => result).increment(1);
    if let Ok(Some(json)) = cached {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(json));
    }
    let product = find_product(&state, id).await?.ok_or(ApiError::NotFound)?;
    let json = serde_json::to_string(&product).expect("products serialise");
    if cache_up {
        partition.tell(CacheSet {
            key,
            value: json.clone(),
            ttl_secs: state.settings.inventory.product_cache_ttl_secs,
        });
    }
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json))
}

async fn find_product(state: &AppState, id: ProductId) -> Result<Option<Product>, ApiError> {
    Ok(state.directory.catalog.call(GetProduct { id }).await?)
}

fn quantity(body: &[u8], max: u32) -> Result<Quantity, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Quantity::ONE);
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OrderBody {
        quantity: Option<serde_json::Value>,
    }
    let parsed: OrderBody = parse_json(body)?;
    match parsed.quantity {
        None => Ok(Quantity::ONE),
        Some(v) => {
            let n = v.as_i64().ok_or_else(|| {
                ApiError::InvalidRequest(format!("quantity must be an integer from 1 to {max}"))
            })?;
            Quantity::parse(n, max).map_err(|e| ApiError::InvalidRequest(e.0))
        }
    }
}

fn accepted(order: &OrderId, status: StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/orders/{order}")))
        .json(json!({ "orderId": order, "status": "pending" }))
}

async fn flash_sale(
    state: web::Data<AppState>,
    req: HttpRequest,
    product: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The order's trace starts here, or continues the caller's W3C `traceparent`.
    let span =
        tracing::info_span!("place_order", product_id = %product, order_id = tracing::field::Empty);
    let incoming = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    crate::telemetry::continue_trace(&span, incoming);
    let result = place_order(&state, &req, &product, payload)
        .instrument(span)
        .await;
    let outcome = match &result {
        Ok(r) if r.status().as_u16() == 201 => "accepted",
        Ok(_) => "replayed",
        Err(ApiError::OutOfStock) => "out_of_stock",
        Err(ApiError::PurchaseLimitReached) => "purchase_limit_reached",
        Err(ApiError::SaleNotActive) => "sale_not_active",
        Err(ApiError::RateLimited { .. }) => "rate_limited",
        Err(ApiError::Overloaded) => "overloaded",
        Err(ApiError::Unavailable(_)) => "unavailable",
        Err(_) => "invalid",
    };
    metrics::counter!("flashsale_orders_total", "outcome" => outcome).increment(1);
    result
}

async fn place_order(
    state: &AppState,
    req: &HttpRequest,
    product: &str,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let user = state.user(req)?;
    let product = ProductId::parse(product).map_err(|_| ApiError::NotFound)?;
    let key = req
        .headers()
        .get("Idempotency-Key")
        .ok_or_else(|| ApiError::InvalidRequest("the Idempotency-Key header is required".into()))?
        .to_str()
        .map_err(|_| {
            ApiError::InvalidRequest("Idempotency-Key must be visible ASCII characters".into())
        })?;
    let key = IdempotencyKey::parse(key).map_err(|e| ApiError::InvalidRequest(e.0))?;
    let body = read_body(payload, &state.settings.http).await?;
    let quantity = quantity(&body, state.settings.limits.max_quantity)?;
    let dir = &state.directory;

    let limits = &state.settings.limits;
    // The user's key is the user id itself (as stored before per-address limits).
    rate_limit(state, user.to_string(), limits.rate_per_minute).await?;
    if let Some(ip) = client_ip(req, &state.settings.http.trusted_proxies) {
        rate_limit(
            state,
            format!("ip-orders:{ip}"),
            limits.orders_per_ip_per_minute,
        )
        .await?;
    }

    let now = now_ms();
    let request = ReserveRequest {
        product,
        user: user.clone(),
        key: key.clone(),
        quantity,
        order: OrderId::generate(),
        now_ms: now,
    };
    let partition = dir.product_partition(product);
    let reserve = tracing::info_span!("inventory_reserve");
    let outcome = partition.call(request).instrument(reserve).await?;
    let (order, quantity, created_at, status) = match outcome {
        ReserveOutcome::Created(order) => (order, quantity.get().into(), now, StatusCode::CREATED),
        ReserveOutcome::Replay(order) => return Ok(accepted(&order, StatusCode::OK)),
        // The key's order may not be in the queue yet: publish it (again) before
        // naming it. Consumers take an order once, however often it was published.
        ReserveOutcome::Unpublished(u) => (u.order, u.quantity, u.created_at, StatusCode::OK),
        ReserveOutcome::OutOfStock => return Err(ApiError::OutOfStock),
        ReserveOutcome::LimitReached => return Err(ApiError::PurchaseLimitReached),
        ReserveOutcome::NotActive => return Err(ApiError::SaleNotActive),
        ReserveOutcome::Rebuilding => return Err(ApiError::Unavailable(REBUILDING.into())),
        ReserveOutcome::NoSale => {
            return match find_product(state, product).await? {
                Some(_) => Err(ApiError::SaleNotActive),
                None => Err(ApiError::NotFound),
            }
        }
    };
    tracing::Span::current().record("order_id", tracing::field::display(&order));

    let message = OrderMessage {
        order_id: order.to_string(),
        user_id: user.to_string(),
        product_id: product.get(),
        quantity,
        idempotency_key: key.as_str().to_string(),
        created_at,
        traceparent: crate::telemetry::current_traceparent(),
    };
    let publish = Publish {
        queue: dir.orders_queue.clone(),
        payload: serde_json::to_vec(&message).expect("orders serialise"),
        traceparent: message.traceparent.clone(),
    };
    let publishing = tracing::info_span!("queue_publish");
    match dir.publisher().call(publish).instrument(publishing).await {
        Ok(true) => {}
        // The broker refused it, or it never reached the publisher: nothing stays
        // reserved for an order the queue does not have.
        Ok(false) | Err(CallError::Overloaded) => {
            partition.tell(Release { product, order });
            tracing::warn!("order publish failed; reservation released");
            return Err(ApiError::Unavailable(
                "the order queue is unavailable; retry shortly".into(),
            ));
        }
        // The broker may have kept it: the reservation stays, and a retry with the same
        // key finds the order (publishing it if it is not in the queue after all).
        Err(e) => {
            tracing::warn!(error = %e, "order publish outcome unknown; reservation kept");
            return Err(ApiError::Unavailable(REUSE_KEY.into()));
        }
    }
    // Accepted once the partition knows the message is queued: from then on the
    // reconciler leaves the reservation alone, whatever the consumers' lag.
    let marked = partition.call(MarkPublished {
        product,
        order: order.clone(),
    });
    match marked.await {
        Ok(true) => Ok(accepted(&order, status)),
        Ok(false) => {
            // Released as stale while its publish took too long: the queued message
            // will be recorded as cancelled; the key is free for a new order.
            tracing::warn!("order released before its publish was confirmed");
            Err(ApiError::Unavailable(
                "the order was not accepted in time; retry shortly".into(),
            ))
        }
        Err(e) => {
            tracing::warn!(error = %e, "order queued but not marked published");
            Err(ApiError::Unavailable(REUSE_KEY.into()))
        }
    }
}

/// What a buyer is told while the sale's inventory partition rebuilds its lost state.
pub(crate) const REBUILDING: &str =
    "the sale's inventory is being rebuilt after a failure; retry shortly";

/// What a buyer is told when the order's fate is not known yet.
const REUSE_KEY: &str =
    "the order may have been accepted; retry with the same Idempotency-Key to find it";

#[tracing::instrument(skip_all, fields(order_id = %order))]
async fn get_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    order: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state.user(&req)?;
    let order = OrderId::parse(&order).map_err(|_| ApiError::NotFound)?;
    // While its shard is away an accepted order is still known to its inventory
    // partition: a shard outage delays persistence, not what the buyer sees.
    let shard_down = match stored_order(&state, &user, &order).await {
        Ok(Some(view)) => return Ok(HttpResponse::Ok().json(view)),
        Ok(None) => None,
        Err(e @ (ApiError::Unavailable(_) | ApiError::Overloaded)) => Some(e),
        Err(e) => return Err(e),
    };
    match (pending_order(&state, &user, &order).await?, shard_down) {
        (Some(view), _) => Ok(HttpResponse::Ok().json(view)),
        (None, Some(e)) => Err(e),
        (None, None) => Err(ApiError::NotFound),
    }
}

/// The user's order as its shard holds it, if it is there yet.
async fn stored_order(
    state: &AppState,
    user: &UserId,
    order: &OrderId,
) -> Result<Option<OrderView>, ApiError> {
    let get = GetOrder {
        order: order.clone(),
        user: user.to_string(),
    };
    Ok(state.directory.shard(user.as_str()).call(get).await?)
}

/// An order accepted but not yet in its shard: the inventory partitions still know it.
async fn pending_order(
    state: &AppState,
    user: &UserId,
    order: &OrderId,
) -> Result<Option<OrderView>, ApiError> {
    let lookups = join_all(state.directory.inventory.iter().map(|p| {
        p.call(Lookup {
            order: order.clone(),
        })
    }))
    .await;
    for reply in lookups {
        if let Some(p) = reply? {
            if p.user == user.as_str() {
                let message = OrderMessage {
                    order_id: order.to_string(),
                    user_id: p.user,
                    product_id: p.product,
                    quantity: p.quantity,
                    idempotency_key: String::new(),
                    created_at: p.created_at,
                    traceparent: None,
                };
                return Ok(Some(OrderView::new(&message, OrderStatus::Pending)));
            }
        }
    }
    Ok(None)
}

/// The owner cancels a completed order while its sale is active: the order becomes
/// `cancelled` (emitting `OrderCancelled`) and its units go back to the sale, exactly
/// once however often this is called (a retry after a failure finishes the restock,
/// and so does the reconciler when nobody retries).
#[tracing::instrument(skip_all, fields(order_id = %order))]
async fn cancel_order(
    state: web::Data<AppState>,
    req: HttpRequest,
    order: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let user = state.user(&req)?;
    let order = OrderId::parse(&order).map_err(|_| ApiError::NotFound)?;
    let Some(stored) = stored_order(&state, &user, &order).await? else {
        return match pending_order(&state, &user, &order).await? {
            Some(_) => Err(ApiError::OrderPending),
            None => Err(ApiError::NotFound),
        };
    };
    let dir = &state.directory;
    let product = ProductId::from_db(stored.product_id);
    let partition = dir.product_partition(product);
    if stored.status == OrderStatus::Completed {
        match partition.call(Counters { product }).await? {
            Some(sale) if sale.active_at(now_ms()) => {}
            // No sale there: gone with the partition's state, until it is rebuilt.
            None if partition.call(Recovery).await? != PartitionState::Ready => {
                return Err(ApiError::Unavailable(REBUILDING.into()))
            }
            _ => return Err(ApiError::SaleNotActive),
        }
    }
    let Cancellation {
        order: view,
        now,
        restock_due,
    } = dir
        .shard(user.as_str())
        .call(CancelOrder {
            order: order.clone(),
            user: user.to_string(),
            traceparent: crate::telemetry::current_traceparent(),
        })
        .await?
        .ok_or(ApiError::NotFound)?;
    if view.status != OrderStatus::Cancelled {
        return Err(ApiError::internal(format!(
            "order {} is {} after its cancellation",
            view.order_id,
            view.status.as_str()
        )));
    }
    // The shard decides whether units are still due back (its restocks row); the
    // partition takes them once per order. Should this fail, the row remains and the
    // reconciler (or a rebuild, which counts them as returned) finishes it.
    if restock_due {
        let restocked = partition
            .call(Restock {
                product,
                order: order.clone(),
                user: user.to_string(),
                quantity: view.quantity,
            })
            .await?;
        if restocked == Restocked::Rebuilding {
            return Err(ApiError::Unavailable(REBUILDING.into()));
        }
        dir.shard(user.as_str()).call(RestockDone { order }).await?;
        tracing::info!(now, restocked = ?restocked, "order cancelled by its owner");
    }
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct UserUpdate {
    display_name: String,
}

#[tracing::instrument(skip_all)]
async fn update_me(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let user = state.user(&req)?;
    let body: UserUpdate = json_body(payload, &state.settings.http).await?;
    let name = body.display_name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(
            "displayName must be 1 to 100 printable characters".into(),
        ));
    }
    let updated = state
        .directory
        .shard(user.as_str())
        .call(UpdateUser {
            user: user.to_string(),
            display_name: name.to_string(),
            traceparent: crate::telemetry::current_traceparent(),
        })
        .await?;
    if !updated {
        return Err(ApiError::NotFound);
    }
    Ok(HttpResponse::Ok().json(json!({ "userId": user.to_string(), "displayName": name })))
}

#[tracing::instrument(skip_all)]
async fn my_orders(state: web::Data<AppState>, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let user = state.user(&req)?;
    let orders = state
        .directory
        .shard(user.as_str())
        .call(ListOrders {
            user: user.to_string(),
        })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "orders": orders })))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Readiness, on both listeners (a worker has only the admin one).
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (ready, body) = state.readiness();
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((header::RETRY_AFTER, "1"))
            .json(body)
    }
}
