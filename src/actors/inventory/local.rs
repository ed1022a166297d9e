//! The embedded backend of an inventory partition: the partition actor owns its
//! state in memory and makes each batch durable in its own SQLite file (one
//! transaction) before answering, so a restart, or `kill -9`, rebuilds the same state.
//! The operations mirror the Redis scripts step for step, lifetimes included: an
//! idempotency key and an accepted order's lookup entry live for
//! `inventory.idempotency_ttl_secs`, a rate-limit window for its length (a sweep
//! forgets what has expired, as Redis does). The conformance suite in
//! `tests/api/inventory.rs` runs the same operations against both backends.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::path::PathBuf;

use ractor::ActorProcessingErr;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;

use super::{
    InventoryMsg, PartitionState, PendingOrder, RateWindow, RebuildStopped, ReserveOutcome,
    ReserveRequest, SaleCounters, SaleRefused, SaleSummary, UnpublishedOrder,
};
use crate::db::sqlite_pool;
use crate::domain::{now_ms, OrderId, ProductId, Quantity, SaleDefinition, UserId};
use crate::shards::sqlite;
use crate::supervisors::slot::{Deferred, Message};
use crate::supervisors::worker::{Backend, Batch, Connect};

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
    qty: Quantity,
    uid: String,
    key: String,
}

/// A sale, a buyer and the buyer's idempotency key.
type IdemKey = (i64, String, String);

/// An idempotency key as the partition keeps it in memory: 128 bits of a keyed hash
/// of the sale, the buyer and the key (two SipHash passes with keys of this process),
/// so a key costs the same few bytes whatever its length. Two keys of a million
/// collide with a chance of about 10^-27; the file keeps the keys themselves.
struct KeyDigest(RandomState, RandomState);

impl KeyDigest {
    fn new() -> Self {
        Self(RandomState::new(), RandomState::new())
    }

    fn of(&self, pid: i64, uid: &str, key: &str) -> u128 {
        let k = (pid, uid, key);
        (u128::from(self.0.hash_one(k)) << 64) | u128::from(self.1.hash_one(k))
    }
}

/// The bits of a UUID (orders and buyers), `None` for anything else.
fn uuid_bits(s: &str) -> Option<u128> {
    uuid::Uuid::parse_str(s).ok().map(|u| u.as_u128())
}

fn uuid_text(bits: u128) -> String {
    uuid::Uuid::from_u128(bits).to_string()
}

/// An accepted order's lookup entry, in memory: its id is the map's key.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    user: u128,
    product: i64,
    quantity: Quantity,
    created_at: i64,
}

impl Accepted {
    fn pending(&self) -> PendingOrder {
        PendingOrder {
            user: UserId::from(uuid::Uuid::from_u128(self.user)),
            product: ProductId::from_db(self.product),
            quantity: self.quantity,
            created_at: self.created_at,
        }
    }
}

/// An idempotency key held: its order and when it expires (epoch ms).
#[derive(Debug, Clone, Copy)]
struct Held {
    order: u128,
    expires: i64,
}

/// What a batch changed, to be written before anyone hears of it.
enum Change {
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

pub struct LocalInventoryConnect {
    pub path: PathBuf,
    pub stale_ms: u64,
    pub idempotency_ttl_secs: u64,
}

pub struct LocalInventory {
    pool: SqlitePool,
    stale_ms: i64,
    sales: HashMap<i64, Sale>,
    /// Idempotency keys by their digest ([`KeyDigest`]).
    idem: HashMap<u128, Held>,
    digest: KeyDigest,
    /// Keys in the order they expire; an entry whose key was replaced or removed
    /// since is skipped.
    idem_expiry: VecDeque<(i64, u128)>,
    /// How long keys and accepted orders' lookup entries live (ms).
    ttl_ms: i64,
    /// Each buyer's units per sale, by the buyer's UUID bits ([`Self::buyer`]).
    bought: HashMap<(i64, u128), i64>,
    resv: HashMap<String, Reservation>,
    released: HashSet<String>,
    restocked: HashSet<String>,
    /// Accepted orders by id: time-ordered ids (UUIDv7), so the oldest come first.
    orders: BTreeMap<u128, Accepted>,
    /// A user's rate-limit window: when it ends (epoch ms) and the requests in it.
    rate: HashMap<String, (i64, i64)>,
    cache: HashMap<String, (String, i64)>,
    changes: Vec<Change>,
}

#[ractor::async_trait]
impl Connect for LocalInventoryConnect {
    type Backend = LocalInventory;

    async fn connect(&self) -> Result<LocalInventory, ActorProcessingErr> {
        // Its schema is under migrations/sqlite/inventory, applied as the shards' are.
        sqlite::migrate(&self.path, &sqlite::INVENTORY).await?;
        let pool = sqlite_pool(&self.path, 1).await?;
        let mut inv = LocalInventory {
            pool,
            stale_ms: self.stale_ms as i64,
            sales: HashMap::new(),
            idem: HashMap::new(),
            digest: KeyDigest::new(),
            idem_expiry: VecDeque::new(),
            ttl_ms: self.idempotency_ttl_secs as i64 * 1000,
            bought: HashMap::new(),
            resv: HashMap::new(),
            released: HashSet::new(),
            restocked: HashSet::new(),
            orders: BTreeMap::new(),
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

    /// A buyer as the partition's maps keep one: the bits of its UUID (every user id
    /// is one), else a digest of the id.
    fn buyer(&self, uid: &str) -> u128 {
        uuid_bits(uid).unwrap_or_else(|| self.digest.of(0, uid, ""))
    }

    /// Gives a reservation's units back and forgets its key (the scripts' `release`).
    fn release(&mut self, oid: &str) -> bool {
        let Some(rv) = self.resv.remove(oid) else {
            return false;
        };
        if let Some(sale) = self.sales.get_mut(&rv.pid) {
            sale.remaining += rv.qty.units();
            self.changes.push(Change::Sale(rv.pid));
        }
        let b = (rv.pid, self.buyer(&rv.uid));
        if let Some(n) = self.bought.get_mut(&b) {
            *n -= rv.qty.units();
        }
        self.changes.push(Change::Bought(rv.pid, rv.uid.clone()));
        self.released.insert(oid.to_string());
        self.changes.push(Change::Released(oid.to_string()));
        let h = self.digest.of(rv.pid, &rv.uid, &rv.key);
        let bits = uuid_bits(oid);
        if bits.is_some() && self.idem.get(&h).map(|k| k.order) == bits {
            self.idem.remove(&h);
            self.changes.push(Change::IdemDel((rv.pid, rv.uid, rv.key)));
        }
        if let Some(bits) = bits {
            self.orders.remove(&bits);
            self.changes.push(Change::Ord(bits));
        }
        self.changes.push(Change::Resv(oid.to_string()));
        true
    }

    fn reserve(&mut self, r: &ReserveRequest) -> ReserveOutcome {
        let pid = r.product.get();
        let uid = r.user.to_string();
        let qty = i64::from(r.quantity.get());
        let h = self.digest.of(pid, &uid, r.key.as_str());
        // An expired key is forgotten, as Redis forgets it.
        if self.idem.get(&h).is_some_and(|k| k.expires <= r.now_ms) {
            self.idem.remove(&h);
            let ik = (pid, uid.clone(), r.key.as_str().to_string());
            self.changes.push(Change::IdemDel(ik));
        }
        if let Some(held) = self.idem.get(&h).copied() {
            let prev = uuid_text(held.order);
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
        let buyer = self.buyer(&uid);
        let bought = self.bought.get(&(pid, buyer)).copied().unwrap_or(0);
        if bought + qty > sale.limit {
            return ReserveOutcome::LimitReached;
        }
        if sale.remaining < qty {
            return ReserveOutcome::OutOfStock;
        }
        let (Some(bits), Some(user)) = (uuid_bits(r.order.as_str()), uuid_bits(&uid)) else {
            return ReserveOutcome::NoSale;
        };
        let oid = r.order.to_string();
        self.sales.get_mut(&pid).expect("checked").remaining -= qty;
        self.bought.insert((pid, buyer), bought + qty);
        let expires = r.now_ms + self.ttl_ms;
        self.idem.insert(
            h,
            Held {
                order: bits,
                expires,
            },
        );
        self.idem_expiry.push_back((expires, h));
        let key = r.key.as_str().to_string();
        let rv = Reservation {
            pid,
            published: false,
            ts: r.now_ms,
            qty: r.quantity,
            uid: uid.clone(),
            key: key.clone(),
        };
        self.resv.insert(oid.clone(), rv);
        let accepted = Accepted {
            user,
            product: pid,
            quantity: r.quantity,
            created_at: r.now_ms,
        };
        self.orders.insert(bits, accepted);
        self.changes.extend([
            Change::Sale(pid),
            Change::Bought(pid, uid.clone()),
            Change::IdemPut((pid, uid, key), oid.clone(), expires),
            Change::Resv(oid),
            Change::Ord(bits),
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
            .map(|r| r.qty.units())
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
            if rv.pid != pid || rv.qty != c.quantity || rv.uid != c.user.as_str() {
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
        let found = uuid_bits(order).and_then(|o| self.orders.get(&o));
        match (found, uuid_bits(c.user.as_str())) {
            (Some(o), Some(user))
                if o.product == pid
                    && o.quantity == c.quantity
                    && o.user == user
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
            sale.remaining += r.quantity.units();
            self.changes.push(Change::Sale(pid));
        }
        let buyer = self.buyer(r.user.as_str());
        if let Some(n) = self.bought.get_mut(&(pid, buyer)) {
            *n -= r.quantity.units();
        }
        self.changes.push(Change::Bought(pid, r.user.to_string()));
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
    /// Each costs what has expired, not what is kept: orders come oldest first by
    /// their ids, keys by their expiry queue; the file drops both in one statement.
    fn forget_expired(&mut self, now_ms: i64) {
        let ttl = self.ttl_ms;
        let mut expired = false;
        while let Some(entry) = self.orders.first_entry() {
            if entry.get().created_at + ttl > now_ms {
                break;
            }
            entry.remove();
            expired = true;
        }
        while let Some(&(expires, h)) = self.idem_expiry.front() {
            if expires > now_ms {
                break;
            }
            self.idem_expiry.pop_front();
            // Unless the key was given again since (a later expiry).
            if self.idem.get(&h).is_some_and(|k| k.expires <= now_ms) {
                self.idem.remove(&h);
                expired = true;
            }
        }
        if expired {
            self.changes.push(Change::Expired(now_ms));
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
                let found = uuid_bits(r.order.as_str()).and_then(|o| self.orders.get(&o));
                let live = found
                    .filter(|o| o.created_at + ttl > now_ms())
                    .map(Accepted::pending);
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
            InventoryMsg::Rebuild(_, port) => port.defer(Ok(Err(RebuildStopped::Whole))),
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
