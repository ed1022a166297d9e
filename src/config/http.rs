//! The two HTTP listeners: the public API (`[http]`) and the admin API (`[admin]`).

use serde::Deserialize;

use super::net::{listen_addr, IpNet};
use super::{invalid, positive, ConfigError, Secret};

/// The shortest admin token accepted, configured or kept in a file.
pub const MIN_ADMIN_TOKEN: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSettings {
    pub listen: String,
    pub workers: usize,
    /// Largest accepted request body, in bytes (larger bodies get `413`).
    pub body_limit: usize,
    /// How long a request body may take to arrive (a slow body gets `408`).
    pub body_timeout_ms: u64,
    /// Proxies whose `X-Forwarded-For` names the client, as addresses or CIDR ranges
    /// (`10.0.0.0/8`: an Ingress's pods come and go); empty: the peer is the client and
    /// the header is ignored.
    pub trusted_proxies: Vec<IpNet>,
}

impl HttpSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        listen_addr("http.listen", &self.listen).or_else(invalid)?;
        positive(&[
            ("http.workers", self.workers as u64),
            ("http.body_limit", self.body_limit as u64),
            ("http.body_timeout_ms", self.body_timeout_ms),
        ])
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    pub listen: String,
    /// When absent, a token is generated at start and printed once.
    pub token: Option<Secret>,
    /// Whether `GET /metrics` needs the admin token too.
    pub metrics_auth: bool,
}

impl AdminSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        listen_addr("admin.listen", &self.listen).or_else(invalid)?;
        match &self.token {
            Some(token) if token.expose().len() < MIN_ADMIN_TOKEN => invalid(format!(
                "admin.token must be at least {MIN_ADMIN_TOKEN} characters"
            )),
            _ => Ok(()),
        }
    }
}
