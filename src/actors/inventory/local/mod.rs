//! The embedded backend of an inventory partition: the partition actor owns its
//! state in memory and makes each batch durable in its own SQLite file (one
//! transaction) before answering, so a restart, or `kill -9`, rebuilds the same state.
//! The operations mirror the Redis scripts step for step, lifetimes included: an
//! idempotency key and an accepted order's lookup entry live for
//! `inventory.idempotency_ttl_secs`, a rate-limit window for its length (a sweep
//! forgets what has expired, as Redis does). The conformance suite in
//! `tests/api/inventory.rs` runs the same operations against both backends.
//!
//! Each request type is served in one place, as in the Redis backend:
//! [`reservations`], [`sales`], the [`edge`] store; [`persist`] keeps the file.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::path::PathBuf;

use ractor::ActorProcessingErr;
use sqlx::sqlite::SqlitePool;

use super::{
    InventoryMsg, PartitionState, PendingOrder, RebuildStep, RebuildStopped, Recovery, StepDone,
};
use crate::db::sqlite_pool;
use crate::domain::{ProductId, Quantity, Terms, UserId};
use crate::shards::sqlite;
use crate::supervisors::slot::{Deferred, Dispatch, Handle, Message, ReplyPort};
use crate::supervisors::worker::{Backend, Batch, Connect};
use persist::Change;

mod edge;
mod persist;
mod reservations;
mod sales;

#[derive(Debug, Clone, Copy)]
struct Sale {
    stock: i64,
    remaining: i64,
    limit: i64,
    starts: i64,
    ends: i64,
    /// The terms orders are accepted on.
    terms: Terms,
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
}

/// Each request's answer waits until its batch is durable.
impl Dispatch for LocalInventory {
    type Out = Deferred;
}

/// The partition's file is its durable truth: its state is never lost without the
/// file, and with the file there is nothing to rebuild from.
impl Handle<Recovery, PartitionState> for LocalInventory {
    fn handle(&mut self, _: Recovery, port: ReplyPort<PartitionState>) -> Deferred {
        port.defer(Ok(PartitionState::Ready))
    }
}

/// Never rebuilding (above): nothing to overwrite.
impl Handle<RebuildStep, Result<StepDone, RebuildStopped>> for LocalInventory {
    fn handle(
        &mut self,
        _: RebuildStep,
        port: ReplyPort<Result<StepDone, RebuildStopped>>,
    ) -> Deferred {
        port.defer(Ok(Err(RebuildStopped::Whole)))
    }
}

#[ractor::async_trait]
impl Backend for LocalInventory {
    type Msg = InventoryMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let answers: Vec<Deferred> = batch
            .into_iter()
            .filter(|m| !m.abandoned())
            .map(|m| m.dispatch(self))
            .collect();
        // Durable before anyone hears of it. On failure the actor restarts and rebuilds
        // its memory from the file, so the unanswered batch leaves no trace.
        self.persist().await?;
        answers.into_iter().for_each(Deferred::send);
        Ok(())
    }
}
