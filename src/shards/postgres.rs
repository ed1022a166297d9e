//! The PostgreSQL form of the hot path: a batch's orders, their outbox events and its
//! notifications each written by one multi-row statement (`UNNEST` of arrays) in one
//! transaction. Everything else a shard does is shared with SQLite ([`super::store`]).

use std::collections::HashSet;

use sqlx::PgPool;

use super::{InsertOrder, Writes};
use crate::db;
use crate::domain::OrderStatus;
use crate::events::{self, OutboxEvent};

/// Appends events to the outbox within the caller's transaction, in order.
async fn outbox_append(
    tx: &mut sqlx::PgConnection,
    events: &[OutboxEvent],
    now: i64,
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut cols: [Vec<Option<String>>; 5] = Default::default();
    for e in events {
        cols[0].push(Some(e.event_id.clone()));
        cols[1].push(Some(e.topic.to_string()));
        cols[2].push(Some(e.key.clone()));
        cols[3].push(Some(e.payload.clone()));
        cols[4].push(e.traceparent.clone());
    }
    db::query(
        "INSERT INTO outbox (event_id, topic, key, payload, traceparent, created_at) \
         SELECT e.event_id, e.topic, e.key, e.payload, e.traceparent, $6::int8 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) WITH ORDINALITY \
           AS e(event_id, topic, key, payload, traceparent, n) ORDER BY e.n",
    )
    .bind(&cols[0])
    .bind(&cols[1])
    .bind(&cols[2])
    .bind(&cols[3])
    .bind(&cols[4])
    .bind(now)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Writes every insert and notification of the batch in one transaction.
pub(super) async fn commit_writes(
    pool: &PgPool,
    writes: &Writes<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let mut ids = Vec::new();
    let mut users = Vec::new();
    let mut products = Vec::new();
    let mut quantities = Vec::new();
    let mut keys = Vec::new();
    let mut statuses = Vec::new();
    let mut created = Vec::new();
    for InsertOrder { order, status } in writes.orders.iter().copied() {
        ids.push(order.order_id.as_str());
        users.push(order.user_id.as_str());
        products.push(order.product_id.get());
        quantities.push(order.quantity.units());
        keys.push(order.idempotency_key.as_str());
        statuses.push(status.as_str());
        created.push(order.created_at);
    }
    let mut tx = pool.begin().await?;
    if !ids.is_empty() {
        let inserted: Vec<String> = db::query_scalar(
            "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at) \
             SELECT o.*, $8::int8 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::int8[]) AS o \
             ON CONFLICT DO NOTHING RETURNING order_id",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&products)
        .bind(&quantities)
        .bind(&keys)
        .bind(&statuses)
        .bind(&created)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        // The events of the orders this batch created (not of redeliveries).
        let inserted: HashSet<String> = inserted.into_iter().collect();
        let mut outbox = Vec::with_capacity(inserted.len() * 2);
        for InsertOrder { order, status } in writes.orders.iter().copied() {
            if inserted.contains(order.order_id.as_str()) {
                let completed = *status == OrderStatus::Completed;
                outbox.extend(events::order_persisted(order, completed, now));
            }
        }
        outbox_append(&mut tx, &outbox, now).await?;
    }
    if !writes.notifications.is_empty() {
        let ids: Vec<&str> = writes
            .notifications
            .iter()
            .map(|n| n.order.as_str())
            .collect();
        let users: Vec<&str> = writes
            .notifications
            .iter()
            .map(|n| n.user.as_str())
            .collect();
        let channels: Vec<&str> = writes
            .notifications
            .iter()
            .map(|n| n.channel.as_str())
            .collect();
        db::query(
            "INSERT INTO notifications (order_id, user_id, channel, delivered_at) \
             SELECT n.*, $4::int8 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS n \
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&channels)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}
