//! The SQLite backends of embedded mode: one file per order shard and one for the
//! catalog, under the data directory. Same operations, same statuses, same
//! idempotency as the PostgreSQL backends.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use ractor::ActorProcessingErr;
use sqlx::migrate::{Migrate, Migrator};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection, Row};

use crate::actors::queue::local::sqlite_pool;
use crate::actors::shard::{OrderMessage, OrderStatus, OrderView, ShardOp, ShardReply};
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::{now_ms, rfc3339};
use crate::events::relay::Nudge;
use crate::events::{self, CancelReason, OutboxEvent};
use crate::shards::migrate::{pending, taken_over};

pub static CATALOG: &Migrator = &sqlx::migrate!("migrations/sqlite/catalog");
pub static SHARD: &Migrator = &sqlx::migrate!("migrations/sqlite/shard");

/// Applies the migrations `path` has not applied yet; returns how many. Bookkeeping,
/// checksums and the takeover of `flashsale_migrations` as in `shards::migrate`; one
/// process owns a data directory, so there is no lock to take.
pub async fn migrate(path: &Path, set: &Migrator) -> Result<usize, sqlx::Error> {
    let pool = sqlite_pool(path, 1).await?;
    let mut con = pool.acquire().await?;
    let applied = baseline(&mut con, set).await?;
    set.run(&mut *con).await?;
    drop(con);
    pool.close().await;
    Ok(pending(set, &applied))
}

/// `shards::migrate::baseline` for SQLite.
async fn baseline(con: &mut SqliteConnection, set: &Migrator) -> Result<HashSet<i64>, sqlx::Error> {
    con.ensure_migrations_table().await?;
    let mut applied: HashSet<i64> = con
        .list_applied_migrations()
        .await?
        .iter()
        .map(|m| m.version)
        .collect();
    let legacy: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'flashsale_migrations')",
    )
    .fetch_one(&mut *con)
    .await?;
    if !applied.is_empty() || !legacy {
        return Ok(applied);
    }
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM flashsale_migrations")
        .fetch_all(&mut *con)
        .await?;
    let mut tx = con.begin().await?;
    for m in taken_over(set, &versions) {
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (?, ?, TRUE, ?, 0)",
        )
        .bind(m.version)
        .bind(&*m.description)
        .bind(&*m.checksum)
        .execute(&mut *tx)
        .await?;
        applied.insert(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

pub struct SqliteShardConnect {
    pub index: usize,
    pub path: PathBuf,
    pub nudge: Nudge,
}

pub struct SqliteShard {
    index: usize,
    nudge: Nudge,
    pool: SqlitePool,
}

#[ractor::async_trait]
impl Connect for SqliteShardConnect {
    type Backend = SqliteShard;

    async fn connect(&self) -> Result<SqliteShard, ActorProcessingErr> {
        Ok(SqliteShard {
            index: self.index,
            nudge: self.nudge.clone(),
            pool: sqlite_pool(&self.path, 2).await?,
        })
    }
}

fn order_view(row: &SqliteRow) -> Result<OrderView, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(OrderView {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        status: OrderStatus::parse(&status).unwrap_or(OrderStatus::Pending),
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

const ORDER_COLUMNS: &str = "order_id, user_id, product_id, quantity, status, created_at";

/// Appends events to the shard's outbox within the caller's transaction, in order.
async fn outbox_append(
    tx: &mut sqlx::SqliteConnection,
    events: &[OutboxEvent],
    now: i64,
) -> Result<(), sqlx::Error> {
    for e in events {
        sqlx::query("INSERT INTO outbox (event_id, topic, key, payload, traceparent, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&e.event_id)
            .bind(e.topic)
            .bind(&e.key)
            .bind(&e.payload)
            .bind(&e.traceparent)
            .bind(now)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

impl SqliteShard {
    async fn commit_writes(&self, batch: &Batch<Self>) -> Result<(), sqlx::Error> {
        if !batch
            .iter()
            .any(|e| matches!(e.op, ShardOp::Insert { .. } | ShardOp::Notified { .. }))
        {
            return Ok(());
        }
        let now = now_ms();
        let started = std::time::Instant::now();
        let mut tx = self.pool.begin().await?;
        for e in batch {
            match &e.op {
                ShardOp::Insert { order, status } => {
                    let inserted = sqlx::query(
                        "INSERT OR IGNORE INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at) \
                         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    )
                    .bind(&order.order_id)
                    .bind(&order.user_id)
                    .bind(order.product_id)
                    .bind(order.quantity)
                    .bind(&order.idempotency_key)
                    .bind(status.as_str())
                    .bind(order.created_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if inserted == 1 {
                        let completed = *status == OrderStatus::Completed;
                        let events = events::order_persisted(order, completed, now);
                        outbox_append(&mut tx, &events, now).await?;
                    }
                }
                ShardOp::Notified {
                    order,
                    user,
                    channel,
                } => {
                    sqlx::query("INSERT OR IGNORE INTO notifications (order_id, user_id, channel, delivered_at) VALUES (?, ?, ?, ?)")
                        .bind(order.as_str())
                        .bind(user)
                        .bind(channel)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                _ => {}
            }
        }
        tx.commit().await?;
        metrics::histogram!("flashsale_shard_write_seconds", "shard" => self.index.to_string())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn read(&self, op: &ShardOp) -> Result<ShardReply, sqlx::Error> {
        let pool = &self.pool;
        Ok(match op {
            ShardOp::Insert { .. } | ShardOp::Notified { .. } => ShardReply::Done,
            ShardOp::Get { order, user } => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ? AND user_id = ?"
                );
                let row = sqlx::query(&sql)
                    .bind(order.as_str())
                    .bind(user)
                    .fetch_optional(pool)
                    .await?;
                ShardReply::Order(row.as_ref().map(order_view).transpose()?)
            }
            ShardOp::List { user } => {
                let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = ? ORDER BY created_at DESC LIMIT 1000");
                let rows = sqlx::query(&sql).bind(user).fetch_all(pool).await?;
                ShardReply::Orders(rows.iter().map(order_view).collect::<Result<_, _>>()?)
            }
            ShardOp::CreateUser { user, email } => {
                let now = now_ms();
                let mut tx = pool.begin().await?;
                let created = sqlx::query(
                    "INSERT OR IGNORE INTO users (user_id, email, created_at) VALUES (?, ?, ?)",
                )
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
                let mut tx = pool.begin().await?;
                let updated = sqlx::query("UPDATE users SET display_name = ? WHERE user_id = ?")
                    .bind(display_name)
                    .bind(user)
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
                let mut tx = pool.begin().await?;
                let row = sqlx::query(
                    "UPDATE orders SET status = 'cancelled', updated_at = ? \
                     WHERE order_id = ? AND user_id = ? AND status = 'completed' \
                     RETURNING order_id, user_id, product_id, quantity, idempotency_key, created_at",
                )
                .bind(now)
                .bind(order.as_str())
                .bind(user)
                .fetch_optional(&mut *tx)
                .await?;
                let reply = match row {
                    Some(row) => {
                        let cancelled = OrderMessage {
                            order_id: row.try_get("order_id")?,
                            user_id: row.try_get("user_id")?,
                            product_id: row.try_get("product_id")?,
                            quantity: row.try_get("quantity")?,
                            idempotency_key: row.try_get("idempotency_key")?,
                            created_at: row.try_get("created_at")?,
                            traceparent: traceparent.clone(),
                        };
                        let event =
                            events::order_cancelled(&cancelled, CancelReason::Customer, now);
                        outbox_append(&mut tx, &[event], now).await?;
                        Some((OrderView::new(&cancelled, OrderStatus::Cancelled), true))
                    }
                    None => {
                        let sql = format!(
                            "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ? AND user_id = ?"
                        );
                        let row = sqlx::query(&sql)
                            .bind(order.as_str())
                            .bind(user)
                            .fetch_optional(&mut *tx)
                            .await?;
                        row.as_ref()
                            .map(order_view)
                            .transpose()?
                            .map(|v| (v, false))
                    }
                };
                tx.commit().await?;
                ShardReply::Cancelled(reply)
            }
            ShardOp::ProductTotals { product } => {
                let row = sqlx::query(
                    "SELECT COALESCE(SUM(CASE WHEN status = 'completed' THEN quantity END), 0) AS completed, \
                            COALESCE(SUM(CASE WHEN status = 'cancelled' THEN quantity END), 0) AS cancelled \
                     FROM orders WHERE product_id = ?",
                )
                .bind(product)
                .fetch_one(pool)
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
impl Backend for SqliteShard {
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
