//! Sales: loading a sale's definition into the partition, and reading its counters.

use redis::Value;

use super::op::{Lua, Op, Script};
use super::{bad, ints, opt_ms, pair, Partition};
use crate::actors::inventory::{
    Counters, ListSales, LoadSale, SaleCounters, SaleRefused, SaleSummary,
};
use crate::domain::PaymentWindow;
use crate::supervisors::slot::{Handle, ItemError, ReplyPort};

static LOAD_SALE: Lua = Lua::new(|| Script::new(include_str!("lua/load_sale.lua")));
static COUNTERS: Lua = Lua::new(|| Script::new(include_str!("lua/counters.lua")));
static SALES: Lua = Lua::new(|| Script::new(include_str!("lua/sales.lua")));

/// ARGV: prefix, pid, stock, limit, starts, ends, price, window. Answers {stock, remaining},
/// {-1, sold} below what is sold, or {-2, 0} while the partition rebuilds.
impl Handle<LoadSale, Result<SaleCounters, SaleRefused>> for Partition {
    fn handle(&mut self, r: LoadSale, port: ReplyPort<Result<SaleCounters, SaleRefused>>) -> Op {
        let (mut cmd, script) = LOAD_SALE.call(&self.prefix);
        let sale = r.sale;
        cmd.arg(r.product)
            .arg(sale.stock)
            .arg(sale.per_user_limit)
            .arg(sale.starts_at.unwrap_or(0))
            .arg(sale.ends_at.unwrap_or(0))
            .arg(sale.unit_price_cents)
            .arg(PaymentWindow::stored(sale.payment_window));
        Op::new((cmd, script), port, move |v| {
            pair("load sale", v).map(|(a, b)| match a {
                -2 => Err(SaleRefused::Rebuilding),
                ..0 => Err(SaleRefused::BelowSold { sold: b }),
                _ => Ok(SaleCounters {
                    stock: a,
                    remaining: b,
                    pending: 0,
                    per_user_limit: sale.per_user_limit,
                    starts_at: sale.starts_at,
                    ends_at: sale.ends_at,
                    payment_window: sale.payment_window,
                }),
            })
        })
    }
}

/// ARGV: prefix, pid. Answers {} or {stock, remaining, limit, starts, ends, pending,
/// window}.
impl Handle<Counters, Option<SaleCounters>> for Partition {
    fn handle(&mut self, r: Counters, port: ReplyPort<Option<SaleCounters>>) -> Op {
        let (mut cmd, script) = COUNTERS.call(&self.prefix);
        cmd.arg(r.product);
        Op::new((cmd, script), port, counters)
    }
}

fn counters(v: &Value) -> Result<Option<SaleCounters>, ItemError> {
    let n = ints(v).ok_or_else(|| bad("counters", v))?;
    Ok(match n.as_slice() {
        [] => None,
        [stock, remaining, limit, starts, ends, pending, window] => Some(SaleCounters {
            stock: *stock,
            remaining: *remaining,
            pending: *pending,
            per_user_limit: *limit,
            starts_at: opt_ms(*starts),
            ends_at: opt_ms(*ends),
            payment_window: PaymentWindow::from_stored(*window),
        }),
        _ => return Err(bad("counters", v)),
    })
}

/// ARGV: prefix. Answers a flat list of {pid, stock, remaining, starts, ends, window}.
impl Handle<ListSales, Vec<SaleSummary>> for Partition {
    fn handle(&mut self, _: ListSales, port: ReplyPort<Vec<SaleSummary>>) -> Op {
        Op::new(SALES.call(&self.prefix), port, sales)
    }
}

fn sales(v: &Value) -> Result<Vec<SaleSummary>, ItemError> {
    let n = ints(v).ok_or_else(|| bad("sales", v))?;
    let sales = n.chunks_exact(6).map(|c| SaleSummary {
        product: c[0],
        stock: c[1],
        remaining: c[2],
        starts_at: opt_ms(c[3]),
        ends_at: opt_ms(c[4]),
        payment_window: PaymentWindow::from_stored(c[5]),
    });
    Ok(sales.collect())
}
