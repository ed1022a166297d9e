//! `[supervision]` and `[shutdown]`: how actors are restarted, and how the process
//! stops.

use serde::Deserialize;

use super::{invalid, positive, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    /// More restarts than this within `window_secs` escalate to the parent.
    pub max_restarts: usize,
    pub window_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl SupervisionSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.backoff_base_ms > self.backoff_max_ms {
            return invalid("supervision.backoff_base_ms must not exceed backoff_max_ms");
        }
        Ok(())
    }
}

/// What a stop signal (SIGTERM, SIGINT) does: `/readyz` answers 503 at once, the
/// listeners keep serving for `drain_secs` (a load balancer needs that long to stop
/// sending), then requests in flight finish and the actors' inboxes drain, all within
/// `grace_secs`. A second signal exits at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownSettings {
    pub drain_secs: u64,
    pub grace_secs: u64,
}

impl ShutdownSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(&[("shutdown.grace_secs", self.grace_secs)])?;
        if self.drain_secs >= self.grace_secs {
            return invalid(format!(
                "shutdown.drain_secs ({}) must be below shutdown.grace_secs ({})",
                self.drain_secs, self.grace_secs
            ));
        }
        Ok(())
    }
}
