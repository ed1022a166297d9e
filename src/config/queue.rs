//! `[queue]`: the RabbitMQ queues of cluster mode (embedded mode keeps a local journal),
//! their publishers and consumers.

use serde::Deserialize;

use super::net::amqp_url;
use super::{invalid, positive, ConfigError, Secret};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub url: Secret,
    /// The type of queue declared: quorum (replicated, RabbitMQ's choice for data that
    /// must not be lost) or classic. A queue that exists already keeps its type.
    pub kind: QueueKind,
    pub orders_queue: String,
    pub notifications_queue: String,
    pub prefetch: u16,
    pub publishers: usize,
    pub order_consumers: usize,
    pub notification_consumers: usize,
    pub max_batch: usize,
    /// How long a consumer's batch waits for more messages after its first: at a
    /// moderate rate one round then persists many orders (one claim pipeline, one shard
    /// transaction, one confirm, one acknowledgement) instead of one or two. It delays
    /// persistence, never the buyer's answer.
    pub linger_ms: u64,
    /// How long the broker may take to connect, confirm or acknowledge before the
    /// actor waiting on it fails (and is restarted).
    pub deadline_ms: u64,
    /// The AMQP heartbeat timeout every connection asks for (it overrides one in
    /// `url`). The broker closes a connection silent for about this long and gives
    /// what its consumers held back to the queue; a partition that lost its state
    /// counts on that for a pod that stopped answering (a frozen VM, SIGSTOP).
    pub heartbeat_secs: u64,
}

impl QueueSettings {
    /// The URL and the heartbeat are checked in cluster mode only (embedded mode has no
    /// broker).
    pub fn validate(&self, cluster: bool) -> Result<(), ConfigError> {
        if cluster {
            amqp_url("queue.url", self.url.expose()).or_else(invalid)?;
            if !(1..=600).contains(&self.heartbeat_secs) {
                return invalid("queue.heartbeat_secs must be between 1 and 600");
            }
        }
        positive(&[
            ("queue.publishers", self.publishers as u64),
            ("queue.order_consumers", self.order_consumers as u64),
            (
                "queue.notification_consumers",
                self.notification_consumers as u64,
            ),
            ("queue.max_batch", self.max_batch as u64),
            ("queue.deadline_ms", self.deadline_ms),
            ("queue.prefetch", u64::from(self.prefetch)),
        ])?;
        if usize::from(self.prefetch) > self.max_batch {
            return invalid("queue.prefetch must not be above queue.max_batch: a consumer reads every message it is sent");
        }
        Ok(())
    }

    /// `url` with the heartbeat timeout this deployment counts on, and frames of at
    /// most [`AMQP_FRAME_MAX`] unless the URL asks for its own `frame_max`.
    pub fn amqp_url(&self) -> String {
        match self.url.expose().parse::<lapin::uri::AMQPUri>() {
            Ok(mut uri) => {
                uri.query.heartbeat = Some(self.heartbeat_secs as u16);
                uri.query.frame_max.get_or_insert(AMQP_FRAME_MAX);
                uri.to_string()
            }
            // Checked at start: reached only by settings that were never validated.
            Err(_) => self.url.expose().to_string(),
        }
    }
}

/// The largest AMQP frame asked for. The client keeps two buffers of 32 frames per
/// connection for their whole life: 8 MiB a connection at RabbitMQ's 128 KiB, 1 MiB at
/// this. Orders and notifications are far smaller; a larger message takes several frames.
pub const AMQP_FRAME_MAX: u32 = 16 * 1024;

/// The type of a RabbitMQ queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    Quorum,
    Classic,
}

impl QueueKind {
    pub fn name(self) -> &'static str {
        match self {
            QueueKind::Quorum => "quorum",
            QueueKind::Classic => "classic",
        }
    }

    pub fn other(self) -> QueueKind {
        match self {
            QueueKind::Quorum => QueueKind::Classic,
            QueueKind::Classic => QueueKind::Quorum,
        }
    }
}
