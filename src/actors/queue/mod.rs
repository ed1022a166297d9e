//! The order queue: publisher actors and consumer actors over a queue backend.
//! Cluster mode uses RabbitMQ ([`amqp`]: persistent messages on durable queues, many
//! publisher confirms in flight, prefetch); embedded mode a durable journal in SQLite
//! ([`local`]). Either way a consumer gets a batch, hands it to its handler, and
//! acknowledges the batch only after the handler's work has committed; a consumer
//! that fails or restarts gets its unacknowledged messages again.

pub mod amqp;
pub mod local;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::actors::inflight::Held;
use crate::supervisors::slot::{Message, ReplyPort};
use crate::supervisors::stats::{NodeStats, Status};

/// Publishes one message, persistently.
#[derive(Debug)]
pub struct Publish {
    pub queue: String,
    pub payload: Vec<u8>,
    /// Sent as the message's `traceparent` header too, for tools that read headers.
    pub traceparent: Option<String>,
}

/// Messages of a queue waiting to be delivered.
#[derive(Debug)]
pub struct QueueDepth {
    pub queue: String,
}

crate::protocol! {
    /// What a publisher serves: `true` once the queue has durably accepted the
    /// message, `false` when it refused.
    pub enum PublisherMsg {
        Publish(Publish) -> bool,
        Depth(QueueDepth) -> u64,
    }
}

/// A publisher's batch: the live publishes and, in the same order, where their
/// answers go; and the depth questions.
pub struct PublisherBatch {
    pub publishes: Vec<Publish>,
    pub ports: Vec<ReplyPort<bool>>,
    pub depths: Vec<(QueueDepth, ReplyPort<u64>)>,
}

impl PublisherMsg {
    pub fn split(batch: Vec<Self>) -> PublisherBatch {
        let mut split = PublisherBatch {
            publishes: Vec::new(),
            ports: Vec::new(),
            depths: Vec::new(),
        };
        for m in batch.into_iter().filter(|m| !m.abandoned()) {
            match m {
                PublisherMsg::Publish(request, port) => {
                    split.publishes.push(request);
                    split.ports.push(port);
                }
                PublisherMsg::Depth(request, port) => split.depths.push((request, port)),
            }
        }
        split
    }
}

/// One received message and what acknowledges it.
pub struct QueueMessage {
    pub payload: Vec<u8>,
    pub ack: AckToken,
}

pub enum AckToken {
    Amqp(lapin::Acker),
    Local(i64),
}

/// Publishing for a consumer's follow-up messages (confirmed before returning).
#[ractor::async_trait]
pub trait Outbound: Send + Sync {
    async fn publish(&self, messages: &[(&str, &[u8])]) -> Result<(), ActorProcessingErr>;
}

/// Acknowledges a processed batch.
#[ractor::async_trait]
pub trait Acknowledge: Send + Sync {
    async fn ack(&self, batch: &[QueueMessage]) -> Result<(), ActorProcessingErr>;

    /// Messages of `queue` waiting to be delivered.
    async fn depth(&self, queue: &str) -> Result<u64, ActorProcessingErr>;

    /// Gives every unacknowledged message back to the queue, and answers once the
    /// queue has them (the subscription ends).
    async fn give_back(&self) -> Result<(), ActorProcessingErr> {
        Ok(())
    }
}

/// An open subscription: batches of messages, and the means to answer them.
pub struct Subscription {
    pub batches: Batches,
    pub out: Box<dyn Outbound>,
    pub acker: Box<dyn Acknowledge>,
}

/// A batch and whatever must live as long as it does (the local queue's credit).
pub struct Batch {
    pub messages: Vec<QueueMessage>,
    pub guards: Vec<Box<dyn std::any::Any + Send>>,
    /// What the handler holds of each message until it is acknowledged
    /// ([`DeliveryHandler::hold`]).
    pub held: Vec<Held>,
}

impl Batch {
    pub fn new(messages: Vec<QueueMessage>, guards: Vec<Box<dyn std::any::Any + Send>>) -> Self {
        Self {
            messages,
            guards,
            held: Vec::new(),
        }
    }

    fn absorb(&mut self, more: Batch) {
        self.messages.extend(more.messages);
        self.guards.extend(more.guards);
        self.held.extend(more.held);
    }
}

type Batches = BoxStream<'static, Result<Batch, String>>;

/// What ended a subscription.
const STREAM_ENDED: &str = "the queue ended the subscription";

/// Gathers the consumer's next batch: waits for a first message, lingers up to
/// `linger` for more, then keeps taking what arrives until the consumer is `idle`
/// (done with its previous batch), until it holds `max` messages (a last chunk may
/// pass it; what is in hand is bounded by the prefetch either way). At a moderate rate one round
/// (one claim pipeline, one shard transaction, one confirm, one ack) then serves many
/// orders instead of one or two; under load the batches grow by themselves.
/// Answers the batch and, when the subscription ended meanwhile, why.
async fn gather(
    batches: &mut Batches,
    linger: Duration,
    max: usize,
    idle: &Arc<Semaphore>,
) -> (Option<Batch>, Option<String>) {
    let mut batch = match batches.next().await {
        Some(Ok(b)) => b,
        Some(Err(e)) => return (None, Some(e)),
        None => return (None, Some(STREAM_ENDED.into())),
    };
    let deadline = tokio::time::Instant::now() + linger;
    while batch.messages.len() < max {
        match tokio::time::timeout_at(deadline, batches.next()).await {
            Ok(Some(Ok(more))) => batch.absorb(more),
            Ok(Some(Err(e))) => return (Some(batch), Some(e)),
            Ok(None) => return (Some(batch), Some(STREAM_ENDED.into())),
            Err(_) => break,
        }
    }
    loop {
        tokio::select! {
            biased;
            permit = idle.clone().acquire_owned() => {
                // The consumer gives the permit back when it is done with this batch.
                if let Ok(p) = permit {
                    p.forget();
                }
                return (Some(batch), None);
            }
            more = batches.next(), if batch.messages.len() < max => match more {
                Some(Ok(more)) => batch.absorb(more),
                Some(Err(e)) => return (Some(batch), Some(e)),
                None => return (Some(batch), Some(STREAM_ENDED.into())),
            },
        }
    }
}

/// Opens subscriptions; called on every (re)start of a consumer.
#[ractor::async_trait]
pub trait QueueSource: Send + Sync + 'static {
    async fn subscribe(
        &self,
        consumer: &str,
        queue: &str,
        prefetch: u16,
        max_batch: usize,
    ) -> Result<Subscription, ActorProcessingErr>;
}

/// What a consumer does with a batch. On `Ok` (the number of items handled; a message
/// may carry several) the whole batch is acknowledged; on `Err` the consumer fails and
/// the batch is delivered again.
#[ractor::async_trait]
pub trait DeliveryHandler: Send + Sync + 'static {
    /// What the pod holds of a message from the moment its consumer reads it until
    /// it is acknowledged (see [`crate::actors::inflight`]); nothing by default.
    fn hold(&self, _payload: &[u8]) -> Option<Held> {
        None
    }

    async fn handle(
        &self,
        out: &dyn Outbound,
        batch: &[QueueMessage],
    ) -> Result<usize, ActorProcessingErr>;
}

pub enum ConsumerMsg {
    Batch(Batch),
    StreamEnded(String),
}

pub struct QueueConsumer<H> {
    pub stats: Arc<NodeStats>,
    pub source: Arc<dyn QueueSource>,
    pub queue: String,
    pub prefetch: u16,
    pub max_batch: usize,
    /// How long a batch waits for more messages after its first (`queue.linger_ms`).
    pub linger: Duration,
    pub handler: Arc<H>,
}

pub struct ConsumerState {
    out: Box<dyn Outbound>,
    acker: Box<dyn Acknowledge>,
    batches: Option<Batches>,
    reader: Option<JoinHandle<()>>,
    /// Released when the consumer is done with a batch: the reader hands over the next.
    idle: Arc<Semaphore>,
    depth_read: std::time::Instant,
    /// Set once the broker has every message this subscription held back.
    given_back: Arc<AtomicBool>,
}

impl Drop for ConsumerState {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
    }
}

#[ractor::async_trait]
impl<H: DeliveryHandler> Actor for QueueConsumer<H> {
    type Msg = ConsumerMsg;
    type State = ConsumerState;
    type Arguments = ();

    async fn pre_start(
        &self,
        _me: ActorRef<ConsumerMsg>,
        _: (),
    ) -> Result<ConsumerState, ActorProcessingErr> {
        self.stats.set_status(Status::Starting);
        self.stats.mailbox_reset();
        match self
            .source
            .subscribe(
                &self.stats.actor_name,
                &self.queue,
                self.prefetch,
                self.max_batch,
            )
            .await
        {
            Ok(s) => Ok(ConsumerState {
                out: s.out,
                acker: s.acker,
                batches: Some(s.batches),
                reader: None,
                idle: Arc::new(Semaphore::new(1)),
                depth_read: std::time::Instant::now() - std::time::Duration::from_secs(60),
                given_back: Arc::new(AtomicBool::new(false)),
            }),
            Err(e) => {
                self.stats.failed(&e);
                tracing::warn!(actor = %self.stats.name, error = %e, "cannot consume");
                Err(e)
            }
        }
    }

    async fn post_start(
        &self,
        me: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        // Each message is held from the moment it is read.
        let holder = self.handler.clone();
        let back = state.given_back.clone();
        let mut batches = state
            .batches
            .take()
            .expect("subscribed in pre_start")
            .map(move |b| {
                b.map(|mut b| {
                    let held = (b.messages.iter())
                        .filter_map(|m| holder.hold(&m.payload))
                        .map(|h| h.given_back_when(back.clone()));
                    b.held.extend(held);
                    b
                })
            })
            .boxed();
        let actor = me.clone();
        let stats = self.stats.clone();
        let (linger, max, idle) = (self.linger, self.max_batch, state.idle.clone());
        state.reader = Some(tokio::spawn(async move {
            loop {
                let (batch, ended) = gather(&mut batches, linger, max, &idle).await;
                if let Some(batch) = batch {
                    stats.mailbox_add(batch.messages.len() as i64);
                    if actor.cast(ConsumerMsg::Batch(batch)).is_err() {
                        return;
                    }
                }
                if let Some(why) = ended {
                    let _ = actor.cast(ConsumerMsg::StreamEnded(why));
                    return;
                }
            }
        }));
        self.stats.started(me.get_cell());
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<ConsumerMsg>,
        msg: ConsumerMsg,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let result = match msg {
            ConsumerMsg::Batch(batch) => {
                let n = batch.messages.len();
                self.stats.mailbox_add(-(n as i64));
                // Stopping: fetch nothing more; a batch not begun stays unacknowledged
                // and is redelivered (to another worker) once this consumer closes.
                let Some(_round) = self.stats.quiesce.begin() else {
                    if let Some(reader) = state.reader.take() {
                        reader.abort();
                    }
                    return Ok(());
                };
                metrics::histogram!("flashsale_actor_batch_size", "actor" => self.stats.name.clone()).record(n as f64);
                match self
                    .handler
                    .handle(state.out.as_ref(), &batch.messages)
                    .await
                {
                    Ok(items) => {
                        state.acker.ack(&batch.messages).await?;
                        batch.held.into_iter().for_each(Held::settle);
                        state.idle.add_permits(1);
                        self.stats.add_processed(items as u64);
                        if state.depth_read.elapsed() >= std::time::Duration::from_secs(1) {
                            state.depth_read = std::time::Instant::now();
                            // A gauge that cannot be read is not a reason to stop consuming.
                            match state.acker.depth(&self.queue).await {
                                Ok(depth) => metrics::gauge!("flashsale_queue_depth", "queue" => self.queue.clone())
                                    .set(depth as f64),
                                Err(e) => tracing::debug!(queue = %self.queue, error = %e, "queue depth unread"),
                            }
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            ConsumerMsg::StreamEnded(why) => Err(why.into()),
        };
        if let Err(e) = &result {
            // What this consumer held goes back to the queue now, not once the broker
            // notices the connection gone.
            if state.acker.give_back().await.is_ok() {
                state
                    .given_back
                    .store(true, std::sync::atomic::Ordering::SeqCst);
            }
            self.stats.failed(e);
            tracing::error!(actor = %self.stats.name, error = %e, "consumer failed; unacknowledged messages will be redelivered");
        }
        result
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        if state.acker.give_back().await.is_ok() {
            state
                .given_back
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.stats.stopped();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::sync::mpsc;

    use super::*;
    use crate::supervisors::stats::Kind;

    /// Hands out the receiving end of a channel the test feeds, once.
    struct Fed(Mutex<Option<mpsc::UnboundedReceiver<Result<Batch, String>>>>);

    fn stream(rx: mpsc::UnboundedReceiver<Result<Batch, String>>) -> Batches {
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
            .boxed()
    }

    struct NoAcks;

    #[ractor::async_trait]
    impl Acknowledge for NoAcks {
        async fn ack(&self, _batch: &[QueueMessage]) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn depth(&self, _queue: &str) -> Result<u64, ActorProcessingErr> {
            Ok(0)
        }
    }

    struct NoOut;

    #[ractor::async_trait]
    impl Outbound for NoOut {
        async fn publish(&self, _m: &[(&str, &[u8])]) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[ractor::async_trait]
    impl QueueSource for Fed {
        async fn subscribe(
            &self,
            _consumer: &str,
            _queue: &str,
            _prefetch: u16,
            _max_batch: usize,
        ) -> Result<Subscription, ActorProcessingErr> {
            let rx = self.0.lock().unwrap().take().expect("subscribed once");
            Ok(Subscription {
                batches: stream(rx),
                out: Box::new(NoOut),
                acker: Box::new(NoAcks),
            })
        }
    }

    /// Records the size of every batch it handles; each takes `work`.
    struct Sizes {
        seen: Mutex<Vec<usize>>,
        work: Duration,
    }

    #[ractor::async_trait]
    impl DeliveryHandler for Sizes {
        async fn handle(
            &self,
            _out: &dyn Outbound,
            batch: &[QueueMessage],
        ) -> Result<usize, ActorProcessingErr> {
            tokio::time::sleep(self.work).await;
            self.seen.lock().unwrap().push(batch.len());
            Ok(batch.len())
        }
    }

    fn one(id: i64) -> Result<Batch, String> {
        Ok(Batch::new(
            vec![QueueMessage {
                payload: id.to_string().into_bytes(),
                ack: AckToken::Local(id),
            }],
            Vec::new(),
        ))
    }

    /// Messages trickling in one at a time, `every` apart, to a consumer that lingers
    /// `linger` and spends `work` per batch; answers the batch sizes it handled.
    async fn trickle(n: i64, every: Duration, linger: Duration, work: Duration) -> Vec<usize> {
        let (tx, rx) = mpsc::unbounded_channel();
        let handler = Arc::new(Sizes {
            seen: Mutex::new(Vec::new()),
            work,
        });
        let consumer = QueueConsumer {
            stats: NodeStats::new("order-consumer-0", "test-consumer".into(), Kind::Actor),
            source: Arc::new(Fed(Mutex::new(Some(rx)))),
            queue: "orders".into(),
            prefetch: 100,
            max_batch: 100,
            linger,
            handler: handler.clone(),
        };
        let (actor, _) = Actor::spawn(None, consumer, ()).await.unwrap();
        for id in 0..n {
            tx.send(one(id)).unwrap();
            tokio::time::sleep(every).await;
        }
        while handler.seen.lock().unwrap().iter().sum::<usize>() < n as usize {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        actor.stop(None);
        let seen = handler.seen.lock().unwrap().clone();
        seen
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_of_messages_is_handled_in_few_rounds() {
        // 40 messages 2 ms apart, a linger of 20 ms: rounds of about ten, not of one.
        let sizes = trickle(
            40,
            Duration::from_millis(2),
            Duration::from_millis(20),
            Duration::ZERO,
        )
        .await;
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.len() <= 6, "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn what_arrives_during_a_round_is_the_next_round() {
        // No linger, but each round takes 30 ms: the messages that arrived meanwhile
        // are handled together, in one round, not one round each.
        let sizes = trickle(
            40,
            Duration::from_millis(2),
            Duration::ZERO,
            Duration::from_millis(30),
        )
        .await;
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.len() <= 6, "{sizes:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_message_waits_no_longer_than_the_linger() {
        let started = tokio::time::Instant::now();
        let sizes = trickle(1, Duration::ZERO, Duration::from_millis(20), Duration::ZERO).await;
        assert_eq!(sizes, vec![1]);
        assert!(
            started.elapsed() < Duration::from_millis(40),
            "{:?}",
            started.elapsed()
        );
    }
}
