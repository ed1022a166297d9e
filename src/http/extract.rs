//! Who is asking: the bearer token of a request, read before the handler runs.
//! A handler that takes an [`AuthUser`] or an [`Admin`] is not called without one;
//! the request is answered `401 unauthorized` instead.

use std::future::{ready, Ready};

use actix_web::dev::Payload;
use actix_web::{web, FromRequest, HttpRequest};

use super::error::ApiError;
use super::AppState;
use crate::domain::UserId;

/// The user named by a valid `Authorization: Bearer` token.
pub struct AuthUser(pub UserId);

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let user = bearer(req)
            .and_then(|token| state(req).tokens.verify(token))
            .map(AuthUser)
            .ok_or(ApiError::Unauthorized);
        ready(user)
    }
}

/// A request bearing the admin token.
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(Admin::check(req))
    }
}

impl Admin {
    /// For a handler that asks for the admin token only when a setting says so.
    pub fn check(req: &HttpRequest) -> Result<Admin, ApiError> {
        let expected = state(req).admin_token.expose().as_bytes();
        let admitted = bearer(req).is_some_and(|t| constant_time_eq(t.as_bytes(), expected));
        admitted.then_some(Admin).ok_or(ApiError::Unauthorized)
    }
}

fn state(req: &HttpRequest) -> &AppState {
    req.app_data::<web::Data<AppState>>()
        .expect("both listeners carry the application state")
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
