//! Settings: defaults (`defaults.toml`), then a TOML file, then
//! `FLASHSALE__SECTION__KEY` environment overrides (`layers.rs`), validated once at
//! start. Secrets are wrapped so they never print.
//!
//! One file per section, each with its type and its own checks (`validate`); URLs and
//! addresses are parsed into typed values ([`HttpUrl`], [`IpNet`], [`RedisUrl`]).
//! What relates two sections is checked here, in [`Settings::validate`].
//!
//! Layout: `http` (public and admin listeners), `auth`, `pod` (the fleet registry and
//! the timing of a silent pod), `shards` (catalog and shards), `inventory`, `queue`,
//! `events`, `limits`, `embedded`, `notifications`, `payments`, `telemetry`, `runtime`
//! (supervision and shutdown).

mod auth;
mod embedded;
mod events;
mod http;
mod inventory;
mod layers;
mod limits;
mod net;
mod notifications;
mod payments;
mod pod;
mod queue;
mod redis;
mod runtime;
mod shards;
mod telemetry;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::Path;

use serde::Deserialize;

pub use auth::{AuthSettings, MIN_JWT_SECRET};
pub use embedded::EmbeddedSettings;
pub use events::{EventSettings, KafkaProperties};
pub use http::{AdminSettings, HttpSettings, MIN_ADMIN_TOKEN};
pub use inventory::InventorySettings;
pub use limits::LimitSettings;
pub use net::{HttpUrl, IpNet};
pub use notifications::NotificationSettings;
pub use payments::PaymentSettings;
pub use pod::{InFlightTiming, PodSettings, CLOCK_SKEW_MS};
pub use queue::{QueueKind, QueueSettings, AMQP_FRAME_MAX};
pub use redis::{RedisUrl, SentinelUrl};
pub use runtime::{ShutdownSettings, SupervisionSettings};
pub use shards::{CatalogSettings, ShardSettings};
pub use telemetry::TelemetrySettings;

/// Every setting and its default: the single source of defaults.
const DEFAULTS: &str = include_str!("defaults.toml");

/// A value that must never appear in logs or `Debug` output.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {source}")]
    Parse {
        path: String,
        source: Box<toml::de::Error>,
    },
    #[error("environment variable {name}: {message}")]
    Env { name: String, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A section's checks fail with this: `Err(ConfigError::Invalid(message))`.
fn invalid<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid(message.into()))
}

/// Checks that every named value is above zero.
fn positive(values: &[(&str, u64)]) -> Result<(), ConfigError> {
    match values.iter().find(|(_, value)| *value == 0) {
        Some((what, _)) => invalid(format!("{what} must be greater than zero")),
        None => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Cluster,
    Embedded,
}

/// What one process runs (`flashsale serve --role`). `all` is the whole engine in one
/// process; a fleet splits it: `api` pods take orders, `worker` pods persist and
/// publish them. Roles other than `all` need cluster mode (shared services).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The public listener, the inventory partitions, the order publishers and the
    /// reconciler (and the catalog and shard actors that reads and logins need).
    Api,
    /// The order and notification consumers, the shard actors, the outbox relays and
    /// the event consumers; the admin listener only.
    Worker,
    #[default]
    All,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Api => "api",
            Role::Worker => "worker",
            Role::All => "all",
        }
    }

    /// Whether this role takes orders (public listener, publishers, reconciler).
    pub fn takes_orders(self) -> bool {
        self != Role::Worker
    }

    /// Whether this role persists orders and publishes events (consumers, relays).
    pub fn persists(self) -> bool {
        self != Role::Api
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "api" => Ok(Role::Api),
            "worker" => Ok(Role::Worker),
            "all" => Ok(Role::All),
            other => Err(format!("role must be api, worker or all, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub mode: Mode,
    pub role: Role,
    pub pod: PodSettings,
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub auth: AuthSettings,
    pub catalog: CatalogSettings,
    pub shards: ShardSettings,
    pub inventory: InventorySettings,
    pub queue: QueueSettings,
    pub limits: LimitSettings,
    pub supervision: SupervisionSettings,
    pub embedded: EmbeddedSettings,
    pub notifications: NotificationSettings,
    pub payments: PaymentSettings,
    pub telemetry: TelemetrySettings,
    pub events: EventSettings,
    pub shutdown: ShutdownSettings,
}

impl Settings {
    /// Defaults, then `file` when given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut tree: toml::Table = DEFAULTS.parse().expect("built-in defaults are valid TOML");
        if let Some(path) = file {
            layers::merge(&mut tree, layers::read_file(path)?);
        }
        layers::apply_env(&mut tree, env)?;
        let settings: Settings = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(layers::with_setting(&e)))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Each section's own checks, then the rules that relate sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let cluster = self.mode == Mode::Cluster;
        self.http.validate()?;
        self.admin.validate()?;
        self.auth.validate()?;
        self.pod.validate()?;
        self.shards.validate(cluster)?;
        self.catalog.validate(cluster)?;
        self.inventory.validate(cluster)?;
        self.queue.validate(cluster)?;
        self.limits.validate()?;
        self.shutdown.validate()?;
        self.supervision.validate()?;
        self.embedded.validate()?;
        self.notifications.validate()?;
        self.payments.validate()?;
        self.events.validate(cluster)?;
        self.validate_across()
    }

    /// The rules that relate one section to another.
    fn validate_across(&self) -> Result<(), ConfigError> {
        if self.role != Role::All && self.mode != Mode::Cluster {
            return invalid(format!(
                "role {} needs cluster mode: an embedded process keeps its queue and inventory to itself",
                self.role.as_str()
            ));
        }
        let released = self.in_flight_timing().released_after_ms;
        if (self.pod.forget_after_secs as i64) * 1000 < released {
            return invalid(format!(
                "pod.forget_after_secs must not be below {} s: a silent pod's row is kept until what it held is surely back in the queue (pod.gone_after_secs + limits.call_timeout_ms + 3 x queue.heartbeat_secs + 1 s)",
                (released + 999) / 1000
            ));
        }
        Ok(())
    }

    pub fn shard_count(&self) -> usize {
        match self.mode {
            Mode::Cluster => self.shards.urls.len(),
            Mode::Embedded => self.embedded.shards,
        }
    }

    pub fn partition_count(&self) -> usize {
        match self.mode {
            Mode::Cluster => self.inventory.urls.len(),
            Mode::Embedded => self.embedded.partitions,
        }
    }
}
