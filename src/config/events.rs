//! `[events]`: domain events, through the outbox relays to Kafka (cluster mode) or to
//! the local event log (embedded mode), and the consumers that read them.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::layers::toml_text;
use super::{invalid, positive, ConfigError};

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

impl EventSettings {
    /// The brokers are checked in cluster mode only (embedded mode has no Kafka).
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        positive(&[
            ("events.relay_batch", self.relay_batch as u64),
            ("events.consumer_batch", self.consumer_batch as u64),
            ("events.relay_every_ms", self.relay_every_ms),
            ("events.delivery_timeout_ms", self.delivery_timeout_ms),
        ])?;
        for (what, n) in [
            ("events.order_partitions", self.order_partitions),
            ("events.user_partitions", self.user_partitions),
            ("events.product_partitions", self.product_partitions),
            ("events.replication_factor", self.replication_factor),
        ] {
            if n < 1 {
                return invalid(format!("{what} must be at least 1"));
            }
        }
        if cluster && self.brokers.trim().is_empty() {
            return invalid("events.brokers must name at least one Kafka broker");
        }
        Ok(())
    }
}

/// librdkafka properties by name; TOML numbers and booleans are given as their text.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(try_from = "BTreeMap<String, toml::Value>")]
pub struct KafkaProperties(pub Vec<(String, String)>);

impl TryFrom<BTreeMap<String, toml::Value>> for KafkaProperties {
    type Error = String;

    fn try_from(map: BTreeMap<String, toml::Value>) -> Result<Self, String> {
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
