//! The batching actor every backend runs in. It owns one backend connection, takes
//! requests from its slot's inbox a batch at a time (so one Redis pipeline or one
//! Postgres transaction serves everything that queued up meanwhile), and fails on a
//! backend error so that its supervisor reconnects it.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::slot::{Message, Slot, WorkerMsg};
use super::stats::Status;

/// The messages one round serves, oldest first.
pub type Batch<B> = Vec<<B as Backend>::Msg>;

/// What one kind of backend does with a batch of requests.
#[ractor::async_trait]
pub trait Backend: Send + 'static {
    /// The protocol it serves.
    type Msg: Message;

    /// Serves a batch, answering each message through its own port. A request that
    /// fails on its own is answered with an [`ItemError`](super::slot::ItemError) and
    /// the batch goes on. An `Err` means the backend itself is broken: the actor fails
    /// and is restarted; callers whose answers were dropped see `503`.
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

pub type SlotOf<C> = Slot<<<C as Connect>::Backend as Backend>::Msg>;

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
                // A stopping tree starts no new round (and schedules none).
                let Some(_round) = self.slot.stats.quiesce.begin() else {
                    return Ok(());
                };
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::supervisors::slot::{CallError, ReplyPort};
    use crate::supervisors::stats::{Kind, NodeStats};

    #[derive(Debug)]
    struct Job(u32);

    crate::protocol! {
        enum JobMsg {
            Job(Job) -> u32,
        }
    }

    /// Records the size of every batch; job 13 breaks the backend.
    struct Recorder {
        batches: Arc<Mutex<Vec<usize>>>,
        ticks: Arc<Mutex<u32>>,
    }

    #[ractor::async_trait]
    impl Backend for Recorder {
        type Msg = JobMsg;

        async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
            self.batches.lock().unwrap().push(batch.len());
            let mut answers: Vec<(ReplyPort<u32>, u32)> = Vec::new();
            for JobMsg::Job(Job(n), port) in batch {
                if n == 13 {
                    return Err("the backend broke".into());
                }
                answers.push((port, n + 1));
            }
            answers.into_iter().for_each(|(port, n)| port.ok(n));
            Ok(())
        }

        async fn tick(&mut self) -> Result<Tick, ActorProcessingErr> {
            *self.ticks.lock().unwrap() += 1;
            Ok(Tick {
                processed: 1,
                again: false,
            })
        }
    }

    struct RecorderConnect {
        batches: Arc<Mutex<Vec<usize>>>,
        ticks: Arc<Mutex<u32>>,
    }

    #[ractor::async_trait]
    impl Connect for RecorderConnect {
        type Backend = Recorder;
        async fn connect(&self) -> Result<Recorder, ActorProcessingErr> {
            Ok(Recorder {
                batches: self.batches.clone(),
                ticks: self.ticks.clone(),
            })
        }
    }

    /// A worker over a recorder, the batch sizes it saw and its tick count.
    type Recorded = (
        Worker<RecorderConnect>,
        Arc<Mutex<Vec<usize>>>,
        Arc<Mutex<u32>>,
    );

    fn setup(max_batch: usize, tick: Option<Duration>) -> Recorded {
        let stats = NodeStats::new(
            "recorder",
            format!("recorder-{}", uuid::Uuid::new_v4()),
            Kind::Actor,
        );
        let slot = Slot::new(stats, 100, Duration::from_secs(5));
        let batches = Arc::new(Mutex::new(Vec::new()));
        let ticks = Arc::new(Mutex::new(0));
        let connect = Arc::new(RecorderConnect {
            batches: batches.clone(),
            ticks: ticks.clone(),
        });
        let worker = Worker {
            connect,
            slot,
            max_batch,
            tick,
        };
        (worker, batches, ticks)
    }

    #[tokio::test]
    async fn what_queued_meanwhile_is_served_in_batches_of_at_most_max_batch() {
        let (worker, batches, _) = setup(4, None);
        let slot = worker.slot.clone();
        // Ten callers queue before the actor exists (as during a restart).
        let calls: Vec<_> = (0..10)
            .map(|n| {
                let slot = slot.clone();
                tokio::spawn(async move { slot.call(Job(n)).await })
            })
            .collect();
        while slot.stats.mailbox() < 10 {
            tokio::task::yield_now().await;
        }
        let (actor, handle) = Actor::spawn(None, worker, ()).await.unwrap();
        for (n, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap().unwrap(), n as u32 + 1);
        }
        assert_eq!(*batches.lock().unwrap(), vec![4, 4, 2]);
        assert_eq!(slot.stats.processed(), 10);
        assert_eq!(slot.stats.mailbox(), 0);
        actor.stop(None);
        handle.await.unwrap();
    }

    #[tokio::test]
    async fn a_broken_backend_fails_the_actor_and_its_batch_sees_unavailable() {
        let (worker, _, _) = setup(8, None);
        let slot = worker.slot.clone();
        let (_actor, handle) = Actor::spawn(None, worker, ()).await.unwrap();
        assert_eq!(slot.call(Job(1)).await.unwrap(), 2);
        assert!(matches!(
            slot.call(Job(13)).await,
            Err(CallError::Unavailable)
        ));
        handle.await.unwrap();
        assert_eq!(slot.stats.status(), Status::Failed);
        assert!(slot
            .stats
            .last_error()
            .unwrap()
            .contains("the backend broke"));
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_work_runs_every_period_after_the_previous_round() {
        let (worker, _, ticks) = setup(8, Some(Duration::from_millis(100)));
        let slot = worker.slot.clone();
        let (actor, handle) = Actor::spawn(None, worker, ()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(*ticks.lock().unwrap(), 3);
        assert_eq!(slot.stats.processed(), 3);
        actor.stop(None);
        handle.await.unwrap();
    }
}
