//! Reservations: a buyer's units from the request that reserves them to the consumer
//! that claims them for its shard, or back to the sale. Each operation is one script
//! (its ARGV and answers at the top of its file), so each is atomic.

use redis::Value;

use super::op::{named, Lua, Op, Script};
use super::{bad, flag, int, text, Partition};
use crate::actors::inventory::{
    Claim, Claimed, Lookup, MarkPublished, PendingOrder, Release, ReleaseStale, ReserveOutcome,
    ReserveRequest, Restock, Restocked, UnpublishedOrder, MOST_RELEASED,
};
use crate::domain::{OrderId, PaymentWindow, ProductId, Quantity, Terms, UserId};
use crate::supervisors::slot::{Handle, ItemError, ReplyPort};

static RESERVE: Lua = Lua::new(|| Script::new(include_str!("lua/reserve.lua")));
static MARK_PUBLISHED: Lua = Lua::new(|| Script::new(include_str!("lua/mark_published.lua")));
static RELEASE: Lua = Lua::new(|| Script::new(include_str!("lua/release.lua")));
static CLAIM: Lua = Lua::new(|| Script::new(include_str!("lua/claim.lua")));
static RESTOCK: Lua = Lua::new(|| Script::new(include_str!("lua/restock.lua")));
static RELEASE_STALE: Lua = Lua::new(|| Script::new(include_str!("lua/release_stale.lua")));

impl Handle<ReserveRequest, ReserveOutcome> for Partition {
    fn handle(&mut self, r: ReserveRequest, port: ReplyPort<ReserveOutcome>) -> Op {
        let (mut cmd, script) = RESERVE.call(&self.prefix);
        cmd.arg(r.product)
            .arg(&r.user)
            .arg(&r.key)
            .arg(r.quantity)
            .arg(&r.order)
            .arg(r.now_ms)
            .arg(self.stale_ms)
            .arg(self.ttl_secs);
        Op::new((cmd, script), port, reserve_outcome)
    }
}

fn reserve_outcome(v: &Value) -> Result<ReserveOutcome, ItemError> {
    let Value::Array(items) = v else {
        return Err(bad("reserve", v));
    };
    let name = items
        .first()
        .and_then(text)
        .ok_or_else(|| bad("reserve", v))?;
    let order = || {
        let id = items
            .get(1)
            .and_then(text)
            .ok_or_else(|| bad("reserve", v))?;
        OrderId::parse(&id).map_err(|e| ItemError::caused_by("reserve", e))
    };
    let number = |i: usize| items.get(i).and_then(int).ok_or_else(|| bad("reserve", v));
    let terms = |i: usize| -> Result<Terms, ItemError> {
        Ok(Terms {
            unit_price_cents: number(i)?,
            payment_window: PaymentWindow::from_stored(number(i + 1)?),
        })
    };
    Ok(match name.as_str() {
        "created" => ReserveOutcome::Created(order()?, terms(2)?),
        "replay" => ReserveOutcome::Replay(order()?),
        "unpublished" => ReserveOutcome::Unpublished(UnpublishedOrder {
            order: order()?,
            quantity: Quantity::try_from(number(2)?).map_err(|_| bad("reserve", v))?,
            created_at: number(3)?,
            terms: terms(4)?,
        }),
        "out_of_stock" => ReserveOutcome::OutOfStock,
        "limit_reached" => ReserveOutcome::LimitReached,
        "not_active" => ReserveOutcome::NotActive,
        "no_sale" => ReserveOutcome::NoSale,
        "rebuilding" => ReserveOutcome::Rebuilding,
        _ => return Err(bad("reserve", v)),
    })
}

impl Handle<MarkPublished, bool> for Partition {
    fn handle(&mut self, r: MarkPublished, port: ReplyPort<bool>) -> Op {
        let (mut cmd, script) = MARK_PUBLISHED.call(&self.prefix);
        cmd.arg(r.product).arg(&r.order);
        Op::new((cmd, script), port, |v| flag("mark published", v))
    }
}

impl Handle<Release, ()> for Partition {
    fn handle(&mut self, r: Release, port: ReplyPort<()>) -> Op {
        let (mut cmd, script) = RELEASE.call(&self.prefix);
        cmd.arg(r.product).arg(&r.order);
        Op::new((cmd, script), port, |_| Ok(()))
    }
}

impl Handle<Claim, Claimed> for Partition {
    fn handle(&mut self, c: Claim, port: ReplyPort<Claimed>) -> Op {
        let (mut cmd, script) = CLAIM.call(&self.prefix);
        cmd.arg(c.product)
            .arg(&c.order)
            .arg(&c.user)
            .arg(c.quantity)
            .arg(&c.key)
            .arg(c.created_at)
            .arg(self.ttl_secs);
        Op::new((cmd, script), port, |v| {
            let outcomes = [
                ("sold", Claimed::Sold),
                ("released", Claimed::Released),
                ("unknown", Claimed::Unknown),
            ];
            named("claim", v, &outcomes)
        })
    }
}

impl Handle<Restock, Restocked> for Partition {
    fn handle(&mut self, r: Restock, port: ReplyPort<Restocked>) -> Op {
        let (mut cmd, script) = RESTOCK.call(&self.prefix);
        cmd.arg(r.product)
            .arg(&r.order)
            .arg(&r.user)
            .arg(r.quantity);
        Op::new((cmd, script), port, |v| {
            let outcomes = [
                ("returned", Restocked::Returned),
                ("already", Restocked::Already),
                ("rebuilding", Restocked::Rebuilding),
            ];
            named("restock", v, &outcomes)
        })
    }
}

impl Handle<ReleaseStale, i64> for Partition {
    fn handle(&mut self, r: ReleaseStale, port: ReplyPort<i64>) -> Op {
        let (mut cmd, script) = RELEASE_STALE.call(&self.prefix);
        cmd.arg(r.now_ms).arg(self.stale_ms).arg(MOST_RELEASED);
        Op::new((cmd, script), port, |v| {
            int(v).ok_or_else(|| bad("reconcile", v))
        })
    }
}

/// The accepted order's record (`P:ord:{oid}`), kept until its shard has it.
impl Handle<Lookup, Option<PendingOrder>> for Partition {
    fn handle(&mut self, r: Lookup, port: ReplyPort<Option<PendingOrder>>) -> Op {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}:ord:{}", self.prefix, r.order));
        Op::new(Op::command(cmd), port, |v| Ok(pending_order(v)))
    }
}

/// `uid|pid|qty|created_at`, as `reserve.lua` records it.
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
