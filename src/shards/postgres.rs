//! The PostgreSQL backends: an order shard (primary plus optional read replica) and
//! the catalog. Each actor owns its own small pool, opened on every (re)start.

use std::str::FromStr;
use std::time::{Duration, Instant};

use ractor::ActorProcessingErr;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::Row;

use crate::actors::catalog::{CatalogOp, CatalogReply, Product};
use crate::actors::inventory::SaleDefinition;
use crate::actors::shard::{OrderStatus, OrderView, ShardOp, ShardReply};
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::{now_ms, rfc3339};

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
}

pub struct PgShard {
    index: usize,
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

const ORDER_COLUMNS: &str = "order_id, user_id, product_id, quantity, status, created_at";

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
            sqlx::query(
                "INSERT INTO orders (order_id, user_id, product_id, quantity, idempotency_key, status, created_at, updated_at) \
                 SELECT o.*, $8::int8 FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::int4[], $5::text[], $6::text[], $7::int8[]) AS o \
                 ON CONFLICT DO NOTHING",
            )
            .bind(&ids)
            .bind(&users)
            .bind(&products)
            .bind(&quantities)
            .bind(&keys)
            .bind(&statuses)
            .bind(&created)
            .bind(now)
            .execute(&mut *tx)
            .await?;
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
                sqlx::query("INSERT INTO users (user_id, email, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                    .bind(user)
                    .bind(email)
                    .bind(now_ms())
                    .execute(&self.primary)
                    .await?;
                ShardReply::Done
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
        self.commit_writes(&batch).await?;
        for e in batch {
            if e.abandoned() {
                continue;
            }
            let reply = self.read(&e.op).await?;
            e.answer(reply);
        }
        Ok(())
    }
}

pub struct CatalogConnect {
    pub url: String,
    pub pool_size: u32,
}

pub struct PgCatalog {
    pool: PgPool,
}

#[ractor::async_trait]
impl Connect for CatalogConnect {
    type Backend = PgCatalog;

    async fn connect(&self) -> Result<PgCatalog, ActorProcessingErr> {
        Ok(PgCatalog {
            pool: pool(&self.url, self.pool_size).await?,
        })
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

impl PgCatalog {
    async fn serve(&self, op: &CatalogOp) -> Result<CatalogReply, sqlx::Error> {
        let pool = &self.pool;
        Ok(match op {
            CatalogOp::CreateProduct { name, price_cents } => {
                let now = now_ms();
                let row = sqlx::query(
                    "INSERT INTO products (name, price_cents, created_at, updated_at) VALUES ($1, $2, $3, $3) RETURNING id",
                )
                .bind(name.as_str())
                .bind(price_cents)
                .bind(now)
                .fetch_one(pool)
                .await?;
                CatalogReply::Product(Some(Product {
                    id: row.try_get("id")?,
                    name: name.as_str().to_string(),
                    price_cents: *price_cents,
                }))
            }
            CatalogOp::GetProduct(id) => {
                let row = sqlx::query("SELECT id, name, price_cents FROM products WHERE id = $1")
                    .bind(id.get())
                    .fetch_optional(pool)
                    .await?;
                CatalogReply::Product(match row {
                    Some(r) => Some(Product {
                        id: r.try_get("id")?,
                        name: r.try_get("name")?,
                        price_cents: r.try_get("price_cents")?,
                    }),
                    None => None,
                })
            }
            CatalogOp::PutSale { product, sale } => {
                let done = sqlx::query(
                    "INSERT INTO flash_sales (product_id, stock, per_user_limit, starts_at, ends_at, updated_at) \
                     SELECT id, $2, $3, $4, $5, $6 FROM products WHERE id = $1 \
                     ON CONFLICT (product_id) DO UPDATE SET stock = EXCLUDED.stock, per_user_limit = EXCLUDED.per_user_limit, \
                       starts_at = EXCLUDED.starts_at, ends_at = EXCLUDED.ends_at, updated_at = EXCLUDED.updated_at",
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
                let row = sqlx::query(
                    "SELECT stock, per_user_limit, starts_at, ends_at FROM flash_sales WHERE product_id = $1",
                )
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
                let r = sqlx::query(
                    "INSERT INTO credentials (email, user_id, password_hash, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind(email.as_str())
                .bind(user)
                .bind(password_hash)
                .bind(now_ms())
                .execute(pool)
                .await;
                match r {
                    Ok(_) => CatalogReply::Created(true),
                    Err(e) if is_unique_violation(&e) => CatalogReply::Created(false),
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
                    .bind(name)
                    .bind(candidate)
                    .execute(pool)
                    .await?;
                let row = sqlx::query("SELECT value FROM secrets WHERE name = $1")
                    .bind(name)
                    .fetch_one(pool)
                    .await?;
                CatalogReply::Secret(row.try_get("value")?)
            }
        })
    }
}

#[ractor::async_trait]
impl Backend for PgCatalog {
    type Op = CatalogOp;
    type Reply = CatalogReply;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        for e in batch {
            if e.abandoned() {
                continue;
            }
            let reply = self.serve(&e.op).await?;
            e.answer(reply);
        }
        Ok(())
    }
}
