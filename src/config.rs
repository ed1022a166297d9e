//! Settings: defaults, then a TOML file, then `FLASHSALE__SECTION__KEY` environment
//! overrides, validated once at start. Secrets are wrapped so they never print.
//!
//! The layering is ours (`merge`, `parse_env_value`, `set_path`: some sixty lines), not
//! figment's or config's. figment's `Env` reads only the process environment, so
//! `load_with_env` would need a provider of our own, and it brings a second TOML parser
//! and a proc-macro crate. config takes injected pairs and is light, but reads an
//! override as a plain string: a list given as TOML (`FLASHSALE__SHARDS__URLS='["…"]'`,
//! as README documents) is refused, and with number parsing on, a string setting such
//! as `"007"` becomes `"7"`. Either would replace little code and change what users see.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use crate::actors::inventory::sentinel::SentinelUrl;

/// The shortest admin token accepted, configured or kept in a file.
pub const MIN_ADMIN_TOKEN: usize = 16;
/// The shortest JWT signing key accepted, configured or kept in a file.
pub const MIN_JWT_SECRET: usize = 32;

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
    pub telemetry: TelemetrySettings,
    pub events: EventSettings,
    pub shutdown: ShutdownSettings,
}

/// How this process appears in the fleet registry (the catalog database's `pods`
/// table): its id, the admin URL other pods reach it at, and how often it heartbeats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSettings {
    /// Empty: hostname-pid.
    pub id: String,
    /// Empty: `http://` + the admin listener's address (the hostname when it listens on
    /// every interface).
    pub admin_url: String,
    pub heartbeat_secs: u64,
    /// A pod whose heartbeat is older than this shows as `gone`.
    pub gone_after_secs: u64,
    /// A gone pod is forgotten (its row deleted) after this long.
    pub forget_after_secs: u64,
    /// Where another pod's admin API may be: the fleet view sends the admin token only
    /// to an admin URL whose host is (or resolves only to) addresses in these ranges.
    pub peer_networks: Vec<IpNet>,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSettings {
    /// Kafka bootstrap servers (cluster mode). Embedded mode writes the local event log.
    pub brokers: String,
    /// Prepended to every topic name (lets deployments share one Kafka cluster).
    pub topic_prefix: String,
    /// Prefix of the consumer group ids (`{group_prefix}-analytics`, …).
    pub group_prefix: String,
    pub order_partitions: i32,
    pub user_partitions: i32,
    pub product_partitions: i32,
    /// Replicas of each topic created at start (1 on a single broker).
    pub replication_factor: i32,
    /// Most outbox rows one relay publishes per round.
    pub relay_batch: usize,
    /// How often a relay looks for outbox rows nobody told it about (rows committed by
    /// another pod); its own database's actor wakes it on every commit.
    pub relay_every_ms: u64,
    /// Most events one consumer takes per round.
    pub consumer_batch: usize,
    /// How long a woken relay waits before its round, and an event consumer that found
    /// a few events waits for more: rounds (reads, produce requests, transactions,
    /// offset commits) then serve many events each. Adds to the events' lag only.
    pub linger_ms: u64,
    /// A produced event not acknowledged by the broker after this long fails the relay
    /// (which is then restarted by its supervisor and sends the row again).
    pub delivery_timeout_ms: u64,
    /// Sent outbox rows are deleted after this long.
    pub outbox_retention_secs: u64,
    /// librdkafka properties for every Kafka client (`"security.protocol" = "SSL"`, …),
    /// then for the relays' producers and for the consumers only; they override
    /// flashsale's own. A key's `_` stand for its dots, so that the environment can
    /// name them: `FLASHSALE__EVENTS__PRODUCER__LINGER_MS=20` sets `linger.ms`.
    #[serde(default)]
    pub kafka: KafkaProperties,
    #[serde(default)]
    pub producer: KafkaProperties,
    #[serde(default)]
    pub consumer: KafkaProperties,
}

/// librdkafka properties by name; TOML numbers and booleans are given as their text.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "std::collections::BTreeMap<String, toml::Value>")]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl TryFrom<std::collections::BTreeMap<String, toml::Value>> for KafkaProperties {
    type Error = String;

    fn try_from(map: std::collections::BTreeMap<String, toml::Value>) -> Result<Self, String> {
        map.into_iter()
            .map(|(key, value)| match value {
                toml::Value::Table(_) | toml::Value::Array(_) => Err(format!(
                    "Kafka property {key:?} must be one value; quote a dotted name: \"linger.ms\" = 20"
                )),
                v => Ok((key.replace('_', "."), toml_text(&v))),
            })
            .collect::<Result<_, _>>()
            .map(Self)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// OTLP/HTTP traces endpoint (for example http://jaeger:4318/v1/traces); none: no export.
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSettings {
    /// When set, every order confirmation is also POSTed here as JSON (at least once;
    /// the `Idempotency-Key` header carries the order id).
    pub webhook_url: Option<String>,
    pub webhook_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// Where embedded mode keeps its SQLite files and its admin token.
    pub data_dir: std::path::PathBuf,
    pub shards: usize,
    pub partitions: usize,
}

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

/// An address range in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a lone address is the
/// range of that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address (a dual-stack listener).
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        // Both as the top bits of 128, so that the prefix counts from the left.
        let bits = |a: std::net::IpAddr| match a {
            V4(a) => (u128::from(u32::from(a)) << 96, true),
            V6(a) => (u128::from(a), false),
        };
        let ((net, v4), (ip, ip_v4)) = (bits(self.addr), bits(ip));
        if v4 != ip_v4 {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        net & mask == ip & mask
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or a CIDR range such as 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(bad)?,
            None => most,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogSettings {
    pub url: Secret,
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
    /// transaction (see `db::POOLED`), and the statement timeout is the pooler's to set.
    pub transaction_pooling: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySettings {
    /// One Redis URL per inventory partition.
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub url: Secret,
    /// The type of queue declared: quorum (replicated, RabbitMQ's choice for data that
    /// must not be lost) or classic. A queue that exists already keeps its type.
    pub kind: QueueKind,
    pub orders_queue: String,
    pub notifications_queue: String,
    pub prefetch: u16,
    pub publishers: usize,
    pub order_consumers: usize,
    pub notification_consumers: usize,
    pub max_batch: usize,
    /// How long a consumer's batch waits for more messages after its first: at a
    /// moderate rate one round then persists many orders (one claim pipeline, one shard
    /// transaction, one confirm, one acknowledgement) instead of one or two. It delays
    /// persistence, never the buyer's answer.
    pub linger_ms: u64,
    /// How long the broker may take to connect, confirm or acknowledge before the
    /// actor waiting on it fails (and is restarted).
    pub deadline_ms: u64,
    /// The AMQP heartbeat timeout every connection asks for (it overrides one in
    /// `url`). The broker closes a connection silent for about this long and gives
    /// what its consumers held back to the queue; a partition that lost its state
    /// counts on that for a pod that stopped answering (a frozen VM, SIGSTOP).
    pub heartbeat_secs: u64,
}

/// How far apart the fleet's clocks may be (NTP keeps them far closer): a heartbeat
/// counts as later than a moment on another pod's clock only this much later.
pub const CLOCK_SKEW_MS: i64 = 1_000;

/// How long the fleet's silences last, for a rebuild that waits on what pods hold
/// ([`crate::actors::inflight`]).
#[derive(Debug, Clone, Copy)]
pub struct InFlightTiming {
    /// A message given up is held this long: RabbitMQ closes a connection silent for
    /// 2 to 3 heartbeat timeouts and only then gives back what it held.
    pub give_back: std::time::Duration,
    /// A pod whose registry has not published for this long takes no more orders
    /// (its consumers fail, and the broker takes their messages back).
    pub unheard_after_ms: i64,
    /// A pod silent for this long since its last heartbeat holds nothing: frozen (a
    /// heartbeat's interval at most after its last one), or alive but unheard (it
    /// stopped taking orders, its batch under way ends within a call's deadline),
    /// then given back by the broker.
    pub released_after_ms: i64,
}

impl Settings {
    pub fn in_flight_timing(&self) -> InFlightTiming {
        let give_back = 3 * self.queue.heartbeat_secs as i64 * 1000 + CLOCK_SKEW_MS;
        let p = &self.pod;
        let unheard_after_ms = p.gone_after_secs as i64 * 1000;
        let stopping = unheard_after_ms + self.limits.call_timeout_ms as i64;
        let silent = (p.heartbeat_secs as i64 * 1000).max(stopping);
        InFlightTiming {
            give_back: std::time::Duration::from_millis(give_back as u64),
            unheard_after_ms,
            released_after_ms: silent + give_back,
        }
    }
}

/// The largest AMQP frame asked for. The client keeps two buffers of 32 frames per
/// connection for their whole life: 8 MiB a connection at RabbitMQ's 128 KiB, 1 MiB at
/// this. Orders and notifications are far smaller; a larger message takes several frames.
pub const AMQP_FRAME_MAX: u32 = 16 * 1024;

impl QueueSettings {
    /// `url` with the heartbeat timeout this deployment counts on, and frames of at
    /// most [`AMQP_FRAME_MAX`] unless the URL asks for its own `frame_max`.
    pub fn amqp_url(&self) -> String {
        match self.url.expose().parse::<lapin::uri::AMQPUri>() {
            Ok(mut uri) => {
                uri.query.heartbeat = Some(self.heartbeat_secs as u16);
                uri.query.frame_max.get_or_insert(AMQP_FRAME_MAX);
                uri.to_string()
            }
            // Checked at start: reached only by settings that were never validated.
            Err(_) => self.url.expose().to_string(),
        }
    }
}

/// The type of a RabbitMQ queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    Quorum,
    Classic,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }

    pub fn other(self) -> QueueKind {
        match self {
            QueueKind::Quorum => QueueKind::Classic,
            QueueKind::Classic => QueueKind::Quorum,
        }
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisionSettings {
    /// More restarts than this within `window_secs` escalate to the parent.
    pub max_restarts: usize,
    pub window_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

const DEFAULTS: &str = r#"
mode = "embedded"
role = "all"

[pod]
id = ""
admin_url = ""
heartbeat_secs = 5
gone_after_secs = 15
forget_after_secs = 600
peer_networks = ["127.0.0.0/8", "::1/128"]

[http]
listen = "0.0.0.0:8080"
workers = 2
body_limit = 16384
body_timeout_ms = 10000
trusted_proxies = []

[admin]
listen = "127.0.0.1:9090"
metrics_auth = false

[auth]
token_ttl_secs = 3600
hash_wait_ms = 2000
hash_waiters = 256

[catalog]
url = ""

[shards]
urls = []
replica_urls = []
replica_max_lag_ms = 1000
pool_size = 3
max_batch = 1000
transaction_pooling = false

[inventory]
urls = []
key_prefix = "fs"
max_batch = 512
reconcile_after_ms = 15000
reconcile_every_ms = 5000
idempotency_ttl_secs = 86400
product_cache_ttl_secs = 3600

[queue]
url = ""
kind = "quorum"
orders_queue = "flashsale.orders"
notifications_queue = "flashsale.notifications"
prefetch = 500
publishers = 2
order_consumers = 2
notification_consumers = 1
max_batch = 1000
linger_ms = 20
deadline_ms = 5000
heartbeat_secs = 10

[limits]
rate_per_minute = 10
orders_per_ip_per_minute = 0
logins_per_account_per_address_per_minute = 10
logins_per_account_per_minute = 100
auth_per_ip_per_minute = 120
inbox_capacity = 8192
call_timeout_ms = 3000
statement_timeout_ms = 10000
max_quantity = 10000

[shutdown]
drain_secs = 5
grace_secs = 25

[notifications]
webhook_timeout_ms = 5000

[telemetry]
service_name = "flashsale"

[events]
brokers = "127.0.0.1:9092"
topic_prefix = ""
group_prefix = "flashsale"
order_partitions = 12
user_partitions = 8
product_partitions = 8
replication_factor = 1
relay_batch = 1000
relay_every_ms = 500
consumer_batch = 1000
linger_ms = 20
delivery_timeout_ms = 10000
outbox_retention_secs = 3600

[embedded]
data_dir = "data"
shards = 4
partitions = 2

[supervision]
max_restarts = 10
window_secs = 30
backoff_base_ms = 100
backoff_max_ms = 10000
"#;

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
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: shown.clone(),
                source,
            })?;
            let overlay: toml::Table = text.parse().map_err(|e| ConfigError::Parse {
                path: shown,
                source: Box::new(e),
            })?;
            merge(&mut tree, overlay);
        }
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("FLASHSALE__") else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            set_path(&mut tree, &path, parse_env_value(&value)).map_err(|message| {
                ConfigError::Env {
                    name: name.clone(),
                    message,
                }
            })?;
        }
        let settings: Settings = toml::Value::Table(tree)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        settings.validate()?;
        Ok(settings)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        for (what, addr) in [
            ("http.listen", &self.http.listen),
            ("admin.listen", &self.admin.listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return bad(format!(
                    "{what} must be HOST:PORT with a numeric host, got {addr:?}"
                ));
            }
        }
        if let Some(token) = &self.admin.token {
            if token.expose().len() < MIN_ADMIN_TOKEN {
                return bad(format!(
                    "admin.token must be at least {MIN_ADMIN_TOKEN} characters"
                ));
            }
        }
        if let Some(secret) = &self.auth.jwt_secret {
            if secret.expose().len() < MIN_JWT_SECRET {
                return bad(format!(
                    "auth.jwt_secret must be at least {MIN_JWT_SECRET} characters"
                ));
            }
        }
        if self.role != Role::All && self.mode != Mode::Cluster {
            return bad(format!(
                "role {} needs cluster mode: an embedded process keeps its queue and inventory to itself",
                self.role.as_str()
            ));
        }
        if !self.pod.admin_url.is_empty()
            && !self.pod.admin_url.starts_with("http://")
            && !self.pod.admin_url.starts_with("https://")
        {
            return bad("pod.admin_url must be an http:// or https:// URL".into());
        }
        if self.pod.id.len() > 200
            || self
                .pod
                .id
                .contains(|c: char| c == '/' || c.is_whitespace())
        {
            return bad("pod.id must be at most 200 characters, without spaces or slashes".into());
        }
        if self.pod.heartbeat_secs == 0 || self.pod.gone_after_secs <= self.pod.heartbeat_secs {
            return bad(format!(
                "pod.gone_after_secs ({}) must be above pod.heartbeat_secs ({}), which must be above zero",
                self.pod.gone_after_secs, self.pod.heartbeat_secs
            ));
        }
        if self.pod.forget_after_secs < self.pod.gone_after_secs {
            return bad("pod.forget_after_secs must not be below pod.gone_after_secs".into());
        }
        let released = self.in_flight_timing().released_after_ms;
        if (self.pod.forget_after_secs as i64) * 1000 < released {
            return bad(format!(
                "pod.forget_after_secs must not be below {} s: a silent pod's row is kept until what it held is surely back in the queue (pod.gone_after_secs + limits.call_timeout_ms + 3 x queue.heartbeat_secs + 1 s)",
                (released + 999) / 1000
            ));
        }
        if usize::from(self.queue.prefetch) > self.queue.max_batch {
            return bad("queue.prefetch must not be above queue.max_batch: a consumer reads every message it is sent".into());
        }
        if self.mode == Mode::Cluster {
            if self.shards.urls.is_empty() {
                return bad("shards.urls must name at least one PostgreSQL database".into());
            }
            if !self.shards.replica_urls.is_empty()
                && self.shards.replica_urls.len() != self.shards.urls.len()
            {
                return bad("shards.replica_urls must be empty or have one entry per shard".into());
            }
            for url in &self.shards.urls {
                if !url.expose().starts_with("postgres://")
                    && !url.expose().starts_with("postgresql://")
                {
                    return bad("every shards.urls entry must be a postgres:// URL".into());
                }
            }
            if !self.catalog.url.expose().starts_with("postgres") {
                return bad("catalog.url must be a postgres:// URL".into());
            }
            if self.inventory.urls.is_empty() {
                return bad("inventory.urls must name at least one Redis server".into());
            }
            for url in &self.inventory.urls {
                if let Some(Err(e)) = SentinelUrl::parse(url.expose()) {
                    return bad(format!("inventory.urls: {e}"));
                }
                if !url.expose().starts_with("redis://")
                    && !url.expose().starts_with("redis+sentinel://")
                {
                    return bad(
                        "every inventory.urls entry must be a redis:// or redis+sentinel:// URL"
                            .into(),
                    );
                }
            }
            if !self.queue.url.expose().starts_with("amqp://") {
                return bad("queue.url must be an amqp:// URL".into());
            }
            if let Err(e) = self.queue.url.expose().parse::<lapin::uri::AMQPUri>() {
                return bad(format!("queue.url is not an AMQP URL: {e}"));
            }
            if !(1..=600).contains(&self.queue.heartbeat_secs) {
                return bad("queue.heartbeat_secs must be between 1 and 600".into());
            }
        }
        let positive = [
            ("http.workers", self.http.workers),
            ("http.body_limit", self.http.body_limit),
            ("shards.max_batch", self.shards.max_batch),
            ("inventory.max_batch", self.inventory.max_batch),
            ("queue.publishers", self.queue.publishers),
            ("queue.order_consumers", self.queue.order_consumers),
            (
                "queue.notification_consumers",
                self.queue.notification_consumers,
            ),
            ("queue.max_batch", self.queue.max_batch),
            ("queue.deadline_ms", self.queue.deadline_ms as usize),
            ("shutdown.grace_secs", self.shutdown.grace_secs as usize),
            (
                "limits.statement_timeout_ms",
                self.limits.statement_timeout_ms as usize,
            ),
            ("queue.prefetch", self.queue.prefetch as usize),
            ("limits.inbox_capacity", self.limits.inbox_capacity),
            (
                "limits.rate_per_minute",
                self.limits.rate_per_minute as usize,
            ),
            ("limits.max_quantity", self.limits.max_quantity as usize),
            (
                "limits.logins_per_account_per_minute",
                self.limits.logins_per_account_per_minute as usize,
            ),
            (
                "limits.logins_per_account_per_address_per_minute",
                self.limits.logins_per_account_per_address_per_minute as usize,
            ),
            ("http.body_timeout_ms", self.http.body_timeout_ms as usize),
            ("shards.pool_size", self.shards.pool_size as usize),
            ("embedded.shards", self.embedded.shards),
            ("embedded.partitions", self.embedded.partitions),
            ("events.relay_batch", self.events.relay_batch),
            ("events.consumer_batch", self.events.consumer_batch),
            ("events.relay_every_ms", self.events.relay_every_ms as usize),
            (
                "events.delivery_timeout_ms",
                self.events.delivery_timeout_ms as usize,
            ),
        ];
        for (what, value) in positive {
            if value == 0 {
                return bad(format!("{what} must be greater than zero"));
            }
        }
        if self.shutdown.drain_secs >= self.shutdown.grace_secs {
            return bad(format!(
                "shutdown.drain_secs ({}) must be below shutdown.grace_secs ({})",
                self.shutdown.drain_secs, self.shutdown.grace_secs
            ));
        }
        if let Some(url) = &self.notifications.webhook_url {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return bad("notifications.webhook_url must be an http:// or https:// URL".into());
            }
        }
        if self.inventory.key_prefix.is_empty()
            || self.inventory.key_prefix.contains(char::is_whitespace)
        {
            return bad("inventory.key_prefix must be a non-empty word".into());
        }
        for (what, n) in [
            ("events.order_partitions", self.events.order_partitions),
            ("events.user_partitions", self.events.user_partitions),
            ("events.product_partitions", self.events.product_partitions),
            ("events.replication_factor", self.events.replication_factor),
        ] {
            if n < 1 {
                return bad(format!("{what} must be at least 1"));
            }
        }
        if self.mode == Mode::Cluster && self.events.brokers.trim().is_empty() {
            return bad("events.brokers must name at least one Kafka broker".into());
        }
        if self.supervision.backoff_base_ms > self.supervision.backoff_max_ms {
            return bad("supervision.backoff_base_ms must not exceed backoff_max_ms".into());
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

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// An override is read as a TOML value when it parses as one (numbers, booleans,
/// arrays), and as a plain string otherwise.
fn parse_env_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    }
}

fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty key".into()),
        [leaf] => {
            if leaf.is_empty() {
                return Err("empty key".into());
            }
            // A string setting stays a string even when the text looks like a number.
            let value = match (tree.get(leaf), value) {
                (Some(toml::Value::String(_)), v) if !v.is_str() => {
                    toml::Value::String(toml_text(&v))
                }
                (_, v) => v,
            };
            tree.insert(leaf.clone(), value);
            Ok(())
        }
        [section, rest @ ..] => match tree
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(t) => set_path(t, rest, value),
            _ => Err(format!("{section} is not a section")),
        },
    }
}

fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_queue_url_asks_for_small_frames_unless_it_names_its_own() {
        let url = |given: &str| {
            let s = Settings::load_with_env(None, env(&[("FLASHSALE__QUEUE__URL", given)]))
                .expect("a valid queue URL");
            s.queue
                .amqp_url()
                .parse::<lapin::uri::AMQPUri>()
                .expect("a URL")
        };
        let plain = url("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(plain.query.frame_max, Some(AMQP_FRAME_MAX));
        assert_eq!(plain.query.heartbeat, Some(10));
        let own = url("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072");
        assert_eq!(
            own.query.frame_max,
            Some(131_072),
            "the operator's frame size stays"
        );
    }

    #[test]
    fn trusted_proxies_are_addresses_or_cidr_ranges() {
        let s = Settings::load_with_env(
            None,
            env(&[(
                "FLASHSALE__HTTP__TRUSTED_PROXIES",
                r#"["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"]"#,
            )]),
        )
        .expect("ranges and addresses are accepted");
        let nets = &s.http.trusted_proxies;
        let trusted = |ip: &str| nets.iter().any(|n| n.contains(ip.parse().unwrap()));
        assert!(trusted("10.0.0.1") && trusted("10.255.255.255"));
        assert!(
            trusted("::ffff:10.2.3.4"),
            "an IPv4 peer on a dual-stack listener"
        );
        assert!(trusted("192.168.1.7") && !trusted("192.168.1.8"));
        assert!(trusted("fd12:3456::1") && trusted("::1"));
        assert!(!trusted("11.0.0.1") && !trusted("fe80::1") && !trusted("127.0.0.1"));
        let everything: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(everything.contains("203.0.113.9".parse().unwrap()));
        assert!(!everything.contains("2001:db8::1".parse().unwrap()));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "fd00::/129",
            "proxy",
            "10.0.0.1/",
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            assert!(err.contains("CIDR"), "{bad}: {err}");
        }
    }

    #[test]
    fn shipped_cluster_config_parses_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.toml");
        let s = Settings::load_with_env(Some(&path), env(&[])).expect("cluster.toml is valid");
        assert_eq!(s.mode, Mode::Cluster);
        assert_eq!(s.shard_count(), 4);
        assert!(s.partition_count() >= 2);
    }

    #[test]
    fn shipped_topology_configs_parse_and_validate() {
        for (file, pooled, sentinel) in [
            ("config/cluster-replicas.toml", false, false),
            ("config/cluster-pgbouncer.toml", true, false),
            ("config/cluster-sentinel.toml", false, true),
        ] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let s = Settings::load_with_env(Some(&path), env(&[])).expect(file);
            assert_eq!(s.shard_count(), 4, "{file}");
            assert_eq!(s.shards.transaction_pooling, pooled, "{file}");
            let sentinels = s
                .inventory
                .urls
                .iter()
                .filter(|u| u.expose().starts_with("redis+sentinel://"));
            assert_eq!(sentinels.count() > 0, sentinel, "{file}");
        }
        let bad = Settings::load_with_env(
            None,
            env(&[
                ("FLASHSALE__MODE", "cluster"),
                ("FLASHSALE__CATALOG__URL", "postgres://h/c"),
                ("FLASHSALE__SHARDS__URLS", r#"["postgres://h/s"]"#),
                ("FLASHSALE__QUEUE__URL", "amqp://h"),
                (
                    "FLASHSALE__INVENTORY__URLS",
                    r#"["redis+sentinel://h:26379"]"#,
                ),
            ]),
        );
        let message = bad.unwrap_err().to_string();
        assert!(message.contains("names the monitored service"), "{message}");
    }

    #[test]
    fn defaults_are_embedded_and_valid() {
        let s = Settings::load_with_env(None, env(&[])).unwrap();
        assert_eq!(s.mode, Mode::Embedded);
        assert!(s.admin.token.is_none(), "no built-in admin credential");
    }

    #[test]
    fn environment_overrides_file_values() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("FLASHSALE__HTTP__LISTEN", "127.0.0.1:0"),
                ("FLASHSALE__ADMIN__TOKEN", "0123456789abcdef0123"),
                ("FLASHSALE__LIMITS__RATE_PER_MINUTE", "25"),
                ("FLASHSALE__INVENTORY__KEY_PREFIX", "123"),
            ]),
        )
        .unwrap();
        assert_eq!(s.http.listen, "127.0.0.1:0");
        assert_eq!(s.admin.token.unwrap().expose(), "0123456789abcdef0123");
        assert_eq!(s.limits.rate_per_minute, 25);
        assert_eq!(s.inventory.key_prefix, "123");
    }

    #[test]
    fn bad_values_are_reported_clearly() {
        let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__LISTEN", "nowhere")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
        let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let err = Settings::load_with_env(None, env(&[("FLASHSALE__ADMIN__TOKEN", "short")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("admin.token"), "{err}");
        let err = Settings::load_with_env(
            None,
            env(&[
                ("FLASHSALE__SHUTDOWN__DRAIN_SECS", "30"),
                ("FLASHSALE__SHUTDOWN__GRACE_SECS", "25"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("shutdown.drain_secs"), "{err}");
        let err = Settings::load_with_env(None, env(&[("FLASHSALE__QUEUE__DEADLINE_MS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.deadline_ms"), "{err}");
    }

    #[test]
    fn kafka_properties_come_from_the_file_and_the_environment() {
        let path =
            std::env::temp_dir().join(format!("flashsale-kafka-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[events.kafka]\n\"security.protocol\" = \"plaintext\"\n\
             [events.producer]\n\"linger.ms\" = 20\n\"enable.idempotence\" = true\n",
        )
        .unwrap();
        let s = Settings::load_with_env(
            Some(&path),
            env(&[("FLASHSALE__EVENTS__CONSUMER__FETCH_WAIT_MAX_MS", "100")]),
        )
        .unwrap();
        assert_eq!(s.events.kafka.0, env(&[("security.protocol", "plaintext")]));
        assert_eq!(
            s.events.producer.0,
            env(&[("enable.idempotence", "true"), ("linger.ms", "20")])
        );
        assert_eq!(s.events.consumer.0, env(&[("fetch.wait.max.ms", "100")]));

        // An unquoted dotted name is a TOML table, not a property: say how to write it.
        std::fs::write(&path, "[events.producer]\nlinger.ms = 20\n").unwrap();
        let err = Settings::load_with_env(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("\"linger\"") && err.contains("quote"), "{err}");
    }

    #[test]
    fn environment_lists_are_toml_arrays() {
        let s = Settings::load_with_env(
            None,
            env(&[
                ("FLASHSALE__MODE", "cluster"),
                ("FLASHSALE__CATALOG__URL", "postgres://db/catalog"),
                (
                    "FLASHSALE__SHARDS__URLS",
                    r#"["postgres://db/shard_0","postgres://db/shard_1"]"#,
                ),
                ("FLASHSALE__INVENTORY__URLS", r#"["redis://cache:6379/0"]"#),
                ("FLASHSALE__QUEUE__URL", "amqp://queue"),
                ("FLASHSALE__INVENTORY__KEY_PREFIX", "007"),
            ]),
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Cluster);
        assert_eq!(s.shard_count(), 2);
        assert_eq!(s.shards.urls[1].expose(), "postgres://db/shard_1");
        assert_eq!(s.partition_count(), 1);
        assert_eq!(s.inventory.key_prefix, "007");

        // A variable that goes below a value names itself.
        let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__LISTEN__PORT", "1")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("FLASHSALE__HTTP__LISTEN__PORT")
                && err.contains("listen is not a section"),
            "{err}"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2-hunter2-hunter2");
        assert_eq!(format!("{s:?}"), "Secret(****)");
    }
}
