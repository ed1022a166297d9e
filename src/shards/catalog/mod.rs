//! The catalog: products, flash-sale definitions, the login directory and shared
//! secrets. Its backend is written once for both modes: sqlx's `Any` driver over
//! PostgreSQL (cluster) or the SQLite file (embedded). Every statement here is valid in
//! both dialects; `$N` placeholders bind by number in each.

use ractor::ActorProcessingErr;
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::AnyPool;
use sqlx::Row;

use super::outbox;
mod reports;

use crate::db::{self, settle};
use crate::domain::{
    now_ms, rfc3339, Email, PaymentWindow, ProductId, ProductName, SaleDefinition, UserId,
};
use crate::events;
use crate::supervisors::slot::{Message, Nudge};
use crate::supervisors::worker::{Backend, Batch, Connect};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
}

/// Creates a product (emits `ProductCreated`).
#[derive(Debug)]
pub struct CreateProduct {
    pub name: ProductName,
    pub price_cents: i64,
}

#[derive(Debug)]
pub struct GetProduct {
    pub id: ProductId,
}

/// Changes the name and/or price; a price change emits `PriceChanged`. Answers `None`
/// when there is no such product.
#[derive(Debug)]
pub struct UpdateProduct {
    pub id: ProductId,
    pub name: Option<ProductName>,
    pub price_cents: Option<i64>,
}

/// Units sold and cancelled per minute, per product (every product when `None`).
#[derive(Debug)]
pub struct SalesReport {
    pub product: Option<ProductId>,
}

/// Orders per product and the users with the most units (or one user).
#[derive(Debug)]
pub struct OrdersReport {
    pub user: Option<UserId>,
}

/// Stores a sale; answers `false` when the product does not exist.
#[derive(Debug)]
pub struct PutSale {
    pub product: ProductId,
    pub sale: SaleDefinition,
}

/// Answers `false` when the e-mail address is taken.
#[derive(Debug)]
pub struct CreateCredential {
    pub email: Email,
    pub user: UserId,
    pub password_hash: String,
}

#[derive(Debug)]
pub struct GetCredential {
    pub email: Email,
}

/// A login as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub user: UserId,
    pub password_hash: String,
}

/// The stored secret of that name, storing `candidate` if there is none yet.
#[derive(Debug)]
pub struct SharedSecret {
    pub name: String,
    pub candidate: String,
}

/// Queue messages (or elements of one) that no consumer can process: kept with the
/// reason, out of the way of the rest.
#[derive(Debug)]
pub struct RecordDeadLetters {
    pub queue: String,
    pub letters: Vec<DeadLetterEntry>,
}

#[derive(Debug, Clone)]
pub struct DeadLetterEntry {
    pub reason: String,
    pub payload: String,
}

/// The newest dead letters, up to `limit`, and how many there are.
#[derive(Debug)]
pub struct ListDeadLetters {
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: i64,
    pub queue: String,
    pub reason: String,
    pub payload: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetters {
    pub total: i64,
    pub dead_letters: Vec<DeadLetter>,
}

/// Every stored sale, by product.
#[derive(Debug)]
pub struct SaleDefinitions;

crate::protocol! {
    /// What the catalog actor serves.
    pub enum CatalogMsg {
        CreateProduct(CreateProduct) -> Product,
        GetProduct(GetProduct) -> Option<Product>,
        UpdateProduct(UpdateProduct) -> Option<Product>,
        SalesReport(SalesReport) -> serde_json::Value,
        OrdersReport(OrdersReport) -> serde_json::Value,
        PutSale(PutSale) -> bool,
        CreateCredential(CreateCredential) -> bool,
        GetCredential(GetCredential) -> Option<Credential>,
        SharedSecret(SharedSecret) -> String,
        RecordDeadLetters(RecordDeadLetters) -> (),
        ListDeadLetters(ListDeadLetters) -> DeadLetters,
        SaleDefinitions(SaleDefinitions) -> Vec<(ProductId, SaleDefinition)>,
    }
}

impl CatalogMsg {
    /// Whether the message may write outbox rows (and so wake the catalog's relay).
    pub fn emits_events(&self) -> bool {
        matches!(
            self,
            CatalogMsg::CreateProduct(..) | CatalogMsg::UpdateProduct(..)
        )
    }
}

pub struct CatalogConnect {
    /// `postgres://…` or `sqlite://path` (the file is created by the migrations).
    pub url: String,
    pub pool_size: u32,
    pub nudge: Nudge,
}

pub struct Catalog {
    pool: AnyPool,
    nudge: Nudge,
    sqlite: bool,
}

#[ractor::async_trait]
impl Connect for CatalogConnect {
    type Backend = Catalog;

    async fn connect(&self) -> Result<Catalog, ActorProcessingErr> {
        Ok(Catalog {
            pool: db::any_pool(&self.url, self.pool_size).await?,
            nudge: self.nudge.clone(),
            sqlite: db::is_sqlite(&self.url),
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

impl Catalog {
    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        db::begin_write(&self.pool, self.sqlite).await
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
            let row = db::query("SELECT id, name, price_cents FROM products WHERE id = $1")
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
            let done = db::query(
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
                outbox::append(&mut tx, &[event], now).await?;
            }
            tx.commit().await?;
            return Ok(Some(Product {
                id: current.id,
                name: new_name,
                price_cents: new_price,
            }));
        }
    }

    async fn create_product(&self, req: &CreateProduct) -> Result<Product, sqlx::Error> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row = db::query(
            "INSERT INTO products (name, price_cents, created_at, updated_at) VALUES ($1, $2, $3, $3) \
             RETURNING id, name, price_cents",
        )
        .bind(req.name.as_str())
        .bind(req.price_cents)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let created = product(&row)?;
        let event = events::product_created(created.id, &created.name, created.price_cents, now);
        outbox::append(&mut tx, &[event], now).await?;
        tx.commit().await?;
        Ok(created)
    }

    async fn get_product(&self, id: ProductId) -> Result<Option<Product>, sqlx::Error> {
        let row = db::query("SELECT id, name, price_cents FROM products WHERE id = $1")
            .bind(id.get())
            .fetch_optional(db::on(&self.pool))
            .await?;
        row.as_ref().map(product).transpose()
    }

    async fn put_sale(&self, req: &PutSale) -> Result<bool, sqlx::Error> {
        let sale = &req.sale;
        let done = db::query(
            "INSERT INTO flash_sales (product_id, stock, per_user_limit, starts_at, ends_at, payment_window_secs, updated_at) \
             SELECT id, $2, $3, $4, $5, $7, $6 FROM products WHERE id = $1 \
             ON CONFLICT (product_id) DO UPDATE SET stock = excluded.stock, per_user_limit = excluded.per_user_limit, \
               starts_at = excluded.starts_at, ends_at = excluded.ends_at, \
               payment_window_secs = excluded.payment_window_secs, updated_at = excluded.updated_at",
        )
        .bind(req.product.get())
        .bind(sale.stock)
        .bind(sale.per_user_limit)
        .bind(sale.starts_at)
        .bind(sale.ends_at)
        .bind(now_ms())
        .bind(sale.payment_window.map(PaymentWindow::secs))
        .execute(db::on(&self.pool))
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn create_credential(&self, req: &CreateCredential) -> Result<bool, sqlx::Error> {
        let r = db::query(
            "INSERT INTO credentials (email, user_id, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(req.email.as_str())
        .bind(req.user.as_str())
        .bind(req.password_hash.as_str())
        .bind(now_ms())
        .execute(db::on(&self.pool))
        .await;
        match r {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn get_credential(&self, email: &Email) -> Result<Option<Credential>, sqlx::Error> {
        let row = db::query("SELECT user_id, password_hash FROM credentials WHERE email = $1")
            .bind(email.as_str())
            .fetch_optional(db::on(&self.pool))
            .await?;
        row.map(|r| {
            Ok(Credential {
                user: r.try_get("user_id")?,
                password_hash: r.try_get("password_hash")?,
            })
        })
        .transpose()
    }

    async fn shared_secret(&self, req: &SharedSecret) -> Result<String, sqlx::Error> {
        db::query(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(req.name.as_str())
        .bind(req.candidate.as_str())
        .execute(db::on(&self.pool))
        .await?;
        let row = db::query("SELECT value FROM secrets WHERE name = $1")
            .bind(req.name.as_str())
            .fetch_one(db::on(&self.pool))
            .await?;
        row.try_get("value")
    }

    async fn sale_definitions(&self) -> Result<Vec<(ProductId, SaleDefinition)>, sqlx::Error> {
        let rows = db::query(
            "SELECT s.product_id, s.stock, s.per_user_limit, s.starts_at, s.ends_at, s.payment_window_secs, p.price_cents \
             FROM flash_sales s JOIN products p ON p.id = s.product_id",
        )
        .fetch_all(db::on(&self.pool))
        .await?;
        rows.iter()
            .map(|r| {
                let sale = SaleDefinition {
                    stock: r.try_get("stock")?,
                    per_user_limit: r.try_get("per_user_limit")?,
                    starts_at: r.try_get("starts_at")?,
                    ends_at: r.try_get("ends_at")?,
                    payment_window: r
                        .try_get::<Option<i64>, _>("payment_window_secs")?
                        .and_then(PaymentWindow::from_stored),
                    unit_price_cents: r.try_get("price_cents")?,
                };
                Ok((ProductId::from_db(r.try_get("product_id")?), sale))
            })
            .collect()
    }

    /// Serves one message; an error returned here breaks the catalog.
    async fn serve(&self, msg: CatalogMsg) -> Result<(), sqlx::Error> {
        match msg {
            CatalogMsg::CreateProduct(req, port) => {
                settle(port, self.create_product(&req).await, "create product")
            }
            CatalogMsg::GetProduct(req, port) => {
                settle(port, self.get_product(req.id).await, "read product")
            }
            CatalogMsg::UpdateProduct(req, port) => {
                let r = self
                    .update_product(req.id, req.name.as_ref(), req.price_cents)
                    .await;
                settle(port, r, "update product")
            }
            CatalogMsg::SalesReport(req, port) => {
                settle(port, self.sales_report(req.product).await, "sales report")
            }
            CatalogMsg::OrdersReport(req, port) => {
                let r = self
                    .orders_report(req.user.as_ref().map(UserId::as_str))
                    .await;
                settle(port, r, "orders report")
            }
            CatalogMsg::PutSale(req, port) => settle(port, self.put_sale(&req).await, "store sale"),
            CatalogMsg::CreateCredential(req, port) => {
                settle(port, self.create_credential(&req).await, "create login")
            }
            CatalogMsg::GetCredential(req, port) => {
                settle(port, self.get_credential(&req.email).await, "read login")
            }
            CatalogMsg::SharedSecret(req, port) => {
                settle(port, self.shared_secret(&req).await, "shared secret")
            }
            CatalogMsg::RecordDeadLetters(req, port) => settle(
                port,
                self.record_dead_letters(&req).await,
                "record dead letters",
            ),
            CatalogMsg::SaleDefinitions(_, port) => {
                settle(port, self.sale_definitions().await, "sale definitions")
            }
            CatalogMsg::ListDeadLetters(req, port) => settle(
                port,
                self.dead_letters(req.limit).await,
                "list dead letters",
            ),
        }
    }
}

#[ractor::async_trait]
impl Backend for Catalog {
    type Msg = CatalogMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let mut emitted = false;
        let mut result = Ok(());
        for msg in batch {
            if msg.abandoned() {
                continue;
            }
            emitted |= msg.emits_events();
            result = self.serve(msg).await;
            if result.is_err() {
                break;
            }
        }
        if emitted {
            self.nudge.wake();
        }
        Ok(result?)
    }
}
