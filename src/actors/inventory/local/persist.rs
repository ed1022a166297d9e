//! The partition's file: its state is loaded from it at start, and every batch's
//! changes are written to it in one transaction before the batch is answered.

use sqlx::Row;

use super::{uuid_bits, uuid_text, Accepted, Held, IdemKey, LocalInventory, Reservation, Sale};
use crate::domain::{PaymentWindow, Terms};

/// What a batch changed, to be written before anyone hears of it.
pub(super) enum Change {
    Sale(i64),
    IdemPut(IdemKey, String, i64),
    IdemDel(IdemKey),
    Bought(i64, String),
    Resv(String),
    Released(String),
    Restocked(String),
    Ord(u128),
    /// Keys and lookup entries that expired by then (epoch ms).
    Expired(i64),
}

impl LocalInventory {
    /// Rebuilds the state from the partition's file.
    pub(super) async fn load(&mut self) -> Result<(), sqlx::Error> {
        let p = &self.pool;
        for r in sqlx::query(
            "SELECT pid, stock, remaining, lim, starts, ends, price, window_secs FROM sales",
        )
        .fetch_all(p)
        .await?
        {
            let sale = Sale {
                stock: r.get(1),
                remaining: r.get(2),
                limit: r.get(3),
                starts: r.get(4),
                ends: r.get(5),
                terms: Terms {
                    unit_price_cents: r.get(6),
                    payment_window: PaymentWindow::from_stored(r.get(7)),
                },
            };
            self.sales.insert(r.get(0), sale);
        }
        let rows = sqlx::query("SELECT pid, uid, key, oid, expires FROM idem ORDER BY expires")
            .fetch_all(p)
            .await?;
        for r in rows {
            let expires: i64 = r.get(4);
            let Some(order) = uuid_bits(r.get(3)) else {
                continue;
            };
            let h = self.digest.of(r.get(0), r.get(1), r.get(2));
            self.idem.insert(h, Held { order, expires });
            self.idem_expiry.push_back((expires, h));
        }
        for r in sqlx::query("SELECT pid, uid, n FROM bought")
            .fetch_all(p)
            .await?
        {
            let buyer = self.buyer(r.get(1));
            self.bought.insert((r.get(0), buyer), r.get(2));
        }
        for r in sqlx::query("SELECT oid, pid, published, ts, qty, uid, key FROM resv")
            .fetch_all(p)
            .await?
        {
            let rv = Reservation {
                pid: r.get(1),
                published: r.get::<i64, _>(2) != 0,
                ts: r.get(3),
                qty: r.get(4),
                uid: r.get(5),
                key: r.get(6),
            };
            self.resv.insert(r.get(0), rv);
        }
        for r in sqlx::query("SELECT oid FROM released").fetch_all(p).await? {
            self.released.insert(r.get(0));
        }
        for r in sqlx::query("SELECT oid FROM restocked")
            .fetch_all(p)
            .await?
        {
            self.restocked.insert(r.get(0));
        }
        for r in sqlx::query("SELECT oid, uid, pid, qty, created FROM ord")
            .fetch_all(p)
            .await?
        {
            let (Some(order), Some(user)) = (uuid_bits(r.get(0)), uuid_bits(r.get(1))) else {
                continue;
            };
            let o = Accepted {
                user,
                product: r.get(2),
                quantity: r.get(3),
                created_at: r.get(4),
            };
            self.orders.insert(order, o);
        }
        Ok(())
    }

    /// Writes every change of the batch in one transaction.
    pub(super) async fn persist(&mut self) -> Result<(), sqlx::Error> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match c {
                Change::Sale(pid) => {
                    if let Some(s) = self.sales.get(&pid) {
                        sqlx::query("INSERT OR REPLACE INTO sales (pid, stock, remaining, lim, starts, ends, price, window_secs) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
                            .bind(pid)
                            .bind(s.stock)
                            .bind(s.remaining)
                            .bind(s.limit)
                            .bind(s.starts)
                            .bind(s.ends)
                            .bind(s.terms.unit_price_cents)
                            .bind(PaymentWindow::stored(s.terms.payment_window))
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Change::IdemPut(k, oid, expires) => {
                    sqlx::query("INSERT OR REPLACE INTO idem (pid, uid, key, oid, expires) VALUES (?, ?, ?, ?, ?)")
                        .bind(k.0)
                        .bind(&k.1)
                        .bind(&k.2)
                        .bind(oid)
                        .bind(expires)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::IdemDel(k) => {
                    sqlx::query("DELETE FROM idem WHERE pid = ? AND uid = ? AND key = ?")
                        .bind(k.0)
                        .bind(&k.1)
                        .bind(&k.2)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Expired(now) => {
                    sqlx::query("DELETE FROM idem WHERE expires <= ?")
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM ord WHERE created <= ?")
                        .bind(now - self.ttl_ms)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Bought(pid, uid) => {
                    let buyer = self.buyer(&uid);
                    let n = self.bought.get(&(pid, buyer)).copied().unwrap_or(0);
                    sqlx::query("INSERT OR REPLACE INTO bought (pid, uid, n) VALUES (?, ?, ?)")
                        .bind(pid)
                        .bind(&uid)
                        .bind(n)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Resv(oid) => match self.resv.get(&oid) {
                    Some(r) => {
                        sqlx::query(
                            "INSERT OR REPLACE INTO resv (oid, pid, published, ts, qty, uid, key) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        )
                        .bind(&oid)
                        .bind(r.pid)
                        .bind(i64::from(r.published))
                        .bind(r.ts)
                        .bind(r.qty)
                        .bind(&r.uid)
                        .bind(&r.key)
                        .execute(&mut *tx)
                        .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM resv WHERE oid = ?")
                            .bind(&oid)
                            .execute(&mut *tx)
                            .await?;
                    }
                },
                Change::Released(oid) => {
                    sqlx::query("INSERT OR IGNORE INTO released (oid) VALUES (?)")
                        .bind(&oid)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Restocked(oid) => {
                    sqlx::query("INSERT OR IGNORE INTO restocked (oid) VALUES (?)")
                        .bind(&oid)
                        .execute(&mut *tx)
                        .await?;
                }
                Change::Ord(bits) => match self.orders.get(&bits) {
                    Some(o) => {
                        sqlx::query("INSERT OR REPLACE INTO ord (oid, uid, pid, qty, created) VALUES (?, ?, ?, ?, ?)")
                            .bind(uuid_text(bits))
                            .bind(uuid_text(o.user))
                            .bind(o.product)
                            .bind(o.quantity)
                            .bind(o.created_at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM ord WHERE oid = ?")
                            .bind(uuid_text(bits))
                            .execute(&mut *tx)
                            .await?;
                    }
                },
            }
        }
        tx.commit().await
    }
}
