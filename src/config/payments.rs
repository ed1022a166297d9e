//! `[payments]`: how the shop's payment service proves a confirmation is its own, and
//! how often lapsed payment windows are swept.

use serde::Deserialize;

use super::{invalid, ConfigError, Secret};

/// The shortest webhook secret accepted.
pub const MIN_WEBHOOK_SECRET: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSettings {
    /// The HMAC-SHA256 key of `Flashsale-Signature` on `POST /payments/confirm`,
    /// shared with the payment service. Without it the endpoint answers `404`.
    pub webhook_secret: Option<Secret>,
    /// How far a signature's `t` may be from this server's clock, either way.
    pub signature_tolerance_secs: u64,
    /// How often each api pod expires the orders whose payment window lapsed and
    /// gives their units back.
    pub sweep_every_ms: u64,
}

impl PaymentSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.webhook_secret {
            if secret.expose().len() < MIN_WEBHOOK_SECRET {
                return invalid(format!(
                    "payments.webhook_secret must be at least {MIN_WEBHOOK_SECRET} characters"
                ));
            }
        }
        if self.signature_tolerance_secs == 0 {
            return invalid("payments.signature_tolerance_secs must be at least 1");
        }
        if !(10..=60_000).contains(&self.sweep_every_ms) {
            return invalid("payments.sweep_every_ms must be from 10 to 60000");
        }
        Ok(())
    }
}
