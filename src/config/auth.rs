//! `[auth]`: the signing key of the bearer tokens and the wait for a core to hash a
//! password.

use serde::Deserialize;

use super::{invalid, ConfigError, Secret};

/// The shortest JWT signing key accepted, configured or kept in a file.
pub const MIN_JWT_SECRET: usize = 32;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// HS256 signing key. When absent, one is generated once and kept in the catalog
    /// database, so every pod and every restart shares it.
    pub jwt_secret: Option<Secret>,
    pub token_ttl_secs: u64,
    /// How long a login or registration waits for a core to hash its password when
    /// every core is hashing (then `503 overloaded`).
    pub hash_wait_ms: u64,
    /// Most logins and registrations waiting for a core at once (more: `503` at once).
    pub hash_waiters: usize,
}

impl AuthSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        match &self.jwt_secret {
            Some(secret) if secret.expose().len() < MIN_JWT_SECRET => invalid(format!(
                "auth.jwt_secret must be at least {MIN_JWT_SECRET} characters"
            )),
            _ => Ok(()),
        }
    }
}
