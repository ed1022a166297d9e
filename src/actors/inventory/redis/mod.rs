//! The Redis backend of an inventory partition: one multiplexed connection and one
//! pipeline per batch. Each request type is served in one place, its command, script
//! and reply together: [`reservations`], [`sales`], [`recovery`] and the [`edge`]
//! store. A script is run by its SHA1, and sent to a server that lacks it once.
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
use super::{InventoryMsg, PartitionState};
use crate::domain::{now_ms, IdempotencyKey, OrderId, ProductId, Quantity, UserId};
use crate::supervisors::slot::{Dispatch, ItemError, Message};
use crate::supervisors::worker::{Backend, Batch, Connect};
use op::Op;

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

mod edge;
mod op;
mod recovery;
mod reservations;
mod sales;

/// What a request needs of its partition to make its command.
pub struct Partition {
    prefix: String,
    stale_ms: u64,
    ttl_secs: u64,
}

impl Dispatch for Partition {
    type Out = Op;
}

/// ARGV: prefix, state, since, replid, replid2, now, run_id, last_run_id, last_seq
/// (no prologue: it runs when the state may be gone).
const EPOCH: &str = include_str!("lua/epoch.lua");

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
    partition: Partition,
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
            partition: Partition {
                prefix: self.prefix.clone(),
                stale_ms: self.stale_ms,
                ttl_secs: self.idempotency_ttl_secs,
            },
            run_id,
            last_write: self.last_write.clone(),
        })
    }
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

fn flag(what: &str, v: &Value) -> Result<bool, ItemError> {
    Ok(int(v).ok_or_else(|| bad(what, v))? == 1)
}

fn pair(what: &str, v: &Value) -> Result<(i64, i64), ItemError> {
    match ints(v).as_deref() {
        Some(&[a, b]) => Ok((a, b)),
        _ => Err(bad(what, v)),
    }
}

#[ractor::async_trait]
impl Backend for RedisInventory {
    type Msg = InventoryMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let live = batch.into_iter().filter(|m| !m.abandoned());
        let ops: Vec<Op> = live.map(|m| m.dispatch(&mut self.partition)).collect();
        if ops.is_empty() {
            return Ok(());
        }
        let (mut commands, mut scripts, mut answers) = (vec![], vec![], vec![]);
        for op in ops {
            commands.push(op.cmd);
            scripts.push(op.script);
            answers.push(op.answer);
        }
        let replies = self.run(&commands).await?;
        // A server that restarted, or a new one, lacks scripts: what ran is answered
        // first, then the scripts are loaded and the commands that never ran are run
        // (once: they never ran).
        let noscript = |v: &Value| matches!(v, Value::ServerError(e) if e.code() == "NOSCRIPT");
        let mut missing = Vec::new();
        for (i, (answer, reply)) in answers.into_iter().zip(replies).enumerate() {
            match noscript(&reply) {
                true => missing.push((i, answer)),
                false => settle(answer, reply)?,
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let mut lacking: Vec<&op::Script> =
            missing.iter().filter_map(|(i, _)| scripts[*i]).collect();
        lacking.sort_by(|a, b| a.sha.cmp(&b.sha));
        lacking.dedup_by(|a, b| a.sha == b.sha);
        for script in lacking {
            let _: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(&script.code)
                .query_async(&mut self.con)
                .await?;
        }
        let again: Vec<redis::Cmd> = missing.iter().map(|(i, _)| commands[*i].clone()).collect();
        let replies = self.run(&again).await?;
        for ((_, answer), reply) in missing.into_iter().zip(replies) {
            settle(answer, reply)?;
        }
        Ok(())
    }
}

impl RedisInventory {
    /// Sends `commands` in one pipeline, then advances the partition's write sequence:
    /// once that is acknowledged, so is everything before it. Each command's reply,
    /// errors included: [`settle`] tells an error of one request from a partition that
    /// is away.
    async fn run(&mut self, commands: &[redis::Cmd]) -> Result<Vec<Value>, ActorProcessingErr> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let sent = commands.len();
        for c in commands {
            pipe.add_command(c.clone());
        }
        pipe.cmd("INCR")
            .arg(format!("{}:seq", self.partition.prefix));
        let mut values: Vec<Value> = pipe.query_async(&mut self.con).await?;
        if values.len() != sent + 1 {
            return Err(format!("Redis answered {} of {} commands", values.len(), sent + 1).into());
        }
        // Recorded before any answer: it says how far the acknowledged writes reach.
        let Some(seq) = values.pop().and_then(|v| int(&v)) else {
            return Err("Redis refused to advance the partition's write sequence".into());
        };
        let run_id = self.run_id.clone();
        *self.last_write.lock().expect("not poisoned") = Some(LastWrite { run_id, seq });
        Ok(values)
    }
}

/// Answers one request with its reply. A script error [`about_the_request`] is that
/// request's error; any other error means the partition is away and is returned (the
/// actor fails).
fn settle(answer: op::Answer, reply: Value) -> Result<(), ActorProcessingErr> {
    if let Value::ServerError(e) = &reply {
        if !about_the_request(e) {
            return Err(format!("Redis: {e:?}").into());
        }
        answer.send(Err(ItemError::new(format!("Redis script error: {e:?}"))));
        return Ok(());
    }
    answer.send(Ok(&reply));
    Ok(())
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
