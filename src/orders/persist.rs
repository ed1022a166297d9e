//! What the queue consumers do. An order consumer claims each order from its
//! inventory partition, has its shard write it (completed, or cancelled when the
//! reconciler released it first), sends the confirmation to the notification queue,
//! and only then lets its batch be acknowledged. A notification consumer delivers
//! confirmations and records each one on the user's shard.
//!
//! What cannot be processed on its own (a message that is no order, an order its
//! shard refuses) is kept as a dead letter in the catalog, with the reason, and the
//! rest of the batch goes on; only a backend that is away fails the batch, which is
//! then redelivered.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{join_all, try_join_all};
use ractor::ActorProcessingErr;

use crate::actors::directory::Directory;
use crate::actors::inflight::Held;
use crate::actors::inventory::{Claim, Claimed};
use crate::actors::queue::{DeliveryHandler, Outbound, QueueMessage};
use serde::{Deserialize, Serialize};

use crate::domain::{AmountCents, OrderId, OrderMessage, OrderStatus, ProductId, Quantity, UserId};
use crate::shards::catalog::{DeadLetterEntry, RecordDeadLetters};
use crate::shards::{InsertOrder, RecordNotification};
use crate::supervisors::slot::{CallError, ItemError};
use crate::telemetry::{start_child_span, start_order_span, traceparent_of};

/// How far behind a consumer is: the age of the oldest message in its batch.
fn record_lag(queue: &'static str, created: impl Iterator<Item = i64>) {
    if let Some(oldest) = created.min() {
        let lag = (crate::domain::now_ms() - oldest).max(0) as f64 / 1000.0;
        metrics::gauge!("flashsale_consumer_lag_seconds", "queue" => queue).set(lag);
    }
}

/// What the notification queue carries: something to tell the buyer of an order.
/// (A confirmation of an order without a payment window is the order itself, whose
/// fields these are.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notice {
    #[serde(default)]
    pub kind: NoticeKind,
    pub order_id: OrderId,
    pub user_id: UserId,
    pub product_id: ProductId,
    pub quantity: Quantity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<i64>,
    /// When payment is (or was) due, epoch ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pay_by: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_cents: Option<AmountCents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    /// The order is completed.
    #[default]
    Confirmed,
    /// The order is held until `payBy`: pay before then.
    PaymentDue,
    /// The order was not paid by `payBy`: it expired and its units went back on sale.
    PaymentLapsed,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Confirmed => "confirmed",
            NoticeKind::PaymentDue => "payment_due",
            NoticeKind::PaymentLapsed => "payment_lapsed",
        }
    }
}

impl Notice {
    /// `kind` of an order as the queue carried it.
    pub fn of(kind: NoticeKind, o: &OrderMessage, pay_by: Option<i64>) -> Self {
        Self {
            kind,
            order_id: o.order_id.clone(),
            user_id: o.user_id.clone(),
            product_id: o.product_id,
            quantity: o.quantity,
            created_at: Some(o.created_at),
            pay_by,
            amount_cents: o.amount_cents,
            traceparent: o.traceparent.clone(),
        }
    }
}

/// The messages of a batch, and what could not be read as one.
struct Parsed<T> {
    orders: Vec<T>,
    dead: Vec<DeadLetterEntry>,
}

impl<T: serde::de::DeserializeOwned> Parsed<T> {
    fn dead_letter(&mut self, reason: String, payload: String) {
        self.dead.push(DeadLetterEntry { reason, payload });
    }

    fn element(&mut self, value: serde_json::Value) {
        // Reading a message parses every field as the API parses a request.
        match serde_json::from_value::<T>(value.clone()) {
            Ok(order) => self.orders.push(order),
            Err(e) => self.dead_letter(format!("not an order: {e}"), value.to_string()),
        }
    }
}

/// A message carries one order (an object) or several (an array); each element stands
/// on its own, so one bad element never holds back its neighbours.
fn parse_orders<T: serde::de::DeserializeOwned>(batch: &[QueueMessage]) -> Parsed<T> {
    let mut parsed = Parsed {
        orders: Vec::with_capacity(batch.len()),
        dead: Vec::new(),
    };
    for d in batch {
        match serde_json::from_slice::<serde_json::Value>(&d.payload) {
            Ok(serde_json::Value::Array(many)) => many.into_iter().for_each(|v| parsed.element(v)),
            Ok(one) => parsed.element(one),
            Err(e) => parsed.dead_letter(
                format!("not JSON: {e}"),
                String::from_utf8_lossy(&d.payload).into_owned(),
            ),
        }
    }
    parsed
}

/// The reason of an order that its partition never reserved (or not with the
/// message's details): outside the era of a rebuild such an order sells nothing.
const UNKNOWN_RESERVATION: &str =
    "unknown_reservation: the inventory partition holds no reservation of this order";

/// Orders handled at once: claims and writes go to their actors a chunk at a time,
/// never more than an inbox takes.
const CHUNK: usize = 256;

/// Calls `call` for every item, concurrently, each through
/// [`Slot::call_queued`](crate::supervisors::slot::Slot::call_queued): a consumer's
/// calls are bounded by its prefetch and wait their turn in a full inbox. Answers each
/// item's reply, or its own error; an actor that is away fails the batch, which the
/// broker redelivers once the supervisor has restarted what failed.
async fn call_each<'a, T, R, F, Fut>(
    items: &'a [T],
    call: F,
) -> Result<Vec<Result<R, ItemError>>, ActorProcessingErr>
where
    F: Fn(&'a T) -> Fut,
    Fut: std::future::Future<Output = Result<R, CallError>>,
{
    let replies = join_all(items.iter().map(call)).await;
    replies
        .into_iter()
        .map(|reply| match reply {
            Ok(r) => Ok(Ok(r)),
            Err(CallError::Failed(e)) => Ok(Err(e)),
            Err(e) => Err(e.into()),
        })
        .collect()
}

/// Keeps what no consumer can process, with the reason, before the batch is acked.
async fn bury(
    dir: &Directory,
    queue: &str,
    dead: Vec<DeadLetterEntry>,
) -> Result<(), ActorProcessingErr> {
    if dead.is_empty() {
        return Ok(());
    }
    for d in &dead {
        tracing::error!(queue, reason = %d.reason, "message dead-lettered");
    }
    let n = dead.len() as u64;
    dir.catalog
        .call(RecordDeadLetters {
            queue: queue.to_string(),
            letters: dead,
        })
        .await?;
    metrics::counter!("flashsale_dead_letters_total", "queue" => queue.to_string()).increment(n);
    Ok(())
}

fn order_payload(o: &OrderMessage) -> String {
    serde_json::to_string(o).expect("orders serialise")
}

pub struct OrderHandler {
    pub directory: Arc<Directory>,
    /// How long a message given up is still held: until the broker has surely taken
    /// it back, also from a connection that died silently.
    pub give_back: Duration,
    /// A pod whose registry has not published what it holds for this long takes no
    /// more orders: a rebuild would count it as silent, holding nothing.
    pub unheard_after_ms: i64,
}

/// The inventory partitions of the orders a message carries, as far as it can be read
/// (one that cannot is a dead letter, which sells nothing).
fn partitions(dir: &Directory, payload: &[u8]) -> Vec<usize> {
    let product = |v: &serde_json::Value| v.get("productId").and_then(|p| p.as_i64());
    let products: Vec<i64> = match serde_json::from_slice::<serde_json::Value>(payload) {
        Ok(serde_json::Value::Array(many)) => many.iter().filter_map(product).collect(),
        Ok(one) => product(&one).into_iter().collect(),
        Err(_) => Vec::new(),
    };
    products
        .into_iter()
        .map(|p| dir.partition_index(ProductId::from_db(p)))
        .collect()
}

#[ractor::async_trait]
impl DeliveryHandler for OrderHandler {
    fn hold(&self, payload: &[u8]) -> Option<Held> {
        let dir = &self.directory;
        Some(dir.in_flight.hold(partitions(dir, payload), self.give_back))
    }

    async fn handle(
        &self,
        out: &dyn Outbound,
        batch: &[QueueMessage],
    ) -> Result<usize, ActorProcessingErr> {
        let dir = &self.directory;
        let published = dir.in_flight.published_at();
        if crate::domain::now_ms() - published > self.unheard_after_ms {
            return Err("the pod registry has not published what this pod holds for too long; taking no orders until it does".into());
        }
        let Parsed { orders, mut dead } = parse_orders::<OrderMessage>(batch);
        record_lag("orders", orders.iter().map(|o| o.created_at));
        let mut confirmations = Vec::new();
        for chunk in orders.chunks(CHUNK) {
            // One span per order, in the trace of the request that accepted it; each
            // ends when this batch is done with it.
            let spans: Vec<_> = chunk
                .iter()
                .map(|o| {
                    let order = o.order_id.as_str();
                    start_order_span("consume_order", o.traceparent.as_deref(), order)
                })
                .collect();
            let claiming: Vec<_> = spans
                .iter()
                .map(|cx| start_child_span(cx, "inventory_claim"))
                .collect();
            let claims = call_each(chunk, |o| {
                let product = o.product_id;
                let claim = Claim {
                    product,
                    order: o.order_id.clone(),
                    user: o.user_id.clone(),
                    quantity: o.quantity,
                    key: o.idempotency_key.clone(),
                    created_at: o.created_at,
                };
                dir.product_partition(product).call_queued(claim)
            })
            .await?;
            drop(claiming);
            let mut claimed = Vec::with_capacity(chunk.len());
            for ((o, claim), cx) in chunk.iter().zip(claims).zip(&spans) {
                match claim {
                    Ok(Claimed::Sold) => claimed.push((o, true, cx)),
                    Ok(Claimed::Released) => claimed.push((o, false, cx)),
                    Ok(Claimed::Unknown) => dead.push(DeadLetterEntry {
                        reason: UNKNOWN_RESERVATION.into(),
                        payload: order_payload(o),
                    }),
                    Err(e) => dead.push(DeadLetterEntry {
                        reason: format!("claim: {e}"),
                        payload: order_payload(o),
                    }),
                }
            }
            let writing: Vec<_> = claimed
                .iter()
                .map(|(_, _, cx)| start_child_span(cx, "shard_write"))
                .collect();
            let writes = call_each(&claimed, |(o, claimed, _)| {
                let status = match (claimed, o.payment_window_secs) {
                    (true, Some(_)) => OrderStatus::AwaitingPayment,
                    (true, None) => OrderStatus::Completed,
                    (false, _) => OrderStatus::Cancelled,
                };
                dir.shard(&o.user_id).call_queued(InsertOrder {
                    order: (*o).clone(),
                    status,
                })
            })
            .await?;
            drop(writing);
            for ((o, claimed, span), written) in claimed.into_iter().zip(writes) {
                let pay_by = match written {
                    Ok(pay_by) => pay_by,
                    Err(e) => {
                        dead.push(DeadLetterEntry {
                            reason: format!("shard write: {e}"),
                            payload: order_payload(o),
                        });
                        continue;
                    }
                };
                let outcome = match (claimed, pay_by) {
                    (true, Some(_)) => "awaiting_payment",
                    (true, None) => "completed",
                    (false, _) => "cancelled",
                };
                metrics::counter!("flashsale_orders_persisted_total", "status" => outcome)
                    .increment(1);
                if !claimed {
                    tracing::warn!(order_id = %o.order_id, "order was released before it was persisted; recorded as cancelled");
                    continue;
                }
                let kind = match pay_by {
                    Some(_) => NoticeKind::PaymentDue,
                    None => NoticeKind::Confirmed,
                };
                let mut notice = Notice::of(kind, o, pay_by);
                notice.traceparent = traceparent_of(span).or_else(|| o.traceparent.clone());
                confirmations.push(notice);
            }
        }
        bury(dir, &dir.orders_queue, dead).await?;
        // The batch's confirmations travel as one message.
        if !confirmations.is_empty() {
            let payload = serde_json::to_vec(&confirmations).expect("orders serialise");
            out.publish(&[(dir.notifications_queue.as_str(), payload.as_slice())])
                .await?;
        }
        Ok(orders.len())
    }
}

pub struct NotificationHandler {
    pub directory: Arc<Directory>,
    /// Where confirmations are POSTed, if anywhere.
    pub webhook: Option<Webhook>,
}

pub struct Webhook {
    pub client: reqwest::Client,
    pub url: String,
}

impl Webhook {
    async fn deliver(&self, notice: &Notice) -> Result<(), String> {
        let mut body = serde_json::json!({
            "type": format!("order.{}", notice.kind.as_str()),
            "orderId": notice.order_id,
            "userId": notice.user_id,
            "productId": notice.product_id,
            "quantity": notice.quantity,
        });
        if let Some(at) = notice.created_at {
            body["createdAt"] = crate::domain::rfc3339(at).into();
        }
        if let Some(at) = notice.pay_by {
            body["payBy"] = crate::domain::rfc3339(at).into();
        }
        if let Some(amount) = notice.amount_cents {
            body["amountCents"] = amount.get().into();
        }
        // One key per order and kind: a receiver takes each notice once.
        let key = match notice.kind {
            NoticeKind::Confirmed => notice.order_id.to_string(),
            kind => format!("{}:{}", notice.order_id, kind.as_str()),
        };
        let r = self
            .client
            .post(&self.url)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("webhook: {e}"))?;
        if r.status().is_success() {
            Ok(())
        } else {
            Err(format!("webhook answered {}", r.status()))
        }
    }
}

#[ractor::async_trait]
impl DeliveryHandler for NotificationHandler {
    async fn handle(
        &self,
        _out: &dyn Outbound,
        batch: &[QueueMessage],
    ) -> Result<usize, ActorProcessingErr> {
        let dir = &self.directory;
        let Parsed { orders, mut dead } = parse_orders::<Notice>(batch);
        record_lag("notifications", orders.iter().filter_map(|o| o.created_at));
        let _spans: Vec<_> = orders
            .iter()
            .map(|o| {
                start_order_span(
                    "deliver_confirmation",
                    o.traceparent.as_deref(),
                    o.order_id.as_str(),
                )
            })
            .collect();
        let webhook = self.webhook.as_ref();
        // Delivered before it is recorded: a failed delivery is retried on redelivery.
        if let Some(hook) = webhook {
            try_join_all(orders.iter().map(|o| hook.deliver(o))).await?;
        }
        let channel = if webhook.is_some() { "webhook" } else { "log" };
        let recorded = call_each(&orders, |o| {
            dir.shard(&o.user_id).call_queued(RecordNotification {
                order: o.order_id.clone(),
                user: o.user_id.clone(),
                channel: channel.into(),
                kind: o.kind.as_str(),
            })
        })
        .await?;
        for (o, r) in orders.iter().zip(recorded) {
            if let Err(e) = r {
                dead.push(DeadLetterEntry {
                    reason: format!("record notification: {e}"),
                    payload: serde_json::to_string(o).expect("notices serialise"),
                });
            }
        }
        bury(dir, &dir.notifications_queue, dead).await?;
        if !orders.is_empty() {
            tracing::info!(count = orders.len(), "delivered order confirmations");
        }
        metrics::counter!("flashsale_notifications_delivered_total").increment(orders.len() as u64);
        Ok(orders.len())
    }
}
