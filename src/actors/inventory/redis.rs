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

const COMMON: &str = r#"
local P = ARGV[1]
local function k(...) return P .. ':' .. table.concat({...}, ':') end
local function parse(st)
  local s, ts, q, u, key = string.match(st, '^(%a)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return s, tonumber(ts), tonumber(q), u, key
end
local function release(pid, oid, st)
  local s, ts, q, u, key = parse(st)
  redis.call('HINCRBY', k('sale', pid), 'remaining', q)
  redis.call('DECRBY', k('bought', pid, u), q)
  redis.call('HDEL', k('resv', pid), oid)
  redis.call('SADD', k('rel', pid), oid)
  local ik = k('idem', pid, u, key)
  if redis.call('GET', ik) == oid then redis.call('DEL', ik) end
  redis.call('DEL', k('ord', oid))
end
"#;

/// ARGV: prefix, pid, uid, key, qty, oid, now, stale_ms, ttl.
/// Returns {code, order id}: 0 created, 1 replay, 2 out of stock, 3 limit, 4 not active, 5 no sale.
const RESERVE: &str = r#"
local pid, uid, key, oid = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
local qty, now, stale = tonumber(ARGV[5]), tonumber(ARGV[7]), tonumber(ARGV[8])
local ik = k('idem', pid, uid, key)
local prev = redis.call('GET', ik)
if prev then
  local st = redis.call('HGET', k('resv', pid), prev)
  local s, ts = nil, nil
  if st then s, ts = parse(st) end
  if s == 'R' and now - ts > stale then
    release(pid, prev, st)
  else
    return {1, prev}
  end
end
local sk = k('sale', pid)
local sale = redis.call('HMGET', sk, 'remaining', 'limit', 'starts', 'ends')
if not sale[1] then return {5, ''} end
local remaining, limit, starts, ends = tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3]), tonumber(sale[4])
if (starts > 0 and now < starts) or (ends > 0 and now >= ends) then return {4, ''} end
local bk = k('bought', pid, uid)
local bought = tonumber(redis.call('GET', bk) or '0')
if bought + qty > limit then return {3, ''} end
if remaining < qty then return {2, ''} end
redis.call('HINCRBY', sk, 'remaining', -qty)
redis.call('INCRBY', bk, qty)
redis.call('SET', ik, oid, 'EX', ARGV[9])
redis.call('HSET', k('resv', pid), oid, 'R|' .. ARGV[7] .. '|' .. ARGV[5] .. '|' .. uid .. '|' .. key)
redis.call('SET', k('ord', oid), uid .. '|' .. pid .. '|' .. ARGV[5] .. '|' .. ARGV[7], 'EX', ARGV[9])
return {0, oid}
"#;

/// ARGV: prefix, pid, oid.
const MARK_PUBLISHED: &str = r#"
local rk = k('resv', ARGV[2])
local st = redis.call('HGET', rk, ARGV[3])
if st and string.sub(st, 1, 1) == 'R' then redis.call('HSET', rk, ARGV[3], 'P' .. string.sub(st, 2)) end
return 0
"#;

/// ARGV: prefix, pid, oid. Returns 1 when something was released.
const RELEASE: &str = r#"
local st = redis.call('HGET', k('resv', ARGV[2]), ARGV[3])
if st then release(ARGV[2], ARGV[3], st) return 1 end
return 0
"#;

/// ARGV: prefix, pid, oid. Returns 1 to persist the order, 0 if it was released.
const CLAIM: &str = r#"
local rk = k('resv', ARGV[2])
if redis.call('HDEL', rk, ARGV[3]) == 1 then return 1 end
if redis.call('SISMEMBER', k('rel', ARGV[2]), ARGV[3]) == 1 then return 0 end
return 1
"#;

/// ARGV: prefix, now, stale_ms. Returns how many reservations were released.
const RELEASE_STALE: &str = r#"
local now, stale, n = tonumber(ARGV[2]), tonumber(ARGV[3]), 0
for _, pid in ipairs(redis.call('SMEMBERS', k('sales'))) do
  local all = redis.call('HGETALL', k('resv', pid))
  for i = 1, #all, 2 do
    local s, ts = parse(all[i + 1])
    if s == 'R' and now - ts > stale then release(pid, all[i], all[i + 1]) n = n + 1 end
  end
end
return n
"#;

/// ARGV: prefix, pid, stock, limit, starts, ends. Returns {stock, remaining} or {-1, sold}.
const LOAD_SALE: &str = r#"
local sk = k('sale', ARGV[2])
local old = redis.call('HMGET', sk, 'stock', 'remaining')
local sold = 0
if old[1] then sold = tonumber(old[1]) - tonumber(old[2]) end
local stock = tonumber(ARGV[3])
if stock < sold then return {-1, sold} end
redis.call('HSET', sk, 'stock', stock, 'remaining', stock - sold, 'limit', ARGV[4], 'starts', ARGV[5], 'ends', ARGV[6])
redis.call('SADD', k('sales'), ARGV[2])
return {stock, stock - sold}
"#;

/// ARGV: prefix, pid. Returns {} or {stock, remaining, limit, starts, ends, pending units}.
const COUNTERS: &str = r#"
local s = redis.call('HMGET', k('sale', ARGV[2]), 'stock', 'remaining', 'limit', 'starts', 'ends')
if not s[1] then return {} end
local pending = 0
local all = redis.call('HVALS', k('resv', ARGV[2]))
for _, st in ipairs(all) do local _, _, q = parse(st) pending = pending + q end
return {tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4]), tonumber(s[5]), pending}
"#;

/// ARGV: prefix, uid, window_ms. Returns {count, ms until the window resets}.
const RATE: &str = r#"
local rk = k('rl', ARGV[2])
local c = redis.call('INCR', rk)
if c == 1 then redis.call('PEXPIRE', rk, ARGV[3]) end
local ttl = redis.call('PTTL', rk)
if ttl < 0 then redis.call('PEXPIRE', rk, ARGV[3]) ttl = tonumber(ARGV[3]) end
return {c, ttl}
"#;

/// ARGV: prefix. Returns a flat list of {pid, stock, remaining, starts, ends}.
const SALES: &str = r#"
local out = {}
for _, pid in ipairs(redis.call('SMEMBERS', k('sales'))) do
  local s = redis.call('HMGET', k('sale', pid), 'stock', 'remaining', 'starts', 'ends')
  if s[1] then
    for _, v in ipairs({tonumber(pid), tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])}) do
      out[#out + 1] = v
    end
  end
end
return out
"#;

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
