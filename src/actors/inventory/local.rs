//! The embedded backend of an inventory partition: the partition actor owns its
//! state in memory and makes each batch durable in its own SQLite file (one
//! transaction) before answering, so a restart, or `kill -9`, rebuilds the same state.
//! The operations mirror the Redis scripts step for step, lifetimes included: an
//! idempotency key and an accepted order's lookup entry live for
//! `inventory.idempotency_ttl_secs`, a rate-limit window for its length (a sweep
//! forgets what has expired, as Redis does). The conformance suite in
//! `tests/api/inventory.rs` runs the same operations against both backends.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use ractor::ActorProcessingErr;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::{
    InventoryMsg, PartitionState, PendingOrder, RateWindow, ReserveOutcome, ReserveRequest,
    SaleCounters, SaleRefused, SaleSummary, UnpublishedOrder, NOT_REBUILDING,
};
use crate::db::sqlite_pool;
use crate::domain::{now_ms, OrderId, SaleDefinition};
use crate::supervisors::slot::{Deferred, Message};
use crate::supervisors::worker::{Backend, Batch, Connect};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sales (pid INTEGER PRIMARY KEY, stock INTEGER NOT NULL, remaining INTEGER NOT NULL, lim INTEGER NOT NULL, starts INTEGER NOT NULL, ends INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idem (pid INTEGER NOT NULL, uid TEXT NOT NULL, key TEXT NOT NULL, oid TEXT NOT NULL, expires INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (pid, uid, key));
CREATE TABLE IF NOT EXISTS bought (pid INTEGER NOT NULL, uid TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (pid, uid));
CREATE TABLE IF NOT EXISTS resv (oid TEXT PRIMARY KEY, pid INTEGER NOT NULL, published INTEGER NOT NULL, ts INTEGER NOT NULL, qty INTEGER NOT NULL, uid TEXT NOT NULL, key TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS released (oid TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS restocked (oid TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS ord (oid TEXT PRIMARY KEY, uid TEXT NOT NULL, pid INTEGER NOT NULL, qty INTEGER NOT NULL, created INTEGER NOT NULL);
";

#[derive(Debug, Clone, Copy)]
struct Sale {
    stock: i64,
    remaining: i64,
    limit: i64,
    starts: i64,
    ends: i64,
}

#[derive(Debug, Clone)]
struct Reservation {
    pid: i64,
    published: bool,
    ts: i64,
    qty: i64,
    uid: String,
    key: String,
}

type IdemKey = (i64, String, String);

/// What a batch changed, to be written before anyone hears of it.
enum Change {
    Sale(i64),
    Idem(IdemKey),
    Bought(i64, String),
    Resv(String),
    Released(String),
    Restocked(String),
    Ord(String),
}

pub struct LocalInventoryConnect {
    pub path: PathBuf,
    pub stale_ms: u64,
    pub idempotency_ttl_secs: u64,
}

pub struct LocalInventory {
    pool: SqlitePool,
    stale_ms: i64,
    sales: HashMap<i64, Sale>,
    /// The order id of a key, and when the key expires (epoch ms).
    idem: HashMap<IdemKey, (String, i64)>,
    /// How long keys and accepted orders' lookup entries live (ms).
    ttl_ms: i64,
    bought: HashMap<(i64, String), i64>,
    resv: HashMap<String, Reservation>,
    released: HashSet<String>,
    restocked: HashSet<String>,
    orders: HashMap<String, PendingOrder>,
    /// A user's rate-limit window: when it ends (epoch ms) and the requests in it.
    rate: HashMap<String, (i64, i64)>,
    cache: HashMap<String, (String, i64)>,
    changes: Vec<Change>,
}

#[ractor::async_trait]
impl Connect for LocalInventoryConnect {
    type Backend = LocalInventory;

    async fn connect(&self) -> Result<LocalInventory, ActorProcessingErr> {
        let pool = sqlite_pool(&self.path, 1).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        // Files written before keys expired lack the column.
        let has_expiry: bool = sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM pragma_table_info('idem') WHERE name = 'expires'",
        )
        .fetch_one(&pool)
        .await?;
        if !has_expiry {
            sqlx::raw_sql("ALTER TABLE idem ADD COLUMN expires INTEGER NOT NULL DEFAULT 0")
                .execute(&pool)
                .await?;
        }
        let mut inv = LocalInventory {
            pool,
            stale_ms: self.stale_ms as i64,
            sales: HashMap::new(),
            idem: HashMap::new(),
            ttl_ms: self.idempotency_ttl_secs as i64 * 1000,
            bought: HashMap::new(),
            resv: HashMap::new(),
            released: HashSet::new(),
            restocked: HashSet::new(),
            orders: HashMap::new(),
            rate: HashMap::new(),
            cache: HashMap::new(),
            changes: Vec::new(),
        };
        inv.load().await?;
        Ok(inv)
    }
}

impl LocalInventory {
    /// Rebuilds the state from the partition's file.
    async fn load(&mut self) -> Result<(), sqlx::Error> {
        let p = &self.pool;
        for r in sqlx::query("SELECT pid, stock, remaining, lim, starts, ends FROM sales")
            .fetch_all(p)
            .await?
        {
            let sale = Sale {
                stock: r.get(1),
                remaining: r.get(2),
                limit: r.get(3),
                starts: r.get(4),
                ends: r.get(5),
            };
            self.sales.insert(r.get(0), sale);
        }
        // A key stored without an expiry (an older file) lives one lifetime from now.
        let default_expiry = now_ms() + self.ttl_ms;
        for r in sqlx::query("SELECT pid, uid, key, oid, expires FROM idem")
            .fetch_all(p)
            .await?
        {
            let expires: i64 = r.get(4);
            let expires = if expires > 0 { expires } else { default_expiry };
            self.idem
                .insert((r.get(0), r.get(1), r.get(2)), (r.get(3), expires));
        }
        for r in sqlx::query("SELECT pid, uid, n FROM bought")
            .fetch_all(p)
            .await?
        {
            self.bought.insert((r.get(0), r.get(1)), r.get(2));
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
            let o = PendingOrder {
                user: r.get(1),
                product: r.get(2),
                quantity: r.get(3),
                created_at: r.get(4),
            };
            self.orders.insert(r.get(0), o);
        }
        Ok(())
    }

    /// Gives a reservation's units back and forgets its key (the scripts' `release`).
    fn release(&mut self, oid: &str) -> bool {
        let Some(rv) = self.resv.remove(oid) else {
            return false;
        };
        if let Some(sale) = self.sales.get_mut(&rv.pid) {
            sale.remaining += rv.qty;
            self.changes.push(Change::Sale(rv.pid));
        }
        let b = (rv.pid, rv.uid.clone());
        if let Some(n) = self.bought.get_mut(&b) {
            *n -= rv.qty;
        }
        self.changes.push(Change::Bought(b.0, b.1));
        self.released.insert(oid.to_string());
        self.changes.push(Change::Released(oid.to_string()));
        let ik = (rv.pid, rv.uid, rv.key);
        if self.idem.get(&ik).is_some_and(|(o, _)| o == oid) {
            self.idem.remove(&ik);
            self.changes.push(Change::Idem(ik));
        }
        self.orders.remove(oid);
        self.changes.push(Change::Ord(oid.to_string()));
        self.changes.push(Change::Resv(oid.to_string()));
        true
    }

    fn reserve(&mut self, r: &ReserveRequest) -> ReserveOutcome {
        let pid = r.product.get();
        let uid = r.user.to_string();
        let qty = i64::from(r.quantity.get());
        let ik = (pid, uid.clone(), r.key.as_str().to_string());
        // An expired key is forgotten, as Redis forgets it.
        if self
            .idem
            .get(&ik)
            .is_some_and(|(_, expires)| *expires <= r.now_ms)
        {
            self.idem.remove(&ik);
            self.changes.push(Change::Idem(ik.clone()));
        }
        if let Some((prev, _)) = self.idem.get(&ik).cloned() {
            let Ok(order) = OrderId::parse(&prev) else {
                return ReserveOutcome::NoSale;
            };
            match self.resv.get(&prev) {
                None => return ReserveOutcome::Replay(order),
                Some(rv) if rv.published => return ReserveOutcome::Replay(order),
                Some(rv) if r.now_ms - rv.ts <= self.stale_ms => {
                    return ReserveOutcome::Unpublished(UnpublishedOrder {
                        order,
                        quantity: rv.qty,
                        created_at: rv.ts,
                    })
                }
                Some(_) => {
                    self.release(&prev);
                }
            }
        }
        let Some(sale) = self.sales.get(&pid).copied() else {
            return ReserveOutcome::NoSale;
        };
        if (sale.starts > 0 && r.now_ms < sale.starts) || (sale.ends > 0 && r.now_ms >= sale.ends) {
            return ReserveOutcome::NotActive;
        }
        let bought = self.bought.get(&(pid, uid.clone())).copied().unwrap_or(0);
        if bought + qty > sale.limit {
            return ReserveOutcome::LimitReached;
        }
        if sale.remaining < qty {
            return ReserveOutcome::OutOfStock;
        }
        let oid = r.order.to_string();
        self.sales.get_mut(&pid).expect("checked").remaining -= qty;
        self.bought.insert((pid, uid.clone()), bought + qty);
        self.idem
            .insert(ik.clone(), (oid.clone(), r.now_ms + self.ttl_ms));
        let rv = Reservation {
            pid,
            published: false,
            ts: r.now_ms,
            qty,
            uid: uid.clone(),
            key: ik.2.clone(),
        };
        self.resv.insert(oid.clone(), rv);
        let pending = PendingOrder {
            user: uid.clone(),
            product: pid,
            quantity: qty,
            created_at: r.now_ms,
        };
        self.orders.insert(oid.clone(), pending);
        self.changes.extend([
            Change::Sale(pid),
            Change::Bought(pid, uid),
            Change::Idem(ik),
            Change::Resv(oid.clone()),
            Change::Ord(oid),
        ]);
        ReserveOutcome::Created(r.order.clone())
    }

    fn load_sale(&mut self, pid: i64, def: &SaleDefinition) -> Result<SaleCounters, SaleRefused> {
        let sold = self
            .sales
            .get(&pid)
            .map(|s| s.stock - s.remaining)
            .unwrap_or(0);
        if def.stock < sold {
            return Err(SaleRefused::BelowSold { sold });
        }
        let sale = Sale {
            stock: def.stock,
            remaining: def.stock - sold,
            limit: def.per_user_limit,
            starts: def.starts_at.unwrap_or(0),
            ends: def.ends_at.unwrap_or(0),
        };
        self.sales.insert(pid, sale);
        self.changes.push(Change::Sale(pid));
        Ok(self.counters(pid).expect("just loaded"))
    }

    fn counters(&self, pid: i64) -> Option<SaleCounters> {
        let s = self.sales.get(&pid)?;
        let pending = self
            .resv
            .values()
            .filter(|r| r.pid == pid)
            .map(|r| r.qty)
            .sum();
        Some(SaleCounters {
            stock: s.stock,
            remaining: s.remaining,
            pending,
            per_user_limit: s.limit,
            starts_at: (s.starts > 0).then_some(s.starts),
            ends_at: (s.ends > 0).then_some(s.ends),
        })
    }

    fn mark_published(&mut self, order: &str) -> bool {
        match self.resv.get_mut(order) {
            Some(rv) => {
                if !rv.published {
                    rv.published = true;
                    self.changes.push(Change::Resv(order.to_string()));
                }
                true
            }
            None => !self.released.contains(order),
        }
    }

    /// The scripts' `claim`: this partition never loses its state, so an order that
    /// is neither reserved, released nor recorded with these details never was one.
    fn claim(&mut self, c: &super::Claim) -> super::Claimed {
        use super::Claimed;
        let order = c.order.as_str();
        let pid = c.product.get();
        if let Some(rv) = self.resv.get(order) {
            if rv.pid != pid || rv.qty != c.quantity || rv.uid != c.user {
                return Claimed::Unknown;
            }
            self.resv.remove(order);
            self.changes.push(Change::Resv(order.to_string()));
            return Claimed::Sold;
        }
        if self.released.contains(order) {
            return Claimed::Released;
        }
        // Claimed before: a redelivery.
        match self.orders.get(order) {
            Some(o)
                if o.product == pid
                    && o.quantity == c.quantity
                    && o.user == c.user
                    && o.created_at == c.created_at =>
            {
                Claimed::Sold
            }
            _ => Claimed::Unknown,
        }
    }

    fn restock(&mut self, r: &super::Restock) -> super::Restocked {
        let oid = r.order.to_string();
        if self.released.contains(&oid) || !self.restocked.insert(oid.clone()) {
            return super::Restocked::Already;
        }
        self.changes.push(Change::Restocked(oid));
        let pid = r.product.get();
        if let Some(sale) = self.sales.get_mut(&pid) {
            sale.remaining += r.quantity;
            self.changes.push(Change::Sale(pid));
        }
        if let Some(n) = self.bought.get_mut(&(pid, r.user.clone())) {
            *n -= r.quantity;
        }
        self.changes.push(Change::Bought(pid, r.user.clone()));
        super::Restocked::Returned
    }

    fn rate_check(&mut self, r: &super::RateCheck) -> RateWindow {
        let now = now_ms();
        let (ends, count) = self
            .rate
            .entry(r.key.clone())
            .or_insert((now + r.window_ms, 0));
        if *ends <= now {
            (*ends, *count) = (now + r.window_ms, 0);
        }
        *count += 1;
        RateWindow {
            count: *count,
            reset_ms: *ends - now,
        }
    }

    fn cache_get(&self, key: &str) -> Option<String> {
        self.cache
            .get(key)
            .filter(|(_, exp)| *exp > now_ms())
            .map(|(v, _)| v.clone())
    }

    fn sales(&self) -> Vec<SaleSummary> {
        let sales = self.sales.iter().map(|(pid, s)| SaleSummary {
            product: *pid,
            stock: s.stock,
            remaining: s.remaining,
            starts_at: (s.starts > 0).then_some(s.starts),
            ends_at: (s.ends > 0).then_some(s.ends),
        });
        sales.collect()
    }

    fn release_stale(&mut self, now_ms: i64) -> i64 {
        // The oldest first, as many as the scripts release in one call.
        let mut stale: Vec<(i64, String)> = self
            .resv
            .iter()
            .filter(|(_, r)| !r.published && now_ms - r.ts > self.stale_ms)
            .map(|(oid, r)| (r.ts, oid.clone()))
            .collect();
        stale.sort_unstable();
        stale.truncate(super::MOST_RELEASED as usize);
        for (_, oid) in &stale {
            self.release(oid);
        }
        self.forget_expired(now_ms);
        stale.len() as i64
    }

    /// What Redis would have expired by now: accepted orders' lookup entries and
    /// idempotency keys after their lifetime, rate-limit windows that have ended.
    fn forget_expired(&mut self, now_ms: i64) {
        let ttl = self.ttl_ms;
        let orders: Vec<String> = self
            .orders
            .iter()
            .filter(|(_, o)| o.created_at + ttl <= now_ms)
            .map(|(oid, _)| oid.clone())
            .collect();
        for oid in orders {
            self.orders.remove(&oid);
            self.changes.push(Change::Ord(oid));
        }
        let keys: Vec<IdemKey> = self
            .idem
            .iter()
            .filter(|(_, (_, expires))| *expires <= now_ms)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.idem.remove(&k);
            self.changes.push(Change::Idem(k));
        }
        self.rate.retain(|_, (ends, _)| *ends > now_ms);
        self.cache.retain(|_, (_, expires)| *expires > now_ms);
    }

    /// Applies one message to the state; its answer waits until the batch is durable.
    fn apply(&mut self, msg: InventoryMsg) -> Deferred {
        match msg {
            InventoryMsg::Reserve(r, port) => port.defer(Ok(self.reserve(&r))),
            InventoryMsg::MarkPublished(r, port) => {
                port.defer(Ok(self.mark_published(r.order.as_str())))
            }
            InventoryMsg::Release(r, port) => {
                let unpublished = self
                    .resv
                    .get(r.order.as_str())
                    .is_some_and(|r| !r.published);
                if unpublished {
                    self.release(r.order.as_str());
                }
                port.defer(Ok(()))
            }
            InventoryMsg::Claim(r, port) => port.defer(Ok(self.claim(&r))),
            InventoryMsg::Restock(r, port) => port.defer(Ok(self.restock(&r))),
            InventoryMsg::RateCheck(r, port) => port.defer(Ok(self.rate_check(&r))),
            InventoryMsg::LoadSale(r, port) => {
                port.defer(Ok(self.load_sale(r.product.get(), &r.sale)))
            }
            InventoryMsg::Counters(r, port) => port.defer(Ok(self.counters(r.product.get()))),
            InventoryMsg::Lookup(r, port) => {
                let ttl = self.ttl_ms;
                let found = self.orders.get(r.order.as_str());
                let live = found.filter(|o| o.created_at + ttl > now_ms()).cloned();
                port.defer(Ok(live))
            }
            InventoryMsg::CacheGet(r, port) => port.defer(Ok(self.cache_get(&r.key))),
            InventoryMsg::CacheSet(r, port) => {
                let expires = now_ms() + r.ttl_secs as i64 * 1000;
                self.cache.insert(r.key, (r.value, expires));
                port.defer(Ok(()))
            }
            InventoryMsg::CacheDel(r, port) => {
                self.cache.remove(&r.key);
                port.defer(Ok(()))
            }
            InventoryMsg::Sales(_, port) => port.defer(Ok(self.sales())),
            InventoryMsg::ReleaseStale(r, port) => port.defer(Ok(self.release_stale(r.now_ms))),
            // The partition's file is its durable truth: its state is never lost
            // without the file, and with the file there is nothing to rebuild from.
            InventoryMsg::Recovery(_, port) => port.defer(Ok(PartitionState::Ready)),
            // Never rebuilding (above): nothing to overwrite.
            InventoryMsg::RebuildSale(_, port) => port.defer(Ok(NOT_REBUILDING)),
        }
    }

    /// Writes every change of the batch in one transaction.
    async fn persist(&mut self) -> Result<(), sqlx::Error> {
        if self.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut self.changes);
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match c {
                Change::Sale(pid) => {
                    if let Some(s) = self.sales.get(&pid) {
                        sqlx::query("INSERT OR REPLACE INTO sales (pid, stock, remaining, lim, starts, ends) VALUES (?, ?, ?, ?, ?, ?)")
                            .bind(pid)
                            .bind(s.stock)
                            .bind(s.remaining)
                            .bind(s.limit)
                            .bind(s.starts)
                            .bind(s.ends)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                Change::Idem(k) => match self.idem.get(&k) {
                    Some((oid, expires)) => {
                        sqlx::query("INSERT OR REPLACE INTO idem (pid, uid, key, oid, expires) VALUES (?, ?, ?, ?, ?)")
                            .bind(k.0)
                            .bind(&k.1)
                            .bind(&k.2)
                            .bind(oid)
                            .bind(expires)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM idem WHERE pid = ? AND uid = ? AND key = ?")
                            .bind(k.0)
                            .bind(&k.1)
                            .bind(&k.2)
                            .execute(&mut *tx)
                            .await?;
                    }
                },
                Change::Bought(pid, uid) => {
                    let n = self.bought.get(&(pid, uid.clone())).copied().unwrap_or(0);
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
                Change::Ord(oid) => match self.orders.get(&oid) {
                    Some(o) => {
                        sqlx::query("INSERT OR REPLACE INTO ord (oid, uid, pid, qty, created) VALUES (?, ?, ?, ?, ?)")
                            .bind(&oid)
                            .bind(&o.user)
                            .bind(o.product)
                            .bind(o.quantity)
                            .bind(o.created_at)
                            .execute(&mut *tx)
                            .await?;
                    }
                    None => {
                        sqlx::query("DELETE FROM ord WHERE oid = ?")
                            .bind(&oid)
                            .execute(&mut *tx)
                            .await?;
                    }
                },
            }
        }
        tx.commit().await
    }
}

#[ractor::async_trait]
impl Backend for LocalInventory {
    type Msg = InventoryMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let answers: Vec<Deferred> = batch
            .into_iter()
            .filter(|m| !m.abandoned())
            .map(|m| self.apply(m))
            .collect();
        // Durable before anyone hears of it. On failure the actor restarts and rebuilds
        // its memory from the file, so the unanswered batch leaves no trace.
        self.persist().await?;
        answers.into_iter().for_each(Deferred::send);
        Ok(())
    }
}
