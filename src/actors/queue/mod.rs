//! The order queue: publisher actors and consumer actors over a queue backend.
//! Cluster mode uses RabbitMQ ([`amqp`]: persistent messages on durable queues, many
//! publisher confirms in flight, prefetch); embedded mode a durable journal in SQLite
//! ([`local`]). Either way a consumer gets a batch, hands it to its handler, and
//! acknowledges the batch only after the handler's work has committed; a consumer
//! that fails or restarts gets its unacknowledged messages again.

pub mod amqp;
pub mod local;

use std::sync::Arc;

use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

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
}

/// An open subscription: batches of messages, and the means to answer them.
pub struct Subscription {
    pub batches: BoxStream<'static, Result<Batch, String>>,
    pub out: Box<dyn Outbound>,
    pub acker: Box<dyn Acknowledge>,
}

/// A batch and whatever must live as long as it does.
pub struct Batch {
    pub messages: Vec<QueueMessage>,
    pub guard: Option<Box<dyn std::any::Any + Send>>,
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
    pub handler: Arc<H>,
}

pub struct ConsumerState {
    out: Box<dyn Outbound>,
    acker: Box<dyn Acknowledge>,
    batches: Option<BoxStream<'static, Result<Batch, String>>>,
    reader: Option<JoinHandle<()>>,
    depth_read: std::time::Instant,
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
                depth_read: std::time::Instant::now() - std::time::Duration::from_secs(60),
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
        let mut batches = state.batches.take().expect("subscribed in pre_start");
        let actor = me.clone();
        let stats = self.stats.clone();
        state.reader = Some(tokio::spawn(async move {
            while let Some(item) = batches.next().await {
                match item {
                    Ok(batch) => {
                        stats.mailbox_add(batch.messages.len() as i64);
                        if actor.cast(ConsumerMsg::Batch(batch)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = actor.cast(ConsumerMsg::StreamEnded(e));
                        return;
                    }
                }
            }
            let _ = actor.cast(ConsumerMsg::StreamEnded(
                "the queue ended the subscription".into(),
            ));
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
            self.stats.failed(e);
            tracing::error!(actor = %self.stats.name, error = %e, "consumer failed; unacknowledged messages will be redelivered");
        }
        result
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ConsumerMsg>,
        _state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        self.stats.stopped();
        Ok(())
    }
}
