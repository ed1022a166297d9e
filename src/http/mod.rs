//! The two HTTP listeners: the public API (`public`) and the internal admin API
//! (`admin`). Handlers turn requests into domain types, call actors through the
//! directory with deadlines, and map every failure through [`error::ApiError`].
//!
//! Each listener serves an OpenAPI document that describes it exactly: the public one
//! at `GET /openapi.json` (`openapi.json`), the admin one at `GET /admin/openapi.json`
//! (`openapi-admin.json`). `scripts/schemathesis.sh` holds both to the server.

pub mod admin;
pub mod countdown;
pub mod error;
pub mod extract;
pub mod fleet;
mod hashing;
pub mod limits;
pub mod payments;
pub mod public;

use std::net::{IpAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{AppService, HttpServiceFactory, Server, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{
    web, App, FromRequest, Handler, HttpRequest, HttpResponse, HttpServer, Responder, ResponseError,
};
use futures_util::StreamExt;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;

use crate::actors::directory::Directory;
use crate::actors::registry::{PodIdentity, RegistryMsg};
use crate::auth::Tokens;
use crate::config::{HttpSettings, IpNet, Role, Secret, Settings};
use crate::supervisors::slot::Slot;
use crate::supervisors::stats::{NodeStats, Quiesce};
use crate::supervisors::{Policy, TreeNode};
use error::ApiError;
pub use hashing::Hashing;

pub struct AppState {
    pub directory: Arc<Directory>,
    pub settings: Arc<Settings>,
    pub tokens: Tokens,
    pub admin_token: Secret,
    pub tree: Arc<TreeNode>,
    pub policy: Policy,
    pub metrics: PrometheusHandle,
    /// Password hashes computed at once (one per core), and who may wait for one.
    pub hashing: Arc<Hashing>,
    /// A stop signal came: `/readyz` answers 503 while the listeners still serve.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// This process in the fleet registry.
    pub pod: PodIdentity,
    pub registry: Arc<Slot<RegistryMsg>>,
    /// The order consumers' nodes (none on an api pod).
    pub order_consumers: Vec<Arc<NodeStats>>,
    pub quiesce: Arc<Quiesce>,
    /// Reaches the other pods' admin APIs (short timeouts).
    pub peers: reqwest::Client,
    /// The micro-cache behind `GET /flash-sales/{productId}`.
    pub countdown: Arc<countdown::Countdown>,
}

impl AppState {
    /// Whether this pod can do its role's job, and the parts that say so. An api pod
    /// (and `all`) is ready when the order path can accept: every inventory partition
    /// and a publisher up (a shard or Kafka outage only delays persistence). A worker
    /// is ready when it can consume and write: an order consumer, the catalog and
    /// every shard up.
    pub fn readiness(&self) -> (bool, serde_json::Value) {
        let dir = &self.directory;
        let draining = self.draining.load(std::sync::atomic::Ordering::SeqCst);
        let role = self.settings.role;
        let shards: Vec<_> = dir.shards.iter().map(|s| s.stats.is_running()).collect();
        let mut body = serde_json::json!({
            "role": role.as_str(),
            "draining": draining,
            "shards": shards,
        });
        let mut ready = !draining;
        if role.takes_orders() {
            let partitions: Vec<_> = dir.inventory.iter().map(|s| s.stats.is_running()).collect();
            body["inventoryPartitions"] = partitions.into();
            body["orderQueue"] = dir.publishers.iter().any(|s| s.stats.is_running()).into();
            ready &= dir.order_path_ready();
        }
        if role == Role::Worker {
            let consumers: Vec<_> = self
                .order_consumers
                .iter()
                .map(|s| s.is_running())
                .collect();
            ready &= consumers.iter().any(|c| *c)
                && dir.catalog.stats.is_running()
                && shards.iter().all(|s| *s);
            body["orderConsumers"] = consumers.into();
        }
        body["ready"] = ready.into();
        (ready, body)
    }
}

impl AppState {
    /// Runs a password hash or check on a hashing thread ([`Hashing`]).
    pub async fn hash<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        self.hashing.run(work).await
    }
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
/// address in `X-Forwarded-For` that is not one (addresses further left could be made
/// up by the client).
pub fn client_ip(req: &HttpRequest, trusted: &[IpNet]) -> Option<IpAddr> {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    let mut client = req.peer_addr()?.ip();
    if !is_trusted(client) {
        return Some(client);
    }
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    for hop in forwarded.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    Some(client)
}

/// Reads a request body of at most `limit` bytes.
pub async fn read_body(
    payload: web::Payload,
    http: &HttpSettings,
) -> Result<web::BytesMut, ApiError> {
    let deadline = Duration::from_millis(http.body_timeout_ms);
    tokio::time::timeout(deadline, read_all(payload, http.body_limit))
        .await
        .map_err(|_| ApiError::BodyTimeout)?
}

async fn read_all(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge,
            other => ApiError::InvalidRequest(format!("cannot read the body: {other}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads and parses a JSON body; see [`parse_json`].
pub async fn json_body<T: DeserializeOwned>(
    payload: web::Payload,
    http: &HttpSettings,
) -> Result<T, ApiError> {
    let body = read_body(payload, http).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::InvalidRequest("a JSON body is required".into()));
    }
    parse_json(&body)
}

/// Parses a request body that must be a JSON object with the fields of `T`. Every body
/// type is `#[serde(deny_unknown_fields)]`, so a field the API does not know is refused
/// (`400 invalid_request`) rather than dropped: a misspelt optional field would
/// otherwise change nothing and look accepted.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    // serde also reads a struct from a JSON array of its fields; the API takes objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::InvalidRequest(
            "the body must be a JSON object".into(),
        ));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
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

pub async fn not_found() -> HttpResponse {
    ApiError::NotFound.error_response()
}

/// A resource that answers the methods given to it, and any other method with
/// `405 method_not_allowed` and an `Allow` header naming them (RFC 9110, 15.5.6):
/// `cfg.service(resource("/admin/flash-sales/{productId}").put(put_sale).get(get_sale))`.
pub fn resource(path: &str) -> Resource {
    Resource {
        inner: web::resource(path),
        allowed: Vec::new(),
    }
}

pub struct Resource {
    inner: actix_web::Resource,
    allowed: Vec<Method>,
}

impl Resource {
    pub fn get<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::GET, handler)
    }

    pub fn post<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::POST, handler)
    }

    pub fn put<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::PUT, handler)
    }

    pub fn patch<F, Args>(self, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.route(Method::PATCH, handler)
    }

    fn route<F, Args>(mut self, method: Method, handler: F) -> Self
    where
        F: Handler<Args>,
        Args: FromRequest + 'static,
        F::Output: Responder + 'static,
    {
        self.inner = self.inner.route(web::method(method.clone()).to(handler));
        self.allowed.push(method);
        self
    }
}

impl HttpServiceFactory for Resource {
    fn register(self, config: &mut AppService) {
        let names: Vec<&str> = self.allowed.iter().map(Method::as_str).collect();
        let allow = HeaderValue::from_str(&names.join(", ")).expect("method names are ASCII");
        self.inner
            .default_service(web::to(move || method_not_allowed(allow.clone())))
            .register(config)
    }
}

async fn method_not_allowed(allow: HeaderValue) -> HttpResponse {
    let mut res = ApiError::MethodNotAllowed.error_response();
    res.headers_mut().insert(header::ALLOW, allow);
    res
}

/// The public API's document, served at `GET /openapi.json` on the public listener.
pub const PUBLIC_DOCUMENT: &str = include_str!("openapi.json");
/// The admin API's document, served at `GET /admin/openapi.json` on the admin listener.
pub const ADMIN_DOCUMENT: &str = include_str!("openapi-admin.json");

pub async fn public_document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(PUBLIC_DOCUMENT)
}

pub async fn admin_document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(ADMIN_DOCUMENT)
}

/// Malformed query strings and path segments get the API's JSON errors, not actix's
/// plain-text ones.
fn extractor_errors(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| {
        ApiError::InvalidRequest(format!("invalid query string: {e}")).into()
    }))
    .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NotFound.into()));
}

/// A request method as a metric label: the methods of HTTP, and `other` for whatever
/// else a client sends (a label per invented method would grow without bound).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Counts requests and their latency by route template and status.
async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let res = next.call(req).await?;
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = res.status().as_u16().to_string();
    let labels = [
        ("method", method.to_string()),
        ("route", route),
        ("status", status),
    ];
    metrics::counter!("flashsale_http_requests_total", &labels).increment(1);
    metrics::histogram!("flashsale_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    Ok(res)
}

/// Binds and starts the public listener.
pub fn public_server(
    state: web::Data<AppState>,
    listener: TcpListener,
    workers: usize,
) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(actix_web::middleware::from_fn(observe))
            .configure(extractor_errors)
            .configure(public::routes)
            .configure(countdown::routes)
            .configure(payments::routes)
            .default_service(web::to(not_found))
    })
    .workers(workers)
    .backlog(4096)
    .keep_alive(KEEP_ALIVE)
    .client_request_timeout(Duration::from_secs(5))
    .shutdown_timeout(10)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// How long an idle keep-alive connection stays open: longer than clients keep one
/// in their pools (reqwest's and Go's default is 90 s, load balancers about 60 s), so
/// that no client sends a request on a connection the server is closing at that
/// moment, a request lost without an answer.
pub const KEEP_ALIVE: Duration = Duration::from_secs(120);

/// Binds and starts the admin listener.
pub fn admin_server(state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(extractor_errors)
            .configure(admin::routes)
            .configure(fleet::routes)
            .default_service(web::to(not_found))
    })
    .workers(1)
    .client_request_timeout(Duration::from_secs(5))
    .shutdown_timeout(5)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
