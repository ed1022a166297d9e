//! `[limits]`: rate limits, bounds on what one request may ask, and the deadlines of
//! actor calls and PostgreSQL statements.

use serde::Deserialize;

use super::{positive, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSettings {
    /// Requests per minute per user on the order path, shared by all pods.
    pub rate_per_minute: u32,
    /// Order requests per minute per client address (0: no limit).
    pub orders_per_ip_per_minute: u32,
    /// Login attempts per minute on one account from one client address: a guesser
    /// elsewhere cannot lock the owner out.
    pub logins_per_account_per_address_per_minute: u32,
    /// Login attempts per minute on one account from all addresses together: the
    /// ceiling for a guesser with many addresses.
    pub logins_per_account_per_minute: u32,
    /// Logins and registrations per minute per client address (0: no limit).
    pub auth_per_ip_per_minute: u32,
    /// Queued requests per actor before the HTTP layer answers `503 overloaded`.
    pub inbox_capacity: usize,
    /// Deadline of every call into an actor.
    pub call_timeout_ms: u64,
    /// The longest a PostgreSQL statement may run before its actor fails.
    pub statement_timeout_ms: u64,
    /// Largest quantity one order may ask for.
    pub max_quantity: u32,
}

impl LimitSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("limits.statement_timeout_ms", self.statement_timeout_ms),
            ("limits.inbox_capacity", self.inbox_capacity as u64),
            ("limits.rate_per_minute", u64::from(self.rate_per_minute)),
            ("limits.max_quantity", u64::from(self.max_quantity)),
            (
                "limits.logins_per_account_per_minute",
                u64::from(self.logins_per_account_per_minute),
            ),
            (
                "limits.logins_per_account_per_address_per_minute",
                u64::from(self.logins_per_account_per_address_per_minute),
            ),
        ])
    }
}
