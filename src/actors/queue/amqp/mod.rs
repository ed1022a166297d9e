//! RabbitMQ: durable queues, persistent messages, publisher confirms, prefetch.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use ractor::ActorProcessingErr;

use super::{
    AckToken, Acknowledge, Batch, Outbound, PublisherBatch, PublisherMsg, QueueMessage,
    QueueSource, Subscription,
};
use crate::config::QueueKind;
use crate::supervisors::worker::{Backend, Batch as WorkBatch, Connect};

mod move_queue;

pub use move_queue::{move_queue, Moved};

/// Runs a call to the broker within `deadline` (`queue.deadline_ms`): connecting,
/// confirming, acknowledging. A broker that takes longer counts as hung and fails the
/// actor: its supervisor restarts it (reconnecting), and readiness shows it meanwhile.
/// A broker in a memory alarm blocks publishers this way.
async fn within<T>(
    deadline: Duration,
    what: &str,
    call: impl std::future::Future<Output = Result<T, lapin::Error>>,
) -> Result<T, ActorProcessingErr> {
    match tokio::time::timeout(deadline, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(format!("RabbitMQ did not {what} within {deadline:?}").into()),
    }
}

/// The arguments that declare a queue of type `kind`.
pub fn queue_arguments(kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    if kind == QueueKind::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
    }
    args
}

/// Whether a declare failed because the queue exists with other arguments (another
/// type): the broker answers 406 and closes the channel.
fn precondition_failed(e: &lapin::Error) -> bool {
    matches!(
        e.kind(),
        lapin::ErrorKind::ProtocolError(p)
            if *p.kind() == AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
    )
}

/// Declares the durable queue `queue` of type `kind` on `channel`. A queue of that name
/// that exists already as the other type is kept as it is: a broker cannot change a
/// queue's type, and deleting one would lose its orders (docs/operations.md, "Quorum
/// queues", tells how to move to a new one). `channel` is replaced by a new one of
/// `conn` when the broker closed it over the difference. Answers the queue's type.
async fn declare_queue(
    conn: &Connection,
    channel: &mut Channel,
    queue: &str,
    kind: QueueKind,
) -> Result<QueueKind, lapin::Error> {
    let durable = QueueDeclareOptions::durable();
    match channel
        .queue_declare(queue.into(), durable, queue_arguments(kind))
        .await
    {
        Ok(_) => Ok(kind),
        Err(e) if precondition_failed(&e) => {
            *channel = conn.create_channel().await?;
            let other = kind.other();
            channel
                .queue_declare(queue.into(), durable, queue_arguments(other))
                .await?;
            tracing::warn!(
                queue,
                configured = kind.name(),
                found = other.name(),
                "the queue exists as another type than queue.kind and is used as it is"
            );
            Ok(other)
        }
        Err(e) => Err(e),
    }
}

async fn open(
    url: &str,
    declare: &[String],
    kind: QueueKind,
) -> Result<(Connection, Channel), lapin::Error> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let mut channel = conn.create_channel().await?;
    for q in declare {
        let found = declare_queue(&conn, &mut channel, q, kind).await?;
        metrics::gauge!("flashsale_queue_quorum", "queue" => q.clone())
            .set(f64::from(u8::from(found == QueueKind::Quorum)));
    }
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok((conn, channel))
}

/// Messages of `queue` ready to be delivered (not those delivered and unacknowledged).
async fn queue_depth(channel: &Channel, queue: &str) -> Result<u64, lapin::Error> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await?;
    Ok(u64::from(q.message_count()))
}

/// Most orders carried by one message.
const MAX_PER_MESSAGE: usize = 256;

/// What the broker did with one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Published {
    /// Routed to its queue and stored: the confirm of a mandatory publish.
    Stored,
    /// Refused (a nack).
    Refused,
    /// Returned: no queue of that name (deleted under us). The confirm that follows a
    /// return says only that the broker is done with the message, which it dropped.
    Unroutable,
}

impl Published {
    fn stored(self) -> bool {
        self == Published::Stored
    }
}

/// Publishes a batch (mandatory: a message no queue takes comes back) and waits for
/// all its confirms together.
async fn publish_all(
    channel: &Channel,
    messages: &[(&str, &[u8], Option<&str>)],
) -> Result<Vec<Published>, lapin::Error> {
    let mut confirms = Vec::with_capacity(messages.len());
    for (queue, payload, traceparent) in messages {
        let mut props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(tp) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert("traceparent".into(), AMQPValue::LongString((*tp).into()));
            props = props.with_headers(headers);
        }
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    (*queue).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload,
                    props,
                )
                .await?,
        );
    }
    let mut answers = Vec::with_capacity(confirms.len());
    for c in confirms {
        answers.push(match c.await? {
            Confirmation::Ack(None) => Published::Stored,
            Confirmation::Ack(Some(_)) | Confirmation::Nack(Some(_)) => Published::Unroutable,
            Confirmation::Nack(None) | Confirmation::NotRequested => Published::Refused,
        });
    }
    Ok(answers)
}

pub struct AmqpPublisherConnect {
    pub url: String,
    pub declare: Vec<String>,
    pub kind: QueueKind,
    pub deadline: Duration,
}

pub struct AmqpPublisher {
    conn: Connection,
    channel: Channel,
    kind: QueueKind,
    deadline: Duration,
}

#[ractor::async_trait]
impl Connect for AmqpPublisherConnect {
    type Backend = AmqpPublisher;

    async fn connect(&self) -> Result<AmqpPublisher, ActorProcessingErr> {
        let open = open(&self.url, &self.declare, self.kind);
        let (conn, channel) = within(self.deadline, "connect", open).await?;
        Ok(AmqpPublisher {
            conn,
            channel,
            kind: self.kind,
            deadline: self.deadline,
        })
    }
}

#[ractor::async_trait]
impl Backend for AmqpPublisher {
    type Msg = PublisherMsg;

    async fn process(&mut self, batch: WorkBatch<Self>) -> Result<(), ActorProcessingErr> {
        let PublisherBatch {
            publishes: live,
            ports,
            depths,
        } = PublisherMsg::split(batch);
        for (q, port) in depths {
            port.ok(within(
                self.deadline,
                "declare",
                queue_depth(&self.channel, &q.queue),
            )
            .await?);
        }
        // Orders for one queue travel together: up to MAX_PER_MESSAGE in one persistent
        // message, confirmed once. The broker then persists and delivers a few messages
        // instead of thousands; every caller still hears only after the confirm.
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, e) in live.iter().enumerate() {
            match groups
                .iter_mut()
                .find(|(q, idx)| *q == e.queue.as_str() && idx.len() < MAX_PER_MESSAGE)
            {
                Some((_, idx)) => idx.push(i),
                None => groups.push((e.queue.as_str(), vec![i])),
            }
        }
        let payloads: Vec<Vec<u8>> = groups
            .iter()
            .map(|(_, idx)| match idx.as_slice() {
                [one] => live[*one].payload.clone(),
                many => {
                    let mut p = Vec::with_capacity(
                        many.iter()
                            .map(|i| live[*i].payload.len() + 1)
                            .sum::<usize>()
                            + 2,
                    );
                    p.push(b'[');
                    for (k, i) in many.iter().enumerate() {
                        if k > 0 {
                            p.push(b',');
                        }
                        p.extend_from_slice(&live[*i].payload);
                    }
                    p.push(b']');
                    p
                }
            })
            .collect();
        let messages: Vec<(&str, &[u8], Option<&str>)> = groups
            .iter()
            .zip(&payloads)
            .map(|((q, idx), p)| {
                let traceparent = if idx.len() == 1 {
                    live[idx[0]].traceparent.as_deref()
                } else {
                    None
                };
                (*q, p.as_slice(), traceparent)
            })
            .collect();
        let acked = within(
            self.deadline,
            "confirm",
            publish_all(&self.channel, &messages),
        )
        .await?;
        let mut answers = vec![false; live.len()];
        let mut gone = Vec::new();
        for ((queue, idx), published) in groups.iter().zip(acked) {
            for i in idx {
                answers[*i] = published.stored();
            }
            if published == Published::Unroutable && !gone.contains(queue) {
                gone.push(*queue);
            }
        }
        // A failed publish: its callers release their reservations and answer 503.
        for (port, ok) in ports.into_iter().zip(answers) {
            port.ok(ok);
        }
        // The queue is declared again so that the next publishes are kept. Its
        // consumers were cancelled with it: they restart and declare it too.
        for queue in gone {
            tracing::error!(queue, "a publish found no queue; declaring it again");
            metrics::counter!("flashsale_queue_unroutable_total", "queue" => queue.to_string())
                .increment(1);
            let mut channel = self.channel.clone();
            let declare = declare_queue(&self.conn, &mut channel, queue, self.kind);
            within(self.deadline, "declare", declare).await?;
            if channel.id() != self.channel.id() {
                let confirm = channel.confirm_select(ConfirmSelectOptions::default());
                within(self.deadline, "declare", confirm).await?;
                self.channel = channel;
            }
        }
        Ok(())
    }
}

struct AmqpOutbound {
    _conn: Connection,
    channel: Channel,
    deadline: Duration,
}

#[ractor::async_trait]
impl Outbound for AmqpOutbound {
    async fn publish(&self, messages: &[(&str, &[u8])]) -> Result<(), ActorProcessingErr> {
        let messages: Vec<_> = messages.iter().map(|(q, p)| (*q, *p, None)).collect();
        let acked = within(
            self.deadline,
            "confirm",
            publish_all(&self.channel, &messages),
        )
        .await?;
        match acked.iter().find(|a| !a.stored()) {
            None => Ok(()),
            // The batch is redelivered; the restarted consumer declares its queues.
            Some(Published::Unroutable) => Err("a follow-up message found no queue".into()),
            Some(_) => Err("the broker refused a follow-up message".into()),
        }
    }
}

struct AmqpAcker {
    _channel: Channel,
    deadline: Duration,
}

#[ractor::async_trait]
impl Acknowledge for AmqpAcker {
    async fn ack(&self, batch: &[QueueMessage]) -> Result<(), ActorProcessingErr> {
        // Deliveries arrive in order on one channel: one ack covers the whole batch.
        if let Some(QueueMessage {
            ack: AckToken::Amqp(acker),
            ..
        }) = batch.last()
        {
            within(
                self.deadline,
                "acknowledge",
                acker.ack(BasicAckOptions { multiple: true }),
            )
            .await?;
        }
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, ActorProcessingErr> {
        within(self.deadline, "declare", queue_depth(&self._channel, queue)).await
    }

    /// Closing the channel gives back what it did not acknowledge; the broker has
    /// done so when it confirms the close.
    async fn give_back(&self) -> Result<(), ActorProcessingErr> {
        let close = self._channel.close(200, "given back".into());
        within(self.deadline, "close", close).await
    }
}

pub struct AmqpSource {
    pub url: String,
    /// Queues declared before consuming (the consumed one and those published to).
    pub declare: Vec<String>,
    pub kind: QueueKind,
    pub deadline: Duration,
}

#[ractor::async_trait]
impl QueueSource for AmqpSource {
    async fn subscribe(
        &self,
        consumer: &str,
        queue: &str,
        prefetch: u16,
        max_batch: usize,
    ) -> Result<Subscription, ActorProcessingErr> {
        let mut declare = self.declare.clone();
        declare.push(queue.to_string());
        let open = open(&self.url, &declare, self.kind);
        let (conn, out) = within(self.deadline, "connect", open).await?;
        let consume = conn.create_channel().await?;
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("{consumer}-{}", uuid::Uuid::new_v4().simple());
        let stream = consume
            .basic_consume(
                queue.into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let batches = stream
            .ready_chunks(max_batch)
            .map(|chunk| {
                let mut messages = Vec::with_capacity(chunk.len());
                for item in chunk {
                    let d = item.map_err(|e| e.to_string())?;
                    messages.push(QueueMessage {
                        payload: d.data,
                        ack: AckToken::Amqp(d.acker),
                    });
                }
                Ok(Batch::new(messages, Vec::new()))
            })
            .boxed();
        Ok(Subscription {
            batches,
            out: Box::new(AmqpOutbound {
                _conn: conn,
                channel: out,
                deadline: self.deadline,
            }),
            acker: Box::new(AmqpAcker {
                _channel: consume,
                deadline: self.deadline,
            }),
        })
    }
}
