//! The consumer actor: it takes batches from its queue source, hands each to its
//! handler, and acknowledges a batch once the handler's work has committed.

use super::*;

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
