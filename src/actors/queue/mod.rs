//! The order queue: publisher actors and consumer actors over a queue backend.
//! Cluster mode uses RabbitMQ ([`amqp`]: persistent messages on durable queues, many
//! publisher confirms in flight, prefetch); embedded mode a durable journal in SQLite
//! ([`local`]). Either way a consumer gets a batch, hands it to its handler, and
//! acknowledges the batch only after the handler's work has committed; a consumer
//! that fails or restarts gets its unacknowledged messages again.

pub mod amqp;
mod consumer;
pub mod local;

pub use consumer::{ConsumerMsg, ConsumerState, DeliveryHandler, QueueConsumer};

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
