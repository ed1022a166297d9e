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

use std::time::Duration;

use ractor::ActorProcessingErr;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{InventoryOp, InventoryReply, PendingOrder, ReserveOutcome, SaleCounters};
use crate::actors::worker::{Backend, Batch, Connect};
use crate::domain::OrderId;

const COMMON: &str = include_str!("lua/common.lua");

/// ARGV: prefix, pid, uid, key, qty, oid, now, stale_ms, ttl.
/// Returns {code, order id}: 0 created, 1 replay, 2 out of stock, 3 limit, 4 not active, 5 no sale.
const RESERVE: &str = include_str!("lua/reserve.lua");

/// ARGV: prefix, pid, oid.
const MARK_PUBLISHED: &str = include_str!("lua/mark_published.lua");

/// ARGV: prefix, pid, oid. Returns 1 when something was released.
const RELEASE: &str = include_str!("lua/release.lua");

/// ARGV: prefix, pid, oid. Returns 1 to persist the order, 0 if it was released.
const CLAIM: &str = include_str!("lua/claim.lua");

/// ARGV: prefix, now, stale_ms. Returns how many reservations were released.
const RELEASE_STALE: &str = include_str!("lua/release_stale.lua");

/// ARGV: prefix, pid, stock, limit, starts, ends. Returns {stock, remaining} or {-1, sold}.
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
}

pub struct RedisConnect {
    pub url: String,
    pub prefix: String,
    pub stale_ms: u64,
    pub idempotency_ttl_secs: u64,
}

pub struct RedisInventory {
    con: MultiplexedConnection,
    scripts: Scripts,
    prefix: String,
    stale_ms: u64,
    ttl_secs: u64,
}

#[ractor::async_trait]
impl Connect for RedisConnect {
    type Backend = RedisInventory;

    async fn connect(&self) -> Result<RedisInventory, ActorProcessingErr> {
        let client = redis::Client::open(self.url.as_str())?;
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
        };
        Ok(RedisInventory {
            con,
            scripts,
            prefix: self.prefix.clone(),
            stale_ms: self.stale_ms,
            ttl_secs: self.idempotency_ttl_secs,
        })
    }
}

impl RedisInventory {
    fn script(&self, sha: &str) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(sha).arg(0).arg(&self.prefix);
        c
    }

    fn command(&self, op: &InventoryOp) -> redis::Cmd {
        let s = &self.scripts;
        match op {
            InventoryOp::Reserve(r) => {
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
            InventoryOp::MarkPublished { product, order } => {
                let mut c = self.script(&s.mark);
                c.arg(product.get()).arg(order.as_str());
                c
            }
            InventoryOp::Release { product, order } => {
                let mut c = self.script(&s.release);
                c.arg(product.get()).arg(order.as_str());
                c
            }
            InventoryOp::Claim { product, order } => {
                let mut c = self.script(&s.claim);
                c.arg(product.get()).arg(order.as_str());
                c
            }
            InventoryOp::Restock {
                product,
                order,
                user,
                quantity,
            } => {
                let mut c = self.script(&s.restock);
                c.arg(product.get())
                    .arg(order.as_str())
                    .arg(user.as_str())
                    .arg(*quantity);
                c
            }
            InventoryOp::RateCheck { user, window_ms } => {
                let mut c = self.script(&s.rate);
                c.arg(user.as_str()).arg(*window_ms);
                c
            }
            InventoryOp::LoadSale { product, sale } => {
                let mut c = self.script(&s.load_sale);
                c.arg(product.get())
                    .arg(sale.stock)
                    .arg(sale.per_user_limit)
                    .arg(sale.starts_at.unwrap_or(0))
                    .arg(sale.ends_at.unwrap_or(0));
                c
            }
            InventoryOp::Counters { product } => {
                let mut c = self.script(&s.counters);
                c.arg(product.get());
                c
            }
            InventoryOp::Sales => self.script(&s.sales),
            InventoryOp::ReleaseStale { now_ms } => {
                let mut c = self.script(&s.release_stale);
                c.arg(*now_ms).arg(self.stale_ms);
                c
            }
            InventoryOp::Lookup { order } => {
                let mut c = redis::cmd("GET");
                c.arg(format!("{}:ord:{}", self.prefix, order));
                c
            }
            InventoryOp::CacheGet { key } => {
                let mut c = redis::cmd("GET");
                c.arg(format!("{}:{key}", self.prefix));
                c
            }
            InventoryOp::CacheSet {
                key,
                value,
                ttl_secs,
            } => {
                let mut c = redis::cmd("SET");
                c.arg(format!("{}:{key}", self.prefix))
                    .arg(value)
                    .arg("EX")
                    .arg(*ttl_secs);
                c
            }
            InventoryOp::CacheDel { key } => {
                let mut c = redis::cmd("DEL");
                c.arg(format!("{}:{key}", self.prefix));
                c
            }
        }
    }
}

fn bad(what: &str, v: &Value) -> ActorProcessingErr {
    format!("unexpected Redis reply to {what}: {v:?}").into()
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

fn decode(op: &InventoryOp, v: Value) -> Result<InventoryReply, ActorProcessingErr> {
    if let Value::ServerError(e) = &v {
        return Err(format!("Redis error: {e:?}").into());
    }
    let reply = match op {
        InventoryOp::Reserve(_) => {
            let Value::Array(items) = &v else {
                return Err(bad("reserve", &v));
            };
            let code = items
                .first()
                .and_then(int)
                .ok_or_else(|| bad("reserve", &v))?;
            let order = items.get(1).and_then(text).unwrap_or_default();
            let order = || OrderId::parse(&order).map_err(|_| bad("reserve", &v));
            InventoryReply::Reserved(match code {
                0 => ReserveOutcome::Created(order()?),
                1 => ReserveOutcome::Replay(order()?),
                2 => ReserveOutcome::OutOfStock,
                3 => ReserveOutcome::LimitReached,
                4 => ReserveOutcome::NotActive,
                5 => ReserveOutcome::NoSale,
                _ => return Err(bad("reserve", &v)),
            })
        }
        InventoryOp::MarkPublished { .. }
        | InventoryOp::Release { .. }
        | InventoryOp::CacheSet { .. }
        | InventoryOp::CacheDel { .. } => InventoryReply::Done,
        InventoryOp::Claim { .. } => {
            InventoryReply::Claimed(int(&v).ok_or_else(|| bad("claim", &v))? == 1)
        }
        InventoryOp::Restock { .. } => {
            InventoryReply::Restocked(int(&v).ok_or_else(|| bad("restock", &v))? == 1)
        }
        InventoryOp::RateCheck { .. } => {
            let n = ints(&v)
                .filter(|n| n.len() == 2)
                .ok_or_else(|| bad("rate", &v))?;
            InventoryReply::Rate {
                count: n[0],
                reset_ms: n[1],
            }
        }
        InventoryOp::LoadSale { sale, .. } => {
            let n = ints(&v)
                .filter(|n| n.len() == 2)
                .ok_or_else(|| bad("load sale", &v))?;
            InventoryReply::SaleLoaded(if n[0] < 0 {
                Err(n[1])
            } else {
                Ok(SaleCounters {
                    stock: n[0],
                    remaining: n[1],
                    pending: 0,
                    per_user_limit: sale.per_user_limit,
                    starts_at: sale.starts_at,
                    ends_at: sale.ends_at,
                })
            })
        }
        InventoryOp::Counters { .. } => {
            let n = ints(&v).ok_or_else(|| bad("counters", &v))?;
            InventoryReply::Counters(match n.as_slice() {
                [] => None,
                [stock, remaining, limit, starts, ends, pending] => Some(SaleCounters {
                    stock: *stock,
                    remaining: *remaining,
                    pending: *pending,
                    per_user_limit: *limit,
                    starts_at: opt_ms(*starts),
                    ends_at: opt_ms(*ends),
                }),
                _ => return Err(bad("counters", &v)),
            })
        }
        InventoryOp::ReleaseStale { .. } => {
            InventoryReply::Released(int(&v).ok_or_else(|| bad("reconcile", &v))?)
        }
        InventoryOp::Lookup { .. } => InventoryReply::Lookup(text(&v).and_then(|s| {
            let mut parts = s.splitn(4, '|');
            Some(PendingOrder {
                user: parts.next()?.to_string(),
                product: parts.next()?.parse().ok()?,
                quantity: parts.next()?.parse().ok()?,
                created_at: parts.next()?.parse().ok()?,
            })
        })),
        InventoryOp::CacheGet { .. } => InventoryReply::Cached(text(&v)),
        InventoryOp::Sales => {
            let n = ints(&v).ok_or_else(|| bad("sales", &v))?;
            let sales = n
                .chunks_exact(5)
                .map(|c| (c[0], c[1], c[2], opt_ms(c[3]), opt_ms(c[4])));
            InventoryReply::Sales(sales.collect())
        }
    };
    Ok(reply)
}

#[ractor::async_trait]
impl Backend for RedisInventory {
    type Op = InventoryOp;
    type Reply = InventoryReply;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let live: Vec<_> = batch.into_iter().filter(|e| !e.abandoned()).collect();
        if live.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for e in &live {
            pipe.add_command(self.command(&e.op));
        }
        let values: Vec<Value> = pipe.query_async(&mut self.con).await?;
        if values.len() != live.len() {
            return Err(
                format!("Redis answered {} of {} commands", values.len(), live.len()).into(),
            );
        }
        let mut replies = Vec::with_capacity(live.len());
        for (e, v) in live.iter().zip(values) {
            replies.push(decode(&e.op, v)?);
        }
        for (e, r) in live.into_iter().zip(replies) {
            e.answer(r);
        }
        Ok(())
    }
}
