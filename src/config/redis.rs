//! Redis URLs, parsed once: a partition's server (`redis://`) or the primary a set of
//! Sentinels monitors (`redis+sentinel://`). Asking the Sentinels where that primary is
//! belongs to the inventory actors (`actors/inventory/sentinel.rs`).

/// A partition's Redis, as `inventory.urls` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisUrl {
    /// A `redis://` URL, as the Redis client takes it.
    Direct(String),
    /// A `redis+sentinel://` URL: the primary its Sentinels know.
    Sentinel(SentinelUrl),
}

impl RedisUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        match SentinelUrl::parse(url) {
            Some(sentinel) => sentinel.map(RedisUrl::Sentinel),
            None if url.starts_with("redis://") => Ok(RedisUrl::Direct(url.to_string())),
            None => Err("every entry must be a redis:// or redis+sentinel:// URL".into()),
        }
    }
}

/// A parsed `redis+sentinel://[:password@]host:port[,host:port…]/service[/db]` URL.
/// The password, if any, is the data servers' (sentinels are asked without one).
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
    fn redis_urls_are_a_server_or_a_monitored_primary() {
        let direct = RedisUrl::parse("redis://cache:6379/0").unwrap();
        assert_eq!(direct, RedisUrl::Direct("redis://cache:6379/0".into()));
        let RedisUrl::Sentinel(s) = RedisUrl::parse("redis+sentinel://a,b/fs/2").unwrap() else {
            panic!("a redis+sentinel:// URL names a monitored primary");
        };
        assert_eq!((s.service.as_str(), s.db), ("fs", 2));
        let err = RedisUrl::parse("rediss://cache").unwrap_err();
        assert!(err.contains("redis:// or redis+sentinel://"), "{err}");
        let err = RedisUrl::parse("redis+sentinel://h:26379").unwrap_err();
        assert!(err.contains("names the monitored service"), "{err}");
    }
}
