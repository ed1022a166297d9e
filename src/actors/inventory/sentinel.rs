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

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentinelUrl {
    pub sentinels: Vec<String>,
    pub service: String,
    pub db: u32,
    pub password: Option<String>,
}

impl SentinelUrl {
    /// `None` when `url` is not a `redis+sentinel://` URL; an error when it is one
    /// that cannot be used.
    pub fn parse(url: &str) -> Option<Result<Self, String>> {
        let rest = url.strip_prefix("redis+sentinel://")?;
        Some(Self::parse_rest(rest))
    }

    fn parse_rest(rest: &str) -> Result<Self, String> {
        let (password, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => {
                let password = auth.rsplit(':').next().unwrap_or_default();
                ((!password.is_empty()).then(|| password.to_string()), rest)
            }
            None => (None, rest),
        };
        let mut parts = rest.split('/');
        let hosts = parts.next().unwrap_or_default();
        let sentinels: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| match h.contains(':') {
                true => h.to_string(),
                false => format!("{h}:26379"),
            })
            .collect();
        if sentinels.is_empty() {
            return Err("a redis+sentinel:// URL names at least one sentinel host:port".into());
        }
        let service = parts.next().unwrap_or_default().to_string();
        if service.is_empty() {
            return Err("a redis+sentinel:// URL names the monitored service after the hosts (redis+sentinel://host:26379/service/db)".into());
        }
        let db = match parts.next() {
            None | Some("") => 0,
            Some(n) => n
                .parse()
                .map_err(|_| format!("redis+sentinel:// database {n:?} is not a number"))?,
        };
        Ok(SentinelUrl {
            sentinels,
            service,
            db,
            password,
        })
    }

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
    fn sentinel_urls_name_hosts_service_and_database() {
        let u = SentinelUrl::parse("redis+sentinel://:pw@a:26379,b:26380,c/fs-p1/3")
            .unwrap()
            .unwrap();
        assert_eq!(u.sentinels, ["a:26379", "b:26380", "c:26379"]);
        assert_eq!(u.service, "fs-p1");
        assert_eq!(u.db, 3);
        assert_eq!(u.password.as_deref(), Some("pw"));
        let u = SentinelUrl::parse("redis+sentinel://127.0.0.1:26379/p")
            .unwrap()
            .unwrap();
        assert_eq!((u.db, u.password), (0, None));
        assert!(SentinelUrl::parse("redis://127.0.0.1:6379/0").is_none());
        assert!(SentinelUrl::parse("redis+sentinel://127.0.0.1:26379")
            .unwrap()
            .is_err());
        assert!(SentinelUrl::parse("redis+sentinel:///p").unwrap().is_err());
        assert!(SentinelUrl::parse("redis+sentinel://h/p/x")
            .unwrap()
            .is_err());
    }

    #[test]
    fn replication_info_gives_role_and_history_ids() {
        let info = "# Replication\r\nrole:master\r\nconnected_slaves:1\r\nmaster_replid:abc\r\nmaster_replid2:def\r\nmaster_repl_offset:10\r\n";
        let r = Replication::parse(info);
        assert_eq!(r.role, "master");
        assert_eq!(r.replid, "abc");
        assert_eq!(r.replid2, "def");
    }
}
