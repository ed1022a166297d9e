//! Rate limits at the edge, counted in one-minute windows that every pod shares (the
//! windows live in the inventory partitions' stores). Past a limit the request is
//! answered `429` with `Retry-After`, before it costs anything else.

use actix_web::HttpRequest;

use super::error::ApiError;
use super::{client_ip, AppState};
use crate::actors::inventory::RateCheck;
use crate::domain::{Email, UserId};

const RATE_WINDOW_MS: i64 = 60_000;

/// Counts a request in the one-minute window of `key`; `429` past `per_minute` (0: no
/// limit).
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
pub async fn auth(state: &AppState, req: &HttpRequest) -> Result<(), ApiError> {
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
pub async fn logins(state: &AppState, req: &HttpRequest, email: &Email) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    if let Some(ip) = client_ip(req, &state.settings.http.trusted_proxies) {
        let per_address = limits.logins_per_account_per_address_per_minute;
        rate_limit(state, format!("login:{}:{ip}", email.as_str()), per_address).await?;
    }
    let per_account = limits.logins_per_account_per_minute;
    rate_limit(state, format!("login:{}", email.as_str()), per_account).await
}

/// Order requests: per user (its window's key is the user id itself), and per client
/// address.
pub async fn orders(state: &AppState, req: &HttpRequest, user: &UserId) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    rate_limit(state, user.to_string(), limits.rate_per_minute).await?;
    if let Some(ip) = client_ip(req, &state.settings.http.trusted_proxies) {
        let per_address = limits.orders_per_ip_per_minute;
        rate_limit(state, format!("ip-orders:{ip}"), per_address).await?;
    }
    Ok(())
}
