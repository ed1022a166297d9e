//! The public API: accounts, products, flash-sale orders, health and the OpenAPI
//! document.

use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::error::ApiError;
use super::extract::AuthUser;
use super::{
    healthz, json_body, limits, parse_json, public_document, read_body, readyz, resource, AppState,
};
use crate::actors::inventory::{product_cache_key, CacheGet, CacheSet};
use crate::auth;
use crate::domain::{
    rfc3339, Email, IdempotencyKey, OrderId, Password, ProductId, Quantity, UserId,
};
use crate::orders::intake::{self, PlaceOrder, Placed};
use crate::orders::{cancel, lookup};
use crate::shards::catalog::{CreateCredential, GetCredential, GetProduct, Product};
use crate::shards::{CreateUser, ListOrders, UpdateUser};
use crate::supervisors::slot::CallError;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/auth/register").post(register))
        .service(resource("/auth/login").post(login))
        .service(resource("/products/{id}").get(get_product))
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
    limits::auth(&state, &req).await?;
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
            user: user.clone(),
            password_hash: hash,
        })
        .await?;
    if !created {
        // The login and the user row live in two databases. A registration that
        // stopped between them is finished by its retry (the same address and
        // password). For an account that is whole, the answer is `email_taken`
        // whatever the password: registering is no way to test one. Testing it is
        // rationed as a login is.
        limits::logins(&state, &req, &email).await?;
        let Some(same) = same_registration(&state, &email, body.password).await? else {
            return Err(ApiError::EmailTaken);
        };
        let finished = dir
            .shard(&same)
            .call(CreateUser {
                user: same.clone(),
                email: email.as_str().to_string(),
            })
            .await?;
        if !finished {
            return Err(ApiError::EmailTaken);
        }
        return Ok(HttpResponse::Created().json(json!({ "userId": same })));
    }
    // Idempotent: a user row that exists is kept (and announced once).
    dir.shard(&user)
        .call(CreateUser {
            user: user.clone(),
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
    Ok(Some(credential.user))
}

#[tracing::instrument(skip_all)]
async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    limits::auth(&state, &req).await?;
    let body: Credentials = json_body(payload, &state.settings.http).await?;
    let Ok(email) = Email::parse(&body.email) else {
        return Err(ApiError::InvalidCredentials);
    };
    limits::logins(&state, &req, &email).await?;
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
        (true, Some(user)) => user,
        _ => return Err(ApiError::InvalidCredentials),
    };
    let issued = state.tokens.issue(&user);
    Ok(HttpResponse::Ok()
        .json(json!({ "token": issued.token, "expiresAt": rfc3339(issued.expires_at_ms) })))
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

fn accepted(placed: Placed) -> HttpResponse {
    let status = match placed.replayed {
        false => StatusCode::CREATED,
        true => StatusCode::OK,
    };
    HttpResponse::build(status)
        .insert_header((header::LOCATION, format!("/orders/{}", placed.order)))
        .json(json!({ "orderId": placed.order, "status": "pending" }))
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

/// Checks the request, applies the rate limits, and hands the order to intake.
async fn place_order(
    state: &AppState,
    req: &HttpRequest,
    product: &str,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // Authenticated inside the order's span: a refusal is counted like any other.
    let AuthUser(user) = AuthUser::extract(req).await?;
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
    limits::orders(state, req, &user).await?;
    let order = PlaceOrder {
        user,
        product,
        key,
        quantity,
    };
    let placed = intake::place(&state.directory, order).await?;
    Ok(accepted(placed))
}

#[tracing::instrument(skip_all, fields(order_id = %order))]
async fn get_order(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    order: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = OrderId::parse(&order).map_err(|_| ApiError::NotFound)?;
    let view = lookup::find(&state.directory, &user, &order).await?;
    Ok(HttpResponse::Ok().json(view))
}

#[tracing::instrument(skip_all, fields(order_id = %order))]
async fn cancel_order(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
    order: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let order = OrderId::parse(&order).map_err(|_| ApiError::NotFound)?;
    let view = cancel::cancel(&state.directory, &user, &order).await?;
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
    AuthUser(user): AuthUser,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: UserUpdate = json_body(payload, &state.settings.http).await?;
    let name = body.display_name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::InvalidRequest(
            "displayName must be 1 to 100 printable characters".into(),
        ));
    }
    let updated = state
        .directory
        .shard(&user)
        .call(UpdateUser {
            user: user.clone(),
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
async fn my_orders(
    state: web::Data<AppState>,
    AuthUser(user): AuthUser,
) -> Result<HttpResponse, ApiError> {
    let orders = state
        .directory
        .shard(&user)
        .call(ListOrders { user: user.clone() })
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "orders": orders })))
}
