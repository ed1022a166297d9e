//! The catalog backend, written once for both modes: sqlx's `Any` driver over
//! PostgreSQL (cluster) or the SQLite file (embedded). Every statement here is valid in
//! both dialects; `$N` placeholders bind by number in each.

use std::sync::Once;
use std::time::Duration;

use ractor::ActorProcessingErr;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;
use sqlx::Row;

use crate::actors::catalog::{CatalogOp, CatalogReply, Product};
use crate::actors::inventory::SaleDefinition;
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::now_ms;

pub struct CatalogConnect {
    /// `postgres://…` or `sqlite://path` (the file is created by the migrations).
    pub url: String,
    pub pool_size: u32,
}

pub struct Catalog {
    pool: AnyPool,
}

#[ractor::async_trait]
impl Connect for CatalogConnect {
    type Backend = Catalog;

    async fn connect(&self) -> Result<Catalog, ActorProcessingErr> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);
        let pool = AnyPoolOptions::new()
            .max_connections(self.pool_size)
            .acquire_timeout(Duration::from_secs(3))
            .connect(&self.url)
            .await?;
        Ok(Catalog { pool })
    }
}

fn product(row: &AnyRow) -> Result<Product, sqlx::Error> {
    Ok(Product {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        price_cents: row.try_get("price_cents")?,
    })
}

impl Catalog {
    async fn serve(&self, op: &CatalogOp) -> Result<CatalogReply, sqlx::Error> {
        let pool = &self.pool;
        Ok(match op {
            CatalogOp::CreateProduct { name, price_cents } => {
                let row = sqlx::query(
                    "INSERT INTO products (name, price_cents, created_at, updated_at) VALUES ($1, $2, $3, $3) \
                     RETURNING id, name, price_cents",
                )
                .bind(name.as_str())
                .bind(*price_cents)
                .bind(now_ms())
                .fetch_one(pool)
                .await?;
                CatalogReply::Product(Some(product(&row)?))
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
