//! The Redis backend of an inventory partition: one multiplexed connection, Lua
//! scripts loaded at connect, and one pipeline per batch.
//!
//! Keys (all under the configured prefix `P`):
//! `P:sale:{pid}` hash (stock, remaining, limit, starts, ends); `P:sales` set of
//! products with a sale; `P:idem:{pid}:{uid}:{key}` the order id of a key;
//! `P:bought:{pid}:{uid}` units a user holds; `P:resv:{pid}` hash order id →
//! `R|ts|qty|uid|key` (reserved) or `P|…` (published); `P:rel:{pid}` set of released
//! order ids; `P:ord:{oid}` the accepted order until its shard has it; `P:rl:{uid}`
//! the rate-limit window; `P:product:{id}` the product cache.

use std::sync::Arc;
use std::time::Duration;

use ractor::ActorProcessingErr;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::sentinel::{Replication, SentinelUrl};
use super::{
    Claimed, InventoryMsg, PartitionState, PendingOrder, RateWindow, RebuildStopped,
    ReserveOutcome, Restocked, SaleCounters, SaleRefused, SaleSummary, StepDone, UnpublishedOrder,
};
use crate::domain::{now_ms, IdempotencyKey, OrderId, ProductId, Quantity, UserId};
use crate::supervisors::slot::{ItemError, Message, ReplyPort};
use crate::supervisors::worker::{Backend, Batch, Connect};

/// The domain's ids and quantities as script arguments: their text, their number.
macro_rules! script_arg {
    ($ty:ty, $raw:expr) => {
        impl redis::ToRedisArgs for $ty {
            fn write_redis_args<W>(&self, out: &mut W)
            where
                W: ?Sized + redis::RedisWrite,
            {
                $raw(self).write_redis_args(out)
            }
        }
    };
}

script_arg!(UserId, UserId::as_str);
script_arg!(OrderId, OrderId::as_str);
script_arg!(IdempotencyKey, IdempotencyKey::as_str);
script_arg!(ProductId, |p: &ProductId| p.get());
script_arg!(Quantity, |q: &Quantity| q.units());

const COMMON: &str = include_str!("lua/common.lua");

/// ARGV: prefix, pid, uid, key, qty, oid, now, stale_ms, ttl.
/// Returns {code, order id}: 0 created, 1 replay, 2 out of stock, 3 limit, 4 not active,
/// 5 no sale; or {6, order id, quantity, created at} for a replay of an unpublished order.
const RESERVE: &str = include_str!("lua/reserve.lua");

/// ARGV: prefix, pid, oid. Returns 0 when the reservation was released.
const MARK_PUBLISHED: &str = include_str!("lua/mark_published.lua");

/// ARGV: prefix, pid, oid. Returns 1 when an unpublished reservation was released.
const RELEASE: &str = include_str!("lua/release.lua");

/// ARGV: prefix, pid, oid, uid, qty, key, created_at, ttl. Returns 1 to persist the
/// order, 0 if it was released.
const CLAIM: &str = include_str!("lua/claim.lua");

/// ARGV: prefix, state, since, replid, replid2, now (no prologue: it runs when the
/// state may be gone).
const EPOCH: &str = include_str!("lua/epoch.lua");

/// ARGV: prefix. Returns {rebuilding, since}.
const RECOVERY: &str = include_str!("lua/recovery.lua");

/// ARGV: prefix, owner, since, lease_ms, step, then the step's own. One bounded step
/// of a rebuild (see the script).
const REBUILD: &str = include_str!("lua/rebuild.lua");

/// ARGV: prefix, now, stale_ms. Returns how many reservations were released.
const RELEASE_STALE: &str = include_str!("lua/release_stale.lua");

/// ARGV: prefix, pid, stock, limit, starts, ends. Returns {stock, remaining}, {-1, sold}
/// or {-2, 0} while the partition rebuilds.
const LOAD_SALE: &str = include_str!("lua/load_sale.lua");

/// ARGV: prefix, pid. Returns {} or {stock, remaining, limit, starts, ends, pending units}.
const COUNTERS: &str = include_str!("lua/counters.lua");

/// ARGV: prefix, uid, window_ms. Returns {count, ms until the window resets}.
const RATE: &str = include_str!("lua/rate.lua");

/// ARGV: prefix. Returns a flat list of {pid, stock, remaining, starts, ends}.
const SALES: &str = include_str!("lua/sales.lua");
const RESTOCK: &str = include_str!("lua/restock.lua");

struct Scripts {
    reserve: String,
    mark: String,
    release: String,
    claim: String,
    release_stale: String,
    load_sale: String,
    counters: String,
    rate: String,
    sales: String,
    restock: String,
    recovery: String,
    rebuild: String,
}

pub struct RedisConnect {
    pub url: String,
    pub prefix: String,
    pub stale_ms: u64,
    pub idempotency_ttl_secs: u64,
    /// Whether the catalog holds sales of this partition: then a partition found
    /// without its epoch marker has lost its state (else it is new).
    pub has_sales: Arc<dyn HasSales>,
    /// The last write this partition actor saw acknowledged, kept across its restarts
    /// (see [`LastWrite`]).
    pub last_write: Arc<std::sync::Mutex<Option<LastWrite>>>,
}

/// Where a partition's writes had got to when this actor last saw one acknowledged:
/// the server instance (its `run_id`) and the partition's write sequence (`P:seq`,
/// advanced at the end of every pipelined batch). Redis appends writes to its
/// append-only file in the order it runs them, so a server that comes back with a
/// sequence below this one has lost writes this actor was told had been made, which
/// `appendfsync everysec` allows when the host crashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWrite {
    pub run_id: String,
    pub seq: i64,
}

/// Asks the durable side whether a partition had sales to lose.
#[ractor::async_trait]
pub trait HasSales: Send + Sync + 'static {
    async fn has_sales(&self) -> Result<bool, ActorProcessingErr>;
}

impl RedisConnect {
    /// Finds the partition's epoch marker, creating it when it is missing: `ready` for
    /// a new partition, `rebuilding` for one whose state is gone.
    ///
    /// The marker also records the replication history of the server it was last seen
    /// on. A server whose history continues that one (a replica promoted by Sentinel)
    /// may lack the newest writes of the primary it replaced, since replication is
    /// asynchronous: the partition is rebuilt, as one that lost everything is.
    async fn epoch(
        &self,
        con: &mut MultiplexedConnection,
        replication: &Replication,
        run_id: &str,
    ) -> Result<PartitionState, ActorProcessingErr> {
        let marker = format!("{}:epoch", self.prefix);
        let exists: bool = redis::cmd("EXISTS").arg(&marker).query_async(con).await?;
        // Without the marker, the state is gone if the catalog has sales here.
        let (state, since) = match exists || !self.has_sales.has_sales().await? {
            true => ("ready", 0),
            false => ("rebuilding", now_ms()),
        };
        let mut v = redis::cmd("EVAL");
        v.arg(EPOCH)
            .arg(0)
            .arg(&self.prefix)
            .arg(state)
            .arg(since)
            .arg(&replication.replid)
            .arg(&replication.replid2)
            .arg(now_ms())
            .arg(run_id);
        let last = self.last_write.lock().expect("not poisoned").clone();
        match &last {
            Some(w) => v.arg(&w.run_id).arg(w.seq),
            None => v.arg("").arg(0),
        };
        let v: Value = v.query_async(con).await?;
        let state = match &v {
            Value::Array(items) => match (
                items.first().and_then(text).as_deref(),
                items.get(1).and_then(int),
            ) {
                (Some("rebuilding"), Some(since)) => PartitionState::Rebuilding { since },
                (Some("ready"), _) => PartitionState::Ready,
                _ => return Err(format!("unexpected epoch marker {v:?}").into()),
            },
            _ => return Err(format!("unexpected epoch marker {v:?}").into()),
        };
        if let PartitionState::Rebuilding { since } = state {
            tracing::error!(prefix = %self.prefix, since, ?last, "the inventory partition lost its state (or some of it: a promoted replica, a server back without its last writes); its sales answer 503 until they are rebuilt");
        }
        Ok(state)
    }
}

pub struct RedisInventory {
    con: MultiplexedConnection,
    scripts: Scripts,
    prefix: String,
    stale_ms: u64,
    ttl_secs: u64,
    /// The server instance this connection reaches.
    run_id: String,
    last_write: Arc<std::sync::Mutex<Option<LastWrite>>>,
}

#[ractor::async_trait]
impl Connect for RedisConnect {
    type Backend = RedisInventory;

    async fn connect(&self) -> Result<RedisInventory, ActorProcessingErr> {
        let url = match SentinelUrl::parse(&self.url) {
            Some(sentinel) => sentinel?.primary().await?,
            None => self.url.clone(),
        };
        let client = redis::Client::open(url.as_str())?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(3)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut con = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let mut load = async |body: &str| -> Result<String, redis::RedisError> {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(format!("{COMMON}{body}"))
                .query_async(&mut con)
                .await
        };
        let scripts = Scripts {
            reserve: load(RESERVE).await?,
            mark: load(MARK_PUBLISHED).await?,
            release: load(RELEASE).await?,
            claim: load(CLAIM).await?,
            release_stale: load(RELEASE_STALE).await?,
            load_sale: load(LOAD_SALE).await?,
            counters: load(COUNTERS).await?,
            rate: load(RATE).await?,
            sales: load(SALES).await?,
            restock: load(RESTOCK).await?,
            recovery: load(RECOVERY).await?,
            rebuild: load(REBUILD).await?,
        };
        let replication = Replication::of(&mut con).await?;
        if replication.role != "master" {
            return Err(format!(
                "the inventory partition's Redis server is a {} (read-only); it needs the primary",
                replication.role
            )
            .into());
        }
        // A partition that lost its state comes up rebuilding (see `actors::recovery`).
        let run_id = server_run_id(&mut con).await?;
        self.epoch(&mut con, &replication, &run_id).await?;
        Ok(RedisInventory {
            con,
            scripts,
            prefix: self.prefix.clone(),
            stale_ms: self.stale_ms,
            ttl_secs: self.idempotency_ttl_secs,
            run_id,
            last_write: self.last_write.clone(),
        })
    }
}

impl RedisInventory {
    fn script(&self, sha: &str) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(sha).arg(0).arg(&self.prefix);
        c
    }

    fn command(&self, msg: &InventoryMsg) -> redis::Cmd {
        let s = &self.scripts;
        match msg {
            InventoryMsg::Reserve(r, _) => {
                let mut c = self.script(&s.reserve);
                c.arg(r.product.get())
                    .arg(r.user.as_str())
                    .arg(r.key.as_str())
                    .arg(r.quantity.get())
                    .arg(r.order.as_str())
                    .arg(r.now_ms)
                    .arg(self.stale_ms)
                    .arg(self.ttl_secs);
                c
            }
            InventoryMsg::MarkPublished(super::MarkPublished { product, order }, _) => {
                let mut c = self.script(&s.mark);
                c.arg(product.get()).arg(order.as_str());
                c
            }
            InventoryMsg::Release(super::Release { product, order }, _) => {
                let mut c = self.script(&s.release);
                c.arg(product.get()).arg(order.as_str());
                c
            }
            InventoryMsg::Claim(c, _) => {
                let mut cmd = self.script(&s.claim);
                cmd.arg(c.product.get())
                    .arg(c.order.as_str())
                    .arg(&c.user)
                    .arg(c.quantity)
                    .arg(&c.key)
                    .arg(c.created_at)
                    .arg(self.ttl_secs);
                cmd
            }
            InventoryMsg::Recovery(super::Recovery, _) => self.script(&s.recovery),
            InventoryMsg::Rebuild(r, _) => {
                let mut c = self.script(&s.rebuild);
                c.arg(&r.owner).arg(r.since).arg(super::REBUILD_LEASE_MS);
                let ends = |sale: &super::SaleDefinition| sale.ends_at.unwrap_or(0);
                match &r.step {
                    super::Step::Own => c.arg("own"),
                    super::Step::Orders {
                        product,
                        sale,
                        orders,
                    } => {
                        c.arg("orders")
                            .arg(product.get())
                            .arg(ends(sale))
                            .arg(self.ttl_secs);
                        for o in orders {
                            c.arg(&o.order_id)
                                .arg(&o.user_id)
                                .arg(o.quantity)
                                .arg(&o.idempotency_key)
                                .arg(if o.cancelled { "c" } else { "s" });
                        }
                        &mut c
                    }
                    super::Step::Buyers {
                        product,
                        sale,
                        buyers,
                    } => {
                        c.arg("buyers").arg(product.get()).arg(ends(sale));
                        for (user, units) in buyers {
                            c.arg(user).arg(units);
                        }
                        &mut c
                    }
                    super::Step::Sale {
                        product,
                        sale,
                        sold,
                    } => c
                        .arg("sale")
                        .arg(product.get())
                        .arg(sale.stock)
                        .arg(sale.per_user_limit)
                        .arg(sale.starts_at.unwrap_or(0))
                        .arg(ends(sale))
                        .arg(self.ttl_secs)
                        .arg(sold),
                    super::Step::Finish => c.arg("finish"),
                };
                c
            }
            InventoryMsg::Restock(
                super::Restock {
                    product,
                    order,
                    user,
                    quantity,
                },
                _,
            ) => {
                let mut c = self.script(&s.restock);
                c.arg(product.get())
                    .arg(order.as_str())
                    .arg(user.as_str())
                    .arg(*quantity);
                c
            }
            InventoryMsg::RateCheck(super::RateCheck { key, window_ms }, _) => {
                let mut c = self.script(&s.rate);
                c.arg(key.as_str()).arg(*window_ms);
                c
            }
            InventoryMsg::LoadSale(super::LoadSale { product, sale }, _) => {
                let mut c = self.script(&s.load_sale);
                c.arg(product.get())
                    .arg(sale.stock)
                    .arg(sale.per_user_limit)
                    .arg(sale.starts_at.unwrap_or(0))
                    .arg(sale.ends_at.unwrap_or(0));
                c
            }
            InventoryMsg::Counters(super::Counters { product }, _) => {
                let mut c = self.script(&s.counters);
                c.arg(product.get());
                c
            }
            InventoryMsg::Sales(..) => self.script(&s.sales),
            InventoryMsg::ReleaseStale(super::ReleaseStale { now_ms }, _) => {
                let mut c = self.script(&s.release_stale);
                c.arg(*now_ms).arg(self.stale_ms).arg(super::MOST_RELEASED);
                c
            }
            InventoryMsg::Lookup(super::Lookup { order }, _) => {
                let mut c = redis::cmd("GET");
                c.arg(format!("{}:ord:{}", self.prefix, order));
                c
            }
            InventoryMsg::CacheGet(super::CacheGet { key }, _) => {
                let mut c = redis::cmd("GET");
                c.arg(format!("{}:{key}", self.prefix));
                c
            }
            InventoryMsg::CacheSet(
                super::CacheSet {
                    key,
                    value,
                    ttl_secs,
                },
                _,
            ) => {
                let mut c = redis::cmd("SET");
                c.arg(format!("{}:{key}", self.prefix))
                    .arg(value)
                    .arg("EX")
                    .arg(*ttl_secs);
                c
            }
            InventoryMsg::CacheDel(super::CacheDel { key }, _) => {
                let mut c = redis::cmd("DEL");
                c.arg(format!("{}:{key}", self.prefix));
                c
            }
        }
    }
}

/// A rebuild step's answer: `{0, ...}` done, `{-1}` whole again, `{-2}` taken.
fn rebuild_step(
    step: &super::Step,
    v: &Value,
) -> Result<Result<StepDone, RebuildStopped>, ItemError> {
    let Value::Array(items) = v else {
        return Err(bad("rebuild", v));
    };
    let (status, rest) = items.split_first().ok_or_else(|| bad("rebuild", v))?;
    match int(status) {
        Some(-1) => return Ok(Err(RebuildStopped::Whole)),
        Some(-2) => return Ok(Err(RebuildStopped::Taken)),
        Some(0) => {}
        _ => return Err(bad("rebuild", v)),
    }
    Ok(Ok(match step {
        super::Step::Own => StepDone::Owned,
        super::Step::Orders { .. } => StepDone::Returned(
            rest.iter()
                .map(text)
                .collect::<Option<_>>()
                .ok_or_else(|| bad("rebuild", v))?,
        ),
        super::Step::Buyers { .. } => StepDone::Staged,
        super::Step::Sale { .. } => StepDone::Sold(
            rest.first()
                .and_then(int)
                .ok_or_else(|| bad("rebuild", v))?,
        ),
        super::Step::Finish => StepDone::Finished,
    }))
}

fn bad(what: &str, v: &Value) -> ItemError {
    ItemError::new(format!("unexpected Redis reply to {what}: {v:?}"))
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn ints(v: &Value) -> Option<Vec<i64>> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        _ => None,
    }
}

fn opt_ms(n: i64) -> Option<i64> {
    (n > 0).then_some(n)
}

/// The id of the server process behind `con`: a new one at every start.
async fn server_run_id(con: &mut MultiplexedConnection) -> Result<String, ActorProcessingErr> {
    let info: String = redis::cmd("INFO").arg("server").query_async(con).await?;
    info.lines()
        .find_map(|l| l.trim().strip_prefix("run_id:"))
        .map(str::to_string)
        .ok_or_else(|| "Redis INFO server names no run_id".into())
}

/// Whether a script's error is about the one request it ran for: a Lua runtime error
/// on that request's data (`ERR user_script:…`), which that request alone answers.
/// Every other error means the partition is away, however the server words it: its
/// state gone (`LOST`), a server that refuses writes (`NOREPLICAS`, `MISCONF`, `OOM`,
/// `READONLY`, an ACL refusal), one loading, busy or without our scripts. Then the
/// actor fails and reconnects, callers answer `503`, and queued orders stay queued.
fn about_the_request(e: &redis::ServerError) -> bool {
    e.code() == "ERR" && e.details().is_some_and(|d| d.starts_with("user_script:"))
}

fn reserve_outcome(v: &Value) -> Result<ReserveOutcome, ItemError> {
    let Value::Array(items) = v else {
        return Err(bad("reserve", v));
    };
    let code = items
        .first()
        .and_then(int)
        .ok_or_else(|| bad("reserve", v))?;
    let order = items.get(1).and_then(text).unwrap_or_default();
    let order = || OrderId::parse(&order).map_err(|_| bad("reserve", v));
    let number = |i: usize| items.get(i).and_then(int).ok_or_else(|| bad("reserve", v));
    Ok(match code {
        0 => ReserveOutcome::Created(order()?),
        1 => ReserveOutcome::Replay(order()?),
        2 => ReserveOutcome::OutOfStock,
        3 => ReserveOutcome::LimitReached,
        4 => ReserveOutcome::NotActive,
        5 => ReserveOutcome::NoSale,
        7 => ReserveOutcome::Rebuilding,
        6 => ReserveOutcome::Unpublished(UnpublishedOrder {
            order: order()?,
            quantity: Quantity::try_from(number(2)?).map_err(|_| bad("reserve", v))?,
            created_at: number(3)?,
        }),
        _ => return Err(bad("reserve", v)),
    })
}

fn flag(what: &str, v: &Value) -> Result<bool, ItemError> {
    Ok(int(v).ok_or_else(|| bad(what, v))? == 1)
}

fn pair(what: &str, v: &Value) -> Result<(i64, i64), ItemError> {
    match ints(v).as_deref() {
        Some(&[a, b]) => Ok((a, b)),
        _ => Err(bad(what, v)),
    }
}

fn counters(v: &Value) -> Result<Option<SaleCounters>, ItemError> {
    let n = ints(v).ok_or_else(|| bad("counters", v))?;
    Ok(match n.as_slice() {
        [] => None,
        [stock, remaining, limit, starts, ends, pending] => Some(SaleCounters {
            stock: *stock,
            remaining: *remaining,
            pending: *pending,
            per_user_limit: *limit,
            starts_at: opt_ms(*starts),
            ends_at: opt_ms(*ends),
        }),
        _ => return Err(bad("counters", v)),
    })
}

fn pending_order(v: &Value) -> Option<PendingOrder> {
    let s = text(v)?;
    let mut parts = s.splitn(4, '|');
    Some(PendingOrder {
        user: UserId::parse(parts.next()?).ok()?,
        product: ProductId::try_from(parts.next()?.parse::<i64>().ok()?).ok()?,
        quantity: Quantity::try_from(parts.next()?.parse::<i64>().ok()?).ok()?,
        created_at: parts.next()?.parse().ok()?,
    })
}

fn sales(v: &Value) -> Result<Vec<SaleSummary>, ItemError> {
    let n = ints(v).ok_or_else(|| bad("sales", v))?;
    let sales = n.chunks_exact(5).map(|c| SaleSummary {
        product: c[0],
        stock: c[1],
        remaining: c[2],
        starts_at: opt_ms(c[3]),
        ends_at: opt_ms(c[4]),
    });
    Ok(sales.collect())
}

/// Answers one message with its script's reply. A reply that makes no sense, and a
/// script error [`about_the_request`], are that request's error; any other error means
/// the partition is away and is returned (the actor fails).
fn answer(msg: InventoryMsg, v: Value) -> Result<(), ActorProcessingErr> {
    if let Value::ServerError(e) = &v {
        if !about_the_request(e) {
            return Err(format!("Redis: {e:?}").into());
        }
        msg.fail(ItemError::new(format!("Redis script error: {e:?}")));
        return Ok(());
    }
    fn send<T: Send + 'static>(port: ReplyPort<T>, r: Result<T, ItemError>) {
        port.send(r)
    }
    let v = &v;
    match msg {
        InventoryMsg::Reserve(_, p) => send(p, reserve_outcome(v)),
        InventoryMsg::MarkPublished(_, p) => send(p, flag("mark published", v)),
        InventoryMsg::Release(_, p)
        | InventoryMsg::CacheSet(_, p)
        | InventoryMsg::CacheDel(_, p) => send(p, Ok(())),
        InventoryMsg::Claim(_, p) => send(
            p,
            match int(v) {
                Some(1) => Ok(Claimed::Sold),
                Some(0) => Ok(Claimed::Released),
                Some(2) => Ok(Claimed::Unknown),
                _ => Err(bad("claim", v)),
            },
        ),
        InventoryMsg::Restock(_, p) => send(
            p,
            match int(v) {
                Some(1) => Ok(Restocked::Returned),
                Some(0) => Ok(Restocked::Already),
                Some(2) => Ok(Restocked::Rebuilding),
                _ => Err(bad("restock", v)),
            },
        ),
        InventoryMsg::RateCheck(_, p) => send(
            p,
            pair("rate", v).map(|(count, reset_ms)| RateWindow { count, reset_ms }),
        ),
        InventoryMsg::LoadSale(req, p) => send(
            p,
            pair("load sale", v).map(|(a, b)| {
                if a == -2 {
                    Err(SaleRefused::Rebuilding)
                } else if a < 0 {
                    Err(SaleRefused::BelowSold { sold: b })
                } else {
                    Ok(SaleCounters {
                        stock: a,
                        remaining: b,
                        pending: 0,
                        per_user_limit: req.sale.per_user_limit,
                        starts_at: req.sale.starts_at,
                        ends_at: req.sale.ends_at,
                    })
                }
            }),
        ),
        InventoryMsg::Counters(_, p) => send(p, counters(v)),
        InventoryMsg::Lookup(_, p) => send(p, Ok(pending_order(v))),
        InventoryMsg::CacheGet(_, p) => send(p, Ok(text(v))),
        InventoryMsg::ReleaseStale(_, p) => send(p, int(v).ok_or_else(|| bad("reconcile", v))),
        InventoryMsg::Sales(_, p) => send(p, sales(v)),
        InventoryMsg::Recovery(_, p) => send(
            p,
            pair("recovery", v).map(|(rebuilding, since)| match rebuilding {
                1 => PartitionState::Rebuilding { since },
                _ => PartitionState::Ready,
            }),
        ),
        InventoryMsg::Rebuild(r, p) => send(p, rebuild_step(&r.step, v)),
    }
    Ok(())
}

#[ractor::async_trait]
impl Backend for RedisInventory {
    type Msg = InventoryMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let live: Vec<_> = batch.into_iter().filter(|m| !m.abandoned()).collect();
        if live.is_empty() {
            return Ok(());
        }
        // Each command's reply, errors included: `answer` tells an error of one
        // request from a partition that is away.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for m in &live {
            pipe.add_command(self.command(m));
        }
        // Last, the partition's write sequence: once this is acknowledged, so is
        // everything before it.
        pipe.cmd("INCR").arg(format!("{}:seq", self.prefix));
        let mut values: Vec<Value> = pipe.query_async(&mut self.con).await?;
        if values.len() != live.len() + 1 {
            return Err(format!(
                "Redis answered {} of {} commands",
                values.len(),
                live.len() + 1
            )
            .into());
        }
        // Recorded before any answer: it says how far the acknowledged writes reach.
        let Some(seq) = values.pop().and_then(|v| int(&v)) else {
            return Err("Redis refused to advance the partition's write sequence".into());
        };
        let run_id = self.run_id.clone();
        *self.last_write.lock().expect("not poisoned") = Some(LastWrite { run_id, seq });
        for (m, v) in live.into_iter().zip(values) {
            answer(m, v)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server sends, as the client reads it.
    fn server_error(reply: &str) -> redis::ServerError {
        match redis::parse_redis_value(format!("-{reply}\r\n").as_bytes()).unwrap() {
            Value::ServerError(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_a_scripts_runtime_error_is_its_requests_own() {
        let own = "ERR user_script:12: attempt to compare nil with number script: 3f1e, on @user_script:12.";
        assert!(about_the_request(&server_error(own)));
        // What Redis 7 answers when it refuses (as seen on a server here), or lost or
        // lacks what the partition needs: the partition is away.
        for away in [
            "NOREPLICAS Not enough good replicas to write. script: 3f1e, on @user_script:1.",
            "MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk.",
            "OOM command not allowed when used memory > 'maxmemory'. script: 3f1e, on @user_script:1.",
            "ERR The user executing the script can't access at least one of the keys mentioned in the command arguments script: 3f1e, on @user_script:1.",
            "NOPERM User fs has no permissions to run the 'evalsha' command",
            "NOAUTH Authentication required.",
            "READONLY You can't write against a read only replica.",
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "NOSCRIPT No matching script. Please use EVAL.",
            "LOST the partition state is gone",
            "ERR max number of clients reached",
        ] {
            assert!(!about_the_request(&server_error(away)), "{away}");
        }
    }
}
