//! Kafka through rdkafka: topic creation, the relays' idempotent producer, and the
//! consumers' group membership with manual commits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use ractor::ActorProcessingErr;

use super::{
    parse_envelope, Delivered, EventSink, EventSource, OutboxEvent, ORDER_EVENTS, PRODUCT_EVENTS,
    USER_EVENTS,
};
use crate::config::{EventSettings, KafkaProperties};
use crate::domain::now_ms;

/// Where librdkafka reports. It reports every failed reconnect, many lines a second
/// while a broker is down: the first of each 30 s is a warning, the rest are debug
/// lines and `flashsale_kafka_errors_total`.
#[derive(Default)]
pub struct KafkaContext {
    last_warning: AtomicI64,
}

impl KafkaContext {
    fn report(&self, what: std::fmt::Arguments<'_>) {
        metrics::counter!("flashsale_kafka_errors_total").increment(1);
        let now = now_ms();
        let last = self.last_warning.load(Ordering::Relaxed);
        if now - last >= 30_000
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!("Kafka: {what} (repeats are logged at debug for 30 s)");
        } else {
            tracing::debug!("Kafka: {what}");
        }
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => self.report(format_args!("{fac} {message}")),
            _ => tracing::debug!("librdkafka: {fac} {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.report(format_args!("{error}: {reason}"));
    }
}

impl ConsumerContext for KafkaContext {}

pub struct KafkaBus {
    brokers: String,
    prefix: String,
    group_prefix: String,
    partitions: [(&'static str, i32); 3],
    replication: i32,
    delivery_timeout: Duration,
    /// The operator's librdkafka properties: every client, producers, consumers.
    kafka: KafkaProperties,
    producer: KafkaProperties,
    consumer: KafkaProperties,
    /// The one producer every relay of this process publishes through, made by the
    /// first relay that needs it: one client's threads and connections instead of one
    /// per database, and the relays' batches share produce requests. A publish that
    /// fails drops it, so that the restarted relay makes a new one.
    shared: SharedProducer,
}

/// The shared producer and its generation: a relay that still holds an older one and
/// fails does not drop the new one another relay made meanwhile.
type SharedProducer = Arc<std::sync::Mutex<(u64, Option<FutureProducer<KafkaContext>>)>>;

impl KafkaBus {
    /// The bus of `s`, or why librdkafka refuses its client settings (an unknown or
    /// malformed property), so that a bad setting stops the start, not every relay.
    pub fn new(s: &EventSettings) -> Result<Self, String> {
        let bus = Self {
            brokers: s.brokers.clone(),
            prefix: s.topic_prefix.clone(),
            group_prefix: s.group_prefix.clone(),
            partitions: [
                (ORDER_EVENTS, s.order_partitions),
                (USER_EVENTS, s.user_partitions),
                (PRODUCT_EVENTS, s.product_partitions),
            ],
            replication: s.replication_factor,
            delivery_timeout: Duration::from_millis(s.delivery_timeout_ms),
            kafka: s.kafka.clone(),
            producer: s.producer.clone(),
            consumer: s.consumer.clone(),
            shared: SharedProducer::default(),
        };
        for (client, config) in [
            ("events.kafka", bus.admin_config()),
            ("events.producer", bus.producer_config()),
            ("events.consumer", bus.consumer_config("check")),
        ] {
            config
                .create_native_config()
                .map_err(|e| format!("{client}: {e}"))?;
        }
        Ok(bus)
    }

    /// flashsale's settings of every client, then the operator's, then `extra`.
    fn config(&self, own: &[(&str, String)], extra: &KafkaProperties) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", "flashsale")
            .set("socket.timeout.ms", "10000");
        for (key, value) in own {
            c.set(*key, value);
        }
        for (key, value) in self.kafka.0.iter().chain(&extra.0) {
            c.set(key, value);
        }
        c
    }

    fn admin_config(&self) -> ClientConfig {
        self.config(&[], &KafkaProperties::default())
    }

    fn producer_config(&self) -> ClientConfig {
        let own = [
            ("enable.idempotence", "true".into()),
            ("acks", "all".into()),
            ("linger.ms", "5".into()),
            ("queue.buffering.max.messages", "200000".into()),
            (
                "message.timeout.ms",
                self.delivery_timeout.as_millis().to_string(),
            ),
        ];
        self.config(&own, &self.producer)
    }

    fn consumer_config(&self, group: &str) -> ClientConfig {
        let own = [
            ("group.id", format!("{}-{group}", self.group_prefix)),
            ("enable.auto.commit", "false".into()),
            ("auto.offset.reset", "earliest".into()),
            ("session.timeout.ms", "10000".into()),
            ("enable.partition.eof", "false".into()),
            // A fetch returns at most this long after it was asked for, events or not.
            // Kafka answers as soon as there are events; the broker used on one machine
            // here (tansu) answers only after the wait, so this is its share of the lag
            // (100 ms), and how often idle consumers ask (25 ms cost it 9% of a core).
            ("fetch.wait.max.ms", "100".into()),
            // What a consumer fetches ahead of what it has handled, at most (librdkafka's
            // default is 64 MiB): a consumer slower than its topics for a while would
            // otherwise hold that much per process.
            ("queued.max.messages.kbytes", "8192".into()),
        ];
        self.config(&own, &self.consumer)
    }

    /// Creates the topics that do not exist yet, with the configured partition counts.
    pub async fn ensure_topics(&self) -> Result<(), ActorProcessingErr> {
        let admin: AdminClient<KafkaContext> = self
            .admin_config()
            .create_with_context(KafkaContext::default())?;
        let names: Vec<String> = self
            .partitions
            .iter()
            .map(|(t, _)| format!("{}{t}", self.prefix))
            .collect();
        let topics: Vec<NewTopic> = names
            .iter()
            .zip(&self.partitions)
            .map(|(name, (_, n))| {
                NewTopic::new(name, *n, TopicReplication::Fixed(self.replication))
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin.create_topics(&topics, &options).await? {
            match result {
                Ok(name) => tracing::info!(topic = %name, "created topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(format!("cannot create topic {name}: {code}").into())
                }
            }
        }
        Ok(())
    }

    pub async fn sink(&self) -> Result<KafkaSink, ActorProcessingErr> {
        self.ensure_topics().await?;
        let (generation, producer) = {
            let mut shared = self.shared.lock().expect("not poisoned");
            let (generation, producer) = &mut *shared;
            if producer.is_none() {
                *generation += 1;
                *producer = Some(
                    self.producer_config()
                        .create_with_context(KafkaContext::default())?,
                );
            }
            (*generation, producer.clone().expect("made above"))
        };
        Ok(KafkaSink {
            producer,
            prefix: self.prefix.clone(),
            shared: self.shared.clone(),
            generation,
        })
    }

    pub async fn source(
        &self,
        group: &str,
        topics: &[&str],
    ) -> Result<KafkaSource, ActorProcessingErr> {
        self.ensure_topics().await?;
        let consumer: StreamConsumer<KafkaContext> = self
            .consumer_config(group)
            .create_with_context(KafkaContext::default())?;
        let names: Vec<String> = topics
            .iter()
            .map(|t| format!("{}{t}", self.prefix))
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            prefix: self.prefix.clone(),
            positions: HashMap::new(),
        })
    }
}

pub struct KafkaSink {
    producer: FutureProducer<KafkaContext>,
    prefix: String,
    shared: SharedProducer,
    generation: u64,
}

#[ractor::async_trait]
impl EventSink for KafkaSink {
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), ActorProcessingErr> {
        let published = self.send_all(events).await;
        if published.is_err() {
            // Whatever broke it, the relay's restart starts from a new producer.
            let mut shared = self.shared.lock().expect("not poisoned");
            if shared.0 == self.generation {
                shared.1 = None;
            }
        }
        published
    }
}

impl KafkaSink {
    async fn send_all(&self, events: &[OutboxEvent]) -> Result<(), ActorProcessingErr> {
        let topics: Vec<String> = events
            .iter()
            .map(|e| format!("{}{}", self.prefix, e.topic))
            .collect();
        // Every event of the batch is in flight at once; the idempotent producer keeps
        // each partition's order and drops its own retries' duplicates.
        let mut deliveries = Vec::with_capacity(events.len());
        for (e, topic) in events.iter().zip(&topics) {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "event-id",
                value: Some(e.event_id.as_str()),
            });
            if let Some(tp) = &e.traceparent {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(tp.as_str()),
                });
            }
            let mut record = FutureRecord::to(topic)
                .key(e.key.as_str())
                .payload(e.payload.as_str())
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((e, _)) => return Err(e.into()),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => return Err(format!("delivery failed: {e}").into()),
                Err(_) => return Err("the producer was dropped".into()),
            }
        }
        Ok(())
    }
}

pub struct KafkaSource {
    consumer: Arc<StreamConsumer<KafkaContext>>,
    prefix: String,
    /// The next offset to commit, per (topic, partition), of what was polled.
    positions: HashMap<(String, i32), i64>,
}

impl Drop for KafkaSource {
    /// Closing a consumer leaves its group, and can block: an assignment still queued
    /// when it closes makes librdkafka wait forever (librdkafka issue 4884). The close
    /// runs on a thread of its own, after the last other holder (a commit in flight)
    /// is done, so that neither a restarting actor nor the runtime's shutdown waits on it.
    fn drop(&mut self) {
        let mut consumer = Arc::clone(&self.consumer);
        let closer = std::thread::Builder::new()
            .name("kafka-close".into())
            .spawn(move || loop {
                match Arc::try_unwrap(consumer) {
                    Ok(last) => return drop(last),
                    Err(shared) => {
                        consumer = shared;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        if let Err(e) = closer {
            tracing::warn!("closing the Kafka consumer here: no thread for it ({e})");
        }
    }
}

#[ractor::async_trait]
impl EventSource for KafkaSource {
    async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, ActorProcessingErr> {
        let mut out = Vec::new();
        let mut budget = wait;
        while out.len() < max {
            let message = match tokio::time::timeout(budget, self.consumer.recv()).await {
                Ok(m) => m?,
                Err(_) => break,
            };
            // After the first event, take only what is already here.
            budget = Duration::from_millis(2);
            let topic = message.topic().to_string();
            self.positions
                .insert((topic.clone(), message.partition()), message.offset() + 1);
            let Some(envelope) = parse_envelope(&topic, message.payload().unwrap_or_default())
            else {
                continue;
            };
            let traceparent = message.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "traceparent")
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
            let topic = topic
                .strip_prefix(self.prefix.as_str())
                .unwrap_or(&topic)
                .to_string();
            out.push(Delivered {
                topic,
                envelope,
                traceparent,
            });
        }
        Ok(out)
    }

    async fn commit(&mut self) -> Result<(), ActorProcessingErr> {
        if self.positions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in self.positions.drain() {
            tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    fn settings(pairs: &[(&str, &str)]) -> EventSettings {
        let env = pairs.iter().map(|(a, b)| (a.to_string(), b.to_string()));
        Settings::load_with_env(None, env).unwrap().events
    }

    #[test]
    fn operator_properties_override_flashsales_own_per_client() {
        let bus = KafkaBus::new(&settings(&[
            ("FLASHSALE__EVENTS__KAFKA__CLIENT_ID", "shop-eu"),
            ("FLASHSALE__EVENTS__PRODUCER__LINGER_MS", "20"),
            ("FLASHSALE__EVENTS__CONSUMER__FETCH_WAIT_MAX_MS", "100"),
        ]))
        .unwrap();
        let producer = bus.producer_config();
        let consumer = bus.consumer_config("analytics");
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("acks"), Some("all"), "the rest stays");
        assert_eq!(consumer.get("linger.ms"), None, "producer-only");
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(consumer.get("group.id"), Some("flashsale-analytics"));
        for c in [&producer, &consumer, &bus.admin_config()] {
            assert_eq!(c.get("client.id"), Some("shop-eu"), "every client");
        }
    }

    #[test]
    fn a_property_librdkafka_refuses_stops_the_start_with_its_name() {
        let err = KafkaBus::new(&settings(&[(
            "FLASHSALE__EVENTS__PRODUCER__LINGER_MSS",
            "20",
        )]))
        .err()
        .expect("an unknown property is refused");
        assert!(
            err.contains("events.producer") && err.contains("linger.mss"),
            "{err}"
        );
        let err = KafkaBus::new(&settings(&[(
            "FLASHSALE__EVENTS__KAFKA__SOCKET_TIMEOUT_MS",
            "soon",
        )]))
        .err()
        .expect("a malformed value is refused");
        assert!(err.contains("events.kafka"), "{err}");
    }
}
