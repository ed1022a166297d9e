//! The PostgreSQL form of the hot path: a batch's orders, their outbox events and its
//! notifications each written by one multi-row statement (`UNNEST` of arrays) in one
//! transaction. Everything else a shard does is shared with SQLite ([`super::store`]).

use std::collections::HashMap;

use sqlx::PgPool;

use super::store::{db_clock, window_ms, PayBy};
use super::{InsertOrder, Writes};
use crate::db;
use crate::domain::AmountCents;
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
) -> Result<PayBy, sqlx::Error> {
    let mut due = PayBy::new();
    let mut ids = Vec::new();
    let mut users = Vec::new();
    let mut products = Vec::new();
    let mut quantities = Vec::new();
    let mut keys = Vec::new();
    let mut statuses = Vec::new();
    let mut created = Vec::new();
    let mut amounts = Vec::new();
    // The window of each order that awaits payment: its `payBy` is the shard's clock
    // plus the window.
    let mut windows = Vec::new();
    for InsertOrder { order, status } in writes.orders.iter().copied() {
        amounts.push(order.amount_cents.map(AmountCents::get));
        windows.push(window_ms(order, *status));
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
        let clock = db_clock(false);
        let inserted: Vec<(String, Option<i64>)> = db::query_as(&format!(
            "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at, amount_cents, pay_by) \
             SELECT o.i, o.u, o.p, o.q, o.k, o.s, o.c, $8::int8, o.a, {clock} + o.w \
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int8[], $5::text[], $6::text[], $7::int8[], $9::int8[], $10::int8[]) \
               AS o(i, u, p, q, k, s, c, a, w) \
             ON CONFLICT DO NOTHING RETURNING order_id, pay_by",
        ))
        .bind(&ids)
        .bind(&users)
        .bind(&products)
        .bind(&quantities)
        .bind(&keys)
        .bind(&statuses)
        .bind(&created)
        .bind(now)
        .bind(&amounts)
        .bind(&windows)
        .fetch_all(&mut *tx)
        .await?;
        // The events of the orders this batch created (not of redeliveries).
        let inserted: HashMap<String, Option<i64>> = inserted.into_iter().collect();
        let mut outbox = Vec::with_capacity(inserted.len() * 2);
        let mut redelivered = Vec::new();
        for (InsertOrder { order, status }, window) in writes.orders.iter().copied().zip(&windows) {
            let id = order.order_id.as_str();
            match inserted.get(id) {
                Some(pay_by) => {
                    outbox.extend(events::order_persisted(order, *status, *pay_by, now));
                    if let Some(at) = pay_by {
                        due.insert(id.to_string(), *at);
                    }
                }
                None if window.is_some() => redelivered.push(id),
                None => {}
            }
        }
        outbox_append(&mut tx, &outbox, now).await?;
        // Redeliveries keep the deadline written the first time.
        if !redelivered.is_empty() {
            let rows: Vec<(String, Option<i64>)> =
                db::query_as("SELECT order_id, pay_by FROM orders WHERE order_id = ANY($1)")
                    .bind(&redelivered)
                    .fetch_all(&mut *tx)
                    .await?;
            due.extend(rows.into_iter().filter_map(|(id, at)| Some((id, at?))));
        }
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
        let kinds: Vec<&str> = writes.notifications.iter().map(|n| n.kind).collect();
        db::query(
            "INSERT INTO notifications (order_id, user_id, channel, delivered_at, kind) \
             SELECT n.o, n.u, n.c, $4::int8, n.k FROM UNNEST($1::text[], $2::text[], $3::text[], $5::text[]) AS n(o, u, c, k) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&users)
        .bind(&channels)
        .bind(now)
        .bind(&kinds)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(due)
}
