//! The supervisor tree and the machinery every actor runs on: child specifications
//! with exponential backoff and jitter, restart-intensity limits that escalate to the
//! parent, the live view of the tree that the admin API serves, slots (the stable,
//! bounded, typed inboxes) and the generic batching worker. Nothing here knows a
//! concrete actor: the actors depend on this module, never the other way round.

pub mod slot;
pub mod stats;
pub mod worker;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use ractor::{ActorCell, SpawnErr};
use ractor_supervisor::{
    ChildBackoffFn, ChildSpec, Restart, SpawnFn, Supervisor, SupervisorArguments,
    SupervisorOptions, SupervisorStrategy,
};
use serde::Serialize;

use crate::config::SupervisionSettings;
use stats::{Kind, NodeStats, Status};
use worker::{Connect, SlotOf, Worker};

/// Restart policy shared by every supervisor of one application.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_restarts: usize,
    pub window: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl From<&SupervisionSettings> for Policy {
    fn from(s: &SupervisionSettings) -> Self {
        Self {
            max_restarts: s.max_restarts,
            window: Duration::from_secs(s.window_secs),
            backoff_base: Duration::from_millis(s.backoff_base_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
        }
    }
}

impl Policy {
    /// Delay before the `n`th consecutive restart: base·2ⁿ⁻¹ capped at max, with up to
    /// 25% random jitter so that many actors do not reconnect in step.
    pub fn backoff(&self, restart: usize) -> Duration {
        let exp = restart.saturating_sub(1).min(20) as u32;
        let raw = self
            .backoff_base
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.backoff_max);
        let jitter = rand::random::<f64>() * 0.25;
        raw.mul_f64(1.0 + jitter)
    }

    /// The intensity limit scales with the number of children, so that one backend
    /// outage that fails every child of a subtree (all shards when PostgreSQL is down)
    /// is ridden out with backoff instead of escalating at once.
    fn options(&self, children: usize) -> SupervisorOptions {
        SupervisorOptions {
            strategy: SupervisorStrategy::OneForOne,
            max_restarts: self.max_restarts * children.max(1),
            max_window: self.window,
            reset_after: Some(self.window),
        }
    }
}

/// Names are stable for operators (`shard-0`) but unique in the process, so that
/// several applications (tests) can live in one process.
pub struct Namer {
    suffix: String,
    /// Shared by every node named here.
    pub quiesce: Arc<stats::Quiesce>,
}

impl Namer {
    pub fn new() -> Self {
        static INSTANCES: AtomicUsize = AtomicUsize::new(0);
        let n = INSTANCES.fetch_add(1, Ordering::Relaxed);
        let suffix = if n == 0 {
            String::new()
        } else {
            format!("#{n}")
        };
        Self {
            suffix,
            quiesce: Arc::default(),
        }
    }

    pub fn node(&self, name: &str, kind: Kind) -> Arc<NodeStats> {
        NodeStats::in_tree(
            name,
            format!("{name}{}", self.suffix),
            kind,
            self.quiesce.clone(),
        )
    }
}

impl Default for Namer {
    fn default() -> Self {
        Self::new()
    }
}

/// A node of the tree as the admin API and `flashsale tree` show it.
pub struct TreeNode {
    pub stats: Arc<NodeStats>,
    pub children: Vec<TreeNode>,
}

impl TreeNode {
    pub fn find(&self, name: &str) -> Option<&TreeNode> {
        if self.stats.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    pub fn view(&self, policy: &Policy) -> NodeView {
        let s = &self.stats;
        let status = match s.kind {
            Kind::Actor => s.status(),
            // Supervisors are read from ractor itself.
            Kind::Supervisor => match s.cell().map(|c| c.get_status()) {
                Some(ractor::ActorStatus::Running) => Status::Running,
                Some(ractor::ActorStatus::Starting | ractor::ActorStatus::Upgrading) => {
                    Status::Starting
                }
                Some(ractor::ActorStatus::Stopping) | Some(ractor::ActorStatus::Stopped)
                    if s.restarts() > 0 =>
                {
                    Status::Restarting
                }
                Some(_) => Status::Stopped,
                None => Status::Starting,
            },
        };
        let actor = (s.kind == Kind::Actor).then(|| ActorFields {
            mailbox: s.mailbox(),
            processed: s.processed(),
            last_error: s.last_error(),
            uptime_seconds: (s.uptime_seconds() * 10.0).round() / 10.0,
            replica: s.replica(),
        });
        let supervisor = (s.kind == Kind::Supervisor).then(|| SupervisorFields {
            strategy: "one_for_one",
            max_restarts: policy.max_restarts * self.children.len().max(1),
            window_seconds: policy.window.as_secs(),
        });
        NodeView {
            name: s.name.clone(),
            kind: s.kind,
            status,
            restarts: s.restarts(),
            actor,
            supervisor,
            children: self.children.iter().map(|c| c.view(policy)).collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub name: String,
    pub kind: Kind,
    pub status: Status,
    pub restarts: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub actor: Option<ActorFields>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<SupervisorFields>,
    pub children: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActorFields {
    pub mailbox: i64,
    pub processed: u64,
    pub last_error: Option<String>,
    pub uptime_seconds: f64,
    /// A shard's read replica, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<stats::ReplicaState>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorFields {
    pub strategy: &'static str,
    pub max_restarts: usize,
    pub window_seconds: u64,
}

/// A child of a supervisor: how to (re)start it, and its node in the live tree.
pub struct Child {
    pub spec: ChildSpec,
    pub node: TreeNode,
}

/// A leaf actor child: permanent (a stop for a restart request is restarted too),
/// with backoff, and counted in the node's stats.
pub fn leaf<F, Fut>(stats: Arc<NodeStats>, policy: &Policy, spawn: F) -> Child
where
    F: Fn(ActorCell, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
{
    let node = TreeNode {
        stats: stats.clone(),
        children: Vec::new(),
    };
    Child {
        spec: spec(stats, policy, spawn),
        node,
    }
}

fn spec<F, Fut>(stats: Arc<NodeStats>, policy: &Policy, spawn: F) -> ChildSpec
where
    F: Fn(ActorCell, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<ActorCell, SpawnErr>> + Send + 'static,
{
    let id = stats.actor_name.clone();
    let p = policy.clone();
    ChildSpec {
        id,
        restart: Restart::Permanent,
        spawn_fn: SpawnFn::new(move |cell, id| {
            stats.spawning();
            spawn(cell, id)
        }),
        backoff_fn: Some(ChildBackoffFn::new(move |_, n, _, _| Some(p.backoff(n)))),
        reset_after: Some(policy.window),
    }
}

/// A batching worker child serving `slot`.
pub fn worker<C: Connect>(
    slot: Arc<SlotOf<C>>,
    connect: Arc<C>,
    max_batch: usize,
    tick: Option<Duration>,
    policy: &Policy,
) -> Child {
    let stats = slot.stats.clone();
    leaf(stats, policy, move |cell, id| {
        let actor = Worker {
            connect: connect.clone(),
            slot: slot.clone(),
            max_batch,
            tick,
        };
        async move {
            let (r, _) = Supervisor::spawn_linked(id, actor, (), cell).await?;
            Ok(r.get_cell())
        }
        .boxed()
    })
}

/// A one_for_one supervisor child over `children`.
pub fn supervisor(stats: Arc<NodeStats>, policy: &Policy, children: Vec<Child>) -> Child {
    let (children, nodes): (Vec<ChildSpec>, Vec<TreeNode>) =
        children.into_iter().map(|c| (c.spec, c.node)).unzip();
    let p = policy.clone();
    let node = stats.clone();
    let tree = TreeNode {
        stats: stats.clone(),
        children: nodes,
    };
    let spec = spec(stats, policy, move |cell, id| {
        let args = SupervisorArguments {
            child_specs: children.clone(),
            options: p.options(children.len()),
        };
        let node = node.clone();
        async move {
            let (r, _) = Supervisor::spawn_linked(id, Supervisor, args, cell).await?;
            node.started(r.get_cell());
            Ok(r.get_cell())
        }
        .boxed()
    });
    Child { spec, node: tree }
}

/// The running root supervisor and the live tree under it.
pub struct Root {
    pub actor: ractor::ActorRef<ractor_supervisor::SupervisorMsg>,
    /// Ends when the whole tree has gone.
    pub done: tokio::task::JoinHandle<()>,
    pub tree: TreeNode,
}

/// Spawns the root supervisor over `children`.
pub async fn spawn_root(
    stats: Arc<NodeStats>,
    policy: &Policy,
    children: Vec<Child>,
) -> Result<Root, SpawnErr> {
    let (children, nodes): (Vec<ChildSpec>, Vec<TreeNode>) =
        children.into_iter().map(|c| (c.spec, c.node)).unzip();
    stats.spawning();
    let args = SupervisorArguments {
        options: policy.options(children.len()),
        child_specs: children,
    };
    let (actor, done) = Supervisor::spawn(stats.actor_name.clone(), args).await?;
    stats.started(actor.get_cell());
    let tree = TreeNode {
        stats,
        children: nodes,
    };
    Ok(Root { actor, done, tree })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_bounded_jitter() {
        let p = Policy {
            max_restarts: 3,
            window: Duration::from_secs(10),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        };
        for (n, base_ms) in [(1, 100u64), (2, 200), (3, 400), (5, 1600), (9, 2000)] {
            let d = p.backoff(n).as_millis() as u64;
            assert!(
                d >= base_ms && d <= base_ms * 5 / 4 + 1,
                "restart {n}: {d} ms"
            );
        }
    }
}
