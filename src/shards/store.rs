//! The shard backend, written once for PostgreSQL and SQLite over sqlx `Any`: reads
//! (from the replica while it is up and within its lag bound, the primary answering
//! for what it has not caught up with or when it is not; [`super::replica`]), users, cancellations, totals and the group-committed writes. Only
//! the hot multi-row order insert has a PostgreSQL form of its own ([`super::postgres`]).

use std::sync::Arc;
use std::time::Instant;

use ractor::ActorProcessingErr;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, PgPool, Row};

use super::replica::Replica;
use super::{
    outbox, postgres, CancelOrder, Cancellation, CreateUser, GetOrder, InsertOrder, PendingRestock,
    PendingRestocks, ShardMsg, UnitTotals, UpdateUser, Writes,
};
use crate::db::{self, settle};
use crate::domain::{
    now_ms, rfc3339, OrderId, OrderMessage, OrderStatus, OrderView, ProductId, SoldOrder,
};
use crate::events::{self, CancelReason};
use crate::supervisors::slot::{Message, Nudge};
use crate::supervisors::stats::NodeStats;
use crate::supervisors::worker::{Backend, Batch, Connect};

pub struct ShardConnect {
    pub index: usize,
    /// The primary: `postgres://…` or `sqlite://path` (created by the migrations).
    pub url: String,
    pub replica_url: Option<String>,
    /// Reads leave the replica while its replay lag is above this.
    pub replica_max_lag_ms: u64,
    pub pool_size: u32,
    pub nudge: Nudge,
    /// The shard's node in the tree (it shows the replica's state).
    pub stats: Arc<NodeStats>,
}

pub struct Shard {
    index: usize,
    nudge: Nudge,
    sqlite: bool,
    primary: AnyPool,
    replica: Option<Replica>,
    /// PostgreSQL's own connection for the multi-row insert (the actor writes one
    /// batch at a time, so one connection).
    bulk: Option<PgPool>,
}

#[ractor::async_trait]
impl Connect for ShardConnect {
    type Backend = Shard;

    async fn connect(&self) -> Result<Shard, ActorProcessingErr> {
        let sqlite = db::is_sqlite(&self.url);
        let primary = db::any_pool(&self.url, self.pool_size).await?;
        let replica = match &self.replica_url {
            Some(url) => Some(Replica::open(
                url,
                self.pool_size,
                self.index,
                self.replica_max_lag_ms,
                self.stats.clone(),
            )?),
            None => None,
        };
        let bulk = match sqlite {
            true => None,
            false => Some(db::pg_pool(&self.url, 1).await?),
        };
        Ok(Shard {
            index: self.index,
            nudge: self.nudge.clone(),
            sqlite,
            primary,
            replica,
            bulk,
        })
    }
}

fn order_view(row: &AnyRow) -> Result<OrderView, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let status = OrderStatus::parse(&status).map_err(|e| sqlx::Error::ColumnDecode {
        index: "status".into(),
        source: e.0.into(),
    })?;
    Ok(OrderView {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        status,
        created_at: rfc3339(row.try_get("created_at")?),
    })
}

const ORDER_COLUMNS: &str = "order_id, user_id, product_id, quantity, status, created_at";

impl Shard {
    /// Writes every insert and notification of the batch in one transaction.
    async fn commit_writes(&self, writes: &Writes<'_>) -> Result<(), sqlx::Error> {
        if writes.orders.is_empty() && writes.notifications.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let now = now_ms();
        match &self.bulk {
            Some(pg) => postgres::commit_writes(pg, writes, now).await?,
            None => {
                let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
                insert_rows(&mut tx, writes, now).await?;
                tx.commit().await?;
            }
        }
        metrics::histogram!("flashsale_shard_write_seconds", "shard" => self.index.to_string())
            .record(started.elapsed().as_secs_f64());
        Ok(())
    }

    async fn get(&self, order: &str, user: &str) -> Result<Option<OrderView>, sqlx::Error> {
        let sql =
            format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 AND user_id = $2");
        if let Some(replica) = &self.replica {
            if let Some(pool) = replica.usable() {
                let row = db::query(&sql)
                    .bind(order)
                    .bind(user)
                    .fetch_optional(db::on(pool))
                    .await;
                match row {
                    // Settled (completed or cancelled): the replica's answer stands; a later
                    // cancellation shows within the lag bound.
                    Ok(Some(row)) => {
                        let view = order_view(&row)?;
                        if view.status != OrderStatus::Pending {
                            replica.served("replica");
                            return Ok(Some(view));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => replica.failed(&e),
                }
            }
            // Not there yet, or pending there (it may have completed since): the
            // primary answers, so that an order just written is read as written.
            replica.served("primary");
        }
        let row = db::query(&sql)
            .bind(order)
            .bind(user)
            .fetch_optional(db::on(&self.primary))
            .await?;
        row.as_ref().map(order_view).transpose()
    }

    async fn list(&self, user: &str) -> Result<Vec<OrderView>, sqlx::Error> {
        let sql = format!(
            "SELECT {ORDER_COLUMNS} FROM orders WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1000"
        );
        if let Some(replica) = &self.replica {
            if let Some(pool) = replica.usable() {
                match db::query(&sql).bind(user).fetch_all(db::on(pool)).await {
                    Ok(rows) => {
                        replica.served("replica");
                        return rows.iter().map(order_view).collect();
                    }
                    Err(e) => replica.failed(&e),
                }
            }
            replica.served("primary");
        }
        let rows = db::query(&sql)
            .bind(user)
            .fetch_all(db::on(&self.primary))
            .await?;
        rows.iter().map(order_view).collect()
    }

    async fn create_user(&self, req: &CreateUser) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
        let created = db::query(
            "INSERT INTO users (user_id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(req.user.as_str())
        .bind(req.email.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if created == 1 {
            let event = events::user_registered(req.user.as_str(), &req.email, now);
            outbox::append(&mut tx, &[event], now).await?;
        }
        tx.commit().await?;
        Ok(created == 1)
    }

    async fn update_user(&self, req: &UpdateUser) -> Result<bool, sqlx::Error> {
        let now = now_ms();
        let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
        let updated = db::query("UPDATE users SET display_name = $2 WHERE user_id = $1")
            .bind(req.user.as_str())
            .bind(req.display_name.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if updated == 1 {
            let event = events::user_updated(
                req.user.as_str(),
                &req.display_name,
                now,
                req.traceparent.clone(),
            );
            outbox::append(&mut tx, &[event], now).await?;
        }
        tx.commit().await?;
        Ok(updated == 1)
    }

    async fn cancel(&self, req: &CancelOrder) -> Result<Option<Cancellation>, sqlx::Error> {
        let now = now_ms();
        let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
        let row = db::query(
            "UPDATE orders SET status = 'cancelled', updated_at = $3 \
             WHERE order_id = $1 AND user_id = $2 AND status = 'completed' \
             RETURNING order_id, user_id, product_id, quantity, idempotency_key, created_at",
        )
        .bind(req.order.as_str())
        .bind(req.user.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let cancellation = match row {
            Some(row) => {
                let cancelled = OrderMessage {
                    order_id: row.try_get("order_id")?,
                    user_id: row.try_get("user_id")?,
                    product_id: row.try_get("product_id")?,
                    quantity: row.try_get("quantity")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    created_at: row.try_get("created_at")?,
                    traceparent: req.traceparent.clone(),
                };
                let event = events::order_cancelled(&cancelled, CancelReason::Customer, now);
                outbox::append(&mut tx, &[event], now).await?;
                // The units go back to the sale after this commits; until the partition
                // has them, this row remembers them.
                db::query(
                    "INSERT INTO restocks (order_id, user_id, product_id, quantity, created_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .bind(cancelled.order_id.as_str())
                .bind(cancelled.user_id.as_str())
                .bind(cancelled.product_id)
                .bind(cancelled.quantity)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                Some(Cancellation {
                    order: OrderView::new(&cancelled, OrderStatus::Cancelled),
                    now: true,
                    restock_due: true,
                })
            }
            // Already cancelled, or not cancellable: read it in the same transaction.
            None => {
                let sql = format!(
                    "SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = $1 AND user_id = $2"
                );
                let row = db::query(&sql)
                    .bind(req.order.as_str())
                    .bind(req.user.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let due: Option<i64> =
                    db::query_scalar("SELECT quantity FROM restocks WHERE order_id = $1")
                        .bind(req.order.as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                row.as_ref()
                    .map(order_view)
                    .transpose()?
                    .map(|order| Cancellation {
                        restock_due: due.is_some() && order.status == OrderStatus::Cancelled,
                        order,
                        now: false,
                    })
            }
        };
        tx.commit().await?;
        Ok(cancellation)
    }

    async fn totals(&self, product: i64) -> Result<UnitTotals, sqlx::Error> {
        let row = db::query(
            "SELECT COALESCE(SUM(CASE WHEN status = 'completed' THEN quantity END), 0) AS completed, \
                    COALESCE(SUM(CASE WHEN status = 'cancelled' THEN quantity END), 0) AS cancelled \
             FROM orders WHERE product_id = $1",
        )
        .bind(product)
        .fetch_one(db::on(&self.primary))
        .await?;
        Ok(UnitTotals {
            completed: row.try_get("completed")?,
            cancelled: row.try_get("cancelled")?,
        })
    }

    async fn sale_orders(&self, product: i64) -> Result<Vec<SoldOrder>, sqlx::Error> {
        let rows = db::query(
            "SELECT order_id, user_id, quantity, idempotency_key, status FROM orders \
             WHERE product_id = $1 AND status IN ('completed', 'cancelled')",
        )
        .bind(product)
        .fetch_all(db::on(&self.primary))
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SoldOrder {
                    order_id: r.try_get("order_id")?,
                    user_id: r.try_get("user_id")?,
                    quantity: r.try_get("quantity")?,
                    idempotency_key: r.try_get("idempotency_key")?,
                    cancelled: r.try_get::<String, _>("status")? == "cancelled",
                })
            })
            .collect()
    }

    async fn pending_restocks(
        &self,
        req: &PendingRestocks,
    ) -> Result<Vec<PendingRestock>, sqlx::Error> {
        let rows = db::query(
            "SELECT order_id, user_id, product_id, quantity FROM restocks \
             WHERE created_at < $1 AND ($2 = 0 OR product_id = $2) ORDER BY created_at LIMIT 500",
        )
        .bind(req.before)
        .bind(req.product.map(|p| p.get()).unwrap_or(0))
        .fetch_all(db::on(&self.primary))
        .await?;
        let mut pending = Vec::with_capacity(rows.len());
        for r in rows {
            let order: String = r.try_get("order_id")?;
            let order = OrderId::parse(&order)
                .map_err(|e| sqlx::Error::Decode(format!("restock of {order}: {}", e.0).into()))?;
            pending.push(PendingRestock {
                order,
                user: r.try_get("user_id")?,
                product: ProductId::from_db(r.try_get("product_id")?),
                quantity: r.try_get("quantity")?,
            });
        }
        Ok(pending)
    }

    async fn restock_done(&self, order: &OrderId) -> Result<(), sqlx::Error> {
        db::query("DELETE FROM restocks WHERE order_id = $1")
            .bind(order.as_str())
            .execute(db::on(&self.primary))
            .await?;
        Ok(())
    }

    /// Answers one message that is not a group-committed write. An error returned here
    /// breaks the shard; a request's own failure goes back to its caller.
    async fn serve(&self, msg: ShardMsg) -> Result<(), sqlx::Error> {
        match msg {
            // Written, and answered, with the batch.
            ShardMsg::Insert(_, port) | ShardMsg::Notified(_, port) => {
                port.ok(());
                Ok(())
            }
            ShardMsg::Get(GetOrder { order, user }, port) => settle(
                port,
                self.get(order.as_str(), user.as_str()).await,
                "read order",
            ),
            ShardMsg::List(req, port) => {
                settle(port, self.list(req.user.as_str()).await, "list orders")
            }
            ShardMsg::CreateUser(req, port) => {
                settle(port, self.create_user(&req).await, "create user")
            }
            ShardMsg::UpdateUser(req, port) => {
                settle(port, self.update_user(&req).await, "update user")
            }
            ShardMsg::Cancel(req, port) => settle(port, self.cancel(&req).await, "cancel order"),
            ShardMsg::PendingRestocks(req, port) => {
                settle(port, self.pending_restocks(&req).await, "pending restocks")
            }
            ShardMsg::RestockDone(req, port) => {
                settle(port, self.restock_done(&req.order).await, "restock done")
            }
            ShardMsg::SaleOrders(req, port) => settle(
                port,
                self.sale_orders(req.product.get()).await,
                "sale orders",
            ),
            ShardMsg::Totals(req, port) => {
                settle(port, self.totals(req.product.get()).await, "product totals")
            }
        }
    }
}

/// The batch's orders and notifications, a row at a time, within the caller's
/// transaction (SQLite; PostgreSQL writes them in one statement each).
async fn insert_rows(
    tx: &mut AnyConnection,
    writes: &Writes<'_>,
    now: i64,
) -> Result<(), sqlx::Error> {
    for InsertOrder { order, status } in writes.orders.iter().copied() {
        let inserted = db::query(
            "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(order.order_id.as_str())
        .bind(order.user_id.as_str())
        .bind(order.product_id)
        .bind(order.quantity)
        .bind(order.idempotency_key.as_str())
        .bind(status.as_str())
        .bind(order.created_at)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The events of orders this batch created (not of redeliveries).
        if inserted == 1 {
            let completed = *status == OrderStatus::Completed;
            outbox::append(tx, &events::order_persisted(order, completed, now), now).await?;
        }
    }
    for n in &writes.notifications {
        db::query(
            "INSERT INTO notifications (order_id, user_id, channel, delivered_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
        )
        .bind(n.order.as_str())
        .bind(n.user.as_str())
        .bind(n.channel.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

#[ractor::async_trait]
impl Backend for Shard {
    type Msg = ShardMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let emits = batch.iter().any(ShardMsg::emits_events);
        let mut writes = Writes::default();
        for msg in &batch {
            match msg {
                ShardMsg::Insert(o, _) => writes.orders.push(o),
                ShardMsg::Notified(n, _) => writes.notifications.push(n),
                _ => {}
            }
        }
        // A failed group commit fails the actor: every write of the batch is retried
        // by its caller (the queue redelivers).
        self.commit_writes(&writes).await?;
        let mut result = Ok(());
        for msg in batch {
            if msg.abandoned() {
                continue;
            }
            result = self.serve(msg).await;
            if result.is_err() {
                break;
            }
        }
        if emits {
            self.nudge.wake();
        }
        Ok(result?)
    }
}
