//! The catalog backend, written once for both modes: sqlx's `Any` driver over
//! PostgreSQL (cluster) or the SQLite file (embedded). Every statement here is valid in
//! both dialects; `$N` placeholders bind by number in each.

use ractor::ActorProcessingErr;
use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::Row;

use crate::actors::catalog::{CatalogOp, CatalogReply, Product};
use crate::actors::inventory::SaleDefinition;
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::{now_ms, rfc3339};
use crate::domain::{ProductId, ProductName};
use crate::events::relay::{any_pool, Nudge};
use crate::events::{self, OutboxEvent};

pub struct CatalogConnect {
    /// `postgres://…` or `sqlite://path` (the file is created by the migrations).
    pub url: String,
    pub pool_size: u32,
    pub nudge: Nudge,
}

pub struct Catalog {
    pool: AnyPool,
    nudge: Nudge,
    /// How a writing transaction starts: on SQLite it takes the write lock at once.
    begin: &'static str,
}

#[ractor::async_trait]
impl Connect for CatalogConnect {
    type Backend = Catalog;

    async fn connect(&self) -> Result<Catalog, ActorProcessingErr> {
        let sqlite = self.url.starts_with("sqlite:");
        Ok(Catalog {
            pool: any_pool(&self.url, self.pool_size).await?,
            nudge: self.nudge.clone(),
            begin: if sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" },
        })
    }
}

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
    })
}

/// Appends an event to the catalog's outbox within the caller's transaction.
async fn outbox_append(
    tx: &mut sqlx::AnyConnection,
    e: &OutboxEvent,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO outbox (event_id, topic, key, payload, traceparent, created_at) VALUES ($1, $2, $3, $4, $5, $6)")
        .bind(e.event_id.as_str())
        .bind(e.topic)
        .bind(e.key.as_str())
        .bind(e.payload.as_str())
        .bind(e.traceparent.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

impl Catalog {
    /// Starts a transaction that writes. SQLite can not turn a transaction that has
    /// read into one that writes once another connection (a relay, a consumer) has
    /// written since: it fails at once instead of waiting. Taking the write lock at
    /// the start waits its turn (the busy timeout) instead.
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        self.pool.begin_with(self.begin).await
    }

    async fn update_product(
        &self,
        id: ProductId,
        name: Option<&ProductName>,
        price_cents: Option<i64>,
    ) -> Result<Option<Product>, sqlx::Error> {
        // Optimistic: the update applies only if the price read is still current, so
        // the event's old price is the one replaced.
        loop {
            let now = now_ms();
            let mut tx = self.write_tx().await?;
            let row = sqlx::query("SELECT id, name, price_cents FROM products WHERE id = $1")
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(current) = row.as_ref().map(product).transpose()? else {
                return Ok(None);
            };
            let new_name = name
                .map(|n| n.as_str().to_string())
                .unwrap_or(current.name.clone());
            let new_price = price_cents.unwrap_or(current.price_cents);
            let done = sqlx::query(
                "UPDATE products SET name = $2, price_cents = $3, updated_at = $4 WHERE id = $1 AND price_cents = $5",
            )
            .bind(id.get())
            .bind(new_name.as_str())
            .bind(new_price)
            .bind(now)
            .bind(current.price_cents)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                continue;
            }
            if new_price != current.price_cents {
                let event = events::price_changed(id.get(), current.price_cents, new_price, now);
                outbox_append(&mut tx, &event, now).await?;
            }
            tx.commit().await?;
            return Ok(Some(Product {
                id: current.id,
                name: new_name,
                price_cents: new_price,
            }));
        }
    }

    async fn sales_report(
        &self,
        only: Option<ProductId>,
    ) -> Result<serde_json::Value, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT product_id, minute, sold, cancelled FROM sales_per_minute \
             WHERE ($1 = 0 OR product_id = $1) ORDER BY product_id, minute",
        )
        .bind(only.map(|p| p.get()).unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        let mut products: Vec<serde_json::Value> = Vec::new();
        let mut current: Option<(i64, i64, i64, Vec<serde_json::Value>)> = None;
        let flush = |c: Option<(i64, i64, i64, Vec<serde_json::Value>)>,
                     out: &mut Vec<serde_json::Value>| {
            if let Some((id, sold, cancelled, minutes)) = c {
                out.push(serde_json::json!({"productId": id, "sold": sold, "cancelled": cancelled, "minutes": minutes}));
            }
        };
        for r in rows {
            let (id, minute, sold, cancelled): (i64, i64, i64, i64) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            if current.as_ref().is_some_and(|c| c.0 != id) {
                flush(current.take(), &mut products);
            }
            let c = current.get_or_insert((id, 0, 0, Vec::new()));
            c.1 += sold;
            c.2 += cancelled;
            c.3.push(serde_json::json!({"minute": rfc3339(minute), "sold": sold, "cancelled": cancelled}));
        }
        flush(current, &mut products);
        Ok(serde_json::json!({ "products": products }))
    }

    async fn orders_report(&self, user: Option<&str>) -> Result<serde_json::Value, sqlx::Error> {
        let counts = |r: &AnyRow| -> Result<(i64, i64, i64), sqlx::Error> {
            Ok((
                r.try_get("orders")?,
                r.try_get("units")?,
                r.try_get("cancelled")?,
            ))
        };
        let mut products = Vec::new();
        for r in sqlx::query(
            "SELECT product_id, orders, units, cancelled FROM report_products ORDER BY product_id",
        )
        .fetch_all(&self.pool)
        .await?
        {
            let (orders, units, cancelled) = counts(&r)?;
            let id: i64 = r.try_get("product_id")?;
            products.push(serde_json::json!({"productId": id, "orders": orders, "units": units, "cancelled": cancelled}));
        }
        let users = sqlx::query(
            "SELECT user_id, orders, units, cancelled FROM report_users \
             WHERE ($1 = '' OR user_id = $1) ORDER BY units DESC, user_id LIMIT 100",
        )
        .bind(user.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        let mut top = Vec::new();
        for r in users {
            let (orders, units, cancelled) = counts(&r)?;
            let id: String = r.try_get("user_id")?;
            top.push(serde_json::json!({"userId": id, "orders": orders, "units": units, "cancelled": cancelled}));
        }
        Ok(serde_json::json!({ "products": products, "users": top }))
    }
    async fn serve(&self, op: &CatalogOp) -> Result<CatalogReply, sqlx::Error> {
        let pool = &self.pool;
        Ok(match op {
            CatalogOp::CreateProduct { name, price_cents } => {
                let now = now_ms();
                let mut tx = self.write_tx().await?;
                let row = sqlx::query(
                    "INSERT INTO products (name, price_cents, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                     RETURNING id, name, price_cents",
                )
                .bind(name.as_str())
                .bind(*price_cents)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                let created = product(&row)?;
                let event =
                    events::product_created(created.id, &created.name, created.price_cents, now);
                outbox_append(&mut tx, &event, now).await?;
                tx.commit().await?;
                CatalogReply::Product(Some(created))
            }
            CatalogOp::UpdateProduct {
                id,
                name,
                price_cents,
            } => CatalogReply::Product(
                self.update_product(*id, name.as_ref(), *price_cents)
                    .await?,
            ),
            CatalogOp::SalesReport(product) => {
                CatalogReply::Report(self.sales_report(*product).await?)
            }
            CatalogOp::OrdersReport { user } => {
                CatalogReply::Report(self.orders_report(user.as_deref()).await?)
            }
            CatalogOp::GetProduct(id) => {
                let row = sqlx::query("SELECT id, name, price_cents FROM products WHERE id = $1")
                    .bind(id.get())
                    .fetch_optional(pool)
                    .await?;
                CatalogReply::Product(row.as_ref().map(product).transpose()?)
            }
            CatalogOp::PutSale { product, sale } => {
                let done = sqlx::query(
                    "INSERT INTO flash_sales (product_id, stock, per_user_limit, starts_at, ends_at, updated_at) \
                     SELECT id, $2, $3, $4, $5, $6 FROM products WHERE id = $1 \
                     ON CONFLICT (product_id) DO UPDATE SET stock = excluded.stock, per_user_limit = excluded.per_user_limit, \
                       starts_at = excluded.starts_at, ends_at = excluded.ends_at, updated_at = excluded.updated_at",
                )
                .bind(product.get())
                .bind(sale.stock)
                .bind(sale.per_user_limit)
                .bind(sale.starts_at)
                .bind(sale.ends_at)
                .bind(now_ms())
                .execute(pool)
                .await?;
                CatalogReply::SaleStored(done.rows_affected() == 1)
            }
            CatalogOp::GetSale(id) => {
                let row = sqlx::query("SELECT stock, per_user_limit, starts_at, ends_at FROM flash_sales WHERE product_id = $1")
                    .bind(id.get())
                    .fetch_optional(pool)
                    .await?;
                CatalogReply::Sale(match row {
                    Some(r) => Some(SaleDefinition {
                        stock: r.try_get("stock")?,
                        per_user_limit: r.try_get("per_user_limit")?,
                        starts_at: r.try_get("starts_at")?,
                        ends_at: r.try_get("ends_at")?,
                    }),
                    None => None,
                })
            }
            CatalogOp::CreateCredential {
                email,
                user,
                password_hash,
            } => {
                let r = sqlx::query("INSERT INTO credentials (email, user_id, password_hash, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(email.as_str())
                    .bind(user.as_str())
                    .bind(password_hash.as_str())
                    .bind(now_ms())
                    .execute(pool)
                    .await;
                match r {
                    Ok(_) => CatalogReply::Created(true),
                    Err(sqlx::Error::Database(d)) if d.is_unique_violation() => {
                        CatalogReply::Created(false)
                    }
                    Err(e) => return Err(e),
                }
            }
            CatalogOp::GetCredential(email) => {
                let row =
                    sqlx::query("SELECT user_id, password_hash FROM credentials WHERE email = $1")
                        .bind(email.as_str())
                        .fetch_optional(pool)
                        .await?;
                CatalogReply::Credential(match row {
                    Some(r) => Some((r.try_get("user_id")?, r.try_get("password_hash")?)),
                    None => None,
                })
            }
            CatalogOp::Secret { name, candidate } => {
                sqlx::query("INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
                    .bind(name.as_str())
                    .bind(candidate.as_str())
                    .execute(pool)
                    .await?;
                let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
                    .bind(name.as_str())
                    .fetch_one(pool)
                    .await?;
                CatalogReply::Secret(row.try_get("value")?)
            }
        })
    }
}

#[ractor::async_trait]
impl Backend for Catalog {
    type Op = CatalogOp;
    type Reply = CatalogReply;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let mut emitted = false;
        for e in batch {
            if e.abandoned() {
                continue;
            }
            emitted |= e.op.emits_events();
            let reply = self.serve(&e.op).await?;
            e.answer(reply);
        }
        if emitted {
            self.nudge.wake();
        }
        Ok(())
    }
}
