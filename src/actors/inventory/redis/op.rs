//! One request as the Redis backend runs it: its command in the batch's pipeline, the
//! script that command calls, if any, and how the reply answers the caller.

use std::sync::LazyLock;

use redis::Value;

use super::bad;
use crate::supervisors::slot::{ItemError, ReplyPort};

/// The prologue every script shares: key names and the bookkeeping helpers.
const COMMON: &str = include_str!("lua/common.lua");

/// A Lua script run by its SHA1 (`EVALSHA`), with the common prologue before it. A
/// server that does not know it yet is sent it (`SCRIPT LOAD`) the first time a batch
/// calls it there.
pub struct Script {
    pub code: String,
    pub sha: String,
}

impl Script {
    pub fn new(body: &str) -> Script {
        let code = format!("{COMMON}{body}");
        let sha = redis::Script::new(&code).get_hash().to_string();
        Script { code, sha }
    }

    /// `EVALSHA` of this script with no keys and the partition's prefix as `ARGV[1]`;
    /// the caller adds the rest of its arguments.
    pub fn call(&'static self, prefix: &str) -> (redis::Cmd, Option<&'static Script>) {
        let mut c = redis::cmd("EVALSHA");
        c.arg(&self.sha).arg(0).arg(prefix);
        (c, Some(self))
    }
}

/// A script, made at its first use:
/// `static RESERVE: Lua = Lua::new(|| Script::new(include_str!("lua/reserve.lua")));`
pub type Lua = LazyLock<Script>;

/// A request on its way: what the pipeline sends, and what answers its caller.
pub struct Op {
    pub cmd: redis::Cmd,
    pub script: Option<&'static Script>,
    pub answer: Answer,
}

/// Sends a request's reply, read, to its caller.
pub struct Answer(Box<dyn FnOnce(Result<&Value, ItemError>) + Send>);

impl Answer {
    pub fn send(self, reply: Result<&Value, ItemError>) {
        (self.0)(reply)
    }
}

impl Op {
    /// An op whose reply is read by `read` and sent to `port`.
    pub fn new<T: Send + 'static>(
        (cmd, script): (redis::Cmd, Option<&'static Script>),
        port: ReplyPort<T>,
        read: impl FnOnce(&Value) -> Result<T, ItemError> + Send + 'static,
    ) -> Op {
        let answer = Answer(Box::new(move |reply: Result<&Value, ItemError>| {
            port.send(reply.and_then(read))
        }));
        Op {
            cmd,
            script,
            answer,
        }
    }

    /// A plain command (no script).
    pub fn command(cmd: redis::Cmd) -> (redis::Cmd, Option<&'static Script>) {
        (cmd, None)
    }
}

/// A reply that names one of `outcomes`.
pub fn named<T: Copy>(what: &str, v: &Value, outcomes: &[(&str, T)]) -> Result<T, ItemError> {
    let name = super::text(v).ok_or_else(|| bad(what, v))?;
    outcomes
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .ok_or_else(|| bad(what, v))
}
