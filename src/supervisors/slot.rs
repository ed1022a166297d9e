//! A slot is the one stable address of a batching actor: a bounded inbox that
//! outlives actor restarts, plus the current actor, which supervisors set on every
//! (re)start. Callers never hold an actor reference themselves.
//!
//! What travels through a slot is typed: each request is its own struct, and its
//! [`Request::Reply`] says what comes back. A protocol (the requests one kind of actor
//! serves) is declared with [`protocol!`], which makes the message enum whose variants
//! pair each request with a [`ReplyPort`] of its own reply type.

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

/// One request failed on its own (a row that does not decode, a reply that makes no
/// sense): its caller gets this error, while the actor and the rest of its batch go on.
/// A broken backend is not an item error: it fails the actor.
#[derive(Debug, thiserror::Error)]
#[error("{context}")]
pub struct ItemError {
    context: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ItemError {
    pub fn new(context: impl Into<String>) -> Self {
        Self {
            context: context.into(),
            source: None,
        }
    }

    pub fn caused_by(
        context: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            context: context.into(),
            source: Some(source.into()),
        }
    }
}

/// Why a call into an actor did not produce an answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("the actor's inbox is full")]
    Overloaded,
    #[error("the actor did not answer in time or is restarting")]
    Unavailable,
    #[error(transparent)]
    Failed(#[from] ItemError),
}

/// Where one request's answer goes. Detached for work nobody waits for.
pub struct ReplyPort<T> {
    tx: Option<oneshot::Sender<Result<T, ItemError>>>,
}

impl<T> ReplyPort<T> {
    /// A port nobody listens to (fire-and-forget work).
    pub fn detached() -> Self {
        Self { tx: None }
    }

    /// The caller stopped waiting (its deadline passed): the work can be skipped.
    pub fn abandoned(&self) -> bool {
        self.tx.as_ref().is_some_and(|t| t.is_closed())
    }

    pub fn send(self, reply: Result<T, ItemError>) {
        if let Some(tx) = self.tx {
            let _ = tx.send(reply);
        }
    }

    pub fn ok(self, reply: T) {
        self.send(Ok(reply));
    }
}

impl<T: Send + 'static> ReplyPort<T> {
    /// The answer, to be sent later (once the batch it belongs to is durable).
    pub fn defer(self, reply: Result<T, ItemError>) -> Deferred {
        Deferred(Box::new(move || self.send(reply)))
    }
}

impl<T> std::fmt::Debug for ReplyPort<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match &self.tx {
            None => "ReplyPort(detached)",
            Some(tx) if tx.is_closed() => "ReplyPort(abandoned)",
            Some(_) => "ReplyPort",
        })
    }
}

/// An answer held back until what it reports has been made durable.
pub struct Deferred(Box<dyn FnOnce() + Send>);

impl Deferred {
    pub fn send(self) {
        (self.0)()
    }
}

/// A message of some protocol: a request and the port for its answer.
pub trait Message: Send + 'static {
    /// The caller of this message stopped waiting.
    fn abandoned(&self) -> bool;

    /// Answers the message with a failure of its own.
    fn fail(self, error: ItemError);
}

/// A request of protocol `M`, and what it is answered with.
pub trait Request<M>: Send + 'static {
    type Reply: Send + 'static;
    fn into_message(self, reply: ReplyPort<Self::Reply>) -> M;
}

/// Declares a protocol: an enum whose variants pair each request type with a
/// [`ReplyPort`] of its reply type, and a [`Request`] impl for each request type.
///
/// ```text
/// protocol! {
///     pub enum ShardMsg {
///         Get(GetOrder) -> Option<OrderView>,
///     }
/// }
/// ```
#[macro_export]
macro_rules! protocol {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($req:ty) -> $reply:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant($req, $crate::supervisors::slot::ReplyPort<$reply>), )*
        }

        impl $crate::supervisors::slot::Message for $name {
            fn abandoned(&self) -> bool {
                match self {
                    $( $name::$variant(_, port) => port.abandoned(), )*
                }
            }

            fn fail(self, error: $crate::supervisors::slot::ItemError) {
                match self {
                    $( $name::$variant(_, port) => port.send(Err(error)), )*
                }
            }
        }

        impl $name {
            /// Hands the request and its reply port to the handler of its type: a
            /// backend serves each request in an impl of its own.
            #[allow(dead_code)]
            pub fn dispatch<H>(self, handler: &mut H) -> H::Out
            where
                H: $crate::supervisors::slot::Dispatch
                    $( + $crate::supervisors::slot::Handle<$req, $reply> )*,
            {
                match self {
                    $( $name::$variant(request, port) => {
                        $crate::supervisors::slot::Handle::<$req, $reply>::handle(handler, request, port)
                    } )*
                }
            }
        }

        $(
            impl $crate::supervisors::slot::Request<$name> for $req {
                type Reply = $reply;
                fn into_message(self, reply: $crate::supervisors::slot::ReplyPort<$reply>) -> $name {
                    $name::$variant(self, reply)
                }
            }
        )*
    };
}

/// What a backend's handlers answer for each request ([`Handle`]).
pub trait Dispatch {
    type Out;
}

/// How a backend serves one request type of a protocol: `dispatch`, made by
/// [`protocol!`], calls the impl for the message's request.
pub trait Handle<R, T>: Dispatch {
    fn handle(&mut self, request: R, port: ReplyPort<T>) -> Self::Out;
}

/// The message of actors that only need waking (relays, the reconciler): their work
/// is found in their backend, not carried in the message.
#[derive(Debug, Clone, Copy)]
pub struct Wake;

impl Message for Wake {
    fn abandoned(&self) -> bool {
        false
    }

    fn fail(self, _error: ItemError) {}
}

impl Request<Wake> for Wake {
    type Reply = ();
    fn into_message(self, _reply: ReplyPort<()>) -> Wake {
        Wake
    }
}

/// Wakes an actor that only needs waking (a relay when its database committed outbox
/// rows). Never blocks; a wake-up already queued covers this one.
#[derive(Clone, Default)]
pub struct Nudge(Option<Arc<Slot<Wake>>>);

impl Nudge {
    pub fn new(slot: Arc<Slot<Wake>>) -> Self {
        Self(Some(slot))
    }

    /// Wakes nobody (the woken actor does not run in this process).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn wake(&self) {
        if let Some(slot) = &self.0 {
            if !slot.has_work() {
                slot.tell(Wake);
            }
        }
    }
}

pub struct Slot<M> {
    queue: Mutex<VecDeque<M>>,
    capacity: usize,
    timeout: Duration,
    actor: RwLock<Option<ActorRef<WorkerMsg>>>,
    pub stats: Arc<NodeStats>,
}

impl<M: Message> Slot<M> {
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

    /// Queues `message` unless the inbox holds `limit` already.
    fn push(&self, message: M, limit: usize) -> Result<(), CallError> {
        let was_empty = {
            let mut q = self.queue.lock().unwrap();
            if q.len() >= limit {
                return Err(CallError::Overloaded);
            }
            q.push_back(message);
            q.len() == 1
        };
        self.stats.mailbox_add(1);
        if was_empty {
            self.wake();
        }
        Ok(())
    }

    /// Asks and waits for the answer, within the slot's deadline.
    pub async fn call<R: Request<M>>(&self, request: R) -> Result<R::Reply, CallError> {
        self.ask(request, self.capacity).await
    }

    async fn ask<R: Request<M>>(&self, request: R, limit: usize) -> Result<R::Reply, CallError> {
        let (tx, rx) = oneshot::channel();
        self.push(request.into_message(ReplyPort { tx: Some(tx) }), limit)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(e))) => Err(CallError::Failed(e)),
            // The deadline passed, or the actor dropped the request (it failed).
            Ok(Err(_)) | Err(_) => Err(CallError::Unavailable),
        }
    }

    /// Asks and waits like [`Slot::call`], queueing even past the inbox's capacity: for
    /// callers whose work is bounded already (a queue consumer's, by its prefetch),
    /// which wait their turn rather than shed it and ask again.
    pub async fn call_queued<R: Request<M>>(&self, request: R) -> Result<R::Reply, CallError> {
        self.ask(request, usize::MAX).await
    }

    /// Queues work nobody waits for. It is bounded by the work that caused it.
    pub fn tell<R: Request<M>>(&self, request: R) {
        let _ = self.push(request.into_message(ReplyPort::detached()), usize::MAX);
    }

    /// Takes up to `max` queued requests, oldest first.
    pub fn take(&self, max: usize) -> Vec<M> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervisors::stats::Kind;

    #[derive(Debug)]
    struct Echo(u32);

    crate::protocol! {
        enum TestMsg {
            Echo(Echo) -> u32,
        }
    }

    fn slot(capacity: usize, timeout_ms: u64) -> Arc<Slot<TestMsg>> {
        let stats = NodeStats::new("test", "test".into(), Kind::Actor);
        Slot::new(stats, capacity, Duration::from_millis(timeout_ms))
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_inbox_refuses_at_once_and_tells_still_queue() {
        let s = slot(2, 1_000);
        let waiting: Vec<_> = (0..2)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.call(Echo(i)).await })
            })
            .collect();
        tokio::task::yield_now().await;
        while s.stats.mailbox() < 2 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(s.call(Echo(9)).await, Err(CallError::Overloaded)));
        // Work caused by work already admitted is not refused.
        s.tell(Echo(10));
        assert_eq!(s.take(10).len(), 3);
        for w in waiting {
            // Taken but never answered: the callers see the actor as unavailable.
            assert!(matches!(w.await.unwrap(), Err(CallError::Unavailable)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_call_waits_in_a_full_inbox_where_a_call_is_shed() {
        let s = slot(2, 1_000);
        let queued: Vec<_> = (0..4)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move { s.call_queued(Echo(i)).await })
            })
            .collect();
        while s.stats.mailbox() < 4 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(s.call(Echo(8)).await, Err(CallError::Overloaded)));
        let taken = s.take(10);
        assert_eq!(taken.len(), 4);
        for m in taken {
            let TestMsg::Echo(Echo(n), port) = m;
            port.ok(n);
        }
        for (i, q) in queued.into_iter().enumerate() {
            assert_eq!(q.await.unwrap().unwrap(), i as u32);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_nobody_answers_ends_at_its_deadline_and_is_then_abandoned() {
        let s = slot(8, 250);
        let started = tokio::time::Instant::now();
        assert!(matches!(s.call(Echo(1)).await, Err(CallError::Unavailable)));
        assert_eq!(started.elapsed(), Duration::from_millis(250));
        let queued = s.take(8);
        assert_eq!(queued.len(), 1);
        assert!(
            queued[0].abandoned(),
            "the caller is gone: the work can be skipped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_and_item_errors_reach_their_caller() {
        let s = slot(8, 1_000);
        let server = {
            let s = s.clone();
            tokio::spawn(async move {
                let mut served = 0;
                while served < 2 {
                    for TestMsg::Echo(Echo(n), port) in s.take(8) {
                        assert!(!port.abandoned());
                        match n {
                            0 => port.send(Err(ItemError::new("zero is refused"))),
                            n => port.ok(n * 2),
                        }
                        served += 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        assert_eq!(s.call(Echo(21)).await.unwrap(), 42);
        match s.call(Echo(0)).await {
            Err(CallError::Failed(e)) => assert_eq!(e.to_string(), "zero is refused"),
            other => panic!("{other:?}"),
        }
        server.await.unwrap();
        assert_eq!(s.stats.mailbox(), 0);
    }

    #[test]
    fn a_detached_port_is_never_abandoned_and_fail_answers_any_variant() {
        let port: ReplyPort<u32> = ReplyPort::detached();
        assert!(!port.abandoned());
        let (tx, rx) = oneshot::channel();
        let msg = TestMsg::Echo(Echo(1), ReplyPort { tx: Some(tx) });
        msg.fail(ItemError::new("bad item"));
        assert!(matches!(rx.blocking_recv(), Ok(Err(e)) if e.to_string() == "bad item"));
    }
}
