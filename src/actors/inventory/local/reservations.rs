//! Reservations, as `reservations.rs` of the Redis backend serves them: step for
//! step what the scripts do, on the partition's memory.

use super::persist::Change;
use super::{uuid_bits, uuid_text, Accepted, Held, LocalInventory, Reservation};
use crate::actors::inventory::{
    Claim, Claimed, Lookup, MarkPublished, PendingOrder, Release, ReleaseStale, ReserveOutcome,
    ReserveRequest, Restock, Restocked, UnpublishedOrder, MOST_RELEASED,
};
use crate::domain::{now_ms, OrderId};
use crate::supervisors::slot::{Deferred, Handle, ReplyPort};

impl Handle<ReserveRequest, ReserveOutcome> for LocalInventory {
    fn handle(&mut self, r: ReserveRequest, port: ReplyPort<ReserveOutcome>) -> Deferred {
        port.defer(Ok(self.reserve(&r)))
    }
}

impl Handle<MarkPublished, bool> for LocalInventory {
    fn handle(&mut self, r: MarkPublished, port: ReplyPort<bool>) -> Deferred {
        port.defer(Ok(self.mark_published(r.order.as_str())))
    }
}

impl Handle<Release, ()> for LocalInventory {
    fn handle(&mut self, r: Release, port: ReplyPort<()>) -> Deferred {
        let order = r.order.as_str();
        if self.resv.get(order).is_some_and(|r| !r.published) {
            self.release(order);
        }
        port.defer(Ok(()))
    }
}

impl Handle<Claim, Claimed> for LocalInventory {
    fn handle(&mut self, c: Claim, port: ReplyPort<Claimed>) -> Deferred {
        port.defer(Ok(self.claim(&c)))
    }
}

impl Handle<Restock, Restocked> for LocalInventory {
    fn handle(&mut self, r: Restock, port: ReplyPort<Restocked>) -> Deferred {
        port.defer(Ok(self.restock(&r)))
    }
}

impl Handle<ReleaseStale, i64> for LocalInventory {
    fn handle(&mut self, r: ReleaseStale, port: ReplyPort<i64>) -> Deferred {
        port.defer(Ok(self.release_stale(r.now_ms)))
    }
}

impl Handle<Lookup, Option<PendingOrder>> for LocalInventory {
    fn handle(&mut self, r: Lookup, port: ReplyPort<Option<PendingOrder>>) -> Deferred {
        let ttl = self.ttl_ms;
        let found = uuid_bits(r.order.as_str()).and_then(|o| self.orders.get(&o));
        let live = found
            .filter(|o| o.created_at + ttl > now_ms())
            .map(Accepted::pending);
        port.defer(Ok(live))
    }
}

impl LocalInventory {
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
                    let Some(sale) = self.sales.get(&pid) else {
                        return ReserveOutcome::NoSale;
                    };
                    return ReserveOutcome::Unpublished(UnpublishedOrder {
                        order,
                        quantity: rv.qty,
                        created_at: rv.ts,
                        terms: sale.terms,
                    });
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
        ReserveOutcome::Created(r.order.clone(), sale.terms)
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
    fn claim(&mut self, c: &Claim) -> Claimed {
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

    fn restock(&mut self, r: &Restock) -> Restocked {
        let oid = r.order.to_string();
        if self.released.contains(&oid) || !self.restocked.insert(oid.clone()) {
            return Restocked::Already;
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
        Restocked::Returned
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
        stale.truncate(MOST_RELEASED as usize);
        for (_, oid) in &stale {
            self.release(oid);
        }
        self.forget_expired(now_ms);
        stale.len() as i64
    }
}
