//! `[pod]`: how this process appears in the fleet registry (the catalog database's
//! `pods` table), and how long the fleet waits on a pod that went silent.

use serde::Deserialize;

use super::net::{HttpUrl, IpNet};
use super::{invalid, ConfigError, Settings};

/// How this process appears in the fleet registry: its id, the admin URL other pods
/// reach it at, and how often it heartbeats.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSettings {
    /// Empty: hostname-pid.
    pub id: String,
    /// Empty: `http://` + the admin listener's address (the hostname when it listens on
    /// every interface).
    pub admin_url: String,
    pub heartbeat_secs: u64,
    /// A pod whose heartbeat is older than this shows as `gone`.
    pub gone_after_secs: u64,
    /// A gone pod is forgotten (its row deleted) after this long.
    pub forget_after_secs: u64,
    /// Where another pod's admin API may be: the fleet view sends the admin token only
    /// to an admin URL whose host is (or resolves only to) addresses in these ranges.
    pub peer_networks: Vec<IpNet>,
}

impl PodSettings {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.admin_url.is_empty() && HttpUrl::parse(&self.admin_url).is_err() {
            return invalid("pod.admin_url must be an http:// or https:// URL");
        }
        if self.id.len() > 200 || self.id.contains(|c: char| c == '/' || c.is_whitespace()) {
            return invalid("pod.id must be at most 200 characters, without spaces or slashes");
        }
        if self.heartbeat_secs == 0 || self.gone_after_secs <= self.heartbeat_secs {
            return invalid(format!(
                "pod.gone_after_secs ({}) must be above pod.heartbeat_secs ({}), which must be above zero",
                self.gone_after_secs, self.heartbeat_secs
            ));
        }
        if self.forget_after_secs < self.gone_after_secs {
            return invalid("pod.forget_after_secs must not be below pod.gone_after_secs");
        }
        Ok(())
    }
}

/// How far apart the fleet's clocks may be (NTP keeps them far closer): a heartbeat
/// counts as later than a moment on another pod's clock only this much later.
pub const CLOCK_SKEW_MS: i64 = 1_000;

/// How long the fleet's silences last, for a rebuild that waits on what pods hold
/// ([`crate::actors::inflight`]).
#[derive(Debug, Clone, Copy)]
pub struct InFlightTiming {
    /// A message given up is held this long: RabbitMQ closes a connection silent for
    /// 2 to 3 heartbeat timeouts and only then gives back what it held.
    pub give_back: std::time::Duration,
    /// A pod whose registry has not published for this long takes no more orders
    /// (its consumers fail, and the broker takes their messages back).
    pub unheard_after_ms: i64,
    /// A pod silent for this long since its last heartbeat holds nothing: frozen (a
    /// heartbeat's interval at most after its last one), or alive but unheard (it
    /// stopped taking orders, its batch under way ends within a call's deadline),
    /// then given back by the broker.
    pub released_after_ms: i64,
}

impl Settings {
    pub fn in_flight_timing(&self) -> InFlightTiming {
        let give_back = 3 * self.queue.heartbeat_secs as i64 * 1000 + CLOCK_SKEW_MS;
        let p = &self.pod;
        let unheard_after_ms = p.gone_after_secs as i64 * 1000;
        let stopping = unheard_after_ms + self.limits.call_timeout_ms as i64;
        let silent = (p.heartbeat_secs as i64 * 1000).max(stopping);
        InFlightTiming {
            give_back: std::time::Duration::from_millis(give_back as u64),
            unheard_after_ms,
            released_after_ms: silent + give_back,
        }
    }
}
