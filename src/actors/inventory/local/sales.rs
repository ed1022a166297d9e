//! Sales: a sale's definition loaded into the partition, and its counters.

use super::persist::Change;
use super::{LocalInventory, Sale};
use crate::actors::inventory::{
    Counters, ListSales, LoadSale, SaleCounters, SaleRefused, SaleSummary,
};
use crate::domain::{SaleDefinition, Terms};
use crate::supervisors::slot::{Deferred, Handle, ReplyPort};

impl Handle<LoadSale, Result<SaleCounters, SaleRefused>> for LocalInventory {
    fn handle(
        &mut self,
        r: LoadSale,
        port: ReplyPort<Result<SaleCounters, SaleRefused>>,
    ) -> Deferred {
        port.defer(Ok(self.load_sale(r.product.get(), &r.sale)))
    }
}

impl Handle<Counters, Option<SaleCounters>> for LocalInventory {
    fn handle(&mut self, r: Counters, port: ReplyPort<Option<SaleCounters>>) -> Deferred {
        port.defer(Ok(self.counters(r.product.get())))
    }
}

impl Handle<ListSales, Vec<SaleSummary>> for LocalInventory {
    fn handle(&mut self, _: ListSales, port: ReplyPort<Vec<SaleSummary>>) -> Deferred {
        port.defer(Ok(self.sales()))
    }
}

impl LocalInventory {
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
            terms: Terms {
                unit_price_cents: def.unit_price_cents,
                payment_window: def.payment_window,
            },
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
            payment_window: s.terms.payment_window,
        })
    }

    fn sales(&self) -> Vec<SaleSummary> {
        let sales = self.sales.iter().map(|(pid, s)| SaleSummary {
            product: *pid,
            stock: s.stock,
            remaining: s.remaining,
            starts_at: (s.starts > 0).then_some(s.starts),
            ends_at: (s.ends > 0).then_some(s.ends),
            payment_window: s.terms.payment_window,
        });
        sales.collect()
    }
}
