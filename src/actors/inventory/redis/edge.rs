//! The edge store: rate-limit windows and the product cache. They share the
//! partition's server, not its bookkeeping: plain keys, no sale's state.

use super::op::{Lua, Op, Script};
use super::{pair, text, Partition};
use crate::actors::inventory::{CacheDel, CacheGet, CacheSet, RateCheck, RateWindow};
use crate::supervisors::slot::{Handle, ReplyPort};

static RATE: Lua = Lua::new(|| Script::new(include_str!("lua/rate.lua")));

/// ARGV: prefix, key, window_ms. Answers {count, ms until the window resets}.
impl Handle<RateCheck, RateWindow> for Partition {
    fn handle(&mut self, r: RateCheck, port: ReplyPort<RateWindow>) -> Op {
        let (mut cmd, script) = RATE.call(&self.prefix);
        cmd.arg(r.key.as_str()).arg(r.window_ms);
        Op::new((cmd, script), port, |v| {
            pair("rate", v).map(|(count, reset_ms)| RateWindow { count, reset_ms })
        })
    }
}

impl Handle<CacheGet, Option<String>> for Partition {
    fn handle(&mut self, r: CacheGet, port: ReplyPort<Option<String>>) -> Op {
        let mut cmd = redis::cmd("GET");
        cmd.arg(format!("{}:{}", self.prefix, r.key));
        Op::new(Op::command(cmd), port, |v| Ok(text(v)))
    }
}

impl Handle<CacheSet, ()> for Partition {
    fn handle(&mut self, r: CacheSet, port: ReplyPort<()>) -> Op {
        let mut cmd = redis::cmd("SET");
        cmd.arg(format!("{}:{}", self.prefix, r.key))
            .arg(r.value)
            .arg("EX")
            .arg(r.ttl_secs);
        Op::new(Op::command(cmd), port, |_| Ok(()))
    }
}

impl Handle<CacheDel, ()> for Partition {
    fn handle(&mut self, r: CacheDel, port: ReplyPort<()>) -> Op {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(format!("{}:{}", self.prefix, r.key));
        Op::new(Op::command(cmd), port, |_| Ok(()))
    }
}
