//! The edge store: rate-limit windows and the product cache, kept in memory only
//! (as Redis keeps them under their lifetimes; a restart forgets them).

use super::LocalInventory;
use crate::actors::inventory::{CacheDel, CacheGet, CacheSet, RateCheck, RateWindow};
use crate::domain::now_ms;
use crate::supervisors::slot::{Deferred, Handle, ReplyPort};

impl Handle<RateCheck, RateWindow> for LocalInventory {
    fn handle(&mut self, r: RateCheck, port: ReplyPort<RateWindow>) -> Deferred {
        port.defer(Ok(self.rate_check(&r)))
    }
}

impl Handle<CacheGet, Option<String>> for LocalInventory {
    fn handle(&mut self, r: CacheGet, port: ReplyPort<Option<String>>) -> Deferred {
        port.defer(Ok(self.cache_get(&r.key)))
    }
}

impl Handle<CacheSet, ()> for LocalInventory {
    fn handle(&mut self, r: CacheSet, port: ReplyPort<()>) -> Deferred {
        let expires = now_ms() + r.ttl_secs as i64 * 1000;
        self.cache.insert(r.key, (r.value, expires));
        port.defer(Ok(()))
    }
}

impl Handle<CacheDel, ()> for LocalInventory {
    fn handle(&mut self, r: CacheDel, port: ReplyPort<()>) -> Deferred {
        self.cache.remove(&r.key);
        port.defer(Ok(()))
    }
}

impl LocalInventory {
    fn rate_check(&mut self, r: &RateCheck) -> RateWindow {
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
}
