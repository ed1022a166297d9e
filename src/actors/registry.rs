//! The pod registry: every pod keeps a row in the catalog database's `pods` table and
//! heartbeats it, so that any pod can show the whole fleet. The catalog database is
//! the one place every pod of every role already reaches (Redis partitions are the
//! api side's, and hold nothing that must outlive a restart); it is durable and
//! queryable, and in embedded mode the same code keeps a fleet of one in SQLite.
//!
//! Each heartbeat also says which inventory partitions the order messages the pod
//! holds are of ([`super::inflight`]): a partition that lost its state waits for them
//! before it rebuilds.
//!
//! A pod that stops deregisters (deletes its row, unless it still holds order
//! messages); a pod that dies stops heartbeating
//! and shows as `gone` once its heartbeat is older than `pod.gone_after_secs`; any pod's
//! heartbeat round deletes the rows older than `pod.forget_after_secs`. Heartbeats are
//! written with each pod's own clock, so the fleet's clocks are assumed in step to
//! well under `gone_after_secs` (NTP on every node); a heartbeat further ahead than that
//! is from no pod in step and would keep its row for ever: it shows as `gone` and the
//! next round deletes it.

use std::sync::Arc;

use ractor::ActorProcessingErr;
use serde::Serialize;
use sqlx::{AnyPool, Row};

use super::inflight::{self, InFlight};
use crate::db::{self, settle};
use crate::domain::now_ms;
use crate::supervisors::worker::{Backend, Batch, Connect, Tick};

/// What a pod says of itself.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub id: String,
    pub role: String,
    pub version: String,
    pub admin_url: String,
    pub started_at: i64,
}

/// A row of the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub id: String,
    pub role: String,
    pub version: String,
    pub admin_url: String,
    pub started_at: i64,
    pub heartbeat_at: i64,
    /// The inventory partitions of the order messages it held at that heartbeat
    /// (`None`: unknown, as from a pod that does not say).
    #[serde(skip)]
    pub in_flight: Option<Vec<usize>>,
}

/// Every registered pod, by id.
#[derive(Debug)]
pub struct ListPods;

/// Removes this pod's row (a clean stop).
#[derive(Debug)]
pub struct Deregister;

crate::protocol! {
    /// What the registry actor serves.
    pub enum RegistryMsg {
        ListPods(ListPods) -> Vec<PodRecord>,
        Deregister(Deregister) -> (),
    }
}

pub struct RegistryConnect {
    /// The catalog database, as sqlx `Any` opens it.
    pub url: String,
    pub pod: PodIdentity,
    pub forget_after_ms: i64,
    /// How far ahead of this pod's clock a heartbeat may be (`pod.gone_after_secs`).
    pub ahead_ms: i64,
    /// What this pod's order consumers hold, published with each heartbeat.
    pub in_flight: Arc<InFlight>,
}

pub struct Registry {
    pool: AnyPool,
    pod: PodIdentity,
    in_flight: Arc<InFlight>,
    forget_after_ms: i64,
    ahead_ms: i64,
    registered: bool,
}

#[ractor::async_trait]
impl Connect for RegistryConnect {
    type Backend = Registry;

    async fn connect(&self) -> Result<Registry, ActorProcessingErr> {
        let mut registry = Registry {
            pool: db::any_pool(&self.url, 1).await?,
            pod: self.pod.clone(),
            in_flight: self.in_flight.clone(),
            forget_after_ms: self.forget_after_ms,
            ahead_ms: self.ahead_ms,
            registered: false,
        };
        // Registered from the first moment, not one heartbeat later.
        registry.heartbeat().await?;
        Ok(registry)
    }
}

impl Registry {
    async fn heartbeat(&mut self) -> Result<(), sqlx::Error> {
        // Read before the clock: a message let go after this read was let go before
        // the heartbeat's time.
        let held = inflight::encode(&self.in_flight.held());
        let now = now_ms();
        let p = &self.pod;
        db::query(
            "INSERT INTO pods (id, role, version, admin_url, started_at, heartbeat_at, in_flight) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET role = $2, version = $3, admin_url = $4, \
             started_at = $5, heartbeat_at = $6, in_flight = $7",
        )
        .bind(p.id.as_str())
        .bind(p.role.as_str())
        .bind(p.version.as_str())
        .bind(p.admin_url.as_str())
        .bind(p.started_at)
        .bind(now)
        .bind(held)
        .execute(db::on(&self.pool))
        .await?;
        self.in_flight.published(now);
        let forgotten = db::query("DELETE FROM pods WHERE heartbeat_at < $1 OR heartbeat_at > $2")
            .bind(now - self.forget_after_ms)
            .bind(now + self.ahead_ms)
            .execute(db::on(&self.pool))
            .await?;
        if forgotten.rows_affected() > 0 {
            tracing::info!(
                pods = forgotten.rows_affected(),
                "forgot pods gone for long"
            );
        }
        self.registered = true;
        Ok(())
    }

    async fn list(&self) -> Result<Vec<PodRecord>, sqlx::Error> {
        let rows = db::query(
            "SELECT id, role, version, admin_url, started_at, heartbeat_at, in_flight FROM pods ORDER BY id",
        )
        .fetch_all(db::on(&self.pool))
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PodRecord {
                    id: r.try_get("id")?,
                    role: r.try_get("role")?,
                    version: r.try_get("version")?,
                    admin_url: r.try_get("admin_url")?,
                    started_at: r.try_get("started_at")?,
                    heartbeat_at: r.try_get("heartbeat_at")?,
                    in_flight: r
                        .try_get::<Option<String>, _>("in_flight")?
                        .and_then(|t| inflight::decode(&t).ok()),
                })
            })
            .collect()
    }

    async fn deregister(&mut self) -> Result<(), sqlx::Error> {
        // A pod that still holds order messages (read, not acknowledged: the broker
        // gives them back once it has closed the connection) leaves its row to age
        // out, so that a rebuild waits for them.
        if !self.in_flight.held().is_empty() {
            tracing::info!("order messages still held: the registry row is left to age out");
            return self.heartbeat().await;
        }
        db::query("DELETE FROM pods WHERE id = $1")
            .bind(self.pod.id.as_str())
            .execute(db::on(&self.pool))
            .await?;
        self.registered = false;
        Ok(())
    }
}

#[ractor::async_trait]
impl Backend for Registry {
    type Msg = RegistryMsg;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        for msg in batch {
            match msg {
                RegistryMsg::ListPods(_, port) => settle(port, self.list().await, "list pods")?,
                RegistryMsg::Deregister(_, port) => {
                    settle(port, self.deregister().await, "deregister")?
                }
            }
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        self.heartbeat().await?;
        Ok(Tick {
            processed: 1,
            again: false,
        })
    }
}
