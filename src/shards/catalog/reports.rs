//! What the catalog reports: the sales and orders the reporting consumers counted,
//! and the dead letters.

use super::*;

impl Catalog {
    pub(super) async fn sales_report(
        &self,
        only: Option<ProductId>,
    ) -> Result<serde_json::Value, sqlx::Error> {
        let rows = db::query(
            "SELECT product_id, minute, sold, cancelled FROM sales_per_minute \
             WHERE ($1 = 0 OR product_id = $1) ORDER BY product_id, minute",
        )
        .bind(only.map(|p| p.get()).unwrap_or(0))
        .fetch_all(db::on(&self.pool))
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

    pub(super) async fn orders_report(
        &self,
        user: Option<&str>,
    ) -> Result<serde_json::Value, sqlx::Error> {
        let counts = |r: &AnyRow| -> Result<(i64, i64, i64, i64), sqlx::Error> {
            Ok((
                r.try_get("orders")?,
                r.try_get("units")?,
                r.try_get("cancelled")?,
                r.try_get("expired")?,
            ))
        };
        let mut products = Vec::new();
        for r in db::query(
            "SELECT product_id, orders, units, cancelled, expired FROM report_products ORDER BY product_id",
        )
        .fetch_all(db::on(&self.pool))
        .await?
        {
            let (orders, units, cancelled, expired) = counts(&r)?;
            let id: i64 = r.try_get("product_id")?;
            products.push(serde_json::json!({"productId": id, "orders": orders, "units": units, "cancelled": cancelled, "expired": expired}));
        }
        let users = db::query(
            "SELECT user_id, orders, units, cancelled, expired FROM report_users \
             WHERE ($1 = '' OR user_id = $1) ORDER BY units DESC, user_id LIMIT 100",
        )
        .bind(user.unwrap_or(""))
        .fetch_all(db::on(&self.pool))
        .await?;
        let mut top = Vec::new();
        for r in users {
            let (orders, units, cancelled, expired) = counts(&r)?;
            let id: String = r.try_get("user_id")?;
            top.push(serde_json::json!({"userId": id, "orders": orders, "units": units, "cancelled": cancelled, "expired": expired}));
        }
        Ok(serde_json::json!({ "products": products, "users": top }))
    }

    pub(super) async fn record_dead_letters(
        &self,
        req: &RecordDeadLetters,
    ) -> Result<(), sqlx::Error> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        for letter in &req.letters {
            db::query(
                "INSERT INTO dead_letters (queue, reason, payload, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(req.queue.as_str())
            .bind(letter.reason.as_str())
            .bind(letter.payload.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    pub(super) async fn dead_letters(&self, limit: i64) -> Result<DeadLetters, sqlx::Error> {
        let total: i64 = db::query_scalar("SELECT COUNT(*) FROM dead_letters")
            .fetch_one(db::on(&self.pool))
            .await?;
        let rows = db::query(
            "SELECT id, queue, reason, payload, created_at FROM dead_letters ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(db::on(&self.pool))
        .await?;
        let dead_letters = rows
            .iter()
            .map(|r| {
                Ok(DeadLetter {
                    id: r.try_get("id")?,
                    queue: r.try_get("queue")?,
                    reason: r.try_get("reason")?,
                    payload: r.try_get("payload")?,
                    created_at: rfc3339(r.try_get("created_at")?),
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(DeadLetters {
            total,
            dead_letters,
        })
    }
}
