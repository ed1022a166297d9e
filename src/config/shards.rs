//! `[catalog]` and `[shards]`: the PostgreSQL databases of cluster mode (embedded mode
//! keeps them as SQLite files, `[embedded]`).

use serde::Deserialize;

use super::net::is_postgres_url;
use super::{invalid, positive, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    pub url: Secret,
}

impl CatalogSettings {
    /// The URL is checked in cluster mode only (embedded mode does not use it).
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if cluster && !is_postgres_url(self.url.expose()) {
            return invalid("catalog.url must be a postgres:// URL");
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSettings {
    /// One primary URL per shard; the shard count is their number.
    pub urls: Vec<Secret>,
    /// Optional read replica per shard (same order; an empty string means none).
    pub replica_urls: Vec<Secret>,
    /// Reads leave a replica whose replay lags more than this behind its primary.
    pub replica_max_lag_ms: u64,
    pub pool_size: u32,
    /// Most orders written in one transaction.
    pub max_batch: usize,
    /// The catalog and shard URLs reach PostgreSQL through a pooler in transaction mode
    /// (PgBouncer `pool_mode = transaction`): statements are unnamed and each runs in a
    /// transaction (see `db::DbOptions`), and the statement timeout is the pooler's to
    /// set.
    pub transaction_pooling: bool,
}

impl ShardSettings {
    /// The URLs are checked in cluster mode only (embedded mode does not use them).
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if cluster {
            if self.urls.is_empty() {
                return invalid("shards.urls must name at least one PostgreSQL database");
            }
            if !self.replica_urls.is_empty() && self.replica_urls.len() != self.urls.len() {
                return invalid("shards.replica_urls must be empty or have one entry per shard");
            }
            if !self.urls.iter().all(|url| is_postgres_url(url.expose())) {
                return invalid("every shards.urls entry must be a postgres:// URL");
            }
            let replica = |url: &Secret| url.expose().is_empty() || is_postgres_url(url.expose());
            if !self.replica_urls.iter().all(replica) {
                return invalid(
                    "every shards.replica_urls entry must be a postgres:// URL or empty (no replica)",
                );
            }
        }
        positive(&[
            ("shards.max_batch", self.max_batch as u64),
            ("shards.pool_size", u64::from(self.pool_size)),
        ])
    }
}
