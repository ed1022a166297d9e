//! The batching actor every backend runs in. It owns one backend connection, takes
//! requests from its slot's inbox a batch at a time (so one Redis pipeline or one
//! Postgres transaction serves everything that queued up meanwhile), and fails on a
//! backend error so that its supervisor reconnects it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::supervisors::slot::{Envelope, Slot, WorkerMsg};
use crate::supervisors::stats::Status;

pub type Batch<B> = Vec<Envelope<<B as Backend>::Op, <B as Backend>::Reply>>;

/// What one kind of backend does with a batch of requests.
#[ractor::async_trait]
pub trait Backend: Send + 'static {
    type Op: Send + 'static;
    type Reply: Send + 'static;

    /// Serves a batch. An `Err` means the backend is broken: the actor fails and is
    /// restarted; callers whose answers were dropped see `503`.
    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr>;

    /// What a served batch of `requests` adds to the actor's `processed` count: the
    /// requests themselves, unless the backend counts something else.
    fn counted(&mut self, requests: u64) -> u64 {
        requests
    }

    /// Periodic work, run `Worker::tick` after the previous round ended (at once when
    /// that round said there is more to do).
    async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
        Ok(Tick::idle())
    }
}

/// What one round of periodic work did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Items handled, added to the actor's `processed`.
    pub processed: u64,
    /// More is waiting: run the next round at once.
    pub again: bool,
}

impl Tick {
    pub fn idle() -> Self {
        Self::default()
    }
}

/// Opens a backend; called on every (re)start of the actor.
#[ractor::async_trait]
pub trait Connect: Send + Sync + 'static {
    type Backend: Backend;
    async fn connect(&self) -> Result<Self::Backend, ActorProcessingErr>;
}

pub type SlotOf<C> =
    Slot<<<C as Connect>::Backend as Backend>::Op, <<C as Connect>::Backend as Backend>::Reply>;

pub struct Worker<C: Connect> {
    pub connect: Arc<C>,
    pub slot: Arc<SlotOf<C>>,
    pub max_batch: usize,
    pub tick: Option<Duration>,
}

pub struct WorkerState<B> {
    backend: B,
}

#[ractor::async_trait]
impl<C: Connect> Actor for Worker<C> {
    type Msg = WorkerMsg;
    type State = WorkerState<C::Backend>;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<WorkerMsg>,
        _: (),
    ) -> Result<Self::State, ActorProcessingErr> {
        self.slot.stats.set_status(Status::Starting);
        match self.connect.connect().await {
            Ok(backend) => Ok(WorkerState { backend }),
            Err(e) => {
                self.slot.stats.failed(&e);
                tracing::warn!(actor = %self.slot.stats.name, error = %e, "cannot connect");
                Err(e)
            }
        }
    }

    async fn post_start(
        &self,
        myself: ActorRef<WorkerMsg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.slot.stats.started(myself.get_cell());
        if let Some(period) = self.tick {
            myself.send_after(period, || WorkerMsg::Tick);
        }
        self.slot.attach(myself);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let result = match msg {
            WorkerMsg::Flush => {
                let batch = self.slot.take(self.max_batch);
                let n = batch.len() as u64;
                if n == 0 {
                    return Ok(());
                }
                metrics::histogram!("flashsale_actor_batch_size", "actor" => self.slot.stats.name.clone())
                    .record(n as f64);
                let r = state.backend.process(batch).await;
                if r.is_ok() {
                    self.slot.stats.add_processed(state.backend.counted(n));
                    if self.slot.has_work() {
                        // Behind any control message that arrived meanwhile.
                        let _ = myself.cast(WorkerMsg::Flush);
                    }
                }
                r
            }
            WorkerMsg::Tick => {
                let r = state.backend.tick().await;
                if let Ok(done) = &r {
                    self.slot.stats.add_processed(done.processed);
                    if let Some(period) = self.tick {
                        // The next round is timed from the end of this one, so a slow
                        // round never piles rounds up in the mailbox.
                        let wait = if done.again { Duration::ZERO } else { period };
                        myself.send_after(wait, || WorkerMsg::Tick);
                    }
                }
                r.map(|_| ())
            }
        };
        if let Err(e) = &result {
            self.slot.stats.failed(e);
            tracing::error!(actor = %self.slot.stats.name, error = %e, "backend failed; the supervisor restarts the actor");
        }
        result
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<WorkerMsg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        self.slot.stats.stopped();
        Ok(())
    }
}
