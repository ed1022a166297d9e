//! `[notifications]`: the webhook every order confirmation is also sent to.

use serde::Deserialize;

use super::net::HttpUrl;
use super::{invalid, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// When set, every order confirmation is also POSTed here as JSON (at least once;
    /// the `Idempotency-Key` header carries the order id). An `http(s)://` URL
    /// ([`HttpUrl`]).
    pub webhook_url: Option<String>,
    pub webhook_timeout_ms: u64,
}

impl NotificationSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.webhook_url {
            Some(url) if HttpUrl::parse(url).is_err() => {
                invalid("notifications.webhook_url must be an http:// or https:// URL")
            }
            _ => Ok(()),
        }
    }
}
