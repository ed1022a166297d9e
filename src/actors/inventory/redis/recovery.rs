//! A partition that lost its state: whether it is rebuilding, and the bounded steps
//! that rebuild its sales from the shards (see `actors::recovery`).

use redis::Value;

use super::op::{Lua, Op, Script};
use super::{bad, int, pair, text, Partition};
use crate::actors::inventory::{
    PartitionState, RebuildStep, RebuildStopped, Recovery, Step, StepDone, REBUILD_LEASE_MS,
};
use crate::domain::{PaymentWindow, SaleDefinition};
use crate::supervisors::slot::{Handle, ItemError, ReplyPort};

static RECOVERY: Lua = Lua::new(|| Script::new(include_str!("lua/recovery.lua")));
static REBUILD: Lua = Lua::new(|| Script::new(include_str!("lua/rebuild.lua")));

/// ARGV: prefix. Answers {rebuilding, since}.
impl Handle<Recovery, PartitionState> for Partition {
    fn handle(&mut self, _: Recovery, port: ReplyPort<PartitionState>) -> Op {
        Op::new(RECOVERY.call(&self.prefix), port, |v| {
            pair("recovery", v).map(|(rebuilding, since)| match rebuilding {
                1 => PartitionState::Rebuilding { since },
                _ => PartitionState::Ready,
            })
        })
    }
}

/// ARGV: prefix, owner, since, lease_ms, step, then the step's own (see the script).
impl Handle<RebuildStep, Result<StepDone, RebuildStopped>> for Partition {
    fn handle(&mut self, r: RebuildStep, port: ReplyPort<Result<StepDone, RebuildStopped>>) -> Op {
        let (mut c, script) = REBUILD.call(&self.prefix);
        c.arg(&r.owner).arg(r.since).arg(REBUILD_LEASE_MS);
        let ends = |sale: &SaleDefinition| sale.ends_at.unwrap_or(0);
        match &r.step {
            Step::Own => c.arg("own"),
            Step::Orders {
                product,
                sale,
                orders,
            } => {
                c.arg("orders")
                    .arg(*product)
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
            Step::Buyers {
                product,
                sale,
                buyers,
            } => {
                c.arg("buyers").arg(*product).arg(ends(sale));
                for (user, units) in buyers {
                    c.arg(user).arg(units);
                }
                &mut c
            }
            Step::Sale {
                product,
                sale,
                sold,
            } => c
                .arg("sale")
                .arg(*product)
                .arg(sale.stock)
                .arg(sale.per_user_limit)
                .arg(sale.starts_at.unwrap_or(0))
                .arg(ends(sale))
                .arg(self.ttl_secs)
                .arg(sold)
                .arg(sale.unit_price_cents)
                .arg(PaymentWindow::stored(sale.payment_window)),
            Step::Finish => c.arg("finish"),
        };
        let step = r.step;
        Op::new((c, script), port, move |v| rebuild_step(&step, v))
    }
}

/// A rebuild step's answer: `{0, ...}` done, `{-1}` whole again, `{-2}` taken.
fn rebuild_step(step: &Step, v: &Value) -> Result<Result<StepDone, RebuildStopped>, ItemError> {
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
        Step::Own => StepDone::Owned,
        Step::Orders { .. } => StepDone::Returned(
            rest.iter()
                .map(text)
                .collect::<Option<_>>()
                .ok_or_else(|| bad("rebuild", v))?,
        ),
        Step::Buyers { .. } => StepDone::Staged,
        Step::Sale { .. } => StepDone::Sold(
            rest.first()
                .and_then(int)
                .ok_or_else(|| bad("rebuild", v))?,
        ),
        Step::Finish => StepDone::Finished,
    }))
}
