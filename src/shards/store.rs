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
    outbox, postgres, CancelOrder, Cancellation, ConfirmPayment, CreateUser, ExpireDue, GetOrder,
    InsertOrder, PaymentOutcome, PendingRestock, PendingRestocks, RestockDone, ShardMsg,
    UnitTotals, UpdateUser, Writes, MOST_EXPIRED,
};
use crate::db::{self, settle};
use crate::domain::{
    now_ms, rfc3339, AmountCents, OrderId, OrderMessage, OrderStatus, OrderView, ProductId,
    SoldOrder,
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
        amount_cents: amount(row)?,
        pay_by: row.try_get::<Option<i64>, _>("pay_by")?.map(rfc3339),
    })
}

const ORDER_COLUMNS: &str =
    "order_id, user_id, product_id, quantity, status, created_at, amount_cents, pay_by";

impl Shard {
    /// Writes every insert and notification of the batch in one transaction; answers
    /// the `payBy` of its orders that await payment.
    async fn commit_writes(&self, writes: &Writes<'_>) -> Result<PayBy, sqlx::Error> {
        if writes.orders.is_empty() && writes.notifications.is_empty() {
            return Ok(PayBy::new());
        }
        let started = Instant::now();
        let now = now_ms();
        let pay_by = match &self.bulk {
            Some(pg) => postgres::commit_writes(pg, writes, now).await?,
            None => {
                let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
                let pay_by = insert_rows(&mut tx, writes, now).await?;
                tx.commit().await?;
                pay_by
            }
        };
        metrics::histogram!("flashsale_shard_write_seconds", "shard" => self.index.to_string())
            .record(started.elapsed().as_secs_f64());
        Ok(pay_by)
    }

    /// The shard's clock, as SQL: payment deadlines are set and judged by it,
    /// whichever pod writes, pays or sweeps.
    fn clock(&self) -> &'static str {
        db_clock(self.sqlite)
    }

    /// Pays an order, or finds why it cannot be paid: in one transaction, where an
    /// order past its `payBy` is expired rather than paid. Each change is one
    /// conditional update of the order's row, so a payment and an expiry (here or in a
    /// sweep) never both apply.
    async fn pay(&self, req: &ConfirmPayment) -> Result<Option<PaymentOutcome>, sqlx::Error> {
        let now = now_ms();
        let clock = self.clock();
        let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
        let paid = db::query(&format!(
            "UPDATE orders SET status = 'completed', payment_id = $2, updated_at = $3 \
             WHERE order_id = $1 AND status = 'awaiting_payment' AND pay_by > {clock} AND amount_cents = $4 \
             RETURNING {ORDER_COLUMNS}, idempotency_key"
        ))
        .bind(req.order.as_str())
        .bind(req.payment.as_str())
        .bind(now)
        .bind(req.amount.get())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = paid {
            let view = order_view(&row)?;
            let order = stored_order(&row, req.traceparent.clone())?;
            let events = events::order_paid(&order, req.payment.as_str(), now);
            outbox::append(&mut tx, &events, now).await?;
            tx.commit().await?;
            return Ok(Some(PaymentOutcome::Paid(view)));
        }
        // Why not: read in the same transaction. An order found lapsed is expired here,
        // by the same conditional update as a sweep's; should another transaction have
        // changed it meanwhile, it is read again.
        for _ in 0..3 {
            let row = db::query(&format!(
                "SELECT {ORDER_COLUMNS}, idempotency_key, payment_id, {clock} AS shard_now \
                 FROM orders WHERE order_id = $1"
            ))
            .bind(req.order.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let view = order_view(&row)?;
            let payment: Option<String> = row.try_get("payment_id")?;
            let outcome = match view.status {
                OrderStatus::AwaitingPayment => {
                    let pay_by: i64 = row.try_get("pay_by")?;
                    if pay_by > row.try_get::<i64, _>("shard_now")? {
                        PaymentOutcome::AmountMismatch {
                            expected: view.amount_cents,
                        }
                    } else if self.expire_one(&mut tx, &req.order, now).await? {
                        PaymentOutcome::WindowClosed
                    } else {
                        continue;
                    }
                }
                OrderStatus::Completed if payment.as_deref() == Some(req.payment.as_str()) => {
                    PaymentOutcome::Repeat(view)
                }
                OrderStatus::Completed => PaymentOutcome::AlreadyPaid,
                OrderStatus::Cancelled => PaymentOutcome::Cancelled,
                OrderStatus::Expired => PaymentOutcome::WindowClosed,
                OrderStatus::Pending => {
                    return Err(sqlx::Error::Protocol(format!(
                        "order {} is stored as pending",
                        view.order_id
                    )))
                }
            };
            tx.commit().await?;
            return Ok(Some(outcome));
        }
        Err(sqlx::Error::Protocol(format!(
            "order {} kept changing while its payment was decided",
            req.order
        )))
    }

    /// Expires one order whose `payBy` has passed, within the caller's transaction;
    /// answers whether this call expired it (not paid, cancelled or expired meanwhile).
    async fn expire_one(
        &self,
        tx: &mut AnyConnection,
        order: &OrderId,
        now: i64,
    ) -> Result<bool, sqlx::Error> {
        let clock = self.clock();
        let row = db::query(&format!(
            "UPDATE orders SET status = 'expired', updated_at = $2 \
             WHERE order_id = $1 AND status = 'awaiting_payment' AND pay_by <= {clock} \
             RETURNING {ORDER_COLUMNS}, idempotency_key"
        ))
        .bind(order.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let expired = (stored_order(&row, None)?, row.try_get("pay_by")?);
        expire_rows(tx, &[expired], now).await?;
        Ok(true)
    }

    /// Expires the orders past their `payBy` (see [`ExpireDue`]).
    async fn expire(&self, req: &ExpireDue) -> Result<i64, sqlx::Error> {
        let clock = self.clock();
        let mut tx = db::begin_write(&self.primary, self.sqlite).await?;
        // The inner SELECT finds candidates through the partial index; the outer
        // condition makes a concurrent sweep (another pod's) skip what this one took.
        let rows = db::query(&format!(
            "UPDATE orders SET status = 'expired', updated_at = $1 \
             WHERE order_id IN (SELECT order_id FROM orders \
                 WHERE status = 'awaiting_payment' AND pay_by <= {clock} ORDER BY pay_by LIMIT {MOST_EXPIRED}) \
               AND status = 'awaiting_payment' AND pay_by <= {clock} \
             RETURNING {ORDER_COLUMNS}, idempotency_key"
        ))
        .bind(req.now)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut expired = Vec::with_capacity(rows.len());
        for row in &rows {
            expired.push((stored_order(row, None)?, row.try_get("pay_by")?));
        }
        expire_rows(&mut tx, &expired, req.now).await?;
        tx.commit().await?;
        metrics::counter!("flashsale_orders_expired_total", "shard" => self.index.to_string())
            .increment(expired.len() as u64);
        Ok(expired.len() as i64)
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
                    // Settled (completed, cancelled, expired): the replica's answer
                    // stands; a later cancellation shows within the lag bound.
                    Ok(Some(row)) => {
                        let view = order_view(&row)?;
                        let settled = !matches!(
                            view.status,
                            OrderStatus::Pending | OrderStatus::AwaitingPayment
                        );
                        if settled {
                            replica.served("replica");
                            return Ok(Some(view));
                        }
                    }
                    Ok(None) => {}
                    Err(e) => replica.failed(&e),
                }
            }
            // Not there yet, or pending or awaiting payment there (it may have been
            // paid since): the primary answers, so that a write is read as written.
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
             WHERE order_id = $1 AND user_id = $2 AND status IN ('completed', 'awaiting_payment') \
             RETURNING order_id, user_id, product_id, quantity, idempotency_key, created_at, amount_cents",
        )
        .bind(req.order.as_str())
        .bind(req.user.as_str())
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let cancellation = match row {
            Some(row) => {
                let cancelled = stored_order(&row, req.traceparent.clone())?;
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
                    COALESCE(SUM(CASE WHEN status = 'cancelled' THEN quantity END), 0) AS cancelled, \
                    COALESCE(SUM(CASE WHEN status = 'awaiting_payment' THEN quantity END), 0) AS awaiting, \
                    COALESCE(SUM(CASE WHEN status = 'expired' THEN quantity END), 0) AS expired \
             FROM orders WHERE product_id = $1",
        )
        .bind(product)
        .fetch_one(db::on(&self.primary))
        .await?;
        Ok(UnitTotals {
            completed: row.try_get("completed")?,
            cancelled: row.try_get("cancelled")?,
            awaiting_payment: row.try_get("awaiting")?,
            expired: row.try_get("expired")?,
        })
    }

    async fn sale_orders(&self, product: i64) -> Result<Vec<SoldOrder>, sqlx::Error> {
        let rows = db::query(
            "SELECT order_id, user_id, quantity, idempotency_key, status FROM orders \
             WHERE product_id = $1 AND status IN ('awaiting_payment', 'completed', 'cancelled', 'expired')",
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
                    cancelled: matches!(
                        r.try_get::<String, _>("status")?.as_str(),
                        "cancelled" | "expired"
                    ),
                })
            })
            .collect()
    }

    async fn pending_restocks(
        &self,
        req: &PendingRestocks,
    ) -> Result<Vec<PendingRestock>, sqlx::Error> {
        let rows = db::query(
            "SELECT order_id, user_id, product_id, quantity, reason FROM restocks \
             WHERE reason <> 'notice' AND (created_at < $1 OR reason = 'expired' AND created_at < $3) \
               AND ($2 = 0 OR product_id = $2) ORDER BY created_at LIMIT 500",
        )
        .bind(req.before)
        .bind(req.product.map(|p| p.get()).unwrap_or(0))
        .bind(req.expired_before)
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
                expired: r.try_get::<String, _>("reason")? == "expired",
            });
        }
        Ok(pending)
    }

    async fn restock_done(&self, req: &RestockDone) -> Result<(), sqlx::Error> {
        let sql = match req.notify {
            true => "UPDATE restocks SET reason = 'notice' WHERE order_id = $1",
            false => "DELETE FROM restocks WHERE order_id = $1",
        };
        db::query(sql)
            .bind(req.order.as_str())
            .execute(db::on(&self.primary))
            .await?;
        Ok(())
    }

    async fn lapsed_notices(&self) -> Result<Vec<PendingRestock>, sqlx::Error> {
        let rows = db::query(
            "SELECT order_id, user_id, product_id, quantity FROM restocks \
             WHERE reason = 'notice' ORDER BY created_at LIMIT 500",
        )
        .fetch_all(db::on(&self.primary))
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PendingRestock {
                    order: r.try_get("order_id")?,
                    user: r.try_get("user_id")?,
                    product: r.try_get("product_id")?,
                    quantity: r.try_get("quantity")?,
                    expired: true,
                })
            })
            .collect()
    }

    /// Answers one message that is not a group-committed write. An error returned here
    /// breaks the shard; a request's own failure goes back to its caller.
    async fn serve(&self, msg: ShardMsg, pay_by: &PayBy) -> Result<(), sqlx::Error> {
        match msg {
            // Written, and answered, with the batch.
            ShardMsg::Insert(req, port) => {
                port.ok(pay_by.get(req.order.order_id.as_str()).copied());
                Ok(())
            }
            ShardMsg::Notified(_, port) => {
                port.ok(());
                Ok(())
            }
            ShardMsg::Pay(req, port) => settle(port, self.pay(&req).await, "confirm payment"),
            ShardMsg::Expire(req, port) => settle(port, self.expire(&req).await, "expire orders"),
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
                settle(port, self.restock_done(&req).await, "restock done")
            }
            ShardMsg::LapsedNotices(_, port) => {
                settle(port, self.lapsed_notices().await, "lapsed notices")
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
) -> Result<PayBy, sqlx::Error> {
    let mut due = PayBy::new();
    for InsertOrder { order, status } in writes.orders.iter().copied() {
        // SQLite's clock is this process's: the shard's clock.
        let pay_by = window_ms(order, *status).map(|w| now + w);
        let inserted = db::query(
            "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at, amount_cents, pay_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(order.order_id.as_str())
        .bind(order.user_id.as_str())
        .bind(order.product_id)
        .bind(order.quantity)
        .bind(order.idempotency_key.as_str())
        .bind(status.as_str())
        .bind(order.created_at)
        .bind(now)
        .bind(order.amount_cents.map(AmountCents::get))
        .bind(pay_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        // The events of orders this batch created (not of redeliveries).
        if inserted == 1 {
            let events = events::order_persisted(order, *status, pay_by, now);
            outbox::append(tx, &events, now).await?;
            if let Some(at) = pay_by {
                due.insert(order.order_id.as_str().to_string(), at);
            }
        } else if pay_by.is_some() {
            // A redelivery: the deadline is the one written the first time.
            let stored: Option<Option<i64>> =
                db::query_scalar("SELECT pay_by FROM orders WHERE order_id = $1")
                    .bind(order.order_id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(Some(at)) = stored {
                due.insert(order.order_id.as_str().to_string(), at);
            }
        }
    }
    for n in &writes.notifications {
        db::query(
            "INSERT INTO notifications (order_id, user_id, channel, delivered_at, kind) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(n.order.as_str())
        .bind(n.user.as_str())
        .bind(n.channel.as_str())
        .bind(now)
        .bind(n.kind)
        .execute(&mut *tx)
        .await?;
    }
    Ok(due)
}

/// The database's clock in epoch milliseconds, as SQL.
pub(crate) fn db_clock(sqlite: bool) -> &'static str {
    match sqlite {
        true => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        // Stable through a statement, so an index range can be bounded by it.
        false => "(extract(epoch from statement_timestamp()) * 1000)::int8",
    }
}

/// What an order costs, as its row records it.
fn amount(row: &AnyRow) -> Result<Option<AmountCents>, sqlx::Error> {
    let cents: Option<i64> = row.try_get("amount_cents")?;
    cents
        .map(AmountCents::try_from)
        .transpose()
        .map_err(|e| sqlx::Error::Decode(e.0.into()))
}

/// The `payBy` of orders that await payment, by order id.
pub(crate) type PayBy = std::collections::HashMap<String, i64>;

/// The payment window, in milliseconds, of an order written with `status`: its
/// `payBy` is the shard's clock when it is first written plus this.
pub(crate) fn window_ms(order: &OrderMessage, status: OrderStatus) -> Option<i64> {
    match (status, order.payment_window_secs) {
        (OrderStatus::AwaitingPayment, Some(window)) => Some(window.millis()),
        _ => None,
    }
}

/// An order as its row holds it (the columns of [`ORDER_COLUMNS`] and its key).
fn stored_order(row: &AnyRow, traceparent: Option<String>) -> Result<OrderMessage, sqlx::Error> {
    Ok(OrderMessage {
        order_id: row.try_get("order_id")?,
        user_id: row.try_get("user_id")?,
        product_id: row.try_get("product_id")?,
        quantity: row.try_get("quantity")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at: row.try_get("created_at")?,
        amount_cents: amount(row)?,
        payment_window_secs: None,
        traceparent,
    })
}

/// The writes of orders just made `expired`, in their transaction: `OrderExpired`, and
/// the restock each is due (once: the partition takes an order's units back once).
async fn expire_rows(
    tx: &mut AnyConnection,
    expired: &[(OrderMessage, i64)],
    now: i64,
) -> Result<(), sqlx::Error> {
    let events: Vec<_> = expired
        .iter()
        .map(|(order, pay_by)| events::order_expired(order, *pay_by, now))
        .collect();
    outbox::append(tx, &events, now).await?;
    for (order, _) in expired {
        db::query(
            "INSERT INTO restocks (order_id, user_id, product_id, quantity, created_at, reason) \
             VALUES ($1, $2, $3, $4, $5, 'expired') ON CONFLICT DO NOTHING",
        )
        .bind(order.order_id.as_str())
        .bind(order.user_id.as_str())
        .bind(order.product_id)
        .bind(order.quantity)
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
        let pay_by = self.commit_writes(&writes).await?;
        let mut result = Ok(());
        for msg in batch {
            if msg.abandoned() {
                continue;
            }
            result = self.serve(msg, &pay_by).await;
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
