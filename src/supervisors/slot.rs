//! A slot is the one stable address of a batching actor: a bounded inbox that
//! outlives actor restarts, plus the current actor, which supervisors set on every
//! (re)start. Callers never hold an actor reference themselves.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use ractor::ActorRef;
use tokio::sync::oneshot;

use super::stats::NodeStats;

/// Control messages of a batching actor; the work itself waits in the slot's inbox.
#[derive(Debug)]
pub enum WorkerMsg {
    /// Take the next batch from the inbox.
    Flush,
    /// Periodic work, for actors that have some.
    Tick,
}

/// Why a call into an actor did not produce an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("the actor's inbox is full")]
    Overloaded,
    #[error("the actor did not answer in time or is restarting")]
    Unavailable,
}

/// One queued request: the operation and, when the caller waits, where to answer.
pub struct Envelope<Op, Reply> {
    pub op: Op,
    pub reply: Option<oneshot::Sender<Reply>>,
}

impl<Op, Reply> Envelope<Op, Reply> {
    /// The caller stopped waiting (its deadline passed); the work can be skipped.
    pub fn abandoned(&self) -> bool {
        self.reply.as_ref().is_some_and(|r| r.is_closed())
    }

    pub fn answer(self, reply: Reply) {
        if let Some(tx) = self.reply {
            let _ = tx.send(reply);
        }
    }
}

pub struct Slot<Op, Reply> {
    queue: Mutex<VecDeque<Envelope<Op, Reply>>>,
    capacity: usize,
    timeout: Duration,
    actor: RwLock<Option<ActorRef<WorkerMsg>>>,
    pub stats: Arc<NodeStats>,
}

impl<Op: Send + 'static, Reply: Send + 'static> Slot<Op, Reply> {
    pub fn new(stats: Arc<NodeStats>, capacity: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::new(VecDeque::new()),
            capacity,
            timeout,
            actor: RwLock::new(None),
            stats,
        })
    }

    /// Records the actor now serving this slot and wakes it for queued work.
    pub fn attach(&self, actor: ActorRef<WorkerMsg>) {
        *self.actor.write().unwrap() = Some(actor.clone());
        let _ = actor.cast(WorkerMsg::Flush);
    }

    fn wake(&self) {
        if let Some(actor) = self.actor.read().unwrap().as_ref() {
            // A failed send means the actor is restarting; its successor flushes at start.
            let _ = actor.cast(WorkerMsg::Flush);
        }
    }

    fn push(&self, envelope: Envelope<Op, Reply>, bounded: bool) -> Result<(), CallError> {
        let was_empty = {
            let mut q = self.queue.lock().unwrap();
            if bounded && q.len() >= self.capacity {
                return Err(CallError::Overloaded);
            }
            q.push_back(envelope);
            q.len() == 1
        };
        self.stats.mailbox_add(1);
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Asks and waits for the answer, within the slot's deadline.
    pub async fn call(&self, op: Op) -> Result<Reply, CallError> {
        let (tx, rx) = oneshot::channel();
        self.push(
            Envelope {
                op,
                reply: Some(tx),
            },
            true,
        )?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(CallError::Unavailable),
        }
    }

    /// Queues work nobody waits for. It is bounded by the work that caused it.
    pub fn tell(&self, op: Op) {
        let _ = self.push(Envelope { op, reply: None }, false);
    }

    /// Takes up to `max` queued requests, oldest first.
    pub fn take(&self, max: usize) -> Vec<Envelope<Op, Reply>> {
        let batch: Vec<_> = {
            let mut q = self.queue.lock().unwrap();
            let n = q.len().min(max);
            q.drain(..n).collect()
        };
        self.stats.mailbox_add(-(batch.len() as i64));
        batch
    }

    pub fn has_work(&self) -> bool {
        !self.queue.lock().unwrap().is_empty()
    }
}
