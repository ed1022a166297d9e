//! The embedded order queue: a journal in one SQLite file. A publish is confirmed
//! when its transaction has committed, so an accepted order survives `kill -9`. A
//! consumer leases messages (in memory), and an acknowledgement deletes them; the
//! leases of a consumer that stops, and all leases after a crash, are given up, so
//! those messages are delivered again.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use ractor::ActorProcessingErr;
use sqlx::sqlite::SqlitePool;
use sqlx::Row;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use super::{
    AckToken, Acknowledge, Batch, Outbound, PublisherBatch, PublisherMsg, QueueMessage,
    QueueSource, Subscription,
};
use crate::db::sqlite_pool;
use crate::supervisors::worker::{Backend, Batch as WorkBatch, Connect};

pub struct LocalQueue {
    pool: SqlitePool,
    leased: Mutex<HashSet<i64>>,
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
    /// Orders leases against acknowledgements: a lease must not read rows that an
    /// acknowledgement is deleting (they would be delivered twice).
    turn: tokio::sync::Mutex<()>,
}

/// Opens (creating when missing) a SQLite database tuned for a durable journal.
impl LocalQueue {
    pub async fn open(path: &Path) -> Result<Arc<Self>, sqlx::Error> {
        let pool = sqlite_pool(path, 4).await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, queue TEXT NOT NULL, payload BLOB NOT NULL); \
             CREATE INDEX IF NOT EXISTS messages_by_queue ON messages (queue, id);",
        )
        .execute(&pool)
        .await?;
        Ok(Arc::new(Self {
            pool,
            leased: Mutex::new(HashSet::new()),
            wakeups: Mutex::new(HashMap::new()),
            turn: tokio::sync::Mutex::new(()),
        }))
    }

    fn wakeup(&self, queue: &str) -> Arc<Notify> {
        self.wakeups
            .lock()
            .unwrap()
            .entry(queue.to_string())
            .or_default()
            .clone()
    }

    /// Appends messages in one transaction; returns once they are durable.
    pub async fn push(&self, messages: &[(&str, &[u8])]) -> Result<(), sqlx::Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (queue, payload) in messages {
            sqlx::query("INSERT INTO messages (queue, payload) VALUES (?, ?)")
                .bind(*queue)
                .bind(*payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        let queues: HashSet<&str> = messages.iter().map(|(q, _)| *q).collect();
        for q in queues {
            self.wakeup(q).notify_one();
        }
        Ok(())
    }

    /// Leases up to `max` messages of `queue` that nobody holds.
    async fn lease(&self, queue: &str, max: usize) -> Result<Vec<(i64, Vec<u8>)>, sqlx::Error> {
        let _turn = self.turn.lock().await;
        let skip = self.leased.lock().unwrap().len();
        let rows =
            sqlx::query("SELECT id, payload FROM messages WHERE queue = ? ORDER BY id LIMIT ?")
                .bind(queue)
                .bind((max + skip) as i64)
                .fetch_all(&self.pool)
                .await?;
        let mut leased = self.leased.lock().unwrap();
        let mut out = Vec::new();
        for row in rows {
            let id: i64 = row.get(0);
            if out.len() < max && leased.insert(id) {
                out.push((id, row.get(1)));
            }
        }
        Ok(out)
    }

    async fn ack(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        let _turn = self.turn.lock().await;
        let mut tx = self.pool.begin().await?;
        for id in ids {
            sqlx::query("DELETE FROM messages WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.give_up(ids);
        Ok(())
    }

    fn give_up(&self, ids: &[i64]) {
        let mut leased = self.leased.lock().unwrap();
        for id in ids {
            leased.remove(id);
        }
    }

    /// Messages waiting in `queue` (leased or not).
    pub async fn depth(&self, queue: &str) -> Result<i64, sqlx::Error> {
        sqlx::query("SELECT COUNT(*) FROM messages WHERE queue = ?")
            .bind(queue)
            .fetch_one(&self.pool)
            .await
            .map(|r| r.get(0))
    }
}

pub struct LocalPublisherConnect {
    pub queue: Arc<LocalQueue>,
}

pub struct LocalPublisher {
    queue: Arc<LocalQueue>,
}

#[ractor::async_trait]
impl Connect for LocalPublisherConnect {
    type Backend = LocalPublisher;

    async fn connect(&self) -> Result<LocalPublisher, ActorProcessingErr> {
        Ok(LocalPublisher {
            queue: self.queue.clone(),
        })
    }
}

#[ractor::async_trait]
impl Backend for LocalPublisher {
    type Msg = PublisherMsg;

    async fn process(&mut self, batch: WorkBatch<Self>) -> Result<(), ActorProcessingErr> {
        let PublisherBatch {
            publishes: live,
            ports,
            depths,
        } = PublisherMsg::split(batch);
        for (q, port) in depths {
            port.ok(self.queue.depth(&q.queue).await?.max(0) as u64);
        }
        let messages: Vec<(&str, &[u8])> = live
            .iter()
            .map(|p| (p.queue.as_str(), p.payload.as_slice()))
            .collect();
        self.queue.push(&messages).await?;
        ports.into_iter().for_each(|port| port.ok(true));
        Ok(())
    }
}

/// Gives up a consumer's leases when its subscription ends, so that another
/// consumer (or its restarted self) gets those messages.
struct Leases {
    queue: Arc<LocalQueue>,
    ids: Mutex<HashSet<i64>>,
}

impl Drop for Leases {
    fn drop(&mut self) {
        let ids: Vec<i64> = self.ids.lock().unwrap().drain().collect();
        self.queue.give_up(&ids);
    }
}

struct LocalAcker {
    leases: Arc<Leases>,
}

#[ractor::async_trait]
impl Acknowledge for LocalAcker {
    async fn ack(&self, batch: &[QueueMessage]) -> Result<(), ActorProcessingErr> {
        let ids: Vec<i64> = batch
            .iter()
            .filter_map(|m| match m.ack {
                AckToken::Local(id) => Some(id),
                _ => None,
            })
            .collect();
        self.leases.queue.ack(&ids).await?;
        let mut mine = self.leases.ids.lock().unwrap();
        for id in &ids {
            mine.remove(id);
        }
        Ok(())
    }

    async fn depth(&self, queue: &str) -> Result<u64, ActorProcessingErr> {
        Ok(self.leases.queue.depth(queue).await? as u64)
    }
}

pub struct LocalSource {
    pub queue: Arc<LocalQueue>,
}

#[ractor::async_trait]
impl QueueSource for LocalSource {
    async fn subscribe(
        &self,
        _consumer: &str,
        queue: &str,
        prefetch: u16,
        max_batch: usize,
    ) -> Result<Subscription, ActorProcessingErr> {
        let leases = Arc::new(Leases {
            queue: self.queue.clone(),
            ids: Mutex::new(HashSet::new()),
        });
        let credit = Arc::new(Semaphore::new(prefetch as usize));
        let wakeup = self.queue.wakeup(queue);
        let state = (leases.clone(), credit, wakeup, queue.to_string(), max_batch);
        let batches = futures_util::stream::unfold(
            state,
            |(leases, credit, wakeup, queue, max)| async move {
                loop {
                    // Wait for credit: at most `prefetch` messages in hand at once.
                    let first: OwnedSemaphorePermit = credit.clone().acquire_owned().await.ok()?;
                    let extra = credit.available_permits().min(max.saturating_sub(1));
                    let mut permit = first;
                    if extra > 0 {
                        if let Ok(more) = credit.clone().try_acquire_many_owned(extra as u32) {
                            permit.merge(more);
                        }
                    }
                    let want = permit.num_permits();
                    let leased = match leases.queue.lease(&queue, want).await {
                        Ok(l) => l,
                        Err(e) => {
                            return Some((Err(e.to_string()), (leases, credit, wakeup, queue, max)))
                        }
                    };
                    if leased.is_empty() {
                        drop(permit);
                        let _ = tokio::time::timeout(Duration::from_millis(200), wakeup.notified())
                            .await;
                        continue;
                    }
                    if leased.len() < want {
                        // Keep only the credit this batch uses.
                        let unused = want - leased.len();
                        if let Some(p) = permit.split(unused) {
                            drop(p);
                        }
                    }
                    leases
                        .ids
                        .lock()
                        .unwrap()
                        .extend(leased.iter().map(|(id, _)| *id));
                    let messages = leased
                        .into_iter()
                        .map(|(id, payload)| QueueMessage {
                            payload,
                            ack: AckToken::Local(id),
                        })
                        .collect();
                    let batch = Batch::new(messages, vec![Box::new(permit)]);
                    return Some((Ok(batch), (leases, credit, wakeup, queue, max)));
                }
            },
        )
        .boxed();
        Ok(Subscription {
            batches,
            out: Box::new(LocalOutbound(self.queue.clone())),
            acker: Box::new(LocalAcker { leases }),
        })
    }
}

struct LocalOutbound(Arc<LocalQueue>);

#[ractor::async_trait]
impl Outbound for LocalOutbound {
    async fn publish(&self, messages: &[(&str, &[u8])]) -> Result<(), ActorProcessingErr> {
        Ok(self.0.push(messages).await?)
    }
}
