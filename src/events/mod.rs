//! Domain events. Every event is one versioned JSON envelope
//! (`id`, `type`, `version`, `occurredAt`, `data`), written to an outbox table in the
//! same database transaction as the change it describes. One relay actor per database
//! ([`crate::actors::relay`]) publishes the outbox, in order, to Kafka ([`kafka`],
//! cluster mode) or to the local append-only log ([`log`], embedded mode); the event
//! consumers ([`crate::actors::event_consumers`]) read either the same way through
//! [`EventSource`].
//!
//! Keys keep each entity's events in order: an order's events share its id as key (one
//! partition), a user's their user id, a product's its id.

pub mod kafka;
pub mod log;

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::EventSettings;
use crate::domain::rfc3339;
use crate::domain::{OrderMessage, OrderStatus};

pub const ORDER_EVENTS: &str = "order-events";
pub const USER_EVENTS: &str = "user-events";
pub const PRODUCT_EVENTS: &str = "product-events";

/// The one version of every event type so far.
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    OrderCreated,
    OrderCompleted,
    OrderCancelled,
    OrderPaid,
    OrderExpired,
    UserRegistered,
    UserUpdated,
    ProductCreated,
    PriceChanged,
}

impl EventType {
    pub fn name(self) -> &'static str {
        match self {
            EventType::OrderCreated => "OrderCreated",
            EventType::OrderCompleted => "OrderCompleted",
            EventType::OrderCancelled => "OrderCancelled",
            EventType::OrderPaid => "OrderPaid",
            EventType::OrderExpired => "OrderExpired",
            EventType::UserRegistered => "UserRegistered",
            EventType::UserUpdated => "UserUpdated",
            EventType::ProductCreated => "ProductCreated",
            EventType::PriceChanged => "PriceChanged",
        }
    }

    pub fn topic(self) -> &'static str {
        match self {
            EventType::OrderCreated
            | EventType::OrderCompleted
            | EventType::OrderCancelled
            | EventType::OrderPaid
            | EventType::OrderExpired => ORDER_EVENTS,
            EventType::UserRegistered | EventType::UserUpdated => USER_EVENTS,
            EventType::ProductCreated | EventType::PriceChanged => PRODUCT_EVENTS,
        }
    }
}

/// The envelope every event travels in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u32,
    pub occurred_at: String,
    pub data: serde_json::Value,
}

impl Envelope {
    /// Milliseconds since the epoch of `occurredAt`, when it parses.
    pub fn occurred_ms(&self) -> Option<i64> {
        let t = humantime::parse_rfc3339_weak(&self.occurred_at).ok()?;
        let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
        Some(d.as_millis() as i64)
    }
}

/// An event as the outbox keeps it: `topic` is the logical name (the relay adds the
/// deployment's prefix), `payload` the serialised envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    pub event_id: String,
    pub topic: &'static str,
    pub key: String,
    pub payload: String,
    pub traceparent: Option<String>,
}

impl OutboxEvent {
    pub fn new(
        kind: EventType,
        key: impl Into<String>,
        occurred_ms: i64,
        data: serde_json::Value,
        traceparent: Option<String>,
    ) -> Self {
        let envelope = Envelope {
            id: uuid::Uuid::now_v7().to_string(),
            kind: kind.name().into(),
            version: VERSION,
            occurred_at: rfc3339(occurred_ms),
            data,
        };
        Self {
            event_id: envelope.id.clone(),
            topic: kind.topic(),
            key: key.into(),
            payload: serde_json::to_string(&envelope).expect("an envelope serialises"),
            traceparent,
        }
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Its owner cancelled it: the unit went back to the sale.
    Customer,
    /// Its reservation went stale before it was persisted: it was never sold.
    Released,
}

impl CancelReason {
    fn as_str(self) -> &'static str {
        match self {
            CancelReason::Customer => "customer",
            CancelReason::Released => "released",
        }
    }
}

fn order_data(order: &OrderMessage, status: &str) -> serde_json::Value {
    json!({
        "orderId": order.order_id,
        "userId": order.user_id,
        "productId": order.product_id,
        "quantity": order.quantity,
        "status": status,
        "createdAt": rfc3339(order.created_at),
    })
}

/// The events of an order persisted for the first time: `OrderCreated`, then
/// `OrderCompleted`, or `OrderCancelled` when its reservation had been released; an
/// order awaiting payment has only `OrderCreated` (with its `payBy`) until it is paid
/// or expires.
pub fn order_persisted(
    order: &OrderMessage,
    status: OrderStatus,
    pay_by: Option<i64>,
    at_ms: i64,
) -> Vec<OutboxEvent> {
    let trace = || order.traceparent.clone();
    let mut data = order_data(order, "pending");
    if let Some(pay_by) = pay_by {
        data["payBy"] = rfc3339(pay_by).into();
    }
    let created = OutboxEvent::new(
        EventType::OrderCreated,
        order.order_id.as_str(),
        order.created_at,
        data,
        trace(),
    );
    let outcome = match status {
        OrderStatus::Completed => OutboxEvent::new(
            EventType::OrderCompleted,
            order.order_id.as_str(),
            at_ms,
            order_data(order, "completed"),
            trace(),
        ),
        OrderStatus::AwaitingPayment => return vec![created],
        _ => order_cancelled(order, CancelReason::Released, at_ms),
    };
    vec![created, outcome]
}

/// The events of a payment that settled an order: `OrderPaid`, then `OrderCompleted`.
pub fn order_paid(order: &OrderMessage, payment: &str, at_ms: i64) -> [OutboxEvent; 2] {
    let mut paid = order_data(order, "completed");
    paid["paymentId"] = payment.into();
    paid["amountCents"] = json!(order.amount_cents);
    let trace = || order.traceparent.clone();
    [
        OutboxEvent::new(
            EventType::OrderPaid,
            order.order_id.as_str(),
            at_ms,
            paid,
            trace(),
        ),
        OutboxEvent::new(
            EventType::OrderCompleted,
            order.order_id.as_str(),
            at_ms,
            order_data(order, "completed"),
            trace(),
        ),
    ]
}

/// An order unpaid at its `payBy`: its units go back to the sale.
pub fn order_expired(order: &OrderMessage, pay_by: i64, at_ms: i64) -> OutboxEvent {
    let mut data = order_data(order, "expired");
    data["payBy"] = rfc3339(pay_by).into();
    OutboxEvent::new(
        EventType::OrderExpired,
        order.order_id.as_str(),
        at_ms,
        data,
        order.traceparent.clone(),
    )
}

pub fn order_cancelled(order: &OrderMessage, reason: CancelReason, at_ms: i64) -> OutboxEvent {
    let mut data = order_data(order, "cancelled");
    data["reason"] = reason.as_str().into();
    OutboxEvent::new(
        EventType::OrderCancelled,
        order.order_id.as_str(),
        at_ms,
        data,
        order.traceparent.clone(),
    )
}

pub fn user_registered(user: &str, email: &str, at_ms: i64) -> OutboxEvent {
    let data = json!({"userId": user, "email": email, "registeredAt": rfc3339(at_ms)});
    OutboxEvent::new(EventType::UserRegistered, user, at_ms, data, None)
}

pub fn user_updated(
    user: &str,
    display_name: &str,
    at_ms: i64,
    traceparent: Option<String>,
) -> OutboxEvent {
    let data = json!({"userId": user, "displayName": display_name});
    OutboxEvent::new(EventType::UserUpdated, user, at_ms, data, traceparent)
}

pub fn product_created(id: i64, name: &str, price_cents: i64, at_ms: i64) -> OutboxEvent {
    let data = json!({"productId": id, "name": name, "priceCents": price_cents});
    OutboxEvent::new(EventType::ProductCreated, id.to_string(), at_ms, data, None)
}

pub fn price_changed(id: i64, old_cents: i64, new_cents: i64, at_ms: i64) -> OutboxEvent {
    let data = json!({"productId": id, "oldPriceCents": old_cents, "newPriceCents": new_cents});
    OutboxEvent::new(EventType::PriceChanged, id.to_string(), at_ms, data, None)
}

/// What the order events carry, as consumers read it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderData {
    pub order_id: String,
    pub user_id: String,
    pub product_id: i64,
    pub quantity: i64,
    #[serde(default)]
    pub reason: Option<String>,
}

/// An event as a consumer receives it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub topic: String,
    pub envelope: Envelope,
    pub traceparent: Option<String>,
}

/// Where relays publish.
#[ractor::async_trait]
pub trait EventSink: Send + Sync {
    /// Publishes every event, in order; `Ok` only once all of them are durable.
    async fn publish(&self, events: &[OutboxEvent]) -> Result<(), ActorProcessingErr>;
}

/// What a consumer reads: a consumer group's view of some topics.
#[ractor::async_trait]
pub trait EventSource: Send {
    /// Up to `max` events, waiting at most `wait` for the first one.
    async fn poll(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivered>, ActorProcessingErr>;
    /// Records that every event polled so far has been processed.
    async fn commit(&mut self) -> Result<(), ActorProcessingErr>;
}

/// Where this deployment's events go: Kafka, or the local log of embedded mode.
pub enum EventBus {
    Kafka(Box<kafka::KafkaBus>),
    Log(Arc<log::EventLog>),
}

impl EventBus {
    /// The Kafka bus, or why its client settings are wrong.
    pub fn kafka(settings: &EventSettings) -> Result<Self, String> {
        Ok(EventBus::Kafka(Box::new(kafka::KafkaBus::new(settings)?)))
    }

    pub async fn sink(&self) -> Result<Box<dyn EventSink>, ActorProcessingErr> {
        match self {
            EventBus::Kafka(k) => Ok(Box::new(k.sink().await?)),
            EventBus::Log(l) => Ok(Box::new(l.clone())),
        }
    }

    pub async fn source(
        &self,
        group: &str,
        topics: &[&str],
    ) -> Result<Box<dyn EventSource>, ActorProcessingErr> {
        match self {
            EventBus::Kafka(k) => Ok(Box::new(k.source(group, topics).await?)),
            EventBus::Log(l) => Ok(Box::new(l.source(group, topics).await?)),
        }
    }
}

/// Parses a received payload; `None` (counted and logged) for one nobody can read.
pub fn parse_envelope(topic: &str, payload: &[u8]) -> Option<Envelope> {
    match serde_json::from_slice(payload) {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::error!(topic, error = %e, "skipping an unreadable event");
            metrics::counter!("flashsale_events_unreadable_total").increment(1);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> OrderMessage {
        use crate::domain::{IdempotencyKey, OrderId, ProductId, Quantity, UserId};
        OrderMessage {
            order_id: OrderId::parse("0190f5a0-0000-7000-8000-000000000001").unwrap(),
            user_id: UserId::new_random(),
            product_id: ProductId::parse("7").unwrap(),
            quantity: Quantity::parse(2, 10).unwrap(),
            idempotency_key: IdempotencyKey::parse("k").unwrap(),
            created_at: 1_700_000_000_000,
            amount_cents: None,
            payment_window_secs: None,
            traceparent: None,
        }
    }

    #[test]
    fn an_order_event_carries_the_envelope_and_is_keyed_by_the_order() {
        let events = order_persisted(&order(), OrderStatus::Completed, None, 1_700_000_000_500);
        let [created, completed] = &events[..] else {
            panic!("two events: {events:?}")
        };
        assert_eq!(created.topic, ORDER_EVENTS);
        assert_eq!(completed.key, order().order_id.as_str());
        let e: Envelope = serde_json::from_str(&completed.payload).unwrap();
        assert_eq!(e.kind, "OrderCompleted");
        assert_eq!(e.version, 1);
        assert_eq!(e.id, completed.event_id);
        assert_eq!(e.occurred_ms(), Some(1_700_000_000_500));
        let data: OrderData = serde_json::from_value(e.data).unwrap();
        assert_eq!((data.product_id, data.quantity), (7, 2));
        assert_ne!(created.event_id, completed.event_id);
    }

    #[test]
    fn a_released_order_is_created_then_cancelled_not_completed() {
        let events = order_persisted(&order(), OrderStatus::Cancelled, None, 1);
        let [_, outcome] = &events[..] else {
            panic!("two events: {events:?}")
        };
        let e: Envelope = serde_json::from_str(&outcome.payload).unwrap();
        assert_eq!(e.kind, "OrderCancelled");
        assert_eq!(e.data["reason"], "released");
    }

    #[test]
    fn an_order_awaiting_payment_is_created_with_its_deadline_and_settled_later() {
        let pay_by = 1_700_000_300_000;
        let events = order_persisted(&order(), OrderStatus::AwaitingPayment, Some(pay_by), 1);
        let [created] = &events[..] else {
            panic!("one event: {events:?}")
        };
        let e: Envelope = serde_json::from_str(&created.payload).unwrap();
        assert_eq!(e.kind, "OrderCreated");
        assert_eq!(e.data["payBy"], rfc3339(pay_by));
        let [paid, completed] = order_paid(&order(), "pay_1", 2);
        let kinds: Vec<String> = [paid, completed]
            .iter()
            .map(|e| serde_json::from_str::<Envelope>(&e.payload).unwrap().kind)
            .collect();
        assert_eq!(kinds, ["OrderPaid", "OrderCompleted"]);
        let expired = order_expired(&order(), pay_by, pay_by + 1);
        let e: Envelope = serde_json::from_str(&expired.payload).unwrap();
        assert_eq!(
            (e.kind.as_str(), &e.data["status"]),
            ("OrderExpired", &json!("expired"))
        );
    }
}
