//! `[inventory]`: the Redis partitions of cluster mode (embedded mode keeps them in
//! process, `[embedded]`) and how their reservations are reconciled.

use serde::Deserialize;

use super::redis::RedisUrl;
use super::{invalid, positive, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySettings {
    /// One Redis URL per inventory partition: `redis://` or `redis+sentinel://`
    /// ([`RedisUrl`]).
    pub urls: Vec<Secret>,
    /// Prefix of every key this deployment writes.
    pub key_prefix: String,
    /// Most operations pipelined in one round trip.
    pub max_batch: usize,
    /// A reservation not yet published after this long is released by the reconciler.
    pub reconcile_after_ms: u64,
    pub reconcile_every_ms: u64,
    pub idempotency_ttl_secs: u64,
    pub product_cache_ttl_secs: u64,
}

impl InventorySettings {
    /// The URLs are checked in cluster mode only (embedded mode does not use them).
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if cluster {
            self.redis_urls()?;
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(char::is_whitespace) {
            return invalid("inventory.key_prefix must be a non-empty word");
        }
        positive(&[("inventory.max_batch", self.max_batch as u64)])
    }

    /// Every partition's Redis, parsed.
    pub fn redis_urls(&self) -> Result<Vec<RedisUrl>, ConfigError> {
        if self.urls.is_empty() {
            return invalid("inventory.urls must name at least one Redis server");
        }
        self.urls
            .iter()
            .map(|url| RedisUrl::parse(url.expose()))
            .collect::<Result<_, _>>()
            .or_else(|e| invalid(format!("inventory.urls: {e}")))
    }
}
