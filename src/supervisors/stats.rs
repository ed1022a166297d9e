//! Live facts about each node of the supervisor tree, shared between the actors (who
//! write them) and the admin API (which reads them). A node's stats outlive the actor
//! instances that come and go under its name.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ractor::ActorCell;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Starting,
    Running,
    Restarting,
    Stopped,
    Failed,
}

impl Status {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Status::Starting,
            1 => Status::Running,
            2 => Status::Restarting,
            3 => Status::Stopped,
            _ => Status::Failed,
        }
    }
    fn to_u8(self) -> u8 {
        match self {
            Status::Starting => 0,
            Status::Running => 1,
            Status::Restarting => 2,
            Status::Stopped => 3,
            Status::Failed => 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Supervisor,
    Actor,
}

/// Whether the tree is winding down, shared by every node of one application. Once
/// stopping, actors that pull work themselves (queue consumers, periodic rounds) start
/// no new round; the rounds under way finish, and a stop waits for them.
#[derive(Debug, Default)]
pub struct Quiesce {
    stopping: AtomicBool,
    busy: AtomicI64,
}

/// A round of work under way; ends when dropped.
pub struct Busy<'a>(&'a Quiesce);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Quiesce {
    /// Starts a round, unless the tree is stopping.
    pub fn begin(&self) -> Option<Busy<'_>> {
        // Counted before the check: a stop that sets the flag afterwards sees it.
        self.busy.fetch_add(1, Ordering::SeqCst);
        if self.stopping.load(Ordering::SeqCst) {
            self.busy.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Busy(self))
    }

    /// No new rounds from now on; answers how many are under way.
    pub fn stop(&self) -> i64 {
        self.stopping.store(true, Ordering::SeqCst);
        self.busy()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Rounds under way.
    pub fn busy(&self) -> i64 {
        self.busy.load(Ordering::SeqCst).max(0)
    }
}

/// The stats of one named node.
pub struct NodeStats {
    /// The stable name shown to operators (`shard-0`).
    pub name: String,
    /// The process-unique name the actor is registered under.
    pub actor_name: String,
    pub kind: Kind,
    status: AtomicU8,
    spawns: AtomicU64,
    processed: AtomicU64,
    mailbox: AtomicI64,
    last_error: Mutex<Option<String>>,
    started: Mutex<Option<Instant>>,
    cell: Mutex<Option<ActorCell>>,
    /// The application's: see [`Quiesce`].
    pub quiesce: Arc<Quiesce>,
    replica: Mutex<Option<ReplicaState>>,
}

/// What a shard's read replica looks like from the shard, for the tree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaState {
    /// It answers.
    pub up: bool,
    /// How far its replay is behind what it received, in seconds.
    pub lag_seconds: f64,
    /// Reads go there now (up, and the lag within its bound).
    pub serving: bool,
}

impl NodeStats {
    pub fn new(name: &str, actor_name: String, kind: Kind) -> Arc<Self> {
        Self::in_tree(name, actor_name, kind, Arc::default())
    }

    /// A node of the tree whose stop is `quiesce`. Its restart counter is exported at
    /// zero from the start, so that an alert on its increase sees the first restart.
    pub fn in_tree(name: &str, actor_name: String, kind: Kind, quiesce: Arc<Quiesce>) -> Arc<Self> {
        metrics::counter!("flashsale_actor_restarts_total", "actor" => name.to_string())
            .increment(0);
        Arc::new(Self {
            quiesce,
            name: name.to_string(),
            actor_name,
            kind,
            status: AtomicU8::new(Status::Starting.to_u8()),
            spawns: AtomicU64::new(0),
            processed: AtomicU64::new(0),
            mailbox: AtomicI64::new(0),
            last_error: Mutex::new(None),
            started: Mutex::new(None),
            cell: Mutex::new(None),
            replica: Mutex::new(None),
        })
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.status.load(Ordering::Relaxed))
    }

    pub fn set_status(&self, status: Status) {
        self.status.store(status.to_u8(), Ordering::Relaxed);
    }

    /// Called before each spawn of this node; every spawn after the first is a restart.
    pub fn spawning(&self) {
        if self.spawns.fetch_add(1, Ordering::Relaxed) > 0 {
            self.set_status(Status::Restarting);
            metrics::counter!("flashsale_actor_restarts_total", "actor" => self.name.clone())
                .increment(1);
        }
    }

    pub fn restarts(&self) -> u64 {
        self.spawns.load(Ordering::Relaxed).saturating_sub(1)
    }

    pub fn started(&self, cell: ActorCell) {
        *self.started.lock().unwrap() = Some(Instant::now());
        *self.cell.lock().unwrap() = Some(cell);
        self.set_status(Status::Running);
    }

    pub fn stopped(&self) {
        *self.started.lock().unwrap() = None;
        if self.status() != Status::Failed {
            self.set_status(Status::Stopped);
        }
    }

    pub fn failed(&self, error: &dyn std::fmt::Display) {
        *self.last_error.lock().unwrap() = Some(error.to_string());
        *self.started.lock().unwrap() = None;
        self.set_status(Status::Failed);
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.started
            .lock()
            .unwrap()
            .map(|t| t.elapsed().as_secs_f64())
            .unwrap_or(0.0)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap().clone()
    }

    pub fn add_processed(&self, n: u64) {
        self.processed.fetch_add(n, Ordering::Relaxed);
    }

    pub fn processed(&self) -> u64 {
        self.processed.load(Ordering::Relaxed)
    }

    pub fn mailbox_add(&self, n: i64) {
        self.mailbox.fetch_add(n, Ordering::Relaxed);
    }

    /// For mailboxes that die with the actor (queued messages of a stopped consumer).
    pub fn mailbox_reset(&self) {
        self.mailbox.store(0, Ordering::Relaxed);
    }

    pub fn mailbox(&self) -> i64 {
        self.mailbox.load(Ordering::Relaxed).max(0)
    }

    /// The node's read replica (shards that have one), as its monitor last saw it.
    pub fn set_replica(&self, state: ReplicaState) {
        *self.replica.lock().unwrap() = Some(state);
    }

    pub fn replica(&self) -> Option<ReplicaState> {
        *self.replica.lock().unwrap()
    }

    pub fn cell(&self) -> Option<ActorCell> {
        self.cell.lock().unwrap().clone()
    }

    /// Whether the node is up and serving right now.
    pub fn is_running(&self) -> bool {
        self.status() == Status::Running
            && self
                .cell()
                .is_some_and(|c| c.get_status() == ractor::ActorStatus::Running)
    }
}
