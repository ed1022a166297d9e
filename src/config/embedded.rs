//! `[embedded]`: where embedded mode keeps its SQLite files, and how many shards and
//! inventory partitions it runs.

use serde::Deserialize;

use super::{positive, ConfigError};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// Where embedded mode keeps its SQLite files and its admin token.
    pub data_dir: std::path::PathBuf,
    pub shards: usize,
    pub partitions: usize,
}

impl EmbeddedSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        positive(&[
            ("embedded.shards", self.shards as u64),
            ("embedded.partitions", self.partitions as u64),
        ])
    }
}
