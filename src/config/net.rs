//! Addresses and URLs as typed values, parsed once when the settings are read: address
//! ranges ([`IpNet`]), `http(s)://` URLs ([`HttpUrl`]), listen addresses, and the
//! checks of the PostgreSQL and AMQP URLs that stay strings (and secrets) in
//! [`super::Settings`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// An address range in CIDR notation (`10.0.0.0/8`, `fd00::/8`); a lone address is the
/// range of that address alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        use std::net::IpAddr::{V4, V6};
        // An IPv4 peer may arrive as an IPv4-mapped IPv6 address (a dual-stack listener).
        let ip = match ip {
            V6(v6) => v6.to_ipv4_mapped().map_or(ip, V4),
            v4 => v4,
        };
        // Both as the top bits of 128, so that the prefix counts from the left.
        let bits = |a: IpAddr| match a {
            V4(a) => (u128::from(u32::from(a)) << 96, true),
            V6(a) => (u128::from(a), false),
        };
        let ((net, v4), (ip, ip_v4)) = (bits(self.addr), bits(ip));
        if v4 != ip_v4 {
            return false;
        }
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        net & mask == ip & mask
    }
}

impl TryFrom<String> for IpNet {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not an IP address or a CIDR range such as 10.0.0.0/8");
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let most = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= most)
                .ok_or_else(bad)?,
            None => most,
        };
        Ok(IpNet { addr, prefix })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An `http://` or `https://` URL. It reads as the text it was given (`&url` is a
/// `&str`), so a caller that wants a string needs no change.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(url: &str) -> Result<Self, String> {
        match url.starts_with("http://") || url.starts_with("https://") {
            true => Ok(Self(url.to_string())),
            false => Err(format!("{url:?} is not an http:// or https:// URL")),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for HttpUrl {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl std::ops::Deref for HttpUrl {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A listener's address: `HOST:PORT` with a numeric host (port 0: any free port).
pub fn listen_addr(what: &str, addr: &str) -> Result<SocketAddr, String> {
    addr.parse()
        .map_err(|_| format!("{what} must be HOST:PORT with a numeric host, got {addr:?}"))
}

/// Whether `url` names a PostgreSQL database (`postgres://` or `postgresql://`).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// An `amqp://` URL as the AMQP client reads it; `what` names the setting.
pub fn amqp_url(what: &str, url: &str) -> Result<lapin::uri::AMQPUri, String> {
    if !url.starts_with("amqp://") {
        return Err(format!("{what} must be an amqp:// URL"));
    }
    url.parse()
        .map_err(|e| format!("{what} is not an AMQP URL: {e}"))
}
