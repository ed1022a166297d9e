//! The PostgreSQL backends: an order shard (primary plus optional read replica) and
//! the catalog. Each actor owns its own small pool, opened on every (re)start.

use std::str::FromStr;
use std::time::{Duration, Instant};

use ractor::ActorProcessingErr;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use crate::actors::shard::{OrderMessage, OrderStatus, OrderView, ShardOp, ShardReply};
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::{now_ms, rfc3339};
use crate::events::relay::Nudge;
use crate::events::{self, CancelReason, OutboxEvent};

pub async fn pool(url: &str, size: u32) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("flashsale");
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(3))
        .test_before_acquire(false)
        .connect_with(options)
        .await
}

pub struct ShardConnect {
    pub index: usize,
    pub url: String,
    pub replica_url: Option<String>,
    pub pool_size: u32,
    pub nudge: Nudge,
}

pub struct PgShard {
    index: usize,
    nudge: Nudge,
    primary: PgPool,
    replica: Option<PgPool>,
}

#[ractor::async_trait]
impl Connect for ShardConnect {
    type Backend = PgShard;

    async fn connect(&self) -> Result<PgShard, ActorProcessingErr> {
        let primary = pool(&self.url, self.pool_size).await?;
        let replica = match &self.replica_url {
            Some(url) => Some(pool(url, self.pool_size).await?),
            None => None,
        };
        Ok(PgShard {
            index: self.index,
            nudge: self.nudge.clone(),
            primary,
            replica,
        })
    }
}

fn order_view(row: &sqlx::postgres::PgRow) -> Result<OrderView, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(OrderView {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        quantity: i64::from(row.try_get::<i32, _>("quantity")?),
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

fn order_message(row: &sqlx::postgres::PgRow) -> Result<OrderMessage, sqlx::Error> {
    Ok(OrderMessage {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        quantity: i64::from(row.try_get::<i32, _>("quantity")?),
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        traceparent: None,
    })
}

const ORDER_COLUMNS: &str = "order_id, user_id, product_id, quantity, status, created_at";

/// Appends events to the outbox within the caller's transaction, in order.
pub async fn outbox_append(
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
    sqlx::query(
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

impl PgShard {
    /// Writes every insert and notification of the batch in one transaction.
    async fn commit_writes(&self, batch: &Batch<Self>) -> Result<(), sqlx::Error> {
        let mut ids = Vec::new();
        let mut users = Vec::new();
        let mut products = Vec::new();
        let mut quantities = Vec::new();
        let mut keys = Vec::new();
        let mut statuses = Vec::new();
        let mut created = Vec::new();
        let (mut n_ids, mut n_users, mut n_channels) = (Vec::new(), Vec::new(), Vec::new());
        for e in batch {
            match &e.op {
                ShardOp::Insert { order, status } => {
                    ids.push(order.order_id.clone());
                    users.push(order.user_id.clone());
                    products.push(order.product_id);
                    quantities.push(order.quantity as i32);
                    keys.push(order.idempotency_key.clone());
                    statuses.push(status.as_str().to_string());
                    created.push(order.created_at);
                }
                ShardOp::Notified {
                    order,
                    user,
                    channel,
                } => {
                    n_ids.push(order.to_string());
                    n_users.push(user.clone());
                    n_channels.push(channel.clone());
                }
                _ => {}
            }
        }
        if ids.is_empty() && n_ids.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tx = self.primary.begin().await?;
        if !ids.is_empty() {
            let now = now_ms();
            let inserted: Vec<String> = sqlx::query_scalar(
                "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at) \
                 SELECT o.*, $8::int8 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int4[], $5::text[], $6::text[], $7::int8[]) AS o \
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
            let inserted: std::collections::HashSet<String> = inserted.into_iter().collect();
            let mut outbox = Vec::with_capacity(inserted.len() * 2);
            for e in batch {
                if let ShardOp::Insert { order, status } = &e.op {
                    if inserted.contains(&order.order_id) {
                        let completed = *status == OrderStatus::Completed;
                        outbox.extend(events::order_persisted(order, completed, now));
                    }
                }
            }
            outbox_append(&mut tx, &outbox, now).await?;
        }
        if !n_ids.is_empty() {
            sqlx::query(
                "INSERT INTO notifications (order_id, user_id, channel, delivered_at) \
                 SELECT n.*, $4::int8 FROM UNNEST($1::text[], $2::text[], $3::text[]) AS n \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&n_ids)
            .bind(&n_users)
            .bind(&n_channels)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        metrics::histogram!("flashsale_shard_write_seconds", "shard" => self.index.to_string())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn get(&self, order: &str, user: &str) -> Result<Option<OrderView>, sqlx::Error> {
        let sql =
            format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 AND user_id = $2");
        if let Some(replica) = &self.replica {
            let row = sqlx::query(&sql)
                .bind(order)
                .bind(user)
                .fetch_optional(replica)
                .await?;
            if let Some(row) = row {
                return order_view(&row).map(Some);
            }
        }
        // The primary answers for what the replica has not caught up with yet.
        let row = sqlx::query(&sql)
            .bind(order)
            .bind(user)
            .fetch_optional(&self.primary)
            .await?;
        row.as_ref().map(order_view).transpose()
    }

    async fn read(&self, op: &ShardOp) -> Result<ShardReply, sqlx::Error> {
        let reads = self.replica.as_ref().unwrap_or(&self.primary);
        Ok(match op {
            ShardOp::Insert { .. } | ShardOp::Notified { .. } => ShardReply::Done,
            ShardOp::Get { order, user } => {
                ShardReply::Order(self.get(order.as_str(), user).await?)
            }
            ShardOp::List { user } => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1000"
                );
                let rows = sqlx::query(&sql).bind(user).fetch_all(reads).await?;
                ShardReply::Orders(rows.iter().map(order_view).collect::<Result<_, _>>()?)
            }
            ShardOp::CreateUser { user, email } => {
                let now = now_ms();
                let mut tx = self.primary.begin().await?;
                let created = sqlx::query("INSERT INTO users (user_id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(user)
                    .bind(email)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if created == 1 {
                    let event = events::user_registered(user, email, now);
                    outbox_append(&mut tx, &[event], now).await?;
                }
                tx.commit().await?;
                ShardReply::Done
            }
            ShardOp::UpdateUser {
                user,
                display_name,
                traceparent,
            } => {
                let now = now_ms();
                let mut tx = self.primary.begin().await?;
                let updated = sqlx::query("UPDATE users SET display_name = $2 WHERE user_id = $1")
                    .bind(user)
                    .bind(display_name)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if updated == 1 {
                    let event = events::user_updated(user, display_name, now, traceparent.clone());
                    outbox_append(&mut tx, &[event], now).await?;
                }
                tx.commit().await?;
                ShardReply::UserUpdated(updated == 1)
            }
            ShardOp::Cancel {
                order,
                user,
                traceparent,
            } => {
                let now = now_ms();
                let mut tx = self.primary.begin().await?;
                let row = sqlx::query(
                    "UPDATE orders SET status = 'cancelled', updated_at = $3 \
                     WHERE order_id = $1 AND user_id = $2 AND status = 'completed' \
                     RETURNING order_id, user_id, product_id, quantity, idempotency_key, created_at",
                )
                .bind(order.as_str())
                .bind(user)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let reply = match row {
                    Some(row) => {
                        let mut cancelled = order_message(&row)?;
                        cancelled.traceparent = traceparent.clone();
                        let event =
                            events::order_cancelled(&cancelled, CancelReason::Customer, now);
                        outbox_append(&mut tx, &[event], now).await?;
                        Some((OrderView::new(&cancelled, OrderStatus::Cancelled), true))
                    }
                    None => self.get(order.as_str(), user).await?.map(|v| (v, false)),
                };
                tx.commit().await?;
                ShardReply::Cancelled(reply)
            }
            ShardOp::ProductTotals { product } => {
                let row = sqlx::query(
                    "SELECT COALESCE(SUM(quantity) FILTER (WHERE status = 'completed'), 0)::int8 AS completed, \
                            COALESCE(SUM(quantity) FILTER (WHERE status = 'cancelled'), 0)::int8 AS cancelled \
                     FROM orders WHERE product_id = $1",
                )
                .bind(product)
                .fetch_one(&self.primary)
                .await?;
                ShardReply::Totals {
                    completed: row.try_get("completed")?,
                    cancelled: row.try_get("cancelled")?,
                }
            }
        })
    }
}

#[ractor::async_trait]
impl Backend for PgShard {
    type Op = ShardOp;
    type Reply = ShardReply;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let emits = batch.iter().any(|e| e.op.emits_events());
        self.commit_writes(&batch).await?;
        for e in batch {
            if e.abandoned() {
                continue;
            }
            let reply = self.read(&e.op).await?;
            e.answer(reply);
        }
        if emits {
            self.nudge.wake();
        }
        Ok(())
    }
}
