//! The one error type of the HTTP layer and its single mapping to status codes and
//! the JSON body `{"error": code, "message": text}`. An internal error's message is
//! generic but for a request id, which the log shows with the cause.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::orders::OrderError;
use crate::supervisors::slot::CallError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("a valid bearer token is required")]
    Unauthorized,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("request body is too large")]
    PayloadTooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("that e-mail address is already registered")]
    EmailTaken,
    #[error("wrong e-mail or password")]
    InvalidCredentials,
    #[error("the product is sold out")]
    OutOfStock,
    #[error("you have bought as many as this sale allows")]
    PurchaseLimitReached,
    #[error("the flash sale is not active")]
    SaleNotActive,
    #[error("the order is still being processed; retry shortly")]
    OrderPending,
    #[error("the Flashsale-Signature header is missing, malformed, stale or wrong")]
    InvalidSignature,
    /// A `409` of the payment confirmation: its code and why.
    #[error("{1}")]
    PaymentRefused(&'static str, String),
    #[error("too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("the server is busy; retry shortly")]
    Overloaded,
    #[error("{0}")]
    Unavailable(String),
    /// Something went wrong that the client cannot fix: the cause chain goes to the
    /// log, the client gets a generic message.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn internal(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ApiError::Internal(cause.into())
    }
}

/// An error and every cause below it, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl ApiError {
    fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidRequest(_) => "invalid_request",
            ApiError::Unauthorized => "unauthorized",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::PayloadTooLarge => "payload_too_large",
            ApiError::BodyTimeout => "request_timeout",
            ApiError::EmailTaken => "email_taken",
            ApiError::InvalidCredentials => "invalid_credentials",
            ApiError::OutOfStock => "out_of_stock",
            ApiError::PurchaseLimitReached => "purchase_limit_reached",
            ApiError::SaleNotActive => "sale_not_active",
            ApiError::OrderPending => "order_pending",
            ApiError::InvalidSignature => "invalid_signature",
            ApiError::PaymentRefused(code, _) => code,
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }
}

impl From<CallError> for ApiError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Overloaded => ApiError::Overloaded,
            CallError::Unavailable => {
                ApiError::Unavailable("a backend is restarting; retry shortly".into())
            }
            CallError::Failed(item) => ApiError::internal(item),
        }
    }
}

impl From<OrderError> for ApiError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::OutOfStock => ApiError::OutOfStock,
            OrderError::LimitReached => ApiError::PurchaseLimitReached,
            OrderError::SaleNotActive => ApiError::SaleNotActive,
            OrderError::NotFound => ApiError::NotFound,
            OrderError::Pending => ApiError::OrderPending,
            e @ OrderError::PaymentWindowClosed => {
                ApiError::PaymentRefused("payment_window_closed", e.to_string())
            }
            e @ OrderError::OrderCancelled => {
                ApiError::PaymentRefused("order_cancelled", e.to_string())
            }
            e @ OrderError::AmountMismatch { .. } => {
                ApiError::PaymentRefused("amount_mismatch", e.to_string())
            }
            e @ OrderError::AlreadyPaid(_) => {
                ApiError::PaymentRefused("already_paid", e.to_string())
            }
            e @ (OrderError::Rebuilding
            | OrderError::QueueUnavailable
            | OrderError::NotAcceptedInTime
            | OrderError::OutcomeUnknown) => ApiError::Unavailable(e.to_string()),
            OrderError::Inconsistent(why) => ApiError::internal(why),
            OrderError::Backend(e) => e.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::EmailTaken => StatusCode::CONFLICT,
            ApiError::InvalidCredentials => StatusCode::UNAUTHORIZED,
            ApiError::OutOfStock => StatusCode::CONFLICT,
            ApiError::PurchaseLimitReached => StatusCode::CONFLICT,
            ApiError::SaleNotActive => StatusCode::CONFLICT,
            ApiError::OrderPending => StatusCode::CONFLICT,
            ApiError::InvalidSignature => StatusCode::UNAUTHORIZED,
            ApiError::PaymentRefused(..) => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            ApiError::RateLimited { retry_after_secs } => {
                res.insert_header((header::RETRY_AFTER, retry_after_secs.to_string()));
            }
            ApiError::Overloaded | ApiError::Unavailable(_) | ApiError::OrderPending => {
                res.insert_header((header::RETRY_AFTER, "1"));
            }
            ApiError::Unauthorized => {
                res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::Internal(cause) => {
                // The client quotes the request id; the log has the cause under it.
                let request = uuid::Uuid::new_v4().simple().to_string();
                tracing::error!(request_id = %request, cause = %chain(cause.as_ref()), "internal error");
                res.insert_header(("X-Request-Id", request.as_str()));
                let message = format!("internal error (request {request})");
                return res.json(json!({ "error": self.code(), "message": message }));
            }
            _ => {}
        }
        res.json(json!({ "error": self.code(), "message": self.to_string() }))
    }
}
