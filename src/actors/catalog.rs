//! The catalog actor: products, flash-sale definitions, the login directory and
//! shared secrets, in the catalog database.

use serde::Serialize;

use crate::actors::inventory::SaleDefinition;
use crate::domain::{Email, ProductId, ProductName};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
}

#[derive(Debug)]
pub enum CatalogOp {
    CreateProduct {
        name: ProductName,
        price_cents: i64,
    },
    GetProduct(ProductId),
    /// Changes the name and/or price; a price change emits `PriceChanged`. Answers
    /// `Product(None)` when there is no such product.
    UpdateProduct {
        id: ProductId,
        name: Option<ProductName>,
        price_cents: Option<i64>,
    },
    /// Units sold and cancelled per minute, per product (all products when `None`).
    SalesReport(Option<ProductId>),
    /// Orders per product and the users with the most units (or one user).
    OrdersReport {
        user: Option<String>,
    },
    /// Stores the sale; answers `SaleStored(false)` when the product does not exist.
    PutSale {
        product: ProductId,
        sale: SaleDefinition,
    },
    GetSale(ProductId),
    /// Answers `Created(false)` when the e-mail is taken.
    CreateCredential {
        email: Email,
        user: String,
        password_hash: String,
    },
    GetCredential(Email),
    /// The stored secret of that name, storing `candidate` if there is none yet.
    Secret {
        name: String,
        candidate: String,
    },
}

impl CatalogOp {
    /// Whether the operation may write outbox rows (and so wake the catalog's relay).
    pub fn emits_events(&self) -> bool {
        matches!(
            self,
            CatalogOp::CreateProduct { .. } | CatalogOp::UpdateProduct { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogReply {
    Product(Option<Product>),
    SaleStored(bool),
    Sale(Option<SaleDefinition>),
    Created(bool),
    /// (user id, password hash)
    Credential(Option<(String, String)>),
    Secret(String),
    Report(serde_json::Value),
}
