//! The order queue on RabbitMQ: publisher actors (persistent messages on durable
//! queues, many publisher confirms in flight per batch) and consumer actors (prefetch,
//! a batch per read, one acknowledgement per batch after the work has committed).

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;

use crate::actors::worker::{Backend, Batch, Connect};
use crate::supervisors::stats::{NodeStats, Status};

#[derive(Debug)]
pub struct PublishOp {
    pub queue: String,
    pub payload: Vec<u8>,
}

/// `true` once the broker has confirmed the message; `false` on a negative confirm.
pub type PublishReply = bool;

async fn open(url: &str, declare: &[String]) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for q in declare {
        channel
            .queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await?;
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// Publishes a batch and waits for all its confirms together.
async fn publish_all(
    channel: &Channel,
    messages: &[(&str, &[u8])],
) -> Result<Vec<bool>, lapin::Error> {
    let mut confirms = Vec::with_capacity(messages.len());
    for (queue, payload) in messages {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    (*queue).into(),
                    BasicPublishOptions::default(),
                    payload,
                    props,
                )
                .await?,
        );
    }
    let mut acked = Vec::with_capacity(confirms.len());
    for c in confirms {
        acked.push(c.await?.is_ack());
    }
    Ok(acked)
}

pub struct PublisherConnect {
    pub url: String,
    pub declare: Vec<String>,
}

pub struct AmqpPublisher {
    _conn: Connection,
    channel: Channel,
}

#[ractor::async_trait]
impl Connect for PublisherConnect {
    type Backend = AmqpPublisher;

    async fn connect(&self) -> Result<AmqpPublisher, ActorProcessingErr> {
        let (conn, channel) = open(&self.url, &self.declare).await?;
        Ok(AmqpPublisher {
            _conn: conn,
            channel,
        })
    }
}

#[ractor::async_trait]
impl Backend for AmqpPublisher {
    type Op = PublishOp;
    type Reply = PublishReply;

    async fn process(&mut self, batch: Batch<Self>) -> Result<(), ActorProcessingErr> {
        let live: Vec<_> = batch.into_iter().filter(|e| !e.abandoned()).collect();
        let messages: Vec<(&str, &[u8])> = live
            .iter()
            .map(|e| (e.op.queue.as_str(), e.op.payload.as_slice()))
            .collect();
        let acked = publish_all(&self.channel, &messages).await?;
        for (e, ok) in live.into_iter().zip(acked) {
            e.answer(ok);
        }
        Ok(())
    }
}

/// What a consumer does with a batch of deliveries. On `Ok` the whole batch is
/// acknowledged; on `Err` the consumer fails and the broker redelivers the batch.
#[ractor::async_trait]
pub trait DeliveryHandler: Send + Sync + 'static {
    async fn handle(&self, out: &Outbound, batch: &[Delivery]) -> Result<(), ActorProcessingErr>;
}

/// The consumer's own publishing channel (confirm mode), for follow-up messages.
pub struct Outbound {
    channel: Channel,
}

impl Outbound {
    pub async fn publish(&self, messages: &[(&str, &[u8])]) -> Result<(), ActorProcessingErr> {
        let acked = publish_all(&self.channel, messages).await?;
        if acked.iter().all(|a| *a) {
            Ok(())
        } else {
            Err("the broker refused a follow-up message".into())
        }
    }
}

pub enum ConsumerMsg {
    Batch(Vec<Delivery>),
    StreamEnded(String),
}

pub struct QueueConsumer<H> {
    pub stats: Arc<NodeStats>,
    pub url: String,
    pub queue: String,
    /// Queues this consumer publishes to (declared at start).
    pub declare: Vec<String>,
    pub prefetch: u16,
    pub max_batch: usize,
    pub handler: Arc<H>,
}

pub struct ConsumerState {
    _conn: Connection,
    _consume: Channel,
    out: Outbound,
    reader: Option<JoinHandle<()>>,
    stream: Option<lapin::Consumer>,
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
        myself: ActorRef<ConsumerMsg>,
        _: (),
    ) -> Result<ConsumerState, ActorProcessingErr> {
        self.stats.set_status(Status::Starting);
        let opened = async {
            let mut declare = self.declare.clone();
            declare.push(self.queue.clone());
            let (conn, out) = open(&self.url, &declare).await?;
            let consume = conn.create_channel().await?;
            consume
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let tag = format!(
                "{}-{}",
                self.stats.actor_name,
                uuid::Uuid::new_v4().simple()
            );
            let stream = consume
                .basic_consume(
                    self.queue.as_str().into(),
                    tag.as_str().into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((conn, consume, out, stream))
        }
        .await;
        let _ = myself;
        match opened {
            Ok((conn, consume, out, stream)) => Ok(ConsumerState {
                _conn: conn,
                _consume: consume,
                out: Outbound { channel: out },
                reader: None,
                stream: Some(stream),
            }),
            Err(e) => {
                self.stats.failed(&e);
                tracing::warn!(actor = %self.stats.name, error = %e, "cannot consume");
                Err(e.into())
            }
        }
    }

    async fn post_start(
        &self,
        myself: ActorRef<ConsumerMsg>,
        state: &mut ConsumerState,
    ) -> Result<(), ActorProcessingErr> {
        let stream = state.stream.take().expect("stream opened in pre_start");
        let me = myself.clone();
        let stats = self.stats.clone();
        let max = self.max_batch;
        state.reader = Some(tokio::spawn(async move {
            let mut chunks = stream.ready_chunks(max);
            while let Some(chunk) = chunks.next().await {
                let mut batch = Vec::with_capacity(chunk.len());
                for item in chunk {
                    match item {
                        Ok(d) => batch.push(d),
                        Err(e) => {
                            let _ = me.cast(ConsumerMsg::StreamEnded(e.to_string()));
                            return;
                        }
                    }
                }
                stats.mailbox_add(batch.len() as i64);
                if me.cast(ConsumerMsg::Batch(batch)).is_err() {
                    return;
                }
            }
            let _ = me.cast(ConsumerMsg::StreamEnded(
                "the broker cancelled the consumer".into(),
            ));
        }));
        self.stats.started(myself.get_cell());
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
                let n = batch.len();
                self.stats.mailbox_add(-(n as i64));
                metrics::histogram!("flashsale_actor_batch_size", "actor" => self.stats.name.clone()).record(n as f64);
                let r = self.handler.handle(&state.out, &batch).await;
                match (r, batch.last()) {
                    (Ok(()), Some(last)) => {
                        // Deliveries arrive in order on one channel: one ack covers the batch.
                        last.acker.ack(BasicAckOptions { multiple: true }).await?;
                        self.stats.add_processed(n as u64);
                        Ok(())
                    }
                    (r, _) => r,
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
