//! Redis Sentinel: a partition URL may name a monitored primary instead of a server,
//! `redis+sentinel://[:password@]host:port[,host:port…]/service[/db]`. Each connect of
//! the partition asks the sentinels, in order, where the service's primary is now and
//! connects there; when the primary dies the partition actor fails, its supervisor
//! restarts it, and the next connect finds the promoted replica.
//!
//! The password, if any, is the data servers' (sentinels are asked without one).

use std::time::Duration;

use redis::Value;

/// How long one sentinel may take to answer before the next is asked.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// The URL is parsed with the settings (a `redis+sentinel://` URL is a kind of
/// [`crate::config::RedisUrl`]); asking its sentinels happens here.
pub use crate::config::SentinelUrl;

impl SentinelUrl {
    /// The `redis://` URL of the service's primary now, from the first sentinel that
    /// knows it.
    pub async fn primary(&self) -> Result<String, String> {
        let mut tried = Vec::new();
        for sentinel in &self.sentinels {
            match tokio::time::timeout(ASK_TIMEOUT, self.ask(sentinel)).await {
                Ok(Ok((host, port))) => {
                    let auth = match &self.password {
                        Some(p) => format!(":{p}@"),
                        None => String::new(),
                    };
                    return Ok(format!("redis://{auth}{host}:{port}/{}", self.db));
                }
                Ok(Err(e)) => tried.push(format!("{sentinel}: {e}")),
                Err(_) => tried.push(format!("{sentinel}: no answer within {ASK_TIMEOUT:?}")),
            }
        }
        Err(format!(
            "no sentinel knows the primary of {:?} ({})",
            self.service,
            tried.join("; ")
        ))
    }

    async fn ask(&self, sentinel: &str) -> Result<(String, u16), String> {
        let client =
            redis::Client::open(format!("redis://{sentinel}")).map_err(|e| e.to_string())?;
        let mut con = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        let v: Value = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.service)
            .query_async(&mut con)
            .await
            .map_err(|e| e.to_string())?;
        let text = |v: &Value| match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        match &v {
            Value::Array(items) if items.len() == 2 => {
                let host = text(&items[0]);
                let port = text(&items[1]).and_then(|p| p.parse().ok());
                match (host, port) {
                    (Some(host), Some(port)) => Ok((host, port)),
                    _ => Err(format!("unexpected answer {v:?}")),
                }
            }
            Value::Nil => Err("does not monitor this service".into()),
            _ => Err(format!("unexpected answer {v:?}")),
        }
    }
}

/// What `INFO replication` says of a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replication {
    pub role: String,
    /// The server's replication history id.
    pub replid: String,
    /// The id of the history it continues after a promotion (zeros when none).
    pub replid2: String,
}

impl Replication {
    pub async fn of(con: &mut redis::aio::MultiplexedConnection) -> redis::RedisResult<Self> {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(con)
            .await?;
        Ok(Self::parse(&info))
    }

    pub fn parse(info: &str) -> Self {
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
                .unwrap_or_default()
                .to_string()
        };
        Replication {
            role: field("role"),
            replid: field("master_replid"),
            replid2: field("master_replid2"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replication_info_gives_role_and_history_ids() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc\r\nmaster_replid2:def\r\nmaster_repl_offset:10\r\n";
        let r = Replication::parse(info);
        assert_eq!(r.role, "master");
        assert_eq!(r.replid, "abc");
        assert_eq!(r.replid2, "def");
    }
}
